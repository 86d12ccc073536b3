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

`TextSampling.cache` ("prefix" / "dual") puts a `BlockCachedDenoiser` under the guidance wrapper:
the same loop, with a model call that reuses keys/values between refreshes (Fast-dLLM §3.2).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from mmada.sampling.commit import Selector, step_selector
from mmada.sampling.common import (
    SampleStep,
    add_gumbel_noise,
    check_binary_mask,
    check_length,
    key_padding_mask,
    num_transfer_tokens,
    random_scores,
    token_confidence,
    uniform_window,
)
from mmada.sampling.config import CommitRule, InfillSampling, Remasking, TextSampling
from mmada.sampling.denoisers import (
    BlockCachedDenoiser,
    ClassifierFreeGuidance,
    Denoiser,
    check_caching,
    mask_positions,
)
from mmada.utils.device import math_dtype

StepT = TypeVar("StepT")


def iter_sample_text(
    model: Denoiser,
    prompt_ids: Tensor,
    settings: TextSampling,
    *,
    mask_id: int,
    attention_mask: Tensor | None = None,
    stop_token_ids: Collection[int] | int | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[SampleStep]:
    """Generate `settings.gen_length` tokens after each prompt, yielding the state after every step.

    Args:
        model: the `Denoiser` (e.g. `MMaDAModel`).
        prompt_ids: (B, P) int64, left-padded when rows differ in length.
        settings: gen_length, block_length, steps, temperature, remasking, cfg_scale (the
            unconditional input masks every prompt position, padding included), threshold
            (Fast-dLLM commits instead of fixed quotas: each block runs until it is complete) and
            early_stop (see `stop_token_ids`).
        mask_id: the [MASK] token id (`Vocab.mask_id`).
        attention_mask: (B, P) or (B, P + gen_length) padding mask, 1 = real token, or None.
        stop_token_ids: with `settings.early_stop`, stop after a block when every row's last token
            of that block is one of these ids (official `mmu_generate_fast` with `eot_token`);
            later blocks stay masked. The pipeline passes EOS and `<|eot_id|>`.
        generator: source of all randomness (None: torch's global generator).

    Returns:
        An iterator of `SampleStep`, tokens (B, P + gen_length), one per step. The tensors are
        checked when this function is called, before the first step.
    """
    _check_prompt(prompt_ids, attention_mask, settings.gen_length)
    if settings.cache != "none":
        check_caching(model)
    gen_length, block_length = settings.gen_length, settings.block_length
    batch, prompt_len = prompt_ids.shape
    check_length(model, prompt_len + gen_length, f"prompt ({prompt_len}) + gen_length ({gen_length})")
    tokens = torch.cat([prompt_ids, prompt_ids.new_full((batch, gen_length), mask_id)], dim=1)  # (B, P+G)
    if attention_mask is not None and attention_mask.shape[1] == prompt_len:
        attention_mask = torch.cat([attention_mask.bool(), tokens.new_ones(batch, gen_length).bool()], 1)
    blocks = [slice(start, start + block_length) for start in range(prompt_len, tokens.shape[1], block_length)]
    return iter_denoise_blocks(
        model, tokens, attention_mask, settings, blocks=blocks, steps_per_block=settings.steps // len(blocks),
        mask_id=mask_id, stop_token_ids=stop_token_ids if settings.early_stop else None, generator=generator,
    )


@torch.inference_mode()
def sample_text(
    model: Denoiser,
    prompt_ids: Tensor,
    settings: TextSampling,
    *,
    mask_id: int,
    attention_mask: Tensor | None = None,
    stop_token_ids: Collection[int] | int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """`iter_sample_text` run to the end; returns (B, P + gen_length) int64, prompt included."""
    steps = iter_sample_text(model, prompt_ids, settings, mask_id=mask_id, attention_mask=attention_mask,
                             stop_token_ids=stop_token_ids, generator=generator)
    return last_step(steps).tokens


@torch.no_grad()
def iter_denoise_blocks(
    model: Denoiser,
    tokens: Tensor,
    attention_mask: Tensor | None,
    policy: TextSampling | InfillSampling,
    *,
    blocks: Sequence[slice],
    steps_per_block: int,
    mask_id: int,
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
        policy: the per-step settings read here: temperature, remasking, threshold, cfg_scale,
            and (`TextSampling` only) cache, cache_refresh.
        blocks: position ranges decoded in order; each gets `steps_per_block` steps (quota
            mode), or runs until it has no mask left (threshold mode).
        stop_token_ids: stop after a block whose last token is one of these in every row.
        Other arguments: as in `iter_sample_text`.
    """
    cached = None
    if isinstance(policy, TextSampling) and policy.cache != "none":
        model = cached = BlockCachedDenoiser(model, policy.cache, policy.cache_refresh, policy.cache_keep,
                                                   mask_id=mask_id, drift=policy.cache_drift)
    cfg_scale = policy.cfg_scale
    if cfg_scale > 0:
        model = ClassifierFreeGuidance(model, cfg_scale, mask_positions(tokens != mask_id, mask_id))
    attention_mask = key_padding_mask(attention_mask)
    stop_ids = _as_id_tensor(stop_token_ids, tokens.device)
    exact = not policy.adaptive and not (isinstance(policy, TextSampling) and policy.cache != "none")
    propose = _proposer(policy.temperature, policy.remasking, generator, precise=exact)
    step = 0
    for index, block in enumerate(blocks):
        if cached is not None:
            cached.start_block(block)
        block_steps = _iter_block(model, tokens, attention_mask, block, propose, steps=steps_per_block,
                                  rule=policy, mask_id=mask_id)
        for tokens, committed, confidence in block_steps:  # `tokens` becomes the state after each step
            yield SampleStep(step=step, block=index, tokens=tokens, committed=committed,
                             confidence=confidence)
            step += 1
        if stop_ids is not None and bool(torch.isin(tokens[:, block.stop - 1], stop_ids).all()):
            return


Proposer = Callable[[Tensor, tuple[int, int], slice], tuple[Tensor, Tensor]]
"""(B, W, V) logits, full (B, L) shape, window -> (B, W) proposals, (B, W) scores."""


def _iter_block(
    model: Denoiser, tokens: Tensor, attention_mask: Tensor | None, block: slice, propose: Proposer,
    *, steps: int, rule: CommitRule, mask_id: int,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """The steps of one block: fixed quotas from the transfer schedule, or, with an adaptive rule, as
    many steps as it takes to leave no mask in the block. A block that an early commit completed
    ends there."""
    if rule.adaptive:
        # At least one commit per unfinished row and step, so the masks up to the block's end bound
        # the steps (the bound only binds for a model that proposes [MASK] itself).
        budget = int((tokens[:, : block.stop] == mask_id).sum(dim=1).max())
        selectors = [step_selector(rule)] * budget
    else:
        quotas = num_transfer_tokens(tokens[:, block] == mask_id, steps)  # (B, steps)
        selectors = [step_selector(rule, quotas[:, k]) for k in range(steps)]
    check_done = rule.adaptive or rule.early_commit is not None
    for select in selectors:
        if check_done and not bool((tokens[:, block] == mask_id).any()):
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
    batch, length = tokens.shape
    proposal, scores = propose(logits, (batch, length), window)  # (B, W), (B, W)
    scores = scores.masked_fill(~masked[:, window], float("-inf"))
    commit = select(scores, logits)  # (B, W)
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


def _proposer(temperature: float, remasking: Remasking, generator: torch.Generator | None, *,
              precise: bool = True) -> Proposer:
    """Proposals and their scores, drawing random numbers in the official order and shapes:
    float64 Gumbel noise over the (B, L, V) logits first, then float32 (B, L) scores for
    "random" remasking (models/modeling_mmada.py `mmu_generate`). `precise`: float64
    confidences (the exact modes; see `token_confidence`)."""

    def propose(logits: Tensor, shape: tuple[int, int], window: slice) -> tuple[Tensor, Tensor]:
        uniform = None
        if temperature > 0:
            full = (shape[0], shape[1], logits.shape[-1])
            uniform = uniform_window(full, window, dtype=math_dtype(logits.device),
                                     device=logits.device, generator=generator)
        proposal = add_gumbel_noise(logits, temperature, uniform).argmax(dim=-1)  # (B, W)
        if remasking == "low_confidence":
            return proposal, token_confidence(logits, proposal, precise=precise)
        return proposal, random_scores(shape, window, device=logits.device, generator=generator)

    return propose


def last_step(steps: Iterable[StepT]) -> StepT:
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


def _check_prompt(prompt_ids: Tensor, attention_mask: Tensor | None, gen_length: int) -> None:
    """Refuse malformed prompts up front, naming the argument (never corrected silently)."""
    if prompt_ids.ndim != 2 or prompt_ids.dtype != torch.long:
        raise ValueError(f"`prompt_ids` must be (B, P) int64, got {tuple(prompt_ids.shape)} {prompt_ids.dtype}")
    if attention_mask is not None:
        check_left_padded(attention_mask, prompt_ids.shape, gen_length)


def check_left_padded(attention_mask: Tensor, prompt_shape: torch.Size, gen_length: int) -> None:
    """The mask covers the prompt (B, P) or prompt + generation (B, P + G); padding is on the left."""
    batch, prompt_len = prompt_shape
    check_binary_mask(attention_mask)
    if attention_mask.shape not in ((batch, prompt_len), (batch, prompt_len + gen_length)):
        raise ValueError(f"`attention_mask` must be ({batch}, {prompt_len}) or "
                         f"({batch}, {prompt_len + gen_length}), got {tuple(attention_mask.shape)}")
    mask = attention_mask.long()
    if bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise ValueError("`attention_mask` must be left-padded: 0s only before the first 1 of a row")
