"""A per-layer key/value cache for masked-diffusion decoding (approximate by design).

A bidirectional model has no causal KV cache: every token's keys change when any token changes.
Fast-dLLM (arXiv 2505.22618 §3.2; NVlabs/Fast-dLLM `llada/generate.py`, the `use_cache` /
`replace_position` arguments of its `llada/model/modeling_llada.py`) observes that while one block
is being denoised the keys and values of the other positions change little, so they can be
computed once (a *refresh*: a full forward that records them) and reused for the next steps:

    keys seen by the fresh queries   [ cached prefix | fresh span | cached suffix ]
    "prefix" cache: fresh span = current block .. end of sequence   (suffix recomputed every step)
    "dual" cache:   fresh span = current block                       (suffix cached too)

Our code is written from that description. The cache stores, per layer, the keys and values after
RoPE for the whole (B, L) sequence (before grouped-query heads are repeated), one row per batch row,
so batched left-padded prompts and guidance (cond and uncond halves stacked) work unchanged: the
caller's key padding mask covers the spliced keys as it covers the full ones. Refreshing every step
gives exactly the uncached model's logits.
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Keys and values of every layer, recorded by a full forward and spliced into later ones.

    `MMaDAModel.forward(..., cache=c)` (no `fresh`) records into `c`;
    `forward(..., cache=c, fresh=slice(s, e))` computes only positions s..e-1, lets them attend
    to the recorded keys/values elsewhere, and writes their new keys/values back, so the cache
    always holds the latest keys/values computed for every position. `fresh` may also be a (B, L)
    bool mask: positions recomputed per row (see `MMaDAModel.forward`). The write-back is in place: the
    recorded tensors belong to the cache (record them from a forward, never share them).
    """

    def __init__(self) -> None:
        self.keys: list[Tensor] = []  # per layer (B, Hkv, L, D), after RoPE
        self.values: list[Tensor] = []
        self.watch: Tensor | None = None
        """(B, L) bool set by the caller: positions whose key drift the next cached forward measures."""
        self.drift = 0.0
        """After a cached forward with `watch`: the largest relative change (L2 over heads and features)
        of the last layer's keys at the watched recomputed positions; 0.0 otherwise."""

    @property
    def shape(self) -> tuple[int, int] | None:
        """(B, L) of the recorded sequence, or None while empty."""
        if not self.keys:
            return None
        return self.keys[0].shape[0], self.keys[0].shape[2]

    def clear(self) -> None:
        self.keys, self.values = [], []

    def record(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store one layer's full-sequence keys/values (B, Hkv, L, D) and hand them back."""
        if layer == 0:
            self.clear()
        self.keys.append(k)
        self.values.append(v)
        return k, v

    def splice(self, layer: int, k: Tensor, v: Tensor, fresh: slice | Tensor,
               rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Write k, v (B, Hkv, F, D) over positions `fresh` (a slice, or (F,) int64 positions) of
        `layer`'s record and return the record (B, Hkv, L, D). `rows` (B, F) bool: write only where
        True (a row keeps its cached keys/values elsewhere)."""
        if layer == len(self.keys) - 1:
            self.drift = self._drift(self.keys[layer], k, fresh, rows)
        _write(self.keys[layer], k, fresh, rows)
        _write(self.values[layer], v, fresh, rows)
        return self.keys[layer], self.values[layer]

    def _drift(self, cached: Tensor, new: Tensor, where: slice | Tensor, rows: Tensor | None) -> float:
        watch, self.watch = self.watch, None
        if watch is None:
            return 0.0
        watched = watch[:, where]  # (B, F)
        if rows is not None:
            watched = watched & rows
        if not bool(watched.any()):
            return 0.0
        old = cached[:, :, where].float()
        change = (new.float() - old).norm(dim=(1, 3)) / old.norm(dim=(1, 3)).clamp(min=1e-12)  # (B, F)
        return float(change[watched].max().detach())


def _write(cached: Tensor, fresh: Tensor, where: slice | Tensor, rows: Tensor | None) -> None:
    fresh = fresh.to(cached.dtype)
    if rows is not None:
        old = cached[:, :, where]  # (B, Hkv, F, D)
        fresh = torch.where(rows[:, None, :, None], fresh, old)
    if isinstance(where, Tensor):
        cached.index_copy_(2, where, fresh)
    else:
        cached[:, :, where] = fresh
