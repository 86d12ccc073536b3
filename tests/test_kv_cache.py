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


def _fresh_calls(config: TextSampling) -> tuple[list[object], torch.Tensor]:
    """Sample the ragged prompts with `config`; the `fresh` argument of every model call, and the output."""
    model, (ids, mask) = tiny_model(), ragged_prompts()
    calls: list[object] = []

    def spy(*args, **kw):
        calls.append(kw.get("fresh"))
        return model(*args, **kw)

    spy.new_cache = model.new_cache  # type: ignore[attr-defined]
    return calls, sample_text(spy, ids, config, mask_id=MASK_ID, attention_mask=mask)


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
    ids, _ = ragged_prompts()
    calls, out = _fresh_calls(settings(cache=cache, threshold=threshold))
    assert not (out == MASK_ID).any() and torch.equal(out[:, :9], ids)
    assert calls[0] is None and calls.count(None) == 4  # 4 blocks of 4
    blocks = [slice(start, start + 4) for start in range(9, 25, 4)]
    for fresh in calls[1:]:
        if isinstance(fresh, torch.Tensor):  # some rows finished the block: only the open ones recompute
            columns = fresh.any(dim=0).nonzero().squeeze(1)
            assert not bool(fresh.any(dim=1).all())  # a finished row asks for nothing
            fresh = slice(int(columns[0]), int(columns[-1]) + 1)
            assert len(columns) == fresh.stop - fresh.start
        if fresh is None:
            continue
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


# ---- per-row fresh masks, delayed caching, what a refresh keeps ------------------------------------

def test_bool_fresh_computes_the_union_and_rows_keep_their_own_cache():
    model, (ids, mask) = tiny_model(), ragged_prompts()
    cache = model.new_cache()
    full = model(ids, mask, cache=cache).detach()
    fresh = torch.zeros(ids.shape, dtype=torch.bool)
    fresh[0, 6], fresh[1, 7:9], fresh[2, 6] = True, True, True
    out = model(ids, mask, cache=cache, fresh=fresh)  # columns 6, 7, 8
    torch.testing.assert_close(out, full[:, 6:9], rtol=1e-5, atol=1e-5)
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 60
    together = model(changed, mask, cache=cache, fresh=fresh)
    for i in range(3):
        alone_cache = model.new_cache()
        model(ids[i:i + 1], mask[i:i + 1], cache=alone_cache)
        alone = model(changed[i:i + 1], mask[i:i + 1], cache=alone_cache, fresh=fresh[i:i + 1])
        columns = fresh[i].nonzero().squeeze(1) - 6
        torch.testing.assert_close(together[i, columns], alone[0], rtol=1e-5, atol=1e-5)
    old = model.new_cache()
    model(ids, mask, cache=old)
    # written back only where a row asked: rows 0 and 2 keep column 7's old keys, row 1 has the new token's
    assert [torch.equal(cache.keys[0][i, :, 7], old.keys[0][i, :, 7]) for i in range(3)] == [True, False, True]
    with pytest.raises(ValueError, match="bool mask"):
        model(ids, mask, cache=cache, fresh=fresh.long())
    with pytest.raises(ValueError, match="at least one"):
        model(ids, mask, cache=cache, fresh=torch.zeros_like(fresh))
    with pytest.raises(ValueError, match="`positions` must be None"):
        model(ids, mask, cache=cache, fresh=fresh, positions=slice(6, 9))


@pytest.mark.parametrize("keep", ["none", "prompt", "finished", "all"])
@pytest.mark.parametrize("cache", ["dual", "delayed"])
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_every_cache_mode_batches_like_rows_alone(keep, cache, cfg_scale):
    model, (ids, mask) = tiny_model(), ragged_prompts()
    config = settings(cache=cache, cache_keep=keep, cfg_scale=cfg_scale, threshold=0.3)
    together = sample_text(model, ids, config, mask_id=MASK_ID, attention_mask=mask)
    assert not (together == MASK_ID).any()
    for i in range(3):
        alone = sample_text(model, ids[i:i + 1], config, mask_id=MASK_ID, attention_mask=mask[i:i + 1])
        assert torch.equal(together[i], alone[0])


@pytest.mark.parametrize("temperature,cfg_scale", [(0.0, 0.0), (0.8, 1.5)])
def test_delayed_cache_refreshed_every_step_equals_exact_sampling(temperature, cfg_scale):
    model, (ids, mask) = tiny_model(), ragged_prompts()
    runs = [sample_text(model, ids, settings(temperature=temperature, cfg_scale=cfg_scale, **kw), mask_id=MASK_ID,
                        attention_mask=mask, generator=torch.Generator().manual_seed(3))
            for kw in ({}, dict(cache="delayed", cache_refresh=1))]
    assert torch.equal(runs[0], runs[1])




@pytest.mark.parametrize("keep,first_refresh_span", [("prompt", slice(9, 25)), ("finished", slice(9, 25)),
                                                     ("all", slice(13, 17))])
def test_what_a_refresh_keeps(keep, first_refresh_span):
    """Blocks of 4 from position 9, 2 steps each: call 0 is the one full forward; call 2 refreshes for
    the second block (13..16): from the prompt's end, from the finished block's start, or the block only."""
    calls, _ = _fresh_calls(settings(cache="dual", cache_keep=keep))
    assert calls[0] is None and calls.count(None) == 1
    assert calls[1] == slice(9, 13) and calls[2] == first_refresh_span
    later = calls[6]  # the fourth block's refresh
    assert later == {"prompt": slice(9, 25), "finished": slice(17, 25), "all": slice(21, 25)}[keep]


def test_delayed_cache_recomputes_only_undecided_and_just_committed_positions():
    calls, _ = _fresh_calls(settings(cache="delayed", steps=16))  # 4 steps per block of 4: 1 commit per step
    assert calls[0] is None
    for fresh in calls[1:4]:  # the first block's later steps: 3, 2, 1 masked + the one just committed
        assert isinstance(fresh, torch.Tensor) and fresh.dtype == torch.bool
    counts = [f.sum(dim=1).tolist() for f in calls[1:4]]  # type: ignore[union-attr]  per row
    assert counts == [[4] * 3, [3] * 3, [2] * 3]
    assert not calls[1][:, :9].any() and not calls[1][:, 13:].any()  # type: ignore[index]


@pytest.mark.parametrize("cache", ["dual", "delayed"])
def test_drift_test_refreshes_more_as_its_tolerance_shrinks(cache):
    """4 blocks of 4 steps. Tolerance 0 refreshes at the call after any drift (calls 0 and 2 of each
    block); a huge one never adds a refresh to the block starts. Refreshes are the full forwards here."""
    counts = {tol: _fresh_calls(settings(cache=cache, cache_drift=tol, steps=16))[0].count(None)
              for tol in (0.0, 0.05, 1e9)}
    assert counts[1e9] == 4 and counts[0.0] == 8
    assert counts[0.0] >= counts[0.05] >= counts[1e9]


def test_the_cache_measures_key_drift_only_where_watched():
    model, (ids, mask) = tiny_model(), ragged_prompts()
    cache = model.new_cache()
    model(ids, mask, cache=cache)
    changed = ids.clone()
    changed[:, 3] = (changed[:, 3] + 1) % 60  # context moves for every position
    model(changed, mask, cache=cache, fresh=slice(6, 9))
    assert cache.drift == 0.0  # nothing watched
    cache.watch = torch.zeros(ids.shape, dtype=torch.bool)
    cache.watch[:, 7] = True
    model(changed, mask, cache=cache, fresh=slice(6, 9))
    assert cache.drift == 0.0 and cache.watch is None  # same input as the last write: no drift
    model(ids, mask, cache=cache)
    cache.watch = torch.ones(ids.shape, dtype=torch.bool)
    model(changed, mask, cache=cache, fresh=slice(6, 9))
    assert cache.drift > 0.0
