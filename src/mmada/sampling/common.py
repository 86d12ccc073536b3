"""Small pure pieces shared by the text block loop and the MaskGIT loop.

- `SampleStep`: what every sampler iterator yields after each denoising step.
- Gumbel-max proposals in float64 (LLaDA / MMaDA `add_gumbel_noise`) and their confidences.
- `uniform_window`: uniform noise for a slice of a tensor, drawn so that the generator advances
  exactly as if the whole tensor had been drawn. The official samplers draw noise over the logits
  of the *whole* sequence; we compute logits only where they are needed and still reproduce
  seeded official runs draw for draw.
- `random_scores` for LLaDA's "random" remasking and `key_padding_mask` normalisation.
- Commit selection: `select_topk_per_row` (fixed quota per row, vectorised) and
  `select_above_threshold` (Fast-dLLM parallel decoding), plus the LLaDA transfer schedule
  `num_transfer_tokens`.

References: ML-GSAI/LLaDA generate.py, Gen-Verse/MMaDA models/modeling_mmada.py (`add_gumbel_noise`,
`get_num_transfer_tokens`), NVlabs/Fast-dLLM llada/generate.py (`get_transfer_index`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmada.utils.device import math_dtype

NOISE_CHUNK = 1 << 20  # doubles drawn per call when skipping noise outside the window (8 MiB buffer)


@dataclass(frozen=True)
class SampleStep:
    """The state after one denoising step (one model call, or one guided pair of calls).

    Attributes:
        step: 0-based index of the step over the whole run.
        block: 0-based index of the semi-autoregressive block (always 0 for MaskGIT).
        tokens: text: (B, L) int64, the whole sequence after the step (prompt + generation).
            MaskGIT: (B, N) int64 image codes in [0, codebook_size), the step's full prediction.
        committed: bool, same shape as `tokens`. Text: positions unmasked *by this step*.
            MaskGIT: positions whose code is kept after this step (the others are re-masked,
            because MaskGIT re-decides every unknown position at every step).
        confidence: float, same shape as `tokens`: the score the commit decision used; -inf
            where a position was not a candidate (text).
    """

    step: int
    block: int
    tokens: Tensor
    committed: Tensor
    confidence: Tensor


def key_padding_mask(attention_mask: Tensor | None) -> Tensor | None:
    """A (B, L) key padding mask as bool, or None when nothing is padded.

    The official samplers only build an attention bias when the mask holds a 0
    (models/modeling_mmada.py `mmu_generate`); None also lets the model skip masking work.
    Values other than 0 / 1 are refused (`check_binary_mask`).
    """
    if attention_mask is None:
        return None
    check_binary_mask(attention_mask)
    if bool(attention_mask.all()):
        return None
    return attention_mask.bool()


def check_binary_mask(mask: Tensor, name: str = "attention_mask") -> None:
    """Refuse a padding mask holding anything but 0 (padding) and 1 (token): a cast to bool would read
    0.5 or 2 as a real token, and a cast to int would read 0.5 as padding."""
    if mask.dtype == torch.bool:
        return
    bad = (mask != 0) & (mask != 1)
    if bool(bad.any()):
        raise ValueError(f"`{name}` must hold only 0 (padding) and 1 (token), found {mask[bad][0].item()}")


def model_max_length(model: object) -> int | None:
    """The longest input a denoiser takes: `model.config.max_sequence_length` when it has one
    (`MMaDAModel`), else None (mock denoisers, wrappers without a config)."""
    limit = getattr(getattr(model, "config", None), "max_sequence_length", None)
    return limit if isinstance(limit, int) else None


def check_length(model: object, length: int, what: str) -> None:
    """Refuse, before any allocation or model call, an input longer than the model takes.

    Args:
        length: tokens of the whole sequence the sampler would build.
        what: how the length is made up, for the message (e.g. "prompt (20) + gen_length (1000000)").
    """
    limit = model_max_length(model)
    if limit is not None and length > limit:
        raise ValueError(f"{what} = {length} tokens exceeds the model's max_sequence_length ({limit})")


def uniform_window(
    shape: tuple[int, int, int],
    window: slice,
    *,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None,
) -> Tensor:
    """U[0, 1) draws for `x[:, window]` of a tensor `x` of `shape` (B, L, V).

    The generator advances exactly as `torch.rand(shape, dtype=dtype, generator=generator)` would
    (torch's CPU generator fills tensors element by element in row-major order), so the values equal
    `torch.rand(shape, ...)[:, window]` while memory stays at the window's size. Draws outside the
    window are made in chunks of `NOISE_CHUNK` and discarded. (CUDA's Philox generator advances
    per kernel launch, not per element, so there the stream is deterministic but not the one of a
    single full-size draw; the official seeded runs we match are CPU runs.)

    Returns:
        (B, window length, V) uniforms of `dtype`.
    """
    batch, length, vocab = shape
    start, stop, _ = window.indices(length)
    out = torch.empty(batch, stop - start, vocab, dtype=dtype, device=device)
    scratch = torch.empty(min(NOISE_CHUNK, length * vocab), dtype=dtype, device=device)
    for b in range(batch):
        _skip(scratch, start * vocab, generator)
        out[b].uniform_(0, 1, generator=generator)
        _skip(scratch, (length - stop) * vocab, generator)
    return out


def _skip(scratch: Tensor, count: int, generator: torch.Generator | None) -> None:
    while count > 0:
        n = min(count, scratch.numel())
        scratch[:n].uniform_(0, 1, generator=generator)
        count -= n


def add_gumbel_noise(logits: Tensor, temperature: float, uniform: Tensor | None = None, *,
                     generator: torch.Generator | None = None) -> Tensor:
    """Perturb logits so that their argmax is a sample at `temperature` (Gumbel-max trick).

    Computes exp(logits) / (-log u)^temperature, which has the argmax of
    logits / temperature + Gumbel noise, in float64: arXiv:2409.02908 shows that low-precision
    Gumbel-max lowers generation quality of masked diffusion models (LLaDA generate.py,
    MMaDA models/modeling_mmada.py `add_gumbel_noise`). Temperature 0 returns `logits` unchanged
    (greedy argmax).

    Args:
        logits: (..., V) float.
        temperature: >= 0.
        uniform: optional pre-drawn U[0, 1) noise shaped like `logits` (see `uniform_window`);
            when None it is drawn like `torch.rand_like(logits, dtype=float64)` from `generator`.
        generator: source of the noise when `uniform` is None (None: torch's global generator).

    Returns:
        (..., V) scores whose argmax is the proposal.
    """
    if temperature == 0:
        return logits
    dtype = math_dtype(logits.device)  # float64 except on MPS
    if uniform is None:
        uniform = torch.rand(logits.shape, dtype=dtype, device=logits.device, generator=generator)
    return logits.to(dtype).exp() / (-torch.log(uniform.to(dtype))) ** temperature


def token_confidence(logits: Tensor, tokens: Tensor, *, precise: bool = True) -> Tensor:
    """softmax(logits)[tokens]: the model's probability of each proposed token.

    The probability comes from the un-noised logits even when the proposal was sampled
    (LLaDA "low_confidence" remasking). `precise` computes the softmax in float64, as the official
    samplers do, so that their confidence order (ties included) is reproduced; otherwise
    exp(logit - logsumexp) in float32, a third of the work, for the approximate fast modes.
    Shapes: logits (..., V), tokens (...) -> (...).
    """
    if precise:
        probs = torch.softmax(logits.to(math_dtype(logits.device)), dim=-1)
        return probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    logits = logits.float()
    chosen = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return (chosen - torch.logsumexp(logits, dim=-1)).exp()


def random_scores(shape: tuple[int, int], window: slice, *, device: torch.device,
                  generator: torch.Generator | None) -> Tensor:
    """U[0, 1) float32 scores for LLaDA's "random" remasking, returned for `window` only.

    Drawn for the whole (B, L) sequence, like the official `torch.rand((B, L))`, so that seeded
    runs consume the generator identically. Returns (B, window length) float32.
    """
    return torch.rand(shape, device=device, generator=generator)[:, window]


def num_transfer_tokens(mask_index: Tensor, steps: int) -> Tensor:
    """How many masked tokens each step of a block commits (LLaDA's linear schedule).

    LLaDA's noise schedule is linear in t, so the expected number of tokens unmasked per step is
    constant: n masked tokens over s steps give floor(n / s) per step, and the first n mod s steps
    one more (LLaDA generate.py `get_num_transfer_tokens`).

    Args:
        mask_index: (B, n) bool, masked positions of the block at the block's start.
        steps: steps for this block, > 0.

    Returns:
        (B, steps) int64 quotas; row b sums to mask_index[b].sum().
    """
    count = mask_index.sum(dim=1, keepdim=True)  # (B, 1)
    extra = torch.arange(steps, device=mask_index.device) < count % steps  # (B, steps)
    return count // steps + extra.long()


def select_topk_per_row(scores: Tensor, k: Tensor) -> Tensor:
    """Mark the k[b] highest scores of each row b, for all rows at once.

    Equivalent to a per-row `torch.topk(scores[b], k[b])`: one `topk` with the largest k, then each
    row keeps its first k[b] (sorted) indices.

    Args:
        scores: (B, W) float; -inf marks positions that must not be picked.
        k: (B,) int64, 0 <= k[b] <= number of finite scores in row b.

    Returns:
        (B, W) bool.
    """
    k_max = int(k.max()) if k.numel() else 0
    selected = torch.zeros_like(scores, dtype=torch.bool)
    if k_max == 0:
        return selected
    index = scores.topk(k_max, dim=-1).indices  # (B, k_max), best first
    keep = torch.arange(k_max, device=scores.device) < k.unsqueeze(-1)  # (B, k_max)
    return selected.scatter_(-1, index, keep)


def select_above_threshold(scores: Tensor, threshold: float) -> Tensor:
    """Fast-dLLM parallel decoding: every candidate scoring >= threshold, and at least the best one.

    A row without any finite score selects nothing (NVlabs/Fast-dLLM llada/generate.py
    `get_transfer_index` with `threshold`).

    Args:
        scores: (B, W) float; -inf marks non-candidates.
        threshold: in (0, 1].

    Returns:
        (B, W) bool.
    """
    candidates = torch.isfinite(scores)
    best = select_topk_per_row(scores, candidates.any(dim=-1).long())
    return best | (candidates & (scores >= threshold))
