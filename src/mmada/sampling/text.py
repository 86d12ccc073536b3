"""Text and multimodal-understanding sampling: LLaDA's semi-autoregressive masked-diffusion loop.

MMaDA §3.1 (and LLaDA §2.4): append `gen_length` [MASK] tokens to the prompt, split them into
blocks of `block_length` decoded left to right, and give each block `steps / num_blocks` steps.
Every step runs the denoiser, proposes a token for each masked position (argmax, or a Gumbel-max
sample at temperature > 0) and *commits* some of them; the others stay masked. Which ones is the
commit policy:

- low_confidence (default): the proposals the model is most sure of, a fixed quota per step from
  the transfer schedule `num_transfer_tokens` ("low-confidence remasking");
- random: a random subset of the same size;
- threshold (Fast-dLLM parallel decoding, arXiv 2505.22618): every proposal whose confidence
  reaches the threshold, at least one per step; the block ends when it has no mask left.

Multimodal understanding (MMU) is this same loop with an image-prefixed prompt. Text infilling
(`sampling.inpaint`) is this loop over blocks that cover masked spans.

Faithful to Gen-Verse/MMaDA generate.py and models/modeling_mmada.py (`mmu_generate`,
`mmu_generate_fast`), including the seeded random draws. Differences, on purpose:
- logits are computed only where a step needs them (the current block, extended to the left only
  while an earlier position is still masked); noise is still drawn as for the whole sequence;
- with `cfg_scale` > 0 and an `attention_mask`, both halves of the guided batch keep the padding
  mask (the official code drops every mask under CFG); without a mask the two agree.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from functools import partial
from typing import Literal, TypeVar

import torch
from torch import Tensor

from mmada.sampling.common import (
    SampleStep,
    add_gumbel_noise,
    key_padding_mask,
    num_transfer_tokens,
    random_scores,
    select_above_threshold,
    select_topk_per_row,
    token_confidence,
    uniform_window,
)
from mmada.sampling.denoisers import ClassifierFreeGuidance, Denoiser, mask_positions
from mmada.utils.device import math_dtype

Remasking = Literal["low_confidence", "random"]
StepT = TypeVar("StepT")
REMASKING = ("low_confidence", "random")


def iter_sample_text(
    model: Denoiser,
    prompt_ids: Tensor,
    *,
    gen_length: int,
    block_length: int,
    steps: int,
    temperature: float = 0.0,
    remasking: Remasking = "low_confidence",
    cfg_scale: float = 0.0,
    mask_id: int,
    attention_mask: Tensor | None = None,
    threshold: float | None = None,
    stop_token_ids: Collection[int] | int | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[SampleStep]:
    """Generate `gen_length` tokens after each prompt, yielding the state after every step.

    Args:
        model: the `Denoiser` (e.g. `MMaDAModel`).
        prompt_ids: (B, P) int64, left-padded when rows differ in length.
        gen_length: tokens to generate, a multiple of `block_length`.
        block_length: tokens per semi-autoregressive block.
        steps: total denoising steps, a multiple of the number of blocks.
        temperature: 0 = greedy; > 0 samples with float64 Gumbel-max.
        remasking: "low_confidence" or "random" (see the module docstring).
        cfg_scale: unsupervised classifier-free guidance weight w (`denoisers.guide`); the
            unconditional input masks every prompt position, padding included.
        mask_id: the [MASK] token id.
        attention_mask: (B, P) or (B, P + gen_length) padding mask, 1 = real token, or None.
        threshold: commit by confidence threshold (Fast-dLLM) instead of fixed quotas; then
            `steps` only has to be valid, each block runs until it is complete.
        stop_token_ids: stop after a block when every row's last token of that block is one of
            these ids (official `mmu_generate_fast` with `eot_token`); later blocks stay masked.
        generator: source of all randomness (None: torch's global generator).

    Returns:
        An iterator of `SampleStep`, tokens (B, P + gen_length), one per step. The settings are
        checked when this function is called, before the first step.
    """
    _check_text_settings(prompt_ids, gen_length, block_length, steps, temperature, remasking,
                         cfg_scale, threshold, attention_mask)
    batch, prompt_len = prompt_ids.shape
    tokens = torch.cat([prompt_ids, prompt_ids.new_full((batch, gen_length), mask_id)], dim=1)  # (B, P+G)
    if attention_mask is not None and attention_mask.shape[1] == prompt_len:
        attention_mask = torch.cat([attention_mask.bool(), tokens.new_ones(batch, gen_length).bool()], 1)
    blocks = [slice(start, start + block_length) for start in range(prompt_len, tokens.shape[1], block_length)]
    return iter_denoise_blocks(
        model, tokens, attention_mask, blocks=blocks, steps_per_block=steps // len(blocks),
        mask_id=mask_id, temperature=temperature, remasking=remasking, threshold=threshold,
        cfg_scale=cfg_scale, stop_token_ids=stop_token_ids, generator=generator,
    )


@torch.inference_mode()
def sample_text(
    model: Denoiser,
    prompt_ids: Tensor,
    *,
    gen_length: int,
    block_length: int,
    steps: int,
    temperature: float = 0.0,
    remasking: Remasking = "low_confidence",
    cfg_scale: float = 0.0,
    mask_id: int,
    attention_mask: Tensor | None = None,
    threshold: float | None = None,
    stop_token_ids: Collection[int] | int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """`iter_sample_text` run to the end; returns (B, P + gen_length) int64, prompt included."""
    steps_iter = iter_sample_text(
        model, prompt_ids, gen_length=gen_length, block_length=block_length, steps=steps,
        temperature=temperature, remasking=remasking, cfg_scale=cfg_scale, mask_id=mask_id,
        attention_mask=attention_mask, threshold=threshold, stop_token_ids=stop_token_ids,
        generator=generator,
    )
    return last_step(steps_iter).tokens


@torch.no_grad()
def iter_denoise_blocks(
    model: Denoiser,
    tokens: Tensor,
    attention_mask: Tensor | None,
    *,
    blocks: Sequence[slice],
    steps_per_block: int,
    mask_id: int,
    temperature: float = 0.0,
    remasking: Remasking = "low_confidence",
    threshold: float | None = None,
    cfg_scale: float = 0.0,
    stop_token_ids: Collection[int] | int | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[SampleStep]:
    """The one block loop: unmask the `mask_id` positions of `tokens`, block after block.

    Positions that are not masked at the start never change. A position whose committed proposal
    is `mask_id` itself stays masked and competes again in later steps, also after its block
    (official behaviour); a model that never predicts [MASK] leaves no mask behind.

    Args:
        model: the `Denoiser`.
        tokens: (B, L) int64, the initial sequence with masked positions.
        attention_mask: (B, L) padding mask or None.
        blocks: position ranges decoded in order; each gets `steps_per_block` steps (quota
            mode), or runs until it has no mask left (threshold mode).
        Other arguments: as in `iter_sample_text`.
    """
    if cfg_scale > 0:
        model = ClassifierFreeGuidance(model, cfg_scale, mask_positions(tokens != mask_id, mask_id))
    attention_mask = key_padding_mask(attention_mask)
    stop_ids = _as_id_tensor(stop_token_ids, tokens.device)
    propose = _proposer(temperature, remasking, generator)
    step = 0
    for index, block in enumerate(blocks):
        block_steps = _iter_block(model, tokens, attention_mask, block, propose, steps=steps_per_block,
                                  threshold=threshold, mask_id=mask_id)
        for tokens, committed, confidence in block_steps:  # `tokens` becomes the state after each step
            yield SampleStep(step=step, block=index, tokens=tokens, committed=committed,
                             confidence=confidence)
            step += 1
        if stop_ids is not None and bool(torch.isin(tokens[:, block.stop - 1], stop_ids).all()):
            return


Selector = Callable[[Tensor], Tensor]
"""Commit policy of one step: (B, W) scores, -inf = not a candidate -> (B, W) bool."""

Proposer = Callable[[Tensor, tuple[int, int], slice], tuple[Tensor, Tensor]]
"""(B, W, V) logits, full (B, L) shape, window -> (B, W) proposals, (B, W) scores."""


def _iter_block(
    model: Denoiser, tokens: Tensor, attention_mask: Tensor | None, block: slice, propose: Proposer,
    *, steps: int, threshold: float | None, mask_id: int,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """The steps of one block: fixed quotas from the transfer schedule, or, in threshold mode,
    as many steps as it takes to leave no mask in the block."""
    if threshold is None:
        quotas = num_transfer_tokens(tokens[:, block] == mask_id, steps)  # (B, steps)
        selectors = [partial(select_topk_per_row, k=quotas[:, k]) for k in range(steps)]
    else:
        # At least one commit per unfinished row and step, so the masks up to the block's end bound
        # the steps (the bound only binds for a model that proposes [MASK] itself).
        budget = int((tokens[:, : block.stop] == mask_id).sum(dim=1).max())
        selectors = [partial(select_above_threshold, threshold=threshold)] * budget
    for select in selectors:
        if threshold is not None and not bool((tokens[:, block] == mask_id).any()):
            return
        tokens, committed, confidence = denoise_step(model, tokens, attention_mask, block, select,
                                                     propose, mask_id=mask_id)
        yield tokens, committed, confidence


def denoise_step(
    model: Denoiser,
    tokens: Tensor,
    attention_mask: Tensor | None,
    block: slice,
    select: Selector,
    propose: Proposer,
    *,
    mask_id: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """One model call and one commit. Returns new tokens (B, L), committed (B, L) bool and the
    candidates' scores (B, L) (-inf elsewhere). `tokens` is not modified."""
    masked = tokens == mask_id  # (B, L)
    window = _logit_window(masked, block)
    logits = model(tokens, attention_mask, positions=window)  # (B, W, V)
    proposal, scores = propose(logits, tokens.shape, window)  # (B, W), (B, W)
    scores = scores.masked_fill(~masked[:, window], float("-inf"))
    commit = select(scores)  # (B, W)
    committed = torch.zeros_like(masked)
    committed[:, window] = commit
    new_tokens = tokens.clone()
    new_tokens[:, window] = torch.where(commit, proposal, tokens[:, window])
    confidence = torch.full(tokens.shape, float("-inf"), dtype=scores.dtype, device=scores.device)
    confidence[:, window] = scores
    return new_tokens, committed, confidence


def _logit_window(masked: Tensor, block: slice) -> slice:
    """Positions whose logits a step needs: the block, plus everything from the first position
    before it that is still masked (those compete too: official positions are only excluded
    *after* the current block, models/modeling_mmada.py `mmu_generate`)."""
    earlier = masked[:, : block.start].any(dim=0).nonzero()
    start = int(earlier[0, 0]) if earlier.numel() else block.start
    return slice(start, block.stop)


def _proposer(temperature: float, remasking: Remasking, generator: torch.Generator | None) -> Proposer:
    """Proposals and their scores, drawing random numbers in the official order and shapes:
    float64 Gumbel noise over the (B, L, V) logits first, then float32 (B, L) scores for
    "random" remasking (models/modeling_mmada.py `mmu_generate`)."""

    def propose(logits: Tensor, shape: tuple[int, int], window: slice) -> tuple[Tensor, Tensor]:
        uniform = None
        if temperature > 0:
            full = (shape[0], shape[1], logits.shape[-1])
            uniform = uniform_window(full, window, dtype=math_dtype(logits.device),
                                     device=logits.device, generator=generator)
        proposal = add_gumbel_noise(logits, temperature, uniform).argmax(dim=-1)  # (B, W)
        if remasking == "low_confidence":
            return proposal, token_confidence(logits, proposal)
        return proposal, random_scores(shape, window, device=logits.device, generator=generator)

    return propose


def last_step(steps: Iterator[StepT]) -> StepT:
    """Run an iterator of steps to the end and return the final step."""
    final = None
    for final in steps:  # noqa: B007 - only the last one is wanted
        pass
    if final is None:
        raise ValueError("the sampler ran no step: nothing was masked")
    return final


def _as_id_tensor(ids: Collection[int] | int | None, device: torch.device) -> Tensor | None:
    if ids is None:
        return None
    return torch.tensor([ids] if isinstance(ids, int) else sorted(ids), device=device)


def _check_text_settings(
    prompt_ids: Tensor, gen_length: int, block_length: int, steps: int, temperature: float,
    remasking: str, cfg_scale: float, threshold: float | None, attention_mask: Tensor | None,
) -> None:
    """Refuse invalid settings up front, naming the parameter (never corrected silently)."""
    if prompt_ids.ndim != 2 or prompt_ids.dtype != torch.long:
        raise ValueError(f"`prompt_ids` must be (B, P) int64, got {tuple(prompt_ids.shape)} {prompt_ids.dtype}")
    for name, value in (("gen_length", gen_length), ("block_length", block_length), ("steps", steps)):
        if value < 1:
            raise ValueError(f"`{name}` ({value}) must be >= 1")
    if gen_length % block_length:
        raise ValueError(f"`gen_length` ({gen_length}) must be divisible by `block_length` ({block_length})")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(f"`steps` ({steps}) must be divisible by the number of blocks "
                         f"({num_blocks} = gen_length / block_length)")
    check_policy(temperature, remasking, cfg_scale, threshold)
    if attention_mask is not None:
        check_left_padded(attention_mask, prompt_ids.shape, gen_length)


def check_policy(temperature: float, remasking: str, cfg_scale: float, threshold: float | None) -> None:
    """Validate the per-step options shared by text sampling and infilling."""
    if temperature < 0:
        raise ValueError(f"`temperature` ({temperature}) must be >= 0")
    if remasking not in REMASKING:
        raise ValueError(f"`remasking` ({remasking!r}) must be one of {REMASKING}")
    if cfg_scale < 0:
        raise ValueError(f"`cfg_scale` ({cfg_scale}) must be >= 0")
    if threshold is not None and not 0 < threshold <= 1:
        raise ValueError(f"`threshold` ({threshold}) must be in (0, 1]")


def check_left_padded(attention_mask: Tensor, prompt_shape: torch.Size, gen_length: int) -> None:
    """The mask covers the prompt (B, P) or prompt + generation (B, P + G); padding is on the left."""
    batch, prompt_len = prompt_shape
    if attention_mask.shape not in ((batch, prompt_len), (batch, prompt_len + gen_length)):
        raise ValueError(f"`attention_mask` must be ({batch}, {prompt_len}) or "
                         f"({batch}, {prompt_len + gen_length}), got {tuple(attention_mask.shape)}")
    mask = attention_mask.long()
    if bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise ValueError("`attention_mask` must be left-padded: 0s only before the first 1 of a row")
