"""What the samplers call: a `Denoiser` maps token ids to logits; wrappers compose on top of it.

The samplers never import the model class. Anything with the `Denoiser` call signature works:
`MMaDAModel` itself, a test mock, or a wrapper such as `ClassifierFreeGuidance`, which is a
`Denoiser` around a `Denoiser`. `BlockCachedDenoiser` (prefix / dual KV cache, Fast-dLLM) is
another: it needs a `CachingDenoiser` underneath, and the block loop tells it where blocks start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

Positions = slice | Tensor | None
"""Where logits are wanted: None = everywhere, a `slice` of sequence positions, or a (B, L) bool
tensor (the True positions, in row-major order)."""

UncondFn = Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor | None]]
"""Builds the unconditional input (ids, attention_mask) from the conditional one."""


@runtime_checkable
class Denoiser(Protocol):
    """tokens -> logits, with fully bidirectional attention.

    Args:
        input_ids: (B, L) int64.
        attention_mask: (B, L) bool/int key padding mask (1 = real token; padded keys are hidden
            from every query) or None (every position visible).
        positions: None -> (B, L, V) logits; a `slice` -> (B, len, V) at those positions; a
            (B, L) bool tensor -> (N, V) at the True positions in row-major order.
    """

    def __call__(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, *, positions: Positions = None
    ) -> Tensor: ...


def guide(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance with weight `scale` = w >= 0: (1 + w) * cond - w * uncond.

    The official code spells this formula two ways, which are the same algebra:
    LLaDA / MMaDA text, `u + (w + 1) * (c - u)` (generate.py, models/modeling_mmada.py
    `mmu_generate`) and MUSE / MMaDA t2i, `(1 + w) * c - w * u` (models/modeling_mmada.py
    `t2i_generate`, "it seems that muse has a different cfg setting"). w = 0 is the conditional
    model; w is *not* the "guidance scale" s = 1 + w of the Ho & Salimans form u + s (c - u).
    We evaluate the MUSE spelling, which matches the stochastic t2i sampler bit for bit; for the
    greedy text sampler the two spellings differ only by float rounding. Half-precision logits are
    combined in float32 (the difference of two large logits loses bits in bf16).
    """
    dtype = torch.promote_types(cond.dtype, torch.float32)
    return (1 + scale) * cond.to(dtype) - scale * uncond.to(dtype)


class ClassifierFreeGuidance:
    """A `Denoiser` that runs [cond; uncond] as one batch and returns the guided logits.

    Args:
        denoiser: the wrapped model.
        scale: guidance weight w (see `guide`).
        uncond: builds the unconditional (ids, attention_mask) from the conditional ones; it
            must keep the shape (B, L) so that both halves have the same positions.
    """

    def __init__(self, denoiser: Denoiser, scale: float, uncond: UncondFn) -> None:
        if scale < 0:
            raise ValueError(f"guidance `scale` ({scale}) must be >= 0")
        self.denoiser = denoiser
        self.scale = scale
        self.uncond = uncond

    def __call__(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, *, positions: Positions = None
    ) -> Tensor:
        un_ids, un_mask = self.uncond(input_ids, attention_mask)
        ids = torch.cat([input_ids, un_ids])  # (2B, L)
        mask = _cat_masks(attention_mask, un_mask, input_ids)  # (2B, L) or None
        if isinstance(positions, Tensor):
            positions = torch.cat([positions, positions])  # same positions in both halves
        cond, uncond = self.denoiser(ids, mask, positions=positions).chunk(2)
        return guide(cond, uncond, self.scale)


def _cat_masks(cond: Tensor | None, uncond: Tensor | None, like: Tensor) -> Tensor | None:
    if cond is None and uncond is None:
        return None
    ones = torch.ones_like(like, dtype=torch.bool)
    return torch.cat([ones if m is None else m.bool() for m in (cond, uncond)])


def mask_positions(fixed: Tensor, mask_id: int) -> UncondFn:
    """Unconditional input for text CFG: every position in `fixed` (B, L) bool set to `mask_id`.

    The official text samplers mask every position that was not masked at the start, padding
    included (generate.py, models/modeling_mmada.py `mmu_generate`: `un_x[prompt_index] = mask_id`).
    The attention mask is passed through unchanged (see `sampling.text` for why).
    """

    def uncond(input_ids: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        return input_ids.masked_fill(fixed, mask_id), attention_mask

    return uncond


def replace_prefix(prefix_ids: Tensor, prefix_mask: Tensor | None) -> UncondFn:
    """Unconditional input for t2i CFG: the first T positions replaced by a null-prompt prefix.

    MMaDA's unconditional t2i input is the empty-caption text part followed by the current image
    part of the conditional input (models/modeling_mmada.py `t2i_generate`, `uncond_prefix`).

    Args:
        prefix_ids: (B, T) int64, the null prompt's text part (everything before `<|soi|>`).
        prefix_mask: (B, T) bool/int padding mask of that prefix, or None (no padding).
    """
    length = prefix_ids.shape[1]

    def uncond(input_ids: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        ids = torch.cat([prefix_ids, input_ids[:, length:]], dim=1)
        if prefix_mask is None and attention_mask is None:
            return ids, None
        tail = torch.ones_like(input_ids[:, length:], dtype=torch.bool)
        if attention_mask is not None:
            tail = attention_mask[:, length:].bool()
        head = torch.ones_like(prefix_ids, dtype=torch.bool) if prefix_mask is None else prefix_mask.bool()
        return ids, torch.cat([head, tail], dim=1)

    return uncond


@runtime_checkable
class CachingDenoiser(Protocol):
    """A `Denoiser` that can record keys/values and reuse them (`MMaDAModel`; see `mmada.model.cache`).

    `new_cache()` returns an empty cache; `__call__(..., cache=c)` is the exact forward that also
    records into `c`; `__call__(..., cache=c, fresh=slice(s, e))` recomputes only positions s..e-1.
    """

    def new_cache(self) -> Any: ...

    def __call__(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, *, positions: Positions = None,
        cache: Any = None, fresh: slice | None = None,
    ) -> Tensor: ...


def check_caching(denoiser: Denoiser) -> CachingDenoiser:
    """`denoiser` itself if it can keep a KV cache, else a ValueError naming its type."""
    if not isinstance(denoiser, CachingDenoiser):
        raise ValueError(f"a KV cache needs a model with `new_cache()` and `cache=`/`fresh=` arguments "
                         f"(MMaDAModel); {type(denoiser).__name__} has none: use cache='none'")
    return denoiser


class BlockCachedDenoiser:
    """A `Denoiser` that reuses keys/values while a block is denoised (Fast-dLLM, arXiv 2505.22618 §3.2).

    The first call of each block (after `start_block`), and every `refresh`-th call within it, is
    the exact forward and records the cache; the other calls recompute only the block (mode
    "dual") or the block and everything after it ("prefix"), extended to the left to the first
    position whose logits are asked. `refresh` = 1 makes every call exact; 0 = block starts only.
    Cache rows follow batch rows, so a guidance wrapper around this one caches both halves.
    """

    def __init__(self, denoiser: Denoiser, mode: Literal["prefix", "dual"], refresh: int = 0) -> None:
        denoiser = check_caching(denoiser)
        if mode not in ("prefix", "dual"):
            raise ValueError(f"cache mode must be 'prefix' or 'dual', got {mode!r}")
        self.denoiser, self.mode, self.refresh = denoiser, mode, refresh
        self.cache = denoiser.new_cache()
        self.block: slice | None = None
        self.calls = 0
        self.refreshes = 0
        """Full (exact) forwards so far, for benchmarks and tests."""

    def start_block(self, block: slice) -> None:
        """The next call starts a new block: it refreshes the cache."""
        self.block, self.calls = block, 0

    def __call__(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, *, positions: Positions = None
    ) -> Tensor:
        block, calls = self.block, self.calls
        self.calls += 1
        due = calls == 0 or (self.refresh > 0 and calls % self.refresh == 0)
        if block is None or due or not isinstance(positions, slice):
            self.refreshes += 1
            return self.denoiser(input_ids, attention_mask, positions=positions, cache=self.cache)
        start = min(block.start, positions.indices(input_ids.shape[1])[0])
        stop = block.stop if self.mode == "dual" else input_ids.shape[1]
        return self.denoiser(input_ids, attention_mask, positions=positions, cache=self.cache,
                             fresh=slice(start, stop))
