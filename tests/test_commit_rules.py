"""Commit rules of the text block loop (`sampling.commit`): hand-computed cases of each rule, the
invariants every rule keeps inside the sampler, and refused settings."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import MASK, MockDenoiser
from mmada.sampling import TextSampling, iter_sample_text, sample_text
from mmada.sampling.commit import (
    early_commit,
    select_by_factor,
    select_entropy_bounded,
    select_quota,
    step_selector,
    token_entropy,
)

NO = float("-inf")


def probs_logits(*rows: list[float]) -> torch.Tensor:
    """Logits (1, W, 3) whose softmax puts p on token 0 and splits 1 - p over the others."""
    out = []
    for p in rows:
        q = (1 - p) / 2
        out.append([math.log(p), math.log(q), math.log(q)])
    return torch.tensor([out])


def test_factor_rule_commits_the_prefix_that_passes():
    # sorted p: 0.99, 0.95, 0.6, 0.3 -> (n+1)(1-p_n): 0.02, 0.15, 1.6, 3.5 -> n = 2 below f = 1
    scores = torch.tensor([[0.6, 0.99, NO, 0.3, 0.95]])
    chosen = select_by_factor(scores, torch.zeros(1, 5, 3), factor=1.0)
    assert chosen.tolist() == [[False, True, False, False, True]]
    # a large factor takes every candidate, never the -inf one; a tiny one still takes the best
    assert select_by_factor(scores, torch.zeros(1, 5, 3), factor=100.0).tolist() == [[True, True, False, True, True]]
    assert select_by_factor(scores, torch.zeros(1, 5, 3), factor=1e-6).tolist() == [[False, True, False, False, False]]


def test_entropy_bounded_rule_sums_entropies_without_the_largest():
    logits = probs_logits(0.999, 0.5, 0.98, 0.9)  # entropies rise as p falls
    h = token_entropy(logits)[0]
    order = h.argsort().tolist()
    assert order == [0, 2, 3, 1]
    scores = torch.tensor([[0.999, 0.5, 0.98, 0.9]])
    # bound between h0 + h2 and h0 + h2 + h3: the prefix {0, 2, 3} passes (sum minus its max = h0 + h2)
    bound = float(h[0] + h[2]) + 1e-6
    assert select_entropy_bounded(scores, logits, bound=bound).tolist() == [[True, False, True, True]]
    assert select_entropy_bounded(scores, logits, bound=float(h[0]) + 1e-6).tolist() == [[True, False, True, False]]
    assert select_entropy_bounded(scores, logits, bound=0.0).tolist() == [[True, False, False, False]]
    masked = scores.clone()
    masked[0, 0] = NO  # not a candidate: never chosen, whatever its entropy
    assert not select_entropy_bounded(masked, logits, bound=100.0)[0, 0]


def test_early_commit_takes_a_settled_block_whole():
    logits = torch.tensor([[[9.0, 0.0, 0.0], [0.0, 8.0, 1.0], [0.0, 0.0, 0.0]],
                           [[1.0, 0.0, 0.0], [0.0, 8.0, 1.0], [5.0, 0.0, 0.0]]])
    scores = torch.tensor([[0.9, 0.8, NO], [0.4, 0.8, 0.7]])
    base = torch.tensor([[True, False, False], [False, True, False]])
    out = early_commit(scores, logits, base, margin=5.0)
    # row 0: margins 9 and 7 (mean 8 >= 5): both candidates; row 1: mean (1 + 7 + 5) / 3 < 5: unchanged
    assert out.tolist() == [[True, True, False], [False, True, False]]


def test_quota_never_exceeds_the_candidates():
    scores = torch.tensor([[0.5, NO, 0.7], [NO, NO, 0.1]])
    chosen = select_quota(scores, torch.zeros(2, 3, 1), quota=torch.tensor([3, 2]))
    assert chosen.tolist() == [[True, False, True], [False, False, True]]


RULES = [dict(threshold=0.9), dict(factor=1.0), dict(entropy_bound=0.3), dict(threshold=0.5, early_commit=1.0),
         dict(early_commit=0.5), dict(factor=2.0, cache="delayed"), dict(entropy_bound=0.0, cache="dual")]


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_commits_at_least_one_token_per_step_and_leaves_no_mask(rule):
    model = MockDenoiser(sharpness=3)
    settings = TextSampling(gen_length=12, block_length=4, steps=6, temperature=0.0, early_stop=False,
                            **{k: v for k, v in rule.items() if k != "cache"})
    prompt = torch.randint(0, 30, (2, 5), generator=torch.Generator().manual_seed(1))
    before = torch.cat([prompt, torch.full((2, 12), MASK)], dim=1)
    steps = list(iter_sample_text(model, prompt, settings, mask_id=MASK))
    for step in steps:
        block = slice(5 + 4 * step.block, 9 + 4 * step.block)
        open_rows = (before[:, block] == MASK).any(dim=1)
        assert bool(step.committed[open_rows].any(dim=1).all())  # >= 1 commit in every unfinished row
        assert not (step.committed & (before != MASK)).any()  # only masked positions are committed
        before = step.tokens
    final = steps[-1].tokens
    assert not (final == MASK).any() and torch.equal(final[:, :5], prompt)
    if settings.adaptive:  # never more steps than tokens
        assert len(steps) <= 12


@pytest.mark.parametrize("rule", RULES)
def test_rules_with_the_real_model_and_cache_batch_like_rows_alone(rule):
    from test_kv_cache import MASK_ID, ragged_prompts, tiny_model

    model, (ids, mask) = tiny_model(), ragged_prompts()
    settings = TextSampling(gen_length=16, block_length=4, steps=8, temperature=0.0, early_stop=False, **rule)
    together = sample_text(model, ids, settings, mask_id=MASK_ID, attention_mask=mask)
    assert not (together == MASK_ID).any()
    for i in range(3):
        alone = sample_text(model, ids[i:i + 1], settings, mask_id=MASK_ID, attention_mask=mask[i:i + 1])
        assert torch.equal(together[i], alone[0])


def test_step_selector_without_rule_needs_a_quota():
    with pytest.raises(ValueError, match="quota"):
        step_selector(TextSampling())


@pytest.mark.parametrize("bad,match", [
    (dict(threshold=0.9, factor=1.0), "one adaptive commit rule"),
    (dict(factor=0.0), "`factor` must be > 0"),
    (dict(factor=float("nan")), "finite"),
    (dict(entropy_bound=-1.0), "finite number >= 0"),
    (dict(early_commit=0.0), "`early_commit` must be > 0"),
    (dict(threshold=1.5), r"\(0, 1\]"),
    (dict(cache_keep="prompt"), "no effect with cache='none'"),
    (dict(cache="dual", cache_keep="blocks"), "`cache_keep`"),
])
def test_bad_commit_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        TextSampling(**bad)
