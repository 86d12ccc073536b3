"""Infilling, inpainting and extrapolation: the two loops on edited starting sequences."""

from __future__ import annotations

import pytest
import torch

from conftest import MASK, MOCK_VOCAB, OFFSET, K, MockDenoiser, t2i_layout
from mmada.prompting import TokenLayout
from mmada.sampling import (
    InfillSampling,
    extend_grid,
    extrapolate_image,
    infill_text,
    inpaint_image,
    iter_infill_text,
    iter_inpaint_image,
    place_image,
    sample_t2i,
)
from test_sampling_image import N, as_layout, layout, t2i_settings
from test_sampling_text import prompts


def masked_text() -> torch.Tensor:
    ids = prompts(2, 16, seed=7)
    ids[:, 3:6] = MASK
    ids[0, 9:12] = MASK
    ids[1, 13] = MASK
    return ids


# ---- text ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_length", [None, 4])
def test_infill_fills_masks_and_never_changes_context(block_length):
    ids = masked_text()
    settings = InfillSampling(steps=6, block_length=block_length)
    steps = list(iter_infill_text(MockDenoiser(), ids, settings, mask_id=MASK))
    out = steps[-1].tokens
    assert not (out == MASK).any()
    assert torch.equal(out[ids != MASK], ids[ids != MASK])
    assert all(not s.committed[ids != MASK].any() for s in steps)
    if block_length is not None:  # blocks of 4 from the first masked column (3): 3-6, 7-10, 11-13
        assert [s.block for s in steps] == [0, 0, 1, 1, 2, 2]
        assert not steps[1].tokens[:, 3:7].eq(MASK).any()


def test_infill_agrees_with_its_iterator_and_copies_unmasked_input():
    ids = masked_text()
    kw = dict(mask_id=MASK, generator=torch.Generator().manual_seed(0))
    settings = InfillSampling(steps=4, temperature=0.5)
    last = list(iter_infill_text(MockDenoiser(), ids, settings, **kw))[-1].tokens
    kw["generator"] = torch.Generator().manual_seed(0)
    assert torch.equal(infill_text(MockDenoiser(), ids, settings, **kw), last)
    plain = prompts(2, 5)
    assert torch.equal(infill_text(MockDenoiser(), plain, InfillSampling(steps=2), mask_id=MASK), plain)


def test_infill_refuses_steps_that_do_not_divide_among_blocks():
    with pytest.raises(ValueError, match=r"`steps` \(5\)"):
        infill_text(MockDenoiser(), masked_text(), InfillSampling(steps=5, block_length=4), mask_id=MASK)


# ---- images -------------------------------------------------------------------------------------


def image_batch() -> tuple[TokenLayout, torch.Tensor]:
    """Two t2i rows with a complete image, and the codes of that image."""
    rows = t2i_layout(*layout([[5, 6], [7, 8, 9]]), N)
    codes = sample_t2i(MockDenoiser(seed=1), rows, t2i_settings(), MOCK_VOCAB,
                       generator=torch.Generator().manual_seed(0))
    return place_image(rows, MOCK_VOCAB.image_ids(codes)), codes


def null_prompt() -> TokenLayout:
    return as_layout(dict(zip(("uncond_input_ids", "uncond_attention_mask"), layout([[], []]), strict=True)))


@pytest.mark.parametrize("guidance_scale", [0.0, 2.0])
def test_inpainting_keeps_every_code_outside_the_region(guidance_scale):
    rows, codes = image_batch()
    region = torch.zeros(2, N, dtype=torch.bool)
    region[0, :4], region[1, 2::3] = True, True
    # hot enough that noise could outrank given codes if they were not protected
    settings = t2i_settings(guidance_scale=guidance_scale, temperature=8.0)
    kw = dict(uncond=null_prompt())
    steps = list(iter_inpaint_image(MockDenoiser(seed=2), rows, region, settings, MOCK_VOCAB,
                                    generator=torch.Generator().manual_seed(3), **kw))
    for s in steps:
        assert torch.equal(s.tokens[~region], codes[~region]) and s.committed[~region].all()
    out = inpaint_image(MockDenoiser(seed=2), rows, region, settings, MOCK_VOCAB,
                        generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(out, steps[-1].tokens) and ((out >= 0) & (out < K)).all()


def test_inpainting_schedule_counts_the_region_only():
    rows, _ = image_batch()
    region = torch.zeros(2, N, dtype=torch.bool)
    region[:, :4] = True
    steps = list(iter_inpaint_image(MockDenoiser(), rows, region, t2i_settings(timesteps=3), MOCK_VOCAB))
    # cosine over the 4 unknown codes: floor(4 cos(pi/6)) = 3 re-masked after the first step
    assert (~steps[0].committed).sum(dim=1).tolist() == [3, 3]


def test_extend_grid_places_the_old_codes():
    rows, codes = image_batch()
    ids = rows.input_ids
    new, region = extend_grid(rows, grid=(3, 3), pad=(0, 1, 1, 0), mask_id=MASK)
    new_ids, new_mask = new.input_ids, new.attention_mask
    text = ids.shape[1] - N - 1
    assert new_ids.shape == (2, text + 16 + 1) and new_mask.shape == new_ids.shape
    assert torch.equal(new_ids[:, :text], ids[:, :text]) and torch.equal(new_ids[:, -1], ids[:, -1])
    grid = new_ids[:, text:-1].view(2, 4, 4)
    assert torch.equal(grid[:, :3, 1:], codes.view(2, 3, 3) + OFFSET)
    assert (grid[:, 3] == MASK).all() and (grid[:, :, 0] == MASK).all()
    assert region.view(2, 4, 4)[:, 3].all() and not region.view(2, 4, 4)[:, :3, 1:].any()
    assert new_mask[:, text:].all()


def test_extrapolation_generates_new_columns_and_keeps_the_image():
    rows, codes = image_batch()
    settings = t2i_settings(guidance_scale=1.0)
    out = extrapolate_image(MockDenoiser(), rows, settings, MOCK_VOCAB, grid=(3, 3), pad=(0, 0, 0, 2),
                            uncond=null_prompt(), generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 15) and ((out >= 0) & (out < K)).all()
    assert torch.equal(out.view(2, 3, 5)[:, :, :3], codes.view(2, 3, 3))
    with pytest.raises(ValueError, match="must cover the layout's 9 image tokens"):
        extrapolate_image(MockDenoiser(), rows, settings, MOCK_VOCAB, grid=(2, 3), pad=(0, 0, 0, 2),
                          uncond=null_prompt())
