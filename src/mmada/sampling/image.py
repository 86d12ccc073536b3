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

import torch
from torch import Tensor

from mmada.diffusion.schedules import Schedule, get_schedule
from mmada.prompting import TokenLayout, Vocab
from mmada.sampling.common import SampleStep, check_length, key_padding_mask, select_topk_per_row
from mmada.sampling.config import ImageSampling, TemperatureSchedule
from mmada.sampling.denoisers import (
    CachingDenoiser,
    ClassifierFreeGuidance,
    Denoiser,
    Positions,
    check_caching,
    replace_prefix,
)
from mmada.sampling.text import last_step

LOG_EPS = 1e-20  # clamp inside the logs of models/sampling.py `log`


def iter_sample_t2i(
    model: Denoiser,
    layout: TokenLayout,
    settings: ImageSampling,
    vocab: Vocab,
    *,
    uncond: TokenLayout | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[SampleStep]:
    """Decode the masked image positions of a t2i layout, yielding the state after every step.

    Args:
        model: the `Denoiser`.
        layout: (B, L) t2i layout `[pad..] <|t2i|> text <|soi|> img_1..img_N <|eoi|>`
            (`prompting.build_t2i_gen_batch`); its image span holds `vocab.mask_id` (to generate)
            or image tokens (kept), and its attention mask hides the left padding.
        settings: timesteps T, guidance_scale w >= 0 ((1 + w) * cond - w * uncond), the initial
            Gumbel temperature of the confidences, the mask-ratio schedule and the temperature
            annealing ("compounding", official, or "linear").
        vocab: where the image codes sit in the vocabulary, and the [MASK] id.
        uncond: with w > 0, the same layout with the null prompt (`prompting.build_t2i_uncond`);
            only its positions before `<|soi|>` are used.
        generator: source of all randomness (None: torch's global generator).

    Returns:
        An iterator of `SampleStep`, one per step: tokens = (B, N) codes of the step's sample,
        committed = the codes kept (not re-masked) for the next step. The tensors are checked when
        this function is called, before the first step.
    """
    image = _image_span(layout, vocab)
    num_image = image.stop - image.start
    check_length(model, layout.seq_len, f"the t2i layout ({layout.seq_len - num_image} text and special "
                                        f"tokens + {num_image} image tokens)")
    if settings.timesteps > num_image:
        raise ValueError(f"`timesteps` ({settings.timesteps}) must be <= the {num_image} image tokens to "
                         "unmask: every step commits at least one")
    text_len = image.start - 1  # everything before <|soi|>
    if settings.cache != "none":
        model = image_cache(model, settings, image, vocab.mask_id)
    codes = slice(vocab.image_offset, vocab.image_end)
    model = CodebookLogits(model, codes)  # under guidance: it then combines K columns, not the whole vocabulary
    if settings.guidance_scale > 0:
        uncond = _check_uncond(uncond, layout.batch_size, text_len, settings.guidance_scale)
        model = _null_prompt_guidance(model, settings.guidance_scale, uncond.input_ids, uncond.attention_mask,
                                      text_len)
    gamma = get_schedule(settings.schedule)
    taus = annealed_temperatures(settings.temperature, settings.timesteps, settings.temperature_schedule)
    return _iter_maskgit(model, layout.input_ids, key_padding_mask(layout.attention_mask), image, gamma,
                         taus, mask_id=vocab.mask_id, generator=generator, exact=settings.cache == "none")


@torch.no_grad()
def _iter_maskgit(
    model: CodebookLogits | Denoiser, input_ids: Tensor, attention_mask: Tensor | None, image: slice,
    gamma: Schedule, taus: list[float], *, mask_id: int, generator: torch.Generator | None, exact: bool = True,
) -> Iterator[SampleStep]:
    """The MaskGIT loop over the `image` positions of `input_ids`, one step per temperature; `model` gives
    the codebook's logits only (a `CodebookLogits`, possibly under guidance)."""
    vocab = _codebook_of(model)
    tokens = input_ids.clone()  # (B, L); the official code writes into the caller's tensor
    unknown = tokens[:, image] == mask_id  # (B, N)
    codes = torch.where(unknown, 0, tokens[:, image] - vocab.start)  # (B, N)
    n_unknown = unknown.sum(dim=-1, keepdim=True)  # (B, 1)
    for t, tau in enumerate(taus):
        logits = model(tokens, attention_mask, positions=image)  # (B, N, K)
        num_masked = remask_count(gamma, (t + 1) / len(taus), n_unknown, unknown)  # (B, 1)
        codes, keep, confidence = maskgit_step(logits, codes, unknown, num_masked, tau, generator, exact=exact)
        unknown = ~keep
        tokens = tokens.clone()
        tokens[:, image] = torch.where(keep, codes + vocab.start, mask_id)
        yield SampleStep(step=t, block=0, tokens=codes, committed=keep, confidence=confidence)


@torch.inference_mode()
def sample_t2i(
    model: Denoiser,
    layout: TokenLayout,
    settings: ImageSampling,
    vocab: Vocab,
    *,
    uncond: TokenLayout | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """`iter_sample_t2i` run to the end; returns the image codes (B, N) int64 in [0, K)."""
    return last_step(iter_sample_t2i(model, layout, settings, vocab, uncond=uncond, generator=generator)).tokens


class CodebookLogits:
    """A `Denoiser` returning only the logits of the image codebook's K ids, `codes` (B, ..., K): the
    MaskGIT loop reads nothing else, so guidance and the cache's logit reuse then work on K columns."""

    def __init__(self, denoiser: Denoiser, codes: slice) -> None:
        self.denoiser, self.codes = denoiser, codes

    def __call__(self, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                 positions: Positions = None) -> Tensor:
        return self.denoiser(input_ids, attention_mask, positions=positions)[..., self.codes]


def _codebook_of(model: object) -> slice:
    """The codebook slice of the `CodebookLogits` at the bottom of a guidance wrapper (or `model` itself)."""
    inner = getattr(model, "denoiser", None) if not isinstance(model, CodebookLogits) else model
    if not isinstance(inner, CodebookLogits):
        raise TypeError("the MaskGIT loop needs a CodebookLogits denoiser")
    return inner.codes


def image_cache(model: Denoiser, settings: ImageSampling, image: slice, mask_id: int) -> ImageStepCache:
    """The MaskGIT loop's KV cache for `settings` (see `ImageStepCache`)."""
    return ImageStepCache(check_caching(model), image, mask_id, settled=settings.cache == "settled",
                          reuse=settings.cache_reuse, refresh=settings.cache_refresh)


class ImageStepCache:
    """A `Denoiser` for the MaskGIT loop that reuses keys/values (and, optionally, logits) across steps.

    The first call is the exact forward and records the cache; the text prefix (everything before
    the image span) is never recomputed after it. Later calls recompute the whole image span
    (`settled` False), or only the codes still undecided and those kept by the previous step, each
    re-encoded once with its code (`settled`: dKV-Cache's delayed caching, arXiv 2505.15781). With
    `reuse` r > 0, a call recomputes only the (1 - r) share of the undecided codes whose last max logit
    is lowest, and hands back the last logits for the others (ML-Cache, Lumina-DiMOO
    generators/image_generation_generator.py: the sure positions change least). Every `refresh`-th
    call is the exact forward again (0 = never; 1 = every call, the uncached logits). Rows are
    independent: a batch gets the logits each row would get alone.
    """

    def __init__(self, model: CachingDenoiser, image: slice, mask_id: int, *, settled: bool, reuse: float,
                 refresh: int) -> None:
        self.model, self.image, self.mask_id = model, image, mask_id
        self.settled, self.reuse, self.refresh = settled, reuse, refresh
        self.cache = model.new_cache()
        self.calls = 0
        self.logits: Tensor | None = None  # (B, N, V), the last logits handed out
        self.masked: Tensor | None = None  # (B, N), undecided codes at the previous call

    def __call__(self, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                 positions: Positions = None) -> Tensor:
        if positions != self.image:
            raise ValueError(f"the image cache serves the image span {self.image}, asked for {positions}")
        calls, self.calls = self.calls, self.calls + 1
        masked = input_ids[:, self.image] == self.mask_id  # (B, N)
        before, self.masked = self.masked, masked
        image, length = self.image, input_ids.shape[1]
        if calls == 0 or (self.refresh and calls % self.refresh == 0):  # exact, and recorded
            self.logits = self.model(input_ids, attention_mask, positions=image, cache=self.cache)
            return self.logits
        if not self.settled or self.logits is None or before is None:
            self.logits = self.model(input_ids, attention_mask, positions=image, cache=self.cache,
                                     fresh=slice(image.start, length))
            return self.logits
        wanted = masked
        if self.reuse > 0:
            wanted = masked & _lowest_share(self.logits.amax(dim=-1), masked, 1 - self.reuse)
        ask = wanted | (before & ~masked)  # + the codes kept by the previous step: re-encoded once
        if not bool(ask.any()):
            return self.logits
        fresh = torch.zeros_like(input_ids, dtype=torch.bool)
        fresh[:, image] = ask
        columns = ask.any(dim=0).nonzero().squeeze(1)  # (F,) image offsets the model computes
        new = self.model(input_ids, attention_mask, cache=self.cache, fresh=fresh)  # (B, F, V)
        take = wanted[:, columns]  # (B, F): rows replace only the logits they asked for
        logits = self.logits  # updated in place: what a call returns is valid until the next call
        logits[:, columns] = torch.where(take[..., None], new.to(logits.dtype), logits[:, columns])
        return logits


def _lowest_share(score: Tensor, candidates: Tensor, share: float) -> Tensor:
    """(B, N) bool: per row, the ceil(share * #candidates) candidates with the lowest score (at least one)."""
    count = (candidates.sum(dim=-1) * share).ceil().long().clamp(min=1)
    ranked = score.masked_fill(~candidates, float("inf"))
    return select_topk_per_row(-ranked, torch.minimum(count, candidates.sum(dim=-1)))


def _null_prompt_guidance(
    model: Denoiser, scale: float, uncond_ids: Tensor, uncond_mask: Tensor | None, text_len: int
) -> Denoiser:
    """MUSE guidance against the null prompt: its text part, then the current image part."""
    prefix_mask = None if uncond_mask is None else uncond_mask[:, :text_len]
    return ClassifierFreeGuidance(model, scale, replace_prefix(uncond_ids[:, :text_len], prefix_mask))


def maskgit_step(
    logits: Tensor, codes: Tensor, unknown: Tensor, num_masked: Tensor, temperature: float,
    generator: torch.Generator | None, *, exact: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sample every unknown position, then keep all but the `num_masked` least confident.

    `exact` draws as the official sampler does (one categorical draw per position, known ones
    included, by `torch.multinomial`); otherwise only the unknown positions are drawn, by inverse
    CDF (one uniform each instead of K exponentials): the same distribution, another random stream.

    Args:
        logits: (B, N, K) image logits (already guided).
        codes: (B, N) int64 current codes; read only where `unknown` is False.
        unknown: (B, N) bool, positions masked before this step.
        num_masked: (B, 1) int64, how many positions to re-mask (< number of unknown ones).
        temperature: tau of this step, scales the Gumbel noise of the confidences.

    Returns:
        codes (B, N) with every position filled, keep (B, N) bool, confidence (B, N) float.
    """
    if exact:
        probs = logits.float().softmax(dim=-1)  # (B, N, K), float32 also for half-precision models
        sampled = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(codes.shape)  # (B, N)
        chosen = probs.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)  # (B, N)
    else:
        sampled, chosen = _sample_unknown(logits, unknown, generator)
    sampled = torch.where(unknown, sampled, codes)
    chosen = torch.where(unknown, chosen, torch.finfo(chosen.dtype).max)  # given codes: top confidence
    noise = torch.zeros_like(chosen).uniform_(0, 1, generator=generator)  # drawn even when tau = 0
    gumbel = -torch.log(torch.log(noise.clamp(min=LOG_EPS)).neg().clamp(min=LOG_EPS))
    confidence = torch.log(chosen.clamp(min=LOG_EPS)) + temperature * gumbel  # (B, N)
    cut_off = confidence.sort(dim=-1).values.gather(-1, num_masked)  # (B, 1)
    remask = (confidence < cut_off) & unknown
    return sampled, ~remask, confidence


def _sample_unknown(logits: Tensor, unknown: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Codes drawn from softmax(logits) at the `unknown` positions only, and their probabilities;
    (B, N) each, 0 at the known positions."""
    probs = logits[unknown].float().softmax(dim=-1)  # (U, K)
    cdf = probs.cumsum(dim=-1)
    draw = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device) * cdf[:, -1:]
    picked = torch.searchsorted(cdf, draw).clamp(max=probs.shape[1] - 1)  # (U, 1)
    sampled = torch.zeros(unknown.shape, dtype=torch.long, device=logits.device)
    chosen = torch.zeros(unknown.shape, dtype=probs.dtype, device=logits.device)
    sampled[unknown] = picked.squeeze(1)
    chosen[unknown] = probs.gather(-1, picked).squeeze(1)
    return sampled, chosen


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


def _image_span(layout: TokenLayout, vocab: Vocab) -> slice:
    """The image positions of a t2i layout, checked: a non-empty span after `<|soi|>` holding only
    `mask_id` or image tokens (refused by name, never corrected)."""
    image = layout.spans.image.as_slice()
    if image.stop <= image.start or image.start < 1:
        raise ValueError(f"the layout's image span {image} must be non-empty and follow <|soi|>")
    ids = layout.input_ids[:, image]
    if not bool((vocab.is_image_token(ids) | (ids == vocab.mask_id)).all()):
        raise ValueError(f"image positions of the layout must hold `mask_id` ({vocab.mask_id}) or image tokens "
                         f"[{vocab.image_offset}, {vocab.image_end})")
    return image


def _check_uncond(uncond: TokenLayout | None, batch: int, text_len: int, scale: float) -> TokenLayout:
    if uncond is None:
        raise ValueError(f"`uncond` (the null-prompt layout) is required when `guidance_scale` ({scale}) > 0")
    if uncond.batch_size != batch or uncond.seq_len < text_len:
        raise ValueError(f"`uncond` must be ({batch}, >= {text_len}), got {tuple(uncond.input_ids.shape)}")
    return uncond
