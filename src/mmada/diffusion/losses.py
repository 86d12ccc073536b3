"""Masked-token losses: one objective, normalised per modality the way the official stages do.

MMaDA trains every modality by predicting masked tokens (§2.1, Eq. 1). In code each modality weights
and normalises differently (Gen-Verse/MMaDA models/modeling_mmada.py `forward_process`, MMADA.md §2.1):

* text / understanding (LLaDA): cross-entropy at masked positions divided by p_mask (the 1/t weight),
  then either summed over the batch and divided by B * L ("tokens", stages 1.1/1.2 pretraining text)
  or divided per row by its answer length and averaged over rows ("answer_length", chat, CoT and mmu);
* images (MaskGIT): plain mean cross-entropy over the masked image tokens, no 1/t weight. The official
  mean also covers the visible `<|soi|>`/`<|eoi|>` positions (their labels are real ids) — a quirk
  the callers reproduce by including those positions in `positions` (see `objectives`).

The logits passed in are only those at the positions the loss reads (`model(..., positions=mask)`):
the official code projects every position through the 134,656-wide head and then throws most away.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Normalize = Literal["tokens", "answer_length"]


@dataclass(frozen=True)
class LossOutput:
    """A training loss with its parts.

    Attributes:
        total: scalar tensor to back-propagate (the coefficient-weighted sum of `per_task`).
        per_task: each task's own loss (scalar tensors, before coefficients).
        num_tokens: number of positions the losses read (for tokens/s and logging).
    """

    total: Tensor
    per_task: dict[str, Tensor] = field(default_factory=dict)
    num_tokens: int = 0


def diffusion_text_loss(
    logits: Tensor,
    targets: Tensor,
    p_mask: Tensor,
    rows: Tensor,
    *,
    batch_size: int,
    normalize: Normalize,
    seq_len: int | None = None,
    answer_lengths: Tensor | None = None,
    tokens_exclude_padding: bool = False,
) -> Tensor:
    """LLaDA's 1/p-weighted masked cross-entropy.

    Args:
        logits: (N, V) at the masked positions, row-major.
        targets: (N,) int64 clean tokens there.
        p_mask: (N,) masking probability of each position's row.
        rows: (N,) int64 row index of each position.
        batch_size: B, the number of rows (rows with no masked token still count).
        normalize: "tokens" -> sum / (B * seq_len); "answer_length" -> mean over rows of
            sum_row / answer_lengths[row].
        seq_len: L, needed for "tokens".
        answer_lengths: (B,) per-row answer lengths (clamped to >= 1), needed for "answer_length".
        tokens_exclude_padding: with "tokens", divide by `answer_lengths.sum()` (the real tokens) instead
            of B * seq_len (every position, padding included).
    """
    ce = F.cross_entropy(logits.float(), targets, reduction="none") / p_mask  # (N,)
    if normalize == "tokens" and tokens_exclude_padding:
        if answer_lengths is None:
            raise ValueError("tokens_exclude_padding needs answer_lengths")
        return ce.sum() / answer_lengths.to(ce.device, torch.float32).sum().clamp(min=1)
    if normalize == "tokens":
        if seq_len is None:
            raise ValueError("normalize='tokens' needs seq_len")
        return ce.sum() / (batch_size * seq_len)
    if normalize == "answer_length":
        if answer_lengths is None:
            raise ValueError("normalize='answer_length' needs answer_lengths")
        lengths = answer_lengths.to(ce.device, torch.float32).clamp(min=1)
        return (ce / lengths[rows]).sum() / batch_size
    raise ValueError(f"normalize must be 'tokens' or 'answer_length', got {normalize!r}")


def image_token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """MaskGIT's plain mean cross-entropy over the given positions (no 1/t weighting).

    Args:
        logits: (N, V) at the positions the loss reads; targets: (N,) int64 there.
    """
    return F.cross_entropy(logits.float(), targets)
