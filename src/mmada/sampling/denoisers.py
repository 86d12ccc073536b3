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
    records into `c`; `__call__(..., cache=c, fresh=slice(s, e))` recomputes only positions s..e-1,
    `fresh=mask` ((B, L) bool) the True positions of each row (logits of the union of the columns).
    """

    def new_cache(self) -> Any: ...

    def __call__(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, *, positions: Positions = None,
        cache: Any = None, fresh: slice | Tensor | None = None,
    ) -> Tensor: ...


def check_caching(denoiser: Denoiser) -> CachingDenoiser:
    """`denoiser` itself if it can keep a KV cache, else a ValueError naming its type."""
    if not isinstance(denoiser, CachingDenoiser):
        raise ValueError(f"a KV cache needs a model with `new_cache()` and `cache=`/`fresh=` arguments "
                         f"(MMaDAModel); {type(denoiser).__name__} has none: use cache='none'")
    return denoiser


CacheKeep = Literal["none", "prompt", "finished", "all"]


class BlockCachedDenoiser:
    """A `Denoiser` that reuses keys/values while a block is denoised (Fast-dLLM, arXiv 2505.22618 §3.2).

    The first call of each block (after `start_block`), and every `refresh`-th call within it, is
    a *refresh*; the other calls recompute only the block (mode "dual") or the block and everything
    after it ("prefix"), extended to the left to the first position whose logits are asked. Mode
    "delayed" recomputes less than "dual": only the positions asked for that are still masked or
    were masked at the previous call, so a committed token is re-encoded once, one step after its
    commit, and then kept (dKV-Cache's delayed caching, arXiv 2505.15781 §3.2); its logits are
    zero at the other positions asked for (finished tokens, which no commit rule looks at).

    What a refresh recomputes is `keep`: "none" re-encodes the whole sequence (exact at that step,
    Fast-dLLM's choice); "prompt" keeps the prompt's keys/values from the first call (an
    understanding prompt's image is encoded once per question); "finished" also
    keeps every finished block's, re-encoded once in the refresh after it finished (what an
    autoregressive KV cache keeps); "all" also keeps the masked suffix, so a refresh re-encodes the
    block only. `refresh` = 1 with keep "none" makes every call exact; 0 = block starts only. With a
    `drift` tolerance, a call is also a refresh once the keys of the still-masked positions (whose
    tokens did not change) have moved by more than it, summed over the calls since the last refresh
    (the cache measures the last layer's relative key change; dKV-Cache / Elastic-Cache refresh on
    such drift tests).

    Cache rows follow batch rows, so a guidance wrapper around this one caches both halves; with
    `mask_id`, a row whose window has no mask left recomputes nothing, so batched rows that finish
    a block at different steps get what each would get alone. The MaskGIT loop uses the same class
    with the image span as its one block (`sampling.image.image_cache`).
    """

    def __init__(self, denoiser: Denoiser, mode: Literal["prefix", "dual", "delayed"], refresh: int = 0,
                 keep: CacheKeep = "none", *, mask_id: int | None = None, drift: float | None = None) -> None:
        denoiser = check_caching(denoiser)
        if mode not in ("prefix", "dual", "delayed"):
            raise ValueError(f"cache mode must be 'prefix', 'dual' or 'delayed', got {mode!r}")
        if mode == "delayed" and mask_id is None:
            raise ValueError("cache mode 'delayed' needs the `mask_id`")
        if keep not in ("none", "prompt", "finished", "all"):
            raise ValueError(f"cache keep must be 'none', 'prompt', 'finished' or 'all', got {keep!r}")
        if drift is not None and mask_id is None:
            raise ValueError("a drift test needs the `mask_id`")
        self.denoiser, self.mode, self.refresh, self.keep, self.mask_id = denoiser, mode, refresh, keep, mask_id
        self.drift, self.drifted = drift, 0.0
        self.watch: Tensor | None = None
        self.cache = denoiser.new_cache()
        self.masked: Tensor | None = None
        """The masked positions of the previous call's input (mode "delayed")."""
        self.block: slice | None = None
        self.kept = 0
        """Positions before this are never recomputed by a refresh."""
        self.calls = 0
        self.refreshes = 0
        """Refreshes so far (full or from `kept` on), for benchmarks and tests."""

    def start_block(self, block: slice) -> None:
        """The next call starts a new block: it refreshes the cache."""
        if self.keep == "prompt" and self.block is None:
            self.kept = block.start
        elif self.keep == "all" or (self.keep == "finished" and (self.block is None or self.mode == "delayed")):
            self.kept = block.start  # "delayed" re-encoded the last block's tokens already, bar the last commits
        elif self.keep == "finished":
            self.kept = self.block.start  # type: ignore[union-attr]
        self.block, self.calls = block, 0

    def __call__(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, *, positions: Positions = None
    ) -> Tensor:
        block, calls, length = self.block, self.calls, input_ids.shape[1]
        self.calls += 1
        masked = None if self.mask_id is None else input_ids == self.mask_id
        before, self.masked = self.masked, masked
        due = calls == 0 or (self.refresh > 0 and calls % self.refresh == 0)
        self.watch = None
        if self.drift is not None:
            due = due or self.drifted > self.drift
            if due:
                self.drifted = 0.0
            elif masked is not None and before is not None:
                self.watch = masked & before  # still masked: their input is unchanged, only context moved
        recorded = self.cache.shape == tuple(input_ids.shape)
        if block is None or not recorded or not isinstance(positions, slice) or (due and self.keep == "none"):
            self.refreshes += 1
            return self.denoiser(input_ids, attention_mask, positions=positions, cache=self.cache)
        start, stop, _ = positions.indices(length)
        if due:
            self.refreshes += 1
            lo, hi = min(self.kept, start), (block.stop if self.keep == "all" else length)
        else:
            lo, hi = min(block.start, start), (length if self.mode == "prefix" else block.stop)
        if masked is not None and self.mode != "delayed" and not due:
            # A row whose window is decided (batched rows finish blocks at different steps) leaves its
            # cache as it is, as it would be alone: its next refresh may keep this block.
            open_rows = masked[:, start:stop].any(dim=1)
            if not bool(open_rows.all()):
                fresh = torch.zeros_like(masked)
                fresh[:, lo:hi] = open_rows[:, None]
                return self._sparse(input_ids, attention_mask, start, stop, fresh)
        if masked is None or before is None or self.mode != "delayed":
            return self._cached(input_ids, attention_mask, slice(lo, hi), positions)
        fresh = masked | before  # (B, L): masked now or at the previous call: undecided or just committed
        if due:
            fresh[:, lo:hi] = True  # the refreshed span, plus the commits of the previous call anywhere
        else:
            fresh[:, :lo] = False
        fresh[:, hi:] = False
        return self._sparse(input_ids, attention_mask, start, stop, fresh)

    def _cached(self, input_ids: Tensor, attention_mask: Tensor | None, fresh: slice | Tensor,
                positions: Positions = None) -> Tensor:
        """The cached forward of `fresh`; with a drift test, its key drift is added to the running sum."""
        if self.watch is not None:
            self.cache.watch = self.watch
        logits = self.denoiser(input_ids, attention_mask, positions=positions, cache=self.cache, fresh=fresh)
        if self.watch is not None:
            self.drifted += self.cache.drift
            self.cache.watch = None
        return logits

    def _sparse(self, input_ids: Tensor, attention_mask: Tensor | None, start: int, stop: int,
                fresh: Tensor) -> Tensor:
        """Recompute the (B, L) `fresh` positions; (B, stop - start, V) logits, zero where no row recomputed."""
        columns = fresh.any(dim=0).nonzero().squeeze(1)  # (F,), what the model computes
        if columns.numel() == 0:  # nothing left to decode here: an exact forward keeps the contract simple
            self.refreshes += 1
            return self.denoiser(input_ids, attention_mask, positions=slice(start, stop), cache=self.cache)
        logits = self._cached(input_ids, attention_mask, fresh)  # (B, F, V)
        inside = (columns >= start) & (columns < stop)
        out = logits.new_zeros(logits.shape[0], stop - start, logits.shape[2])
        return out.index_copy_(1, columns[inside] - start, logits[:, inside])
