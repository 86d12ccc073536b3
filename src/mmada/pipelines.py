"""The task API: one object holding the model, the tokenizers and the vocabulary.

`MMaDAPipeline.from_pretrained(path_or_id)` builds it; then `generate`, `chat`, `understand`,
`text_to_image`, `infill`, `inpaint` and `extrapolate` each turn user inputs (strings, messages, PIL
images) into a layout (`prompting`), run one of the two samplers (`sampling`), and decode the result.
Every method has a streaming twin (`iter_*`) that yields the sampler's steps with a preview, which is
what the CLI's progress bar and GIFs, the server and the web page consume.

Sampling defaults are the official demo's (Gen-Verse/MMaDA app.py; MMADA.md §3): text and
understanding 512 tokens / 256 steps / blocks of 128 / temperature 1, low-confidence remasking;
text-to-image 15 steps, guidance 3.5, cosine schedule. A checkpoint may ship `mmada_pipeline.json`
with its own defaults (the built-in tiny model does); every setting is overridable per call.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .checkpoint.hf import load_model
from .image_tokenizer import (
    ImageTokenizer,
    MagvitV2,
    PatchCodebook,
    image_to_tensor,
    load_image,
    load_image_tokenizer,
    tensor_to_image,
)
from .model import MMaDAModel
from .prompting import (
    OFFICIAL_RESERVED_IDS,
    TextTokenizer,
    Vocab,
    build_mmu_gen_batch,
    build_t2i_gen_batch,
    build_t2i_uncond,
    build_text_gen_batch,
    encode_chat,
    split_thinking,
)
from .sampling.common import SampleStep
from .sampling.image import iter_sample_t2i
from .sampling.inpaint import extend_grid, iter_infill_text
from .sampling.text import iter_sample_text, last_step
from .utils.files import CheckpointError, resolve_folder

logger = logging.getLogger(__name__)

PIPELINE_FILE = "mmada_pipeline.json"
IMAGE_TOKENIZER_DIRS = ("image_tokenizer", "vq_model", "magvitv2")
OFFICIAL_IMAGE_TOKENIZER = "showlab/magvitv2"  # R configs/*.yaml `vq_model.vq_model_name`
BLANK = "[BLANK]"


@dataclass(frozen=True)
class TextSampling:
    """Text / understanding sampler settings (`sampling.text.iter_sample_text`)."""

    gen_length: int = 512
    """Tokens to generate (a multiple of block_length)."""
    steps: int = 256
    """Denoising steps over the whole generation (a multiple of the number of blocks)."""
    block_length: int = 128
    """Semi-autoregressive block size."""
    temperature: float = 1.0
    """0 = greedy; > 0 = float64 Gumbel-max sampling."""
    remasking: str = "low_confidence"
    """"low_confidence" or "random"."""
    cfg_scale: float = 0.0
    """Unsupervised classifier-free guidance weight (prompt fully masked for the unconditional pass)."""
    threshold: float | None = None
    """Fast mode: commit every token whose confidence reaches this (Fast-dLLM); None = exact schedule."""
    early_stop: bool = True
    """Stop after a block that ends in EOS/EOT in every row (official `mmu_generate_fast`)."""


@dataclass(frozen=True)
class ImageSampling:
    """Text-to-image sampler settings (`sampling.image.iter_sample_t2i`)."""

    timesteps: int = 15
    """MaskGIT steps (the paper evaluates with 50)."""
    guidance_scale: float = 3.5
    """MUSE-form guidance weight w: (1 + w) cond - w uncond."""
    temperature: float = 1.0
    """Initial temperature of the confidence noise."""
    schedule: str = "cosine"
    """Mask-ratio schedule: cosine, linear, sigmoid, pow."""
    temperature_schedule: str = "compounding"
    """"compounding" (official: tau is multiplied by (1 - r) every step) or "linear"."""


@dataclass(frozen=True)
class PipelineSettings:
    """What `mmada_pipeline.json` may set: layout sizes and sampler defaults."""

    max_text_len: int = 512
    """Text part of the t2i / mmu layouts (the official demo uses 512)."""
    resolution: int | None = None
    """Image side in pixels; None = the image tokenizer's `image_size` (512 for MAGVIT-v2)."""
    text: TextSampling = field(default_factory=TextSampling)
    image: ImageSampling = field(default_factory=ImageSampling)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineSettings:
        data = dict(data)
        text = TextSampling(**data.pop("text", {}))
        image = ImageSampling(**data.pop("image", {}))
        return cls(**data, text=text, image=image)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TextResult:
    """A generated answer."""

    text: str
    """Everything generated, up to the first EOS / `<|eot_id|>`, special tokens removed."""
    answer: str
    """The text after `</think>` (the whole text without a think block)."""
    reasoning: str | None
    """The text inside `<think>…</think>`, if any."""
    tokens: Tensor
    """(G,) int64 generated ids (prompt excluded), as sampled."""


@dataclass(frozen=True)
class TextStep:
    """One step of a streaming text call: the sampler's step and a readable preview per row."""

    step: SampleStep
    previews: list[str]
    """Per row: the generated part so far, masked positions shown as '░'."""
    prompt_length: int
    """Columns of `step.tokens` that hold the (left-padded) prompt."""


def _overrides(defaults: Any, kwargs: dict[str, Any]) -> Any:
    names = {f.name for f in fields(defaults)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ValueError(f"unknown sampler setting {unknown[0]!r}; valid settings: {sorted(names)}")
    return replace(defaults, **kwargs)


class MMaDAPipeline:
    """Model + text tokenizer + image tokenizer + vocabulary, and the MMaDA tasks over them."""

    def __init__(
        self,
        model: MMaDAModel,
        tokenizer: TextTokenizer,
        vocab: Vocab,
        image_tokenizer: ImageTokenizer | None = None,
        settings: PipelineSettings | None = None,
    ) -> None:
        self.model, self.tokenizer, self.vocab = model, tokenizer, vocab
        self.image_tokenizer = image_tokenizer
        self.settings = settings or PipelineSettings()

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike[str],
        *,
        image_tokenizer: str | os.PathLike[str] | ImageTokenizer | None = None,
        dtype: str | torch.dtype = torch.float32,
        device: str | torch.device | None = "cpu",
        **settings: Any,
    ) -> MMaDAPipeline:
        """Load model, tokenizer and image tokenizer from a checkpoint folder or hub id.

        The image tokenizer is `image_tokenizer` when given, else a sub-folder of the checkpoint
        (`image_tokenizer/`, `vq_model/`, `magvitv2/`), else `showlab/magvitv2` when the model has the
        official 8192-code vocabulary. `settings` override `mmada_pipeline.json` (e.g. `max_text_len`).
        """
        folder = resolve_folder(path_or_id)
        model = load_model(folder, dtype=dtype, device=device)
        tokenizer = TextTokenizer.from_pretrained(folder)
        vocab = vocab_for(tokenizer, model)
        base = PipelineSettings()
        if (folder / PIPELINE_FILE).is_file():
            base = PipelineSettings.from_dict(json.loads((folder / PIPELINE_FILE).read_text(encoding="utf-8")))
        if isinstance(image_tokenizer, (MagvitV2, PatchCodebook)):
            vq = image_tokenizer.to(model.device)
        else:
            vq = _find_image_tokenizer(folder, image_tokenizer, vocab, device=model.device)
        return cls(model, tokenizer, vocab, vq, replace(base, **settings))

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def resolution(self) -> int:
        if self.settings.resolution is not None:
            return self.settings.resolution
        return self._vq().config.image_size

    def _vq(self) -> ImageTokenizer:
        if self.image_tokenizer is None:
            raise ValueError("this pipeline has no image tokenizer; pass `image_tokenizer=` to from_pretrained")
        return self.image_tokenizer

    # ---- text -----------------------------------------------------------------------------------
    def iter_chat(
        self, messages: Sequence[dict[str, str]], *, thinking: bool = False, generator: torch.Generator | None = None,
        **sampling: Any,
    ) -> Iterator[TextStep]:
        """Stream a reply to a conversation (the last message is the user's)."""
        prompt = encode_chat(self.tokenizer, messages, thinking=thinking)
        layout = build_text_gen_batch([prompt], vocab=self.vocab)
        yield from self._iter_text(layout.input_ids, layout.attention_mask, generator, sampling)

    def chat(self, messages: Sequence[dict[str, str]], *, thinking: bool = False,
             generator: torch.Generator | None = None, **sampling: Any) -> TextResult:
        """Reply to a multi-turn conversation; `thinking=True` adds the demo's `<think>` instruction."""
        return self._finish(self.iter_chat(messages, thinking=thinking, generator=generator, **sampling))

    def iter_generate(self, prompt: str, **kwargs: Any) -> Iterator[TextStep]:
        return self.iter_chat([{"role": "user", "content": prompt}], **kwargs)

    def generate(self, prompt: str, *, thinking: bool = False, generator: torch.Generator | None = None,
                 **sampling: Any) -> TextResult:
        """Answer one user prompt (rendered with the chat template)."""
        return self.chat([{"role": "user", "content": prompt}], thinking=thinking, generator=generator, **sampling)

    def iter_understand(
        self, image: Any, question: str, *, thinking: bool = False, generator: torch.Generator | None = None,
        **sampling: Any,
    ) -> Iterator[TextStep]:
        """Stream an answer about an image: the text sampler after the mmu prefix."""
        codes = self.encode_image(image)  # (1, N)
        prompt = encode_chat(self.tokenizer, [{"role": "user", "content": question}], thinking=thinking)
        layout = build_mmu_gen_batch(self.vocab.image_ids(codes), [prompt], vocab=self.vocab)
        yield from self._iter_text(layout.input_ids, layout.attention_mask, generator, sampling)

    def understand(self, image: Any, question: str, *, thinking: bool = False,
                   generator: torch.Generator | None = None, **sampling: Any) -> TextResult:
        """Answer `question` about `image` (a path, bytes, PIL image or array)."""
        return self._finish(self.iter_understand(image, question, thinking=thinking, generator=generator, **sampling))

    def _iter_text(self, ids: Tensor, mask: Tensor, generator: torch.Generator | None,
                   sampling: dict[str, Any]) -> Iterator[TextStep]:
        cfg = _overrides(self.settings.text, sampling)
        ids, mask = ids.to(self.device), mask.to(self.device)
        steps = iter_sample_text(
            self.model, ids, gen_length=cfg.gen_length, block_length=cfg.block_length, steps=cfg.steps,
            temperature=cfg.temperature, remasking=cfg.remasking, cfg_scale=cfg.cfg_scale,
            mask_id=self.vocab.mask_id, attention_mask=None if bool(mask.all()) else mask,
            threshold=cfg.threshold, stop_token_ids=self._stop_ids() if cfg.early_stop else None,
            generator=generator,
        )
        prompt_len = ids.shape[1]
        with torch.inference_mode():
            for step in steps:
                yield TextStep(step, [self.preview(row[prompt_len:]) for row in step.tokens], prompt_len)

    def _stop_ids(self) -> list[int]:
        return sorted({self.vocab.eos_id, self.vocab.eot_id})

    def _finish(self, steps: Iterator[TextStep]) -> TextResult:
        return self._finish_all(steps)[0]

    def _finish_all(self, steps: Iterator[TextStep]) -> list[TextResult]:
        last = last_step(steps)
        return [self.decode_answer(row[last.prompt_length :]) for row in last.step.tokens]

    # ---- batches (evaluation, serving) ----------------------------------------------------------
    def generate_batch(self, prompts: Sequence[str], *, thinking: bool = False,
                       generator: torch.Generator | None = None, **sampling: Any) -> list[TextResult]:
        """Answer several prompts in one left-padded batch (each row as if sampled alone)."""
        ids = [encode_chat(self.tokenizer, [{"role": "user", "content": p}], thinking=thinking) for p in prompts]
        layout = build_text_gen_batch(ids, vocab=self.vocab)
        return self._finish_all(self._iter_text(layout.input_ids, layout.attention_mask, generator, sampling))

    def understand_batch(self, images: Sequence[Any], questions: Sequence[str], *, thinking: bool = False,
                         generator: torch.Generator | None = None, **sampling: Any) -> list[TextResult]:
        """Answer one question per image in one batch."""
        if len(images) != len(questions):
            raise ValueError(f"got {len(images)} images but {len(questions)} questions")
        codes = torch.cat([self.encode_image(image) for image in images])  # (B, N)
        prompts = [encode_chat(self.tokenizer, [{"role": "user", "content": q}], thinking=thinking) for q in questions]
        layout = build_mmu_gen_batch(self.vocab.image_ids(codes), prompts, vocab=self.vocab)
        return self._finish_all(self._iter_text(layout.input_ids, layout.attention_mask, generator, sampling))

    def decode_answer(self, generated: Tensor) -> TextResult:
        """Cut generated ids at the first EOS / `<|eot_id|>` and split off the reasoning."""
        ids = generated.tolist()
        stops = set(self._stop_ids())
        end = next((i for i, t in enumerate(ids) if t in stops), len(ids))
        text = self.tokenizer.decode([t for t in ids[:end] if t != self.vocab.mask_id]).strip()
        split = split_thinking(text)
        return TextResult(text=text, answer=split.answer, reasoning=split.reasoning, tokens=generated.cpu())

    def preview(self, generated: Tensor) -> str:
        """Readable partial text: committed tokens decoded, masked ones shown as '░'."""
        ids = generated.tolist()
        out, run = [], []
        for t in [*ids, None]:
            if t is not None and t != self.vocab.mask_id:
                run.append(t)
                continue
            if run:
                out.append(self.tokenizer.decode(run))
                run = []
            if t is not None:
                out.append("░")
        return "".join(out)

    # ---- infilling ------------------------------------------------------------------------------
    def iter_infill(
        self, text: str, *, question: str | None = None, blank_length: int = 8, steps: int | None = None,
        generator: torch.Generator | None = None, **sampling: Any,
    ) -> Iterator[TextStep]:
        """Stream the filling of every `[BLANK]` in `text` (each becomes `blank_length` masks).

        With `question`, `text` is the assistant's answer to it (VQA-style answer completion);
        otherwise `text` stands alone after BOS.
        """
        if BLANK not in text:
            raise ValueError(f"`text` has no {BLANK} to fill")
        if blank_length < 1:
            raise ValueError(f"`blank_length` must be >= 1, got {blank_length}")
        head = encode_chat(self.tokenizer, [{"role": "user", "content": question}]) if question else [
            self.vocab.bos_id]
        ids = list(head)
        for i, part in enumerate(text.split(BLANK)):
            if i:
                ids += [self.vocab.mask_id] * blank_length
            ids += self.tokenizer.encode(part) if part else []
        cfg = _overrides(self.settings.text, sampling)
        n_blanks = text.count(BLANK)
        total = steps or max(n_blanks * blank_length // 2, 1)
        tensor = torch.tensor([ids], device=self.device)
        for step in iter_infill_text(self.model, tensor, steps=total, temperature=cfg.temperature,
                                     remasking=cfg.remasking, mask_id=self.vocab.mask_id, generator=generator):
            yield TextStep(step, [self.preview(step.tokens[0, len(head) :])], len(head))

    def infill(self, text: str, **kwargs: Any) -> str:
        """Fill every `[BLANK]` of `text` and return the completed text."""
        return last_step(self.iter_infill(text, **kwargs)).previews[0]

    # ---- images ---------------------------------------------------------------------------------
    def encode_image(self, image: Any, *, mode: str = "crop") -> Tensor:
        """An image (path, bytes, PIL, array) -> (1, N) codes at the pipeline's resolution.

        An integer tensor is taken as codes already: (N,) or (1, N), checked against the codebook.
        """
        vq = self._vq()
        if isinstance(image, Tensor) and not image.dtype.is_floating_point:
            codes = image.reshape(1, -1).long().to(self.device)
            if codes.numel() != self.num_image_tokens or int(codes.min()) < 0 or int(codes.max()) >= vq.codebook_size:
                raise ValueError(f"image codes must be {self.num_image_tokens} values in [0, {vq.codebook_size})")
            return codes
        pixels = image_to_tensor(load_image(image), self.resolution, mode=mode)[None]
        param = next(vq.parameters())
        return vq.encode(pixels.to(param.device, param.dtype))

    def decode_images(self, codes: Tensor, shape: tuple[int, int] | None = None) -> list[Image.Image]:
        """(B, N) codes -> PIL images."""
        vq = self._vq()
        with torch.inference_mode():
            pixels = vq.decode(codes.to(next(vq.parameters()).device), shape=shape)
        images = tensor_to_image(pixels.float().cpu())
        return images if isinstance(images, list) else [images]

    def _t2i_inputs(self, prompts: Sequence[str], guidance_scale: float) -> dict[str, Any]:
        n = self.num_image_tokens
        texts = [self.tokenizer.encode(p) for p in prompts]
        layout = build_t2i_gen_batch(texts, vocab=self.vocab, max_text_len=self.settings.max_text_len,
                                     num_image_tokens=n)
        kw: dict[str, Any] = dict(input_ids=layout.input_ids.to(self.device),
                                  attention_mask=layout.attention_mask.to(self.device))
        if guidance_scale > 0:
            null = build_t2i_uncond(vocab=self.vocab, max_text_len=self.settings.max_text_len, num_image_tokens=n,
                                    batch_size=len(prompts))
            kw.update(uncond_input_ids=null.input_ids.to(self.device),
                      uncond_attention_mask=null.attention_mask.to(self.device))
        return kw

    @property
    def num_image_tokens(self) -> int:
        return self._vq().num_tokens(self.resolution)

    def _t2i_kwargs(self, sampling: dict[str, Any]) -> dict[str, Any]:
        cfg = _overrides(self.settings.image, sampling)
        return dict(timesteps=cfg.timesteps, guidance_scale=cfg.guidance_scale, temperature=cfg.temperature,
                    schedule=cfg.schedule, temperature_schedule=cfg.temperature_schedule,
                    codebook_size=self.vocab.codebook_size, image_offset=self.vocab.image_offset,
                    mask_id=self.vocab.mask_id)

    def iter_text_to_image(self, prompt: str | Sequence[str], *, generator: torch.Generator | None = None,
                           **sampling: Any) -> Iterator[SampleStep]:
        """Stream MaskGIT steps; `step.tokens` (B, N) is each step's full prediction (decode for previews)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        kw = self._t2i_kwargs(sampling)
        inputs = self._t2i_inputs(prompts, kw["guidance_scale"])
        with torch.inference_mode():
            yield from iter_sample_t2i(self.model, **inputs, **kw, num_image_tokens=self.num_image_tokens,
                                       generator=generator)

    def text_to_image(self, prompt: str | Sequence[str], *, generator: torch.Generator | None = None,
                      **sampling: Any) -> list[Image.Image]:
        """Generate one image per prompt."""
        return self.decode_images(last_step(self.iter_text_to_image(prompt, generator=generator, **sampling)).tokens)

    def iter_inpaint(self, image: Any, region: Any, prompt: str, *, generator: torch.Generator | None = None,
                     **sampling: Any) -> Iterator[SampleStep]:
        """Stream the repainting of `region` of `image` under `prompt`.

        `region`: a (h, w) bool array/tensor over the code grid, or a PIL/array mask at any size
        (non-zero = repaint), or a pixel box (left, top, right, bottom).
        """
        codes = self.encode_image(image)  # (1, N)
        side = math.isqrt(codes.shape[1])
        grid = region_to_grid(region, side, self.resolution).to(self.device)
        kw = self._t2i_kwargs(sampling)
        inputs = self._t2i_inputs([prompt], kw["guidance_scale"])
        n = codes.shape[1]
        image_pos = slice(inputs["input_ids"].shape[1] - n - 1, inputs["input_ids"].shape[1] - 1)
        ids = inputs["input_ids"].clone()
        ids[:, image_pos] = torch.where(grid.flatten()[None], self.vocab.mask_id, self.vocab.image_ids(codes))
        inputs["input_ids"] = ids
        with torch.inference_mode():
            yield from iter_sample_t2i(self.model, **inputs, **kw, num_image_tokens=n, generator=generator)

    def inpaint(self, image: Any, region: Any, prompt: str, **kwargs: Any) -> Image.Image:
        """Repaint `region` of `image` under `prompt`; codes outside the region are kept exactly."""
        return self.decode_images(last_step(self.iter_inpaint(image, region, prompt, **kwargs)).tokens)[0]

    def extrapolate(self, image: Any, prompt: str, *, pad: tuple[int, int, int, int] = (0, 0, 0, 4),
                    generator: torch.Generator | None = None, **sampling: Any) -> Image.Image:
        """Extend `image` by `pad` = (top, bottom, left, right) rows/columns of codes under `prompt`."""
        codes = self.encode_image(image)
        side = math.isqrt(codes.shape[1])
        kw = self._t2i_kwargs(sampling)
        inputs = self._t2i_inputs([prompt], kw["guidance_scale"])
        ids = inputs["input_ids"].clone()
        ids[:, -codes.shape[1] - 1 : -1] = self.vocab.image_ids(codes)
        ids, mask, _ = extend_grid(ids, inputs["attention_mask"], grid=(side, side), pad=pad,
                                   mask_id=self.vocab.mask_id)
        height, width = side + pad[0] + pad[1], side + pad[2] + pad[3]
        inputs.update(input_ids=ids, attention_mask=mask)
        with torch.inference_mode():
            last = last_step(iter_sample_t2i(self.model, **inputs, **kw, num_image_tokens=height * width,
                                             generator=generator))
        return self.decode_images(last.tokens, shape=(height, width))[0]


def vocab_for(tokenizer: TextTokenizer, model: MMaDAModel) -> Vocab:
    """The vocabulary of a checkpoint: the official reserved table when the tokenizer is the real
    LLaDA one (large enough to hold it), else the reserved slots looked up by name."""
    config = model.config
    if config.codebook_size is None:
        raise CheckpointError("config.json has no `codebook_size`; cannot place image tokens")
    reserved = OFFICIAL_RESERVED_IDS if len(tokenizer) > max(OFFICIAL_RESERVED_IDS.values()) else None
    return Vocab.from_tokenizer(tokenizer, vocab_size=config.vocab_size, codebook_size=config.codebook_size,
                                mask_token_id=config.mask_token_id, reserved=reserved)


def _find_image_tokenizer(folder: Path, given: str | os.PathLike[str] | None, vocab: Vocab,
                          device: torch.device) -> ImageTokenizer | None:
    if given is not None:
        return load_image_tokenizer(given, device=device)
    for name in IMAGE_TOKENIZER_DIRS:
        if (folder / name).is_dir():
            return load_image_tokenizer(folder / name, device=device)
    if vocab.codebook_size == 8192:
        return load_image_tokenizer(OFFICIAL_IMAGE_TOKENIZER, device=device)
    logger.warning("no image tokenizer found for %s: image tasks are unavailable", folder)
    return None


def region_to_grid(region: Any, side: int, resolution: int) -> Tensor:
    """A repaint region as a (side, side) bool grid over the image codes."""
    if isinstance(region, tuple | list) and len(region) == 4 and all(isinstance(v, int | float) for v in region):
        left, top, right, bottom = (float(v) for v in region)
        if not (0 <= left < right <= resolution and 0 <= top < bottom <= resolution):
            raise ValueError(f"region box {tuple(region)} must lie inside the {resolution}x{resolution} image")
        cell = resolution / side
        centres = (torch.arange(side) + 0.5) * cell
        rows = (centres >= top) & (centres < bottom)
        cols = (centres >= left) & (centres < right)
        return rows[:, None] & cols[None, :]
    if isinstance(region, Image.Image):
        region = np.asarray(region.convert("L").resize((side, side), Image.Resampling.BOX)) > 127
    grid = torch.as_tensor(np.asarray(region)).bool() if not isinstance(region, Tensor) else region.bool()
    if grid.shape != (side, side):
        if grid.dim() != 2:
            raise ValueError(f"region must be 2-D (a mask), got shape {tuple(grid.shape)}")
        grid = torch.nn.functional.interpolate(grid[None, None].float(), size=(side, side), mode="area")[0, 0] > 0.5
    if not bool(grid.any()):
        raise ValueError("region is empty: nothing to repaint")
    return grid
