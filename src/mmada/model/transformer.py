"""The MMaDA transformer: token ids in, logits out, and nothing else.

A LLaDA-8B style bidirectional transformer (arXiv 2502.09992; MMaDA arXiv 2505.15809 §2.1 keeps it
unchanged apart from a larger vocabulary): pre-RMSNorm blocks, rotary position embeddings applied
in float32, SwiGLU MLP, optional grouped-query attention, no biases and an untied output head.
The arithmetic follows the official `models/modeling_llada.py` (Gen-Verse/MMaDA) as described in
`../shared/fixtures/mmada_reference/README.md` ("Forward pass").

Departures from the official model, on purpose:
* Padding is a boolean key mask given to `scaled_dot_product_attention` (broadcast (B, 1, 1, L),
  never a materialised (B, 1, L, L) float bias). Real queries see exactly what the official boolean
  `attention_bias` lets them see; padded query rows (which nobody reads) attend to the real keys
  instead of uniformly to everything. The official `attention_mask` argument silently turns
  attention causal; ours never does.
* `positions=` asks for logits at a subset of positions only. The head is 134656 wide for the real
  model, so projecting only the current block (sampling) or the masked tokens (training) saves most
  of the head's time and memory.
* `cache=` / `fresh=` record and reuse keys/values across denoising steps (`model.cache`, after
  Fast-dLLM). Without them the forward is the exact one, unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .cache import KVCache
from .config import ModelConfig

Positions = slice | Tensor | None
Padding = Literal["hide", "soft"]
KVHook = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""One layer's (keys, values) after RoPE -> the (keys, values) to attend to (record or splice)."""


class RMSNorm(nn.Module):
    """RMSNorm normalised in float32 and cast back before the weight (as modeling_llada.py)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return x32.to(x.dtype) * self.weight


def rope_tables(position_ids: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos, sin tables for "rotate half" RoPE at the given positions.

    Args:
        position_ids: (B, L) or (L,) integer positions.
    Returns:
        cos, sin: (B or 1, 1, L, head_dim) float32; the frequency vector is duplicated ([f, f]).
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float) / head_dim))
    angles = position_ids.float()[..., None] * inv_freq  # (B, L, head_dim/2)
    angles = torch.cat((angles, angles), dim=-1)  # (B, L, head_dim)
    if angles.dim() == 2:
        angles = angles[None]
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor, full_precision: bool) -> Tensor:
    """x: (B, H, L, D). Rotate halves (not interleaved pairs): t' = t cos + rot(t) sin, rot([a, b]) = [-b, a]."""
    t = x.float() if full_precision else x
    a, b = t.chunk(2, dim=-1)
    rotated = torch.cat((-b, a), dim=-1)
    return (t * cos.to(t.dtype) + rotated * sin.to(t.dtype)).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, hd = config.d_model, config.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.kv_heads, hd
        self.full_precision_rope = config.rope_full_precision
        self.q = nn.Linear(d, config.n_heads * hd, bias=False)
        self.k = nn.Linear(d, self.n_kv_heads * hd, bias=False)
        self.v = nn.Linear(d, self.n_kv_heads * hd, bias=False)
        self.out = nn.Linear(config.n_heads * hd, d, bias=False)

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor], key_mask: Tensor | None, kv: KVHook | None = None
    ) -> Tensor:
        """x: (B, L, d); key_mask: (B, 1, 1, S) bool, True for keys that may be attended, or None;
        kv: maps this call's keys/values (B, Hkv, L, D) to the S keys/values to attend to (a cache)."""
        B, L, _ = x.shape
        q = self.q(x).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, L, D)
        k = self.k(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, L, D)
        v = self.v(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rope
        q = apply_rope(q, cos, sin, self.full_precision_rope)
        k = apply_rope(k, cos, sin, self.full_precision_rope)
        if kv is not None:
            k, v = kv(k, v)  # (B, Hkv, S, D)
        if self.n_kv_heads != self.n_heads:
            # Each kv head serves n_heads / n_kv_heads consecutive query heads (repeat_interleave).
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, is_causal=False)  # (B, H, L, D)
        return self.out(y.transpose(1, 2).reshape(B, L, self.n_heads * self.head_dim))


class SwiGLU(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(config.d_model, config.hidden_size, bias=False)
        self.up = nn.Linear(config.d_model, config.hidden_size, bias=False)
        self.down = nn.Linear(config.hidden_size, config.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.rms_norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.rms_norm_eps)
        self.mlp = SwiGLU(config)

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor], key_mask: Tensor | None, kv: KVHook | None = None
    ) -> Tensor:
        x = x + self.attn(self.attn_norm(x), rope, key_mask, kv)
        return x + self.mlp(self.mlp_norm(x))


class MMaDAModel(nn.Module):
    """`forward(input_ids, attention_mask=None, *, positions=None, cache=None, fresh=None) -> logits`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.rms_norm_eps)
        self.head = None if config.weight_tying else nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.gradient_checkpointing = False
        """Recompute each block in the backward pass (training memory for compute)."""

    # ---- inputs ---------------------------------------------------------------------------------
    def _check_inputs(
        self, input_ids: Tensor, attention_mask: Tensor | None, padding: Padding = "hide"
    ) -> Tensor | None:
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a (batch, length) tensor, got {shape}")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool or input_ids.is_complex():
            raise ValueError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        if input_ids.numel() == 0:
            raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)})")
        if input_ids.shape[1] > self.config.max_sequence_length:
            raise ValueError(f"input of {input_ids.shape[1]} tokens exceeds the model's max_sequence_length "
                             f"({self.config.max_sequence_length})")
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= self.config.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} in input_ids is outside the vocabulary [0, {self.config.vocab_size})")
        if attention_mask is None:
            return None
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} "
                f"must equal input_ids shape {tuple(input_ids.shape)}"
            )
        if attention_mask.dtype != torch.bool and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (token); other values such as 0.5 "
                             "or 2 have no meaning")
        mask = attention_mask.to(device=input_ids.device, dtype=torch.bool)
        if bool(mask.all()):
            return None  # nothing to hide: take SDPA's fastest path
        if padding == "soft":
            # The official training passes the pairwise mask m_i * m_j as a *float* bias, which SDPA
            # adds (+1 real pairs, +0 otherwise) instead of hiding pads. Up to a per-row constant that
            # is -1 on padded keys for real queries and 0 for padded queries (see `padding`).
            m = mask.to(self.dtype)
            return (-(1 - m)[:, None, None, :] * m[:, None, :, None]).contiguous()  # (B, 1, L, L)
        if padding != "hide":
            raise ValueError(f"padding must be 'hide' or 'soft', got {padding!r}")
        empty = (~mask.any(dim=1)).nonzero()
        if empty.numel():
            raise ValueError(f"attention_mask row {int(empty[0, 0])} has no real token (all zeros)")
        return mask[:, None, None, :]  # (B, 1, 1, L): hide padded keys from every query

    # ---- forward --------------------------------------------------------------------------------
    def _trunk(
        self, input_ids: Tensor, attention_mask: Tensor | None, keep: list[Tensor] | None = None,
        padding: Padding = "hide", cache: KVCache | None = None, fresh: slice | Tensor | None = None,
    ) -> Tensor:
        """Final-norm hidden states (B, L, d); with `fresh`, only those positions' (B, F, d)."""
        key_mask = self._check_inputs(input_ids, attention_mask, padding)
        span: slice | Tensor = slice(0, input_ids.shape[1]) if fresh is None else fresh
        take = None
        if isinstance(span, Tensor):  # (B, L) bool: compute the union of the rows' columns
            span, take = _columns(span)  # (F,) positions, (B, F) which rows take their new keys/values
            positions = span
        else:
            positions = torch.arange(span.start, span.stop, device=input_ids.device)
        rope = rope_tables(positions, self.config.head_dim, self.config.rope_theta)
        x = self.embed(input_ids[:, span])  # (B, F, d)
        for i, block in enumerate(self.blocks):
            if keep is not None:
                keep.append(x)
            kv: KVHook | None = None
            if cache is not None:
                kv = partial(cache.record, i) if fresh is None else partial(cache.splice, i, fresh=span, rows=take)
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, rope, key_mask, kv, use_reentrant=False)
            else:
                x = block(x, rope, key_mask, kv)
        return self.norm(x)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        positions: Positions = None,
        padding: Padding = "hide",
        cache: KVCache | None = None,
        fresh: slice | Tensor | None = None,
    ) -> Tensor:
        """Logits for every position, or only for the ones asked.

        Args:
            input_ids: (B, L) int64 token ids.
            attention_mask: (B, L) bool/int, 1 for real tokens, 0 for padding; None means all real.
            positions: None -> logits (B, L, V); a `slice` of sequence positions -> (B, len, V);
                a (B, L) bool tensor -> (N, V) at the True entries in row-major order;
                a (B, K) int64 tensor of per-row indices -> (B, K, V).
            padding: "hide" (default) hides padded keys from every query. "soft" reproduces how the
                official *training* code treated padding: padded keys stay visible with their score
                lowered by 1 for real queries (a float 0/1 mask added as a bias), and padded queries
                see everything. Use it to fine-tune released checkpoints exactly as they were trained;
                it builds a (B, 1, L, L) bias, so it is for training batches, not long-context sampling.
            cache: a `KVCache`. Without `fresh`, this (exact) forward also records every layer's
                keys/values into it. With `fresh`, they are reused (see `fresh`).
            fresh: what to recompute, given `cache` recorded on a sequence of the same (B, L): a slice
                of positions s..e-1, or a (B, L) bool tensor, True where a row recomputes. Only these
                positions run through the blocks, attending to their new keys/values and the cached
                ones elsewhere (an approximation once other tokens have changed since the recording),
                and their new keys/values are written into the cache. A bool `fresh` runs the union of
                the rows' True columns (F of them, in order) and returns their (B, F, V) logits; a row
                uses and keeps its cached keys/values at a column it did not ask for, so every row is
                computed as it would be alone. With a slice, `positions` must lie inside `fresh`
                (None = all of it) and are given, as always, in sequence coordinates; with a tensor,
                `positions` must be None.
        """
        if fresh is not None:
            positions = self._check_fresh(input_ids, padding, cache, fresh, positions)
        elif cache is not None and padding != "hide":
            raise ValueError("a KV cache needs padding='hide'")
        h = self._trunk(input_ids, attention_mask, padding=padding, cache=cache, fresh=fresh)  # (B, L or F, d)
        return self.project(select_positions(h, positions))

    def new_cache(self) -> KVCache:
        """An empty `KVCache` for `forward(..., cache=)`."""
        return KVCache()

    @staticmethod
    def _check_fresh(
        input_ids: Tensor, padding: Padding, cache: KVCache | None, fresh: slice | Tensor, positions: Positions
    ) -> Positions:
        """Validate a cached forward; return `positions` relative to the fresh span."""
        length = input_ids.shape[1]
        if cache is None or cache.shape is None:
            raise ValueError("`fresh` needs a `cache` recorded by an earlier forward (cache=..., fresh=None)")
        if cache.shape != tuple(input_ids.shape):
            raise ValueError(f"the cache was recorded for (B, L) = {cache.shape}, input_ids are "
                             f"{tuple(input_ids.shape)}")
        if padding != "hide":
            raise ValueError("a KV cache needs padding='hide'")
        if isinstance(fresh, Tensor):
            MMaDAModel._check_fresh_mask(fresh, input_ids.shape, positions)
            return None
        if (not isinstance(fresh, slice) or fresh.step not in (None, 1) or not isinstance(fresh.start, int)
                or not isinstance(fresh.stop, int) or not 0 <= fresh.start < fresh.stop <= length):
            raise ValueError(f"`fresh` must be a slice(start, stop) with 0 <= start < stop <= {length}, got {fresh}")
        start, stop = fresh.start, fresh.stop
        if positions is None:
            return None
        if isinstance(positions, slice):
            lo, hi, step = positions.indices(length)
            if step != 1 or lo < start or hi > stop:
                raise ValueError(f"positions {positions} must be a contiguous slice inside fresh {fresh}")
            return slice(lo - start, hi - start)
        if positions.dtype == torch.bool:
            outside = positions.clone()
            outside[:, start:stop] = False
            if bool(outside.any()):
                raise ValueError(f"bool positions must all lie inside fresh {fresh}")
            return positions[:, start:stop]
        if bool(((positions < start) | (positions >= stop)).any()):
            raise ValueError(f"index positions must all lie inside fresh {fresh}")
        return positions - start

    @staticmethod
    def _check_fresh_mask(fresh: Tensor, shape: torch.Size, positions: Positions) -> None:
        """A tensor `fresh`: (B, L) bool with at least one True; logits for the union of its columns."""
        if fresh.dtype != torch.bool or tuple(fresh.shape) != tuple(shape):
            raise ValueError(f"a tensor `fresh` must be a {tuple(shape)} bool mask, got {tuple(fresh.shape)} "
                             f"{fresh.dtype}")
        if not bool(fresh.any()):
            raise ValueError("a tensor `fresh` must mark at least one position")
        if positions is not None:
            raise ValueError("with a tensor `fresh`, `positions` must be None (logits of the fresh columns)")

    def project(self, h: Tensor) -> Tensor:
        """The output head on final-norm hidden states (..., d) -> (..., V)."""
        return F.linear(h, self.embed.weight if self.head is None else self.head.weight)

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> list[Tensor]:
        """Every block's input (the first is the embedding) and, last, the final-norm output.

        Matches the official `output_hidden_states=True`: n_layers + 1 tensors of shape (B, L, d).
        """
        keep: list[Tensor] = []
        keep.append(self._trunk(input_ids, attention_mask, keep))
        return keep

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def reset_parameters(self, std: float = 0.02) -> None:
        """Random initialisation for training from scratch (normal(0, std), residual outputs scaled
        by 1/sqrt(2 n_layers) as GPT-2; norms at one)."""
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(("attn.out.weight", "mlp.down.weight")):
                nn.init.normal_(p, std=residual_std)
            else:
                nn.init.normal_(p, std=std)


def _columns(fresh: Tensor) -> tuple[Tensor, Tensor]:
    """(B, L) bool -> the (F,) positions True in any row, and (B, F) which rows asked for each."""
    columns = fresh.any(dim=0).nonzero().squeeze(1)
    return columns, fresh[:, columns]


def select_positions(h: Tensor, positions: Positions) -> Tensor:
    """Pick hidden states (B, L, d) at `positions` (see `MMaDAModel.forward`)."""
    if positions is None:
        return h
    if isinstance(positions, slice):
        return h[:, positions]
    if not isinstance(positions, Tensor):
        raise ValueError(f"positions must be None, a slice or a tensor, got {type(positions).__name__}")
    if positions.dtype == torch.bool:
        if tuple(positions.shape) != tuple(h.shape[:2]):
            raise ValueError(f"bool positions shape {tuple(positions.shape)} must equal (B, L) = {tuple(h.shape[:2])}")
        return h[positions]  # (N, d)
    if positions.dim() != 2 or positions.shape[0] != h.shape[0] or positions.dtype.is_floating_point:
        raise ValueError(
            f"index positions must be a (B, K) integer tensor, got {tuple(positions.shape)} {positions.dtype}"
        )
    index = positions.to(h.device)[..., None].expand(-1, -1, h.shape[-1])
    return h.gather(1, index)  # (B, K, d)
