"""The forward process: which tokens a training example hides, and with what probability.

Two noising rules, as the official training code applies them (MMaDA §2.1, MMADA.md §2.1):

* text and understanding answers (`mask_text`), LLaDA-style: t ~ U(0, 1) per row,
  p_mask = (1 - eps) t + eps, every maskable token hidden independently with probability p_mask
  (Gen-Verse/MMaDA models/modeling_mmada.py `forward_process`, after LLaDA's `forward_process`).
  Prompt tokens are never masked in SFT: they are simply not `maskable`.
* images (`mask_image`), MaskGIT-style: u ~ U(0, 1) per image, ratio r = gamma(u) from the same
  schedules the sampler uses, and exactly max(1, round(N r)) image tokens hidden, chosen by a random
  permutation (Gen-Verse/MMaDA training/utils.py `mask_or_random_replace_tokens`).

Every function takes an explicit `generator`; none touches the global RNG state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .schedules import Schedule, get_schedule

TEXT_EPS = 1e-3  # LLaDA / MMaDA: p_mask = (1 - eps) t + eps keeps every row's masking rate >= 1e-3


@dataclass(frozen=True)
class MaskedBatch:
    """A noised batch.

    Attributes:
        noisy: (B, L) int64, the inputs with hidden tokens replaced by the mask id.
        is_masked: (B, L) bool, the hidden positions (the ones the loss reads).
        p_mask: (B, 1) float32, the probability (text) or ratio (image) each row was masked with.
    """

    noisy: Tensor
    is_masked: Tensor
    p_mask: Tensor


def mask_text(
    ids: Tensor,
    maskable: Tensor,
    *,
    mask_id: int,
    eps: float = TEXT_EPS,
    t: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> MaskedBatch:
    """LLaDA's forward process on the `maskable` positions of each row.

    Args:
        ids: (B, L) int64 clean tokens.
        maskable: (B, L) bool, positions that may be hidden (the answer; everything for pretraining).
        t: (B,) diffusion times in [0, 1]; drawn from U(0, 1) with `generator` when None.
    """
    if ids.shape != maskable.shape:
        raise ValueError(f"maskable shape {tuple(maskable.shape)} must equal ids shape {tuple(ids.shape)}")
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    B, L = ids.shape
    if t is None:
        t = torch.rand(B, generator=generator, device=ids.device)
    p_mask = ((1 - eps) * t + eps)[:, None]  # (B, 1)
    # The official code draws one uniform per position of the whole row, prompt included.
    hidden = (torch.rand(B, L, generator=generator, device=ids.device) < p_mask) & maskable.bool()
    return MaskedBatch(torch.where(hidden, mask_id, ids), hidden, p_mask.float())


def mask_image(
    ids: Tensor,
    image: Tensor,
    *,
    mask_id: int,
    schedule: str | Schedule = "cosine",
    min_ratio: float = 0.0,
    u: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> MaskedBatch:
    """MaskGIT's forward process: hide exactly max(1, round(N gamma(u))) image tokens per row.

    Args:
        ids: (B, L) int64 clean tokens.
        image: (B, L) bool, the image positions (every row has the same count N).
        schedule: mask-ratio schedule (name or function), the same the sampler uses.
        min_ratio: lower clip of the ratio (`min_masking_rate`, 0 in the official configs).
        u: (B,) draws in [0, 1]; from U(0, 1) with `generator` when None.
    """
    counts = image.sum(dim=1)
    if not bool((counts == counts[0]).all()) or int(counts[0]) == 0:
        raise ValueError(f"every row needs the same, non-zero number of image positions, got {counts.tolist()}")
    B, N = ids.shape[0], int(counts[0])
    gamma = get_schedule(schedule) if isinstance(schedule, str) else schedule
    if u is None:
        u = torch.rand(B, generator=generator, device=ids.device)
    ratio = gamma(u).clip(min=min_ratio)  # (B,)
    num_masked = (N * ratio).round().clamp(min=1)  # (B,)
    hidden_image = random_subsets(num_masked, N, generator=generator, device=ids.device)  # (B, N)
    hidden = torch.zeros_like(image, dtype=torch.bool)
    hidden[image.bool()] = hidden_image.flatten()
    return MaskedBatch(torch.where(hidden, mask_id, ids), hidden, ratio[:, None].float())


def random_subsets(counts: Tensor, length: int, *, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> Tensor:
    """Row b marks `counts[b]` of `length` positions, chosen uniformly at random.

    Args:
        counts: (B,) in [0, length] (integer-valued; any dtype).
    Returns:
        (B, length) bool with exactly counts[b] True entries in row b.
    """
    order = torch.rand(counts.shape[0], length, generator=generator, device=device).argsort(dim=-1)  # permutations
    return order < counts.to(order.device)[:, None]
