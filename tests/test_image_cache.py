"""The MaskGIT loop's key/value cache (`ImageSampling.cache`, `sampling.image.ImageStepCache`): exact when
refreshed every step (guidance included), what each mode recomputes, logit reuse, rows independent, and
complete images that keep given codes."""

from __future__ import annotations

import pytest
import torch

from conftest import MASK, MOCK_VOCAB, t2i_layout
from mmada.model import MMaDAModel, ModelConfig
from mmada.sampling import ImageSampling, iter_sample_t2i
from mmada.sampling.denoisers import ClassifierFreeGuidance, replace_prefix
from mmada.sampling.image import ImageStepCache
from test_sampling_image import N, layout

IMAGE = slice(7, 7 + N)  # layout(): 6 text positions, <|soi|>, N image positions, <|eoi|>


def tiny_model() -> MMaDAModel:
    torch.manual_seed(0)
    model = MMaDAModel(ModelConfig.tiny()).eval()
    model.reset_parameters(std=0.3)
    return model


def states() -> list[torch.Tensor]:
    """Three successive (2, 17) inputs of a MaskGIT run: all masked, then 4 and 7 codes kept per row."""
    ids, _ = layout([[5, 6], [7, 8, 9]])
    g = torch.Generator().manual_seed(2)
    out = [ids]
    for kept in (4, 7):
        nxt = ids.clone()
        for row in range(2):
            where = torch.randperm(N, generator=g)[:kept] + IMAGE.start
            nxt[row, where] = torch.randint(22, 38, (kept,), generator=g)
        out.append(nxt)
    return out


def run(cache: ImageStepCache, mask: torch.Tensor) -> list[torch.Tensor]:
    return [cache(ids, mask, positions=IMAGE).clone() for ids in states()]


@pytest.mark.parametrize("settled,reuse", [(False, 0.0), (True, 0.0), (True, 0.5)])
def test_refreshed_every_step_the_cache_gives_the_exact_logits(settled, reuse):
    model, (_, mask) = tiny_model(), layout([[5, 6], [7, 8, 9]])
    cached = run(ImageStepCache(model, IMAGE, MASK, settled=settled, reuse=reuse, refresh=1), mask)
    for ids, logits in zip(states(), cached):
        torch.testing.assert_close(logits, model(ids, mask, positions=IMAGE), rtol=1e-5, atol=1e-5)


def test_guidance_under_a_cache_refreshed_every_step_equals_guidance_without():
    model, (_, mask) = tiny_model(), layout([[5, 6], [7, 8, 9]])
    null, null_mask = layout([[], []])
    uncond = replace_prefix(null[:, :6], null_mask[:, :6])
    plain = ClassifierFreeGuidance(model, 2.0, uncond)
    cached = ClassifierFreeGuidance(ImageStepCache(model, IMAGE, MASK, settled=True, reuse=0.0, refresh=1), 2.0, uncond)
    for ids in states():
        torch.testing.assert_close(cached(ids, mask, positions=IMAGE), plain(ids, mask, positions=IMAGE),
                                   rtol=1e-5, atol=1e-5)


def spy_model():
    model, calls = tiny_model(), []

    def spy(*args, **kw):
        calls.append(kw.get("fresh"))
        return model(*args, **kw)

    spy.new_cache = model.new_cache  # type: ignore[attr-defined]
    return spy, calls


def test_what_each_mode_recomputes():
    (_, mask), ids = layout([[5, 6], [7, 8, 9]]), states()
    spy, calls = spy_model()
    run(ImageStepCache(spy, IMAGE, MASK, settled=False, reuse=0.0, refresh=0), mask)
    assert calls == [None, slice(IMAGE.start, 17), slice(IMAGE.start, 17)]  # the text prefix is encoded once
    spy, calls = spy_model()
    run(ImageStepCache(spy, IMAGE, MASK, settled=True, reuse=0.0, refresh=0), mask)
    assert calls[0] is None
    for fresh, now, before in zip(calls[1:], ids[1:], ids[:-1]):  # undecided now or at the previous call
        assert torch.equal(fresh[:, IMAGE], (now[:, IMAGE] == MASK) | (before[:, IMAGE] == MASK))
        assert not fresh[:, :IMAGE.start].any() and not fresh[:, IMAGE.stop:].any()
    spy, calls = spy_model()
    run(ImageStepCache(spy, IMAGE, MASK, settled=True, reuse=0.0, refresh=2), mask)
    assert calls[0] is None and calls[2] is None  # every second call is the exact forward


def test_logit_reuse_recomputes_the_least_sure_share_and_hands_back_the_rest():
    model, (_, mask) = tiny_model(), layout([[5, 6], [7, 8, 9]])
    first, second, _ = states()
    cache = ImageStepCache(model, IMAGE, MASK, settled=True, reuse=0.5, refresh=0)
    old = cache(first, mask, positions=IMAGE).clone()
    new = cache(second, mask, positions=IMAGE)
    undecided = second[:, IMAGE] == MASK  # 5 per row: ceil(2.5) = 3 recomputed, the 2 surest reused
    changed = (new != old).any(dim=-1)
    for row in range(2):
        surest = old[row].amax(dim=-1).masked_fill(~undecided[row], float("-inf")).topk(2).indices
        assert not changed[row, surest].any()
        assert int((changed[row] & undecided[row]).sum()) == 3


@pytest.mark.parametrize("settled,reuse", [(False, 0.0), (True, 0.0), (True, 0.5)])
def test_rows_of_a_batch_get_what_they_get_alone(settled, reuse):
    model, (_, mask) = tiny_model(), layout([[5, 6], [7, 8, 9]])
    together = run(ImageStepCache(model, IMAGE, MASK, settled=settled, reuse=reuse, refresh=0), mask)
    for row in range(2):
        alone_cache = ImageStepCache(model, IMAGE, MASK, settled=settled, reuse=reuse, refresh=0)
        alone = [alone_cache(ids[row:row + 1], mask[row:row + 1], positions=IMAGE).clone() for ids in states()]
        for both, one in zip(together, alone):
            torch.testing.assert_close(both[row], one[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cache,reuse,refresh", [("prompt", 0.0, 0), ("settled", 0.0, 0), ("settled", 0.9, 5)])
def test_cached_sampling_fills_the_image_and_keeps_given_codes(cache, reuse, refresh):
    model = tiny_model()
    ids, mask = layout([[5, 6], [7, 8, 9]])
    ids[0, IMAGE.start + 2], ids[1, IMAGE.start + 5] = 30, 25  # given codes (inpainting)
    settings = ImageSampling(timesteps=5, guidance_scale=1.5, cache=cache, cache_reuse=reuse, cache_refresh=refresh)
    null, null_mask = layout([[], []])
    steps = list(iter_sample_t2i(model, t2i_layout(ids, mask, N), settings, MOCK_VOCAB,
                                 uncond=t2i_layout(null, null_mask, N), generator=torch.Generator().manual_seed(0)))
    codes = steps[-1].tokens
    assert len(steps) == 5 and codes.shape == (2, N) and bool(((codes >= 0) & (codes < 16)).all())
    assert int(codes[0, 2]) == 30 - 22 and int(codes[1, 5]) == 25 - 22


def test_the_image_cache_serves_the_image_span_only():
    model, (ids, mask) = tiny_model(), layout([[5, 6], [7, 8, 9]])
    with pytest.raises(ValueError, match="image span"):
        ImageStepCache(model, IMAGE, MASK, settled=True, reuse=0.0, refresh=0)(ids, mask, positions=slice(0, 4))


@pytest.mark.parametrize("kw,message", [
    (dict(cache="full"), "`cache`"),
    (dict(cache_refresh=2), "no effect with cache='none'"),
    (dict(cache="prompt", cache_refresh=-1), "`cache_refresh`"),
    (dict(cache="prompt", cache_reuse=0.5), "needs cache='settled'"),
    (dict(cache="settled", cache_reuse=1.0), r"\[0, 1\)"),
    (dict(cache="settled", cache_reuse=float("nan")), "finite"),
])
def test_bad_image_cache_settings_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        ImageSampling(**kw)
