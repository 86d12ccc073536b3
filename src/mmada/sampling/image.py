"""Text-to-image sampling: the MaskGIT parallel decoding loop (MMaDA §3.2).

The image part of the t2i layout, `... <|soi|> img_1 .. img_N <|eoi|>`, starts fully masked (or
partly given: inpainting). Every step t = 0 .. T-1:

1. runs the denoiser, with MUSE classifier-free guidance against the null prompt when w > 0, and
   keeps the logits of the N image positions and of the codebook's K vocabulary ids only;
2. samples a code for every position from the softmax (known positions keep their code);
3. keeps the most confident codes and re-masks floor(n * gamma((t + 1) / T)) of them (at least 1,
   at most all unknown but one), where n is the number of unknown positions at the start and
   gamma the mask-ratio schedule (`diffusion.schedules`); confidence = log p + tau_t * Gumbel.

The result is the last step's sample, every position filled.

Faithful to Gen-Verse/MMaDA models/modeling_mmada.py `t2i_generate` and models/sampling.py
(`mask_by_random_topk`), draw for draw: one `multinomial` over all (B * N) positions, then one
float32 `uniform_` of shape (B, N) per step, both from `generator`. Differences, on purpose:
- the caller's `input_ids` is not written into;
- the temperature annealing is a named choice: "compounding" (official default: tau is
  multiplied by (1 - (t + 1) / T) at every step, so it decays like a product) or "linear"
  (tau_t = temperature * (1 - (t + 1) / T), lucidrains/muse-maskgit-pytorch `annealed_temp`);
- n counts the unknown positions at the start (MaskGIT's rule, and what the official comment
  says) instead of N; the two agree when the whole image is generated;
- given codes are never re-masked, even at temperatures where noise could outrank them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor

from mmada.diffusion.schedules import Schedule, get_schedule
from mmada.sampling.common import SampleStep, key_padding_mask
from mmada.sampling.denoisers import ClassifierFreeGuidance, Denoiser, replace_prefix
from mmada.sampling.text import last_step

TemperatureSchedule = Literal["compounding", "linear"]
LOG_EPS = 1e-20  # clamp inside the logs of models/sampling.py `log`


def iter_sample_t2i(
    model: Denoiser,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    *,
    uncond_input_ids: Tensor | None = None,
    uncond_attention_mask: Tensor | None = None,
    timesteps: int,
    guidance_scale: float,
    temperature: float = 1.0,
    schedule: str | Schedule = "cosine",
    temperature_schedule: TemperatureSchedule = "compounding",
    num_image_tokens: int,
    codebook_size: int,
    image_offset: int,
    mask_id: int,
    generator: torch.Generator | None = None,
) -> Iterator[SampleStep]:
    """Decode the masked image positions of a t2i layout, yielding the state after every step.

    Args:
        model: the `Denoiser`.
        input_ids: (B, L) int64 t2i layout `[pad..] <|t2i|> text <|soi|> img_1..img_N <|eoi|>`;
            image positions hold `mask_id` (to generate) or a token `image_offset + code` (kept).
        attention_mask: (B, L) padding mask (0 on the left padding) or None.
        uncond_input_ids: (B, L_u) the same layout with the null prompt; its first L - N - 2
            positions (everything before `<|soi|>`) are the unconditional text part.
        uncond_attention_mask: (B, L_u) its padding mask, or None.
        timesteps: T, the number of steps (model calls).
        guidance_scale: MUSE guidance weight w >= 0: (1 + w) * cond - w * uncond.
        temperature: initial Gumbel temperature of the confidences.
        schedule: mask-ratio schedule, a name for `get_schedule` or a function.
        temperature_schedule: "compounding" (official) or "linear" annealing.
        num_image_tokens: N; codebook_size: K; image_offset: token id of code 0; mask_id: [MASK].
        generator: source of all randomness (None: torch's global generator).

    Returns:
        An iterator of `SampleStep`, one per step: tokens = (B, N) codes of the step's sample,
        committed = the codes kept (not re-masked) for the next step. The settings are checked
        when this function is called, before the first step.
    """
    _check_t2i_settings(input_ids, attention_mask, uncond_input_ids, uncond_attention_mask, timesteps,
                        guidance_scale, temperature, temperature_schedule, num_image_tokens,
                        codebook_size, image_offset, mask_id)
    text_len = input_ids.shape[1] - num_image_tokens - 2
    image = slice(text_len + 1, text_len + 1 + num_image_tokens)  # between <|soi|> and <|eoi|>
    vocab = slice(image_offset, image_offset + codebook_size)
    if guidance_scale > 0:
        model = _null_prompt_guidance(model, guidance_scale, uncond_input_ids, uncond_attention_mask, text_len)
    gamma = get_schedule(schedule) if isinstance(schedule, str) else schedule
    taus = annealed_temperatures(temperature, timesteps, temperature_schedule)
    return _iter_maskgit(model, input_ids, key_padding_mask(attention_mask), image, vocab, gamma, taus,
                         mask_id=mask_id, generator=generator)


@torch.no_grad()
def _iter_maskgit(
    model: Denoiser, input_ids: Tensor, attention_mask: Tensor | None, image: slice, vocab: slice,
    gamma: Schedule, taus: list[float], *, mask_id: int, generator: torch.Generator | None,
) -> Iterator[SampleStep]:
    """The MaskGIT loop over the `image` positions of `input_ids`, one step per temperature."""
    tokens = input_ids.clone()  # (B, L); the official code writes into the caller's tensor
    unknown = tokens[:, image] == mask_id  # (B, N)
    codes = torch.where(unknown, 0, tokens[:, image] - vocab.start)  # (B, N)
    n_unknown = unknown.sum(dim=-1, keepdim=True)  # (B, 1)
    for t, tau in enumerate(taus):
        logits = model(tokens, attention_mask, positions=image)[..., vocab]  # (B, N, K)
        num_masked = remask_count(gamma, (t + 1) / len(taus), n_unknown, unknown)  # (B, 1)
        codes, keep, confidence = maskgit_step(logits, codes, unknown, num_masked, tau, generator)
        unknown = ~keep
        tokens = tokens.clone()
        tokens[:, image] = torch.where(keep, codes + vocab.start, mask_id)
        yield SampleStep(step=t, block=0, tokens=codes, committed=keep, confidence=confidence)


@torch.inference_mode()
def sample_t2i(
    model: Denoiser,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    *,
    uncond_input_ids: Tensor | None = None,
    uncond_attention_mask: Tensor | None = None,
    timesteps: int,
    guidance_scale: float,
    temperature: float = 1.0,
    schedule: str | Schedule = "cosine",
    temperature_schedule: TemperatureSchedule = "compounding",
    num_image_tokens: int,
    codebook_size: int,
    image_offset: int,
    mask_id: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """`iter_sample_t2i` run to the end; returns the image codes (B, N) int64 in [0, K)."""
    steps = iter_sample_t2i(
        model, input_ids, attention_mask, uncond_input_ids=uncond_input_ids,
        uncond_attention_mask=uncond_attention_mask, timesteps=timesteps,
        guidance_scale=guidance_scale, temperature=temperature, schedule=schedule,
        temperature_schedule=temperature_schedule, num_image_tokens=num_image_tokens,
        codebook_size=codebook_size, image_offset=image_offset, mask_id=mask_id, generator=generator,
    )
    return last_step(steps).tokens


def _null_prompt_guidance(
    model: Denoiser, scale: float, uncond_ids: Tensor, uncond_mask: Tensor | None, text_len: int
) -> Denoiser:
    """MUSE guidance against the null prompt: its text part, then the current image part."""
    prefix_mask = None if uncond_mask is None else uncond_mask[:, :text_len]
    return ClassifierFreeGuidance(model, scale, replace_prefix(uncond_ids[:, :text_len], prefix_mask))


def maskgit_step(
    logits: Tensor, codes: Tensor, unknown: Tensor, num_masked: Tensor, temperature: float,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sample every unknown position, then keep all but the `num_masked` least confident.

    Args:
        logits: (B, N, K) image logits (already guided).
        codes: (B, N) int64 current codes; read only where `unknown` is False.
        unknown: (B, N) bool, positions masked before this step.
        num_masked: (B, 1) int64, how many positions to re-mask (< number of unknown ones).
        temperature: tau of this step, scales the Gumbel noise of the confidences.

    Returns:
        codes (B, N) with every position filled, keep (B, N) bool, confidence (B, N) float.
    """
    probs = logits.float().softmax(dim=-1)  # (B, N, K), float32 also for half-precision models
    sampled = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(codes.shape)  # (B, N)
    sampled = torch.where(unknown, sampled, codes)
    chosen = probs.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)  # (B, N)
    chosen = torch.where(unknown, chosen, torch.finfo(chosen.dtype).max)  # given codes: top confidence
    noise = torch.zeros_like(chosen).uniform_(0, 1, generator=generator)  # drawn even when tau = 0
    gumbel = -torch.log(torch.log(noise.clamp(min=LOG_EPS)).neg().clamp(min=LOG_EPS))
    confidence = torch.log(chosen.clamp(min=LOG_EPS)) + temperature * gumbel  # (B, N)
    cut_off = confidence.sort(dim=-1).values.gather(-1, num_masked)  # (B, 1)
    remask = (confidence < cut_off) & unknown
    return sampled, ~remask, confidence


def remask_count(gamma: Schedule, ratio: float, n_unknown: Tensor, unknown: Tensor) -> Tensor:
    """max(1, min(#unknown - 1, floor(n * gamma(ratio)))) per row, as (B, 1) int64.

    gamma is evaluated on a float32 0-d tensor like the official `noise_schedule(torch.tensor(ratio))`:
    the float32 cosine at ratio 1 is slightly negative, its floor -1, clamped up to 1.
    """
    target = (n_unknown * gamma(torch.tensor(ratio))).floor()  # (B, 1) float32
    return torch.minimum(unknown.sum(dim=-1, keepdim=True) - 1, target).clamp(min=1).long()


def annealed_temperatures(temperature: float, timesteps: int, kind: TemperatureSchedule) -> list[float]:
    """The Gumbel temperature of each step t = 0 .. T-1.

    "compounding": the official `temperature = temperature * (1.0 - ratio)` re-assigned every step
    (models/modeling_mmada.py `t2i_generate`), i.e. tau_t = temperature * prod_{s<=t} (1 - (s+1)/T).
    "linear": tau_t = temperature * (1 - (t + 1) / T) (lucidrains/muse-maskgit-pytorch).
    """
    taus, tau = [], temperature
    for t in range(timesteps):
        ratio = (t + 1) / timesteps
        tau = tau * (1.0 - ratio) if kind == "compounding" else temperature * (1.0 - ratio)
        taus.append(tau)
    return taus


def _check_t2i_settings(
    input_ids: Tensor, attention_mask: Tensor | None, uncond_input_ids: Tensor | None,
    uncond_attention_mask: Tensor | None, timesteps: int, guidance_scale: float, temperature: float,
    temperature_schedule: str, num_image_tokens: int, codebook_size: int, image_offset: int,
    mask_id: int,
) -> None:
    """Refuse invalid settings up front, naming the parameter (never corrected silently)."""
    if input_ids.ndim != 2 or input_ids.dtype != torch.long:
        raise ValueError(f"`input_ids` must be (B, L) int64, got {tuple(input_ids.shape)} {input_ids.dtype}")
    batch, length = input_ids.shape
    for name, value in (("timesteps", timesteps), ("num_image_tokens", num_image_tokens),
                        ("codebook_size", codebook_size)):
        if value < 1:
            raise ValueError(f"`{name}` ({value}) must be >= 1")
    for name, value in (("guidance_scale", guidance_scale), ("temperature", temperature)):
        if value < 0:
            raise ValueError(f"`{name}` ({value}) must be >= 0")
    if temperature_schedule not in ("compounding", "linear"):
        raise ValueError(f"`temperature_schedule` ({temperature_schedule!r}) must be 'compounding' or 'linear'")
    if num_image_tokens + 2 > length:
        raise ValueError(f"`num_image_tokens` ({num_image_tokens}) + <|soi|> + <|eoi|> exceed the "
                         f"sequence length ({length})")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"`attention_mask` must be {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}")
    image = input_ids[:, length - num_image_tokens - 1 : length - 1]
    is_code = (image >= image_offset) & (image < image_offset + codebook_size)
    if not bool((is_code | (image == mask_id)).all()):
        raise ValueError(f"image positions of `input_ids` must hold `mask_id` ({mask_id}) or image tokens "
                         f"[{image_offset}, {image_offset + codebook_size})")
    if guidance_scale > 0:
        _check_uncond(uncond_input_ids, uncond_attention_mask, batch, length - num_image_tokens - 2,
                      guidance_scale)


def _check_uncond(ids: Tensor | None, mask: Tensor | None, batch: int, text_len: int, scale: float) -> None:
    if ids is None:
        raise ValueError(f"`uncond_input_ids` is required when `guidance_scale` ({scale}) > 0")
    if ids.ndim != 2 or ids.shape[0] != batch or ids.shape[1] < text_len:
        raise ValueError(f"`uncond_input_ids` must be ({batch}, >= {text_len}), got {tuple(ids.shape)}")
    if mask is not None and mask.shape != ids.shape:
        raise ValueError(f"`uncond_attention_mask` must be {tuple(ids.shape)}, got {tuple(mask.shape)}")
