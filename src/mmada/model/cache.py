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
    `forward(..., cache=c, fresh=slice(s, e))` computes only positions s..e-1 and lets them attend
    to the recorded keys/values elsewhere. The recorded tensors are never modified in place.
    """

    def __init__(self) -> None:
        self.keys: list[Tensor] = []  # per layer (B, Hkv, L, D), after RoPE
        self.values: list[Tensor] = []

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

    def splice(self, layer: int, k: Tensor, v: Tensor, fresh: slice) -> tuple[Tensor, Tensor]:
        """The recorded keys/values of `layer` with positions `fresh` replaced by k, v (B, Hkv, F, D)."""
        ck, cv = self.keys[layer], self.values[layer]
        start, stop = fresh.start, fresh.stop
        return (_splice(ck, k, start, stop), _splice(cv, v, start, stop))


def _splice(cached: Tensor, fresh: Tensor, start: int, stop: int) -> Tensor:
    parts = [cached[:, :, :start], fresh.to(cached.dtype), cached[:, :, stop:]]
    return torch.cat([p for p in parts if p.shape[2]], dim=2)  # (B, Hkv, L, D)
