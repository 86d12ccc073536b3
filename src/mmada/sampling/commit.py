"""Commit rules of the text block loop: which of a step's proposals become final.

Each rule is a small pure function of the step's candidate scores (B, W) (-inf = not a candidate:
an unmasked position, or one outside the block) and, where it needs more than the confidence, the
step's logits (B, W, V). The loop (`sampling.text`) picks one per step with `step_selector`:

- fixed quota, the official schedule: `common.select_topk_per_row` with the step's quota;
- `common.select_above_threshold`: every proposal with p >= threshold (Fast-dLLM, arXiv 2505.22618
  §3.3, NVlabs/Fast-dLLM llada/generate.py `get_transfer_index`);
- `select_by_factor`: the n most confident, n the largest with (n + 1)(1 - p_n) < f (Fast-dLLM §3.3,
  the factor-based rule);
- `select_entropy_bounded`: the lowest-entropy proposals while sum(H) - max(H) <= gamma
  (EB-sampler, arXiv 2505.24857 §3);
- `early_commit`: every remaining candidate of a row whose mean top-1 / top-2 logit margin reaches
  a bound, on top of any of the above (Prophet, arXiv 2508.19982, which commits the whole answer;
  here the block).

Every rule commits at least one candidate per row that has one, and never a non-candidate.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from mmada.sampling.common import select_above_threshold, select_topk_per_row
from mmada.sampling.config import CommitRule

Selector = Callable[[Tensor, Tensor], Tensor]
"""One step's commit: (B, W) scores (-inf = not a candidate), (B, W, V) logits -> (B, W) bool."""


def select_quota(scores: Tensor, logits: Tensor, *, quota: Tensor) -> Tensor:
    """The official fixed quota: the `quota[b]` best candidates of row b (fewer if it has fewer)."""
    del logits
    available = torch.isfinite(scores).sum(dim=-1)
    return select_topk_per_row(scores, torch.minimum(quota, available))


def select_threshold(scores: Tensor, logits: Tensor, *, threshold: float) -> Tensor:
    del logits
    return select_above_threshold(scores, threshold)


def select_by_factor(scores: Tensor, logits: Tensor, *, factor: float) -> Tensor:
    """Fast-dLLM's factor rule: with the candidates' probabilities sorted p_1 >= p_2 >= ..., commit
    the top n for the largest n with (n + 1)(1 - p_n) < factor, at least one.

    The left side grows with n (both factors do), so the n that pass form a prefix and n = their count.
    """
    del logits
    ranked = scores.sort(dim=-1, descending=True).values  # (B, W), -inf last
    n = torch.arange(1, scores.shape[-1] + 1, device=scores.device)
    passes = torch.isfinite(ranked) & ((n + 1) * (1 - ranked) < factor)
    return _at_least_one(scores, passes.sum(dim=-1))


def select_entropy_bounded(scores: Tensor, logits: Tensor, *, bound: float) -> Tensor:
    """EB-sampler: order the candidates by entropy H (lowest first) and commit the longest prefix whose
    sum(H) - max(H) <= bound nats, at least one. Sorted ascending, max(H) of a prefix is its last
    entry and the left side only grows, so the passing prefixes are those up to a count."""
    entropy = token_entropy(logits).masked_fill(~torch.isfinite(scores), float("inf"))  # (B, W)
    ranked = entropy.sort(dim=-1).values
    finite = torch.isfinite(ranked)
    total = torch.where(finite, ranked, 0).cumsum(dim=-1)
    passes = finite & (total - torch.where(finite, ranked, 0) <= bound)
    return _at_least_one(-entropy, passes.sum(dim=-1))


def early_commit(scores: Tensor, logits: Tensor, selected: Tensor, *, margin: float) -> Tensor:
    """`selected`, plus every candidate of the rows whose mean top-1 - top-2 logit margin over their
    candidates reaches `margin` (the model has settled the rest of the block)."""
    candidates = torch.isfinite(scores)
    top2 = logits.float().topk(2, dim=-1).values  # (B, W, 2)
    gap = (top2[..., 0] - top2[..., 1]).masked_fill(~candidates, 0)
    count = candidates.sum(dim=-1)
    settled = (count > 0) & (gap.sum(dim=-1) >= margin * count)  # mean gap >= margin, no division
    return selected | (candidates & settled[:, None])


def token_entropy(logits: Tensor) -> Tensor:
    """Entropy in nats of softmax(logits) over the last dimension, computed in float32: (..., V) -> (...)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def step_selector(rule: CommitRule, quota: Tensor | None = None) -> Selector:
    """The commit of one step under `rule`: its adaptive rule, or the fixed `quota` (B,) of the step."""
    select: Selector
    if rule.threshold is not None:
        select = partial(select_threshold, threshold=rule.threshold)
    elif rule.factor is not None:
        select = partial(select_by_factor, factor=rule.factor)
    elif rule.entropy_bound is not None:
        select = partial(select_entropy_bounded, bound=rule.entropy_bound)
    elif quota is not None:
        select = partial(select_quota, quota=quota)
    else:
        raise ValueError("a fixed-quota step needs its quota")
    if rule.early_commit is None:
        return select
    bound, base = rule.early_commit, select
    return lambda scores, logits: early_commit(scores, logits, base(scores, logits), margin=bound)


def _at_least_one(scores: Tensor, count: Tensor) -> Tensor:
    """The `count[b]` best of row b by `scores` (raised to 1 where the row has a candidate)."""
    has_candidate = torch.isfinite(scores).any(dim=-1)
    return select_topk_per_row(scores, torch.where(has_candidate, count.clamp(min=1), 0))
