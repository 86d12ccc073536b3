"""The key/value cache (`mmada.model.cache`, `TextSampling.cache`): the model's cached forward, and
the text block loop with a prefix / dual cache against the exact loop."""

from __future__ import annotations

import pytest
import torch

from conftest import MockDenoiser
from mmada.model import MMaDAModel, ModelConfig
from mmada.sampling import TextSampling, iter_sample_text, sample_text
from mmada.sampling.denoisers import BlockCachedDenoiser

MASK_ID = 63  # ModelConfig.tiny().mask_token_id


def tiny_model(seed: int = 0) -> MMaDAModel:
    torch.manual_seed(seed)
    model = MMaDAModel(ModelConfig.tiny()).eval()  # GQA: 4 query heads, 2 kv heads
    model.reset_parameters(std=0.3)  # sharper than the default init: decisions depend on the context
    return model


def ragged_prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Three left-padded prompts of 9, 5 and 7 tokens: ids (3, 9), mask (3, 9)."""
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 60, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, :4], mask[2, :2] = 0, 0
    return ids.masked_fill(mask == 0, 0), mask


def settings(**kw) -> TextSampling:
    base = dict(gen_length=16, block_length=4, steps=8, temperature=0.0, early_stop=False)
    return TextSampling(**{**base, **kw})


# ---- the model --------------------------------------------------------------------------------------

def test_recording_forward_is_the_exact_forward():
    model, (ids, mask) = tiny_model(), ragged_prompts()
    cache = model.new_cache()
    assert torch.equal(model(ids, mask, cache=cache), model(ids, mask))
    assert cache.shape == (3, 9) and len(cache.keys) == model.config.n_layers
    assert cache.keys[0].shape == (3, 2, 9, model.config.head_dim)  # kv heads, before repetition


@pytest.mark.parametrize("fresh", [slice(5, 9), slice(3, 6), slice(0, 9), slice(8, 9)])
def test_cached_forward_of_a_span_equals_its_slice_of_the_full_forward(fresh):
    model, (ids, mask) = tiny_model(), ragged_prompts()
    cache = model.new_cache()
    full = model(ids, mask, cache=cache)  # (B, L, V)
    torch.testing.assert_close(model(ids, mask, cache=cache, fresh=fresh), full[:, fresh], rtol=1e-5, atol=1e-5)
    part = slice(fresh.start, max(fresh.start + 1, fresh.stop - 1))  # a sub-slice of the span
    torch.testing.assert_close(model(ids, mask, cache=cache, fresh=fresh, positions=part), full[:, part],
                               rtol=1e-5, atol=1e-5)
    bools = torch.zeros(ids.shape, dtype=torch.bool)
    bools[0, fresh.start] = bools[2, fresh.stop - 1] = True
    torch.testing.assert_close(model(ids, mask, cache=cache, fresh=fresh, positions=bools), full[bools],
                               rtol=1e-5, atol=1e-5)


def test_cached_forward_uses_the_cached_keys_not_the_current_tokens():
    """Tokens outside the fresh span are seen only through the cache: changing them changes nothing."""
    model, (ids, mask) = tiny_model(), ragged_prompts()
    cache = model.new_cache()
    model(ids, mask, cache=cache)
    changed = ids.clone()
    changed[:, 2] = (changed[:, 2] + 1) % 60
    fresh = slice(5, 9)
    assert torch.equal(model(ids, mask, cache=cache, fresh=fresh), model(changed, mask, cache=cache, fresh=fresh))
    assert not torch.allclose(model(changed, mask)[:, fresh], model(ids, mask)[:, fresh])


def test_cached_forward_refuses_bad_arguments():
    model, (ids, mask) = tiny_model(), ragged_prompts()
    cache = model.new_cache()
    with pytest.raises(ValueError, match="needs a `cache` recorded"):
        model(ids, mask, cache=cache, fresh=slice(2, 4))
    model(ids, mask, cache=cache)
    with pytest.raises(ValueError, match="recorded for"):
        model(ids[:2], mask[:2], cache=cache, fresh=slice(2, 4))
    with pytest.raises(ValueError, match="0 <= start < stop"):
        model(ids, mask, cache=cache, fresh=slice(4, 4))
    with pytest.raises(ValueError, match="inside fresh"):
        model(ids, mask, cache=cache, fresh=slice(4, 6), positions=slice(3, 6))
    with pytest.raises(ValueError, match="padding='hide'"):
        model(ids, mask, cache=cache, padding="soft")


# ---- the sampler ------------------------------------------------------------------------------------

@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("temperature,cfg_scale", [(0.0, 0.0), (0.8, 0.0), (0.0, 1.5), (0.8, 1.5)])
def test_cache_refreshed_every_step_equals_exact_sampling(cache, temperature, cfg_scale):
    model, (ids, mask) = tiny_model(), ragged_prompts()
    exact_cfg = settings(temperature=temperature, cfg_scale=cfg_scale)
    cached_cfg = settings(temperature=temperature, cfg_scale=cfg_scale, cache=cache, cache_refresh=1)
    runs = [sample_text(model, ids, s, mask_id=MASK_ID, attention_mask=mask,
                        generator=torch.Generator().manual_seed(3)) for s in (exact_cfg, cached_cfg)]
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("threshold", [None, 0.3])
def test_cache_refreshed_at_block_starts_only(cache, threshold):
    """One exact forward per block, the other calls recompute the block (dual) or block + suffix
    (prefix); the result is complete and keeps the prompt."""
    model, (ids, mask) = tiny_model(), ragged_prompts()
    calls: list[object] = []

    def spy(*args, **kw):
        calls.append(kw.get("fresh"))
        return model(*args, **kw)

    spy.new_cache = model.new_cache  # type: ignore[attr-defined]
    config = settings(cache=cache, threshold=threshold)
    out = sample_text(spy, ids, config, mask_id=MASK_ID, attention_mask=mask)
    assert not (out == MASK_ID).any() and torch.equal(out[:, :9], ids)
    assert calls[0] is None and calls.count(None) == 4  # 4 blocks of 4
    blocks = [slice(start, start + 4) for start in range(9, 25, 4)]
    for fresh in filter(None, calls):
        block = next(b for b in blocks if b.start == fresh.start)  # type: ignore[union-attr]
        assert fresh.stop == (block.stop if cache == "dual" else 25)  # type: ignore[union-attr]


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("cache_refresh", [0, 2])
def test_cache_refresh_every_k_steps(cache, cache_refresh):
    model, (ids, mask) = tiny_model(), ragged_prompts()
    wrapped = BlockCachedDenoiser(model, cache, cache_refresh)
    wrapped.start_block(slice(4, 7))
    full = model(ids, mask)
    for call in range(4):
        logits = wrapped(ids, mask, positions=slice(4, 7))
        torch.testing.assert_close(logits, full[:, 4:7], rtol=1e-5, atol=1e-5)
        assert wrapped.refreshes == 1 + (call // 2 if cache_refresh == 2 else 0)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_batched_ragged_cached_sampling_equals_rows_alone(cache, cfg_scale):
    model, (ids, mask) = tiny_model(), ragged_prompts()
    config = settings(cache=cache, cfg_scale=cfg_scale)
    together = sample_text(model, ids, config, mask_id=MASK_ID, attention_mask=mask)
    for i in range(3):
        alone = sample_text(model, ids[i:i + 1], config, mask_id=MASK_ID, attention_mask=mask[i:i + 1])
        assert torch.equal(together[i], alone[0])


def test_bad_cache_settings_are_refused():
    with pytest.raises(ValueError, match="`cache`"):
        settings(cache="full")
    with pytest.raises(ValueError, match="`cache_refresh`"):
        settings(cache="dual", cache_refresh=-1)
    with pytest.raises(ValueError, match="`cache_refresh`"):
        settings(cache="dual", cache_refresh=True)
    with pytest.raises(ValueError, match="no effect with cache='none'"):
        settings(cache_refresh=2)
    with pytest.raises(ValueError, match="MockDenoiser has none"):
        iter_sample_text(MockDenoiser(), torch.zeros(1, 3, dtype=torch.long), settings(cache="prefix"), mask_id=39)
