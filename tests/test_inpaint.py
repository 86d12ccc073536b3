"""Infilling, inpainting and extrapolation: the two loops on edited starting sequences."""

from __future__ import annotations

import pytest
import torch

from mmada.sampling import (
    extend_grid,
    extrapolate_image,
    infill_text,
    inpaint_image,
    iter_infill_text,
    iter_inpaint_image,
    sample_t2i,
)
from test_sampling_image import OFFSET, K, N, layout, t2i_kwargs
from test_sampling_text import MASK, MockDenoiser, prompts


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
    steps = list(iter_infill_text(MockDenoiser(), ids, steps=6, block_length=block_length, mask_id=MASK))
    out = steps[-1].tokens
    assert not (out == MASK).any()
    assert torch.equal(out[ids != MASK], ids[ids != MASK])
    assert all(not s.committed[ids != MASK].any() for s in steps)
    if block_length is not None:  # blocks of 4 from the first masked column (3): 3-6, 7-10, 11-13
        assert [s.block for s in steps] == [0, 0, 1, 1, 2, 2]
        assert not steps[1].tokens[:, 3:7].eq(MASK).any()


def test_infill_agrees_with_its_iterator_and_copies_unmasked_input():
    ids = masked_text()
    kw = dict(steps=4, mask_id=MASK, temperature=0.5, generator=torch.Generator().manual_seed(0))
    last = list(iter_infill_text(MockDenoiser(), ids, **kw))[-1].tokens
    kw["generator"] = torch.Generator().manual_seed(0)
    assert torch.equal(infill_text(MockDenoiser(), ids, **kw), last)
    plain = prompts(2, 5)
    assert torch.equal(infill_text(MockDenoiser(), plain, steps=2, mask_id=MASK), plain)


def test_infill_refuses_steps_that_do_not_divide_among_blocks():
    with pytest.raises(ValueError, match=r"`steps` \(5\)"):
        infill_text(MockDenoiser(), masked_text(), steps=5, block_length=4, mask_id=MASK)


# ---- images -------------------------------------------------------------------------------------


def image_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two t2i rows with a complete image, and the codes of that image."""
    ids, mask = layout([[5, 6], [7, 8, 9]])
    codes = sample_t2i(MockDenoiser(seed=1), ids, mask, generator=torch.Generator().manual_seed(0),
                       **t2i_kwargs())
    ids[:, -N - 1 : -1] = codes + OFFSET
    return ids, mask, codes


@pytest.mark.parametrize("guidance_scale", [0.0, 2.0])
def test_inpainting_keeps_every_code_outside_the_region(guidance_scale):
    ids, mask, codes = image_batch()
    region = torch.zeros(2, N, dtype=torch.bool)
    region[0, :4], region[1, 2::3] = True, True
    uncond_ids, uncond_mask = layout([[], []])
    kw = t2i_kwargs(guidance_scale=guidance_scale, uncond_input_ids=uncond_ids, uncond_attention_mask=uncond_mask,
                    temperature=8.0)  # hot enough that noise could outrank given codes if they were not protected
    steps = list(iter_inpaint_image(MockDenoiser(seed=2), ids, mask, region,
                                    generator=torch.Generator().manual_seed(3), **kw))
    for s in steps:
        assert torch.equal(s.tokens[~region], codes[~region]) and s.committed[~region].all()
    out = inpaint_image(MockDenoiser(seed=2), ids, mask, region, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(out, steps[-1].tokens) and ((out >= 0) & (out < K)).all()


def test_inpainting_schedule_counts_the_region_only():
    ids, mask, _ = image_batch()
    region = torch.zeros(2, N, dtype=torch.bool)
    region[:, :4] = True
    steps = list(iter_inpaint_image(MockDenoiser(), ids, mask, region, **t2i_kwargs(timesteps=3)))
    # cosine over the 4 unknown codes: floor(4 cos(pi/6)) = 3 re-masked after the first step
    assert (~steps[0].committed).sum(dim=1).tolist() == [3, 3]


def test_extend_grid_places_the_old_codes():
    ids, mask, codes = image_batch()
    new_ids, new_mask, region = extend_grid(ids, mask, grid=(3, 3), pad=(0, 1, 1, 0), mask_id=MASK)
    text = ids.shape[1] - N - 1
    assert new_ids.shape == (2, text + 16 + 1) and new_mask.shape == new_ids.shape
    assert torch.equal(new_ids[:, :text], ids[:, :text]) and torch.equal(new_ids[:, -1], ids[:, -1])
    grid = new_ids[:, text:-1].view(2, 4, 4)
    assert torch.equal(grid[:, :3, 1:], codes.view(2, 3, 3) + OFFSET)
    assert (grid[:, 3] == MASK).all() and (grid[:, :, 0] == MASK).all()
    assert region.view(2, 4, 4)[:, 3].all() and not region.view(2, 4, 4)[:, :3, 1:].any()
    assert new_mask[:, text:].all()


def test_extrapolation_generates_new_columns_and_keeps_the_image():
    ids, mask, codes = image_batch()
    uncond_ids, uncond_mask = layout([[], []])
    kw = t2i_kwargs(guidance_scale=1.0, uncond_input_ids=uncond_ids, uncond_attention_mask=uncond_mask)
    kw.pop("num_image_tokens")
    out = extrapolate_image(MockDenoiser(), ids, mask, grid=(3, 3), pad=(0, 0, 0, 2),
                            generator=torch.Generator().manual_seed(0), **kw)
    assert out.shape == (2, 15) and ((out >= 0) & (out < K)).all()
    assert torch.equal(out.view(2, 3, 5)[:, :, :3], codes.view(2, 3, 3))
    with pytest.raises(ValueError, match="num_image_tokens"):
        extrapolate_image(MockDenoiser(), ids, mask, grid=(3, 3), pad=(0, 0, 0, 2), **t2i_kwargs())
