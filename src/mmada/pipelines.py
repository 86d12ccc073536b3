"""The task API: one object holding the model, the tokenizers and the vocabulary.

`MMaDAPipeline.from_pretrained(path_or_id)` builds it; then `generate`, `chat`, `understand`,
`text_to_image`, `infill`, `inpaint` and `extrapolate` each turn user inputs (strings, messages, PIL
images) into a layout (`prompting`), run a sampler (`sampling`: the text loop, the MaskGIT loop, or
their editing compositions in `sampling.inpaint`), and decode the result. Every method has a streaming
twin (`iter_*`) that yields the sampler's steps (with a preview for text), which is what the CLI's
progress bar and GIFs, the server and the web page consume.

Sampler settings are `sampling.TextSampling` / `sampling.ImageSampling`, whose defaults are the official
demo's (Gen-Verse/MMaDA app.py; MMADA.md §3). A checkpoint may ship `mmada_pipeline.json` with its own
defaults (the built-in tiny model does); a call takes a settings object (`sampling=`), keyword overrides
of its fields (`gen_length=...`), or both (the keywords apply over the object). Every call also takes
`preset=` ("exact", "fast", "fastest"; `sampling.PRESETS` for text, `sampling.IMAGE_PRESETS` for images),
applied over the defaults (or `sampling=`) and under the keywords.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

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
    region_to_grid,
    tensor_to_image,
)
from .model import MMaDAModel
from .prompting import (
    TextTokenizer,
    TokenLayout,
    Vocab,
    build_mmu_gen_batch,
    build_t2i_gen_batch,
    build_t2i_uncond,
    build_text_gen_batch,
    encode_chat,
    split_thinking,
    vocab_for,
)
from .sampling import (
    ImageSampling,
    InfillSampling,
    SampleStep,
    TextSampling,
    apply_preset,
    iter_extrapolate_image,
    iter_infill_text,
    iter_inpaint_image,
    iter_sample_t2i,
    iter_sample_text,
    last_step,
    place_image,
)
from .sampling.common import model_max_length
from .sampling.config import SettingsT, check_names
from .utils.config import build, to_dict
from .utils.files import CheckpointError, resolve_folder

logger = logging.getLogger(__name__)

PIPELINE_FILE = "mmada_pipeline.json"
IMAGE_TOKENIZER_DIRS = ("image_tokenizer", "vq_model", "magvitv2")
OFFICIAL_IMAGE_TOKENIZER = "showlab/magvitv2"  # R configs/*.yaml `vq_model.vq_model_name`
BLANK = "[BLANK]"
INFILL_SETTINGS = frozenset({"temperature", "remasking"})
"""The text settings `infill` takes (its steps come from the blanks, it runs as one block)."""
__all__ = ["ImageSampling", "MMaDAPipeline", "PipelineSettings", "TextResult", "TextSampling", "TextStep"]


@dataclass(frozen=True)
class PipelineSettings:
    """What `mmada_pipeline.json` may set: layout sizes and sampler defaults."""

    max_text_len: int = 512
    """Text part of the t2i / mmu layouts (the official demo uses 512)."""
    resolution: int | None = None
    """Image side in pixels; None = the image tokenizer's `image_size` (512 for MAGVIT-v2)."""
    text: TextSampling = field(default_factory=TextSampling)
    image: ImageSampling = field(default_factory=ImageSampling)

    def __post_init__(self) -> None:
        if isinstance(self.max_text_len, bool) or not isinstance(self.max_text_len, int) or self.max_text_len < 1:
            raise ValueError(f"`max_text_len` must be a positive integer, got {self.max_text_len!r}")
        if self.resolution is not None and (not isinstance(self.resolution, int) or self.resolution < 1):
            raise ValueError(f"`resolution` must be a positive integer or null, got {self.resolution!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PipelineSettings:
        """From `mmada_pipeline.json`'s mapping, by the one config loader (unknown keys and bad values named)."""
        return build(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


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


def _read_settings(path: Path) -> PipelineSettings:
    """A folder's `mmada_pipeline.json`; a malformed one is refused naming the file and the key."""
    try:
        return PipelineSettings.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, UnicodeDecodeError) as err:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"{path}: {err}") from None


def _settings(base: SettingsT, overrides: Mapping[str, Any]) -> SettingsT:
    """`base` with keyword overrides (`gen_length=...`), unknown names refused."""
    check_names(type(base), overrides)
    return replace(base, **overrides)


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
        limit = model_max_length(model)
        if limit is not None and self.settings.max_text_len >= limit:
            raise ValueError(f"`max_text_len` ({self.settings.max_text_len}) must be below the model's "
                             f"max_sequence_length ({limit}), which also holds the image tokens")
        if limit is not None and image_tokenizer is not None:
            self._check_t2i_length(self.num_image_tokens)

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
        valid = [f.name for f in fields(PipelineSettings)]
        for key in settings:
            if key not in valid:
                raise ValueError(f"unknown pipeline setting {key!r}; valid settings: {valid}")
        folder = resolve_folder(path_or_id)
        model = load_model(folder, dtype=dtype, device=device)
        tokenizer = TextTokenizer.from_pretrained(folder)
        vocab = vocab_for(tokenizer, model)
        base = PipelineSettings()
        if (folder / PIPELINE_FILE).is_file():
            base = _read_settings(folder / PIPELINE_FILE)
        vq: ImageTokenizer | None
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
    def text_settings(self, sampling: TextSampling | None = None, preset: str | None = None,
                      **overrides: Any) -> TextSampling:
        """The text settings of a call: `sampling` (default: the pipeline's), then the named `preset`
        (`sampling.PRESETS`), then keyword overrides."""
        return _settings(apply_preset(sampling or self.settings.text, preset), overrides)

    def image_settings(self, sampling: ImageSampling | None = None, preset: str | None = None,
                       **overrides: Any) -> ImageSampling:
        """The image settings of a call: `sampling` (default: the pipeline's), then the named `preset`
        (`sampling.IMAGE_PRESETS`), then keyword overrides."""
        return _settings(apply_preset(sampling or self.settings.image, preset), overrides)

    def iter_chat(
        self, messages: Sequence[dict[str, str]], *, thinking: bool = False, generator: torch.Generator | None = None,
        sampling: TextSampling | None = None, **overrides: Any,
    ) -> Iterator[TextStep]:
        """Stream a reply to a conversation (the last message is the user's)."""
        settings = self.text_settings(sampling, **overrides)
        prompt = encode_chat(self.tokenizer, messages, thinking=thinking)
        yield from self._iter_text(build_text_gen_batch([prompt], vocab=self.vocab), settings, generator)

    def chat(self, messages: Sequence[dict[str, str]], *, thinking: bool = False,
             generator: torch.Generator | None = None, sampling: TextSampling | None = None,
             **overrides: Any) -> TextResult:
        """Reply to a multi-turn conversation; `thinking=True` adds the demo's `<think>` instruction."""
        steps = self.iter_chat(messages, thinking=thinking, generator=generator, sampling=sampling, **overrides)
        return self._finish(steps)

    def iter_generate(self, prompt: str, **kwargs: Any) -> Iterator[TextStep]:
        return self.iter_chat([{"role": "user", "content": prompt}], **kwargs)

    def generate(self, prompt: str, *, thinking: bool = False, generator: torch.Generator | None = None,
                 sampling: TextSampling | None = None, **overrides: Any) -> TextResult:
        """Answer one user prompt (rendered with the chat template)."""
        return self.chat([{"role": "user", "content": prompt}], thinking=thinking, generator=generator,
                         sampling=sampling, **overrides)

    def iter_understand(
        self, image: Any, question: str, *, thinking: bool = False, generator: torch.Generator | None = None,
        sampling: TextSampling | None = None, **overrides: Any,
    ) -> Iterator[TextStep]:
        """Stream an answer about an image: the text sampler after the mmu prefix."""
        settings = self.text_settings(sampling, **overrides)
        codes = self.encode_image(image)  # (1, N)
        prompt = encode_chat(self.tokenizer, [{"role": "user", "content": question}], thinking=thinking)
        layout = build_mmu_gen_batch(self.vocab.image_ids(codes), [prompt], vocab=self.vocab)
        yield from self._iter_text(layout, settings, generator)

    def understand(self, image: Any, question: str, *, thinking: bool = False,
                   generator: torch.Generator | None = None, sampling: TextSampling | None = None,
                   **overrides: Any) -> TextResult:
        """Answer `question` about `image` (a path, bytes, PIL image or array)."""
        steps = self.iter_understand(image, question, thinking=thinking, generator=generator, sampling=sampling,
                                     **overrides)
        return self._finish(steps)

    def _iter_text(self, layout: TokenLayout, settings: TextSampling,
                   generator: torch.Generator | None) -> Iterator[TextStep]:
        layout = layout.to(self.device)
        mask = layout.attention_mask
        steps = iter_sample_text(self.model, layout.input_ids, settings, mask_id=self.vocab.mask_id,
                                 attention_mask=None if bool(mask.all()) else mask, stop_token_ids=self._stop_ids(),
                                 generator=generator)
        answer = layout.spans.answer.as_slice().start  # generation prompts end where their answer starts
        with torch.inference_mode():
            for step in steps:
                yield TextStep(step, [self.preview(row[answer:]) for row in step.tokens], answer)

    def _stop_ids(self) -> list[int]:
        return sorted({self.vocab.eos_id, self.vocab.eot_id})

    def _finish(self, steps: Iterator[TextStep]) -> TextResult:
        return self._finish_all(steps)[0]

    def _finish_all(self, steps: Iterator[TextStep]) -> list[TextResult]:
        last = last_step(steps)
        return [self.decode_answer(row[last.prompt_length :]) for row in last.step.tokens]

    # ---- batches (evaluation, serving) ----------------------------------------------------------
    def generate_batch(self, prompts: Sequence[str], *, thinking: bool = False,
                       generator: torch.Generator | None = None, sampling: TextSampling | None = None,
                       **overrides: Any) -> list[TextResult]:
        """Answer several prompts in one left-padded batch (each row as if sampled alone)."""
        settings = self.text_settings(sampling, **overrides)
        ids = [encode_chat(self.tokenizer, [{"role": "user", "content": p}], thinking=thinking) for p in prompts]
        return self._finish_all(self._iter_text(build_text_gen_batch(ids, vocab=self.vocab), settings, generator))

    def complete_batch(self, texts: Sequence[str], *, parse_special: bool = False, truncate: bool = False,
                       generator: torch.Generator | None = None, sampling: TextSampling | None = None,
                       **overrides: Any) -> list[TextResult]:
        """Continue raw texts, no chat template added, in one left-padded batch (each row as if alone).

        Each text is encoded as it is, after bos: a base-model prompt, or a prompt its caller rendered
        (lm-evaluation-harness renders its own chat template). `parse_special=True` turns special-token
        strings into their ids, which a rendered template is made of; keep it False for text a user typed,
        so that it can never hold control tokens. `truncate=True` cuts a prompt with no room left for
        `gen_length` below the model's max_sequence_length to its last tokens (bos kept), with a
        warning; by default such a prompt is refused.
        """
        settings = self.text_settings(sampling, **overrides)
        bos, limit = self.vocab.bos_id, model_max_length(self.model)
        ids = [row[1:] if row[:1] == [bos] else row  # build_text_gen_batch puts bos back
               for row in self.tokenizer.encode_batch(list(texts), parse_special=parse_special)]
        if truncate and limit is not None:
            room = max(limit - settings.gen_length - 1, 0)  # prompt tokens that fit after bos
            if any(len(row) > room for row in ids):
                logger.warning("prompts cut to their last %d tokens to leave room for gen_length %d", room,
                               settings.gen_length)
            ids = [row[len(row) - room :] if len(row) > room else row for row in ids]
        return self._finish_all(self._iter_text(build_text_gen_batch(ids, vocab=self.vocab), settings, generator))

    def understand_batch(self, images: Sequence[Any], questions: Sequence[str], *, thinking: bool = False,
                         generator: torch.Generator | None = None, sampling: TextSampling | None = None,
                         **overrides: Any) -> list[TextResult]:
        """Answer one question per image in one batch."""
        settings = self.text_settings(sampling, **overrides)
        if len(images) != len(questions):
            raise ValueError(f"got {len(images)} images but {len(questions)} questions")
        codes = torch.cat([self.encode_image(image) for image in images])  # (B, N)
        prompts = [encode_chat(self.tokenizer, [{"role": "user", "content": q}], thinking=thinking) for q in questions]
        layout = build_mmu_gen_batch(self.vocab.image_ids(codes), prompts, vocab=self.vocab)
        return self._finish_all(self._iter_text(layout, settings, generator))

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
        otherwise `text` stands alone after BOS. `steps` defaults to half the masked tokens. Of the
        text settings, only `temperature` and `remasking` apply (defaults: the pipeline's); any other
        is refused.
        """
        check_names(TextSampling, sampling, INFILL_SETTINGS, where="infill")
        if BLANK not in text:
            raise ValueError(f"`text` has no {BLANK} to fill")
        if blank_length < 1:
            raise ValueError(f"`blank_length` must be >= 1, got {blank_length}")
        head = encode_chat(self.tokenizer, [{"role": "user", "content": question}]) if question else [
            self.vocab.bos_id]
        masks, limit = text.count(BLANK) * blank_length, model_max_length(self.model)
        if limit is not None and len(head) + masks > limit:  # before building a list of `masks` ids
            raise ValueError(f"{text.count(BLANK)} blanks x `blank_length` ({blank_length}) = {masks} masks + "
                             f"{len(head)} prompt tokens exceeds the model's max_sequence_length ({limit})")
        ids = list(head)
        for i, part in enumerate(text.split(BLANK)):
            if i:
                ids += [self.vocab.mask_id] * blank_length
            ids += self.tokenizer.encode(part, parse_special=False) if part else []  # user text: never control tokens
        total = steps or max(text.count(BLANK) * blank_length // 2, 1)
        inherited = {name: getattr(self.settings.text, name) for name in INFILL_SETTINGS}
        settings = InfillSampling(steps=total, **(inherited | sampling))
        tensor = torch.tensor([ids], device=self.device)
        for step in iter_infill_text(self.model, tensor, settings, mask_id=self.vocab.mask_id, generator=generator):
            yield TextStep(step, [self.preview(step.tokens[0, len(head) :])], len(head))

    def infill(self, text: str, **kwargs: Any) -> str:
        """Fill every `[BLANK]` of `text` and return the completed text."""
        return last_step(self.iter_infill(text, **kwargs)).previews[0]

    # ---- images ---------------------------------------------------------------------------------
    def encode_image(self, image: Any, *, mode: Literal["crop", "squash"] = "crop") -> Tensor:
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

    @property
    def num_image_tokens(self) -> int:
        return self._vq().num_tokens(self.resolution)

    def _check_t2i_length(self, num_image_tokens: int) -> None:
        """A t2i layout is max_text_len + image tokens + 3 specials; refuse it above the model's length."""
        limit = model_max_length(self.model)
        length = self.settings.max_text_len + num_image_tokens + 3
        if limit is not None and length > limit:
            raise ValueError(f"`max_text_len` ({self.settings.max_text_len}) + {num_image_tokens} image tokens + 3 = "
                             f"{length} tokens exceeds the model's max_sequence_length ({limit})")

    def _t2i_layouts(self, prompts: Sequence[str], settings: ImageSampling) -> tuple[TokenLayout, TokenLayout | None]:
        """The t2i generation layout of `prompts` and, under guidance, the null prompt's."""
        n, text_len = self.num_image_tokens, self.settings.max_text_len
        self._check_t2i_length(n)
        texts = [self.tokenizer.encode(p, parse_special=False) for p in prompts]  # user text: never control tokens
        layout = build_t2i_gen_batch(texts, vocab=self.vocab, max_text_len=text_len, num_image_tokens=n)
        if settings.guidance_scale <= 0:
            return layout.to(self.device), None
        null = build_t2i_uncond(vocab=self.vocab, max_text_len=text_len, num_image_tokens=n, batch_size=len(prompts))
        return layout.to(self.device), null.to(self.device)

    def _image_layouts(
        self, image: Any, prompt: str, settings: ImageSampling
    ) -> tuple[TokenLayout, TokenLayout | None, int]:
        """The t2i layout of `prompt` holding the codes of `image`, the null prompt's, and the grid side."""
        codes = self.encode_image(image)  # (1, N)
        layout, uncond = self._t2i_layouts([prompt], settings)
        return place_image(layout, self.vocab.image_ids(codes)), uncond, math.isqrt(codes.shape[1])

    def iter_text_to_image(self, prompt: str | Sequence[str], *, generator: torch.Generator | None = None,
                           sampling: ImageSampling | None = None, **overrides: Any) -> Iterator[SampleStep]:
        """Stream MaskGIT steps; `step.tokens` (B, N) is each step's full prediction (decode for previews)."""
        settings = self.image_settings(sampling, **overrides)
        layout, uncond = self._t2i_layouts([prompt] if isinstance(prompt, str) else list(prompt), settings)
        with torch.inference_mode():
            yield from iter_sample_t2i(self.model, layout, settings, self.vocab, uncond=uncond, generator=generator)

    def text_to_image(self, prompt: str | Sequence[str], *, generator: torch.Generator | None = None,
                      sampling: ImageSampling | None = None, **overrides: Any) -> list[Image.Image]:
        """Generate one image per prompt."""
        steps = self.iter_text_to_image(prompt, generator=generator, sampling=sampling, **overrides)
        return self.decode_images(last_step(steps).tokens)

    def iter_inpaint(self, image: Any, region: Any, prompt: str, *, generator: torch.Generator | None = None,
                     sampling: ImageSampling | None = None, **overrides: Any) -> Iterator[SampleStep]:
        """Stream the repainting of `region` of `image` under `prompt` (`sampling.iter_inpaint_image`).

        `region`: a (h, w) bool array/tensor over the code grid, or a PIL/array mask at any size
        (non-zero = repaint), or a pixel box (left, top, right, bottom); see `region_to_grid`.
        """
        settings = self.image_settings(sampling, **overrides)
        layout, uncond, side = self._image_layouts(image, prompt, settings)
        grid = region_to_grid(region, side, self.resolution).to(self.device)  # (side, side)
        with torch.inference_mode():
            yield from iter_inpaint_image(self.model, layout, grid.flatten()[None], settings, self.vocab,
                                          uncond=uncond, generator=generator)

    def inpaint(self, image: Any, region: Any, prompt: str, **kwargs: Any) -> Image.Image:
        """Repaint `region` of `image` under `prompt`; codes outside the region are kept exactly."""
        return self.decode_images(last_step(self.iter_inpaint(image, region, prompt, **kwargs)).tokens)[0]

    def extrapolate(self, image: Any, prompt: str, *, pad: tuple[int, int, int, int] = (0, 0, 0, 4),
                    generator: torch.Generator | None = None, sampling: ImageSampling | None = None,
                    **overrides: Any) -> Image.Image:
        """Extend `image` by `pad` = (top, bottom, left, right) rows/columns of codes under `prompt`
        (`sampling.iter_extrapolate_image`)."""
        settings = self.image_settings(sampling, **overrides)
        if len(pad) != 4 or min(pad) < 0:
            raise ValueError(f"`pad` {pad} must be 4 non-negative counts (top, bottom, left, right)")
        side = math.isqrt(self.num_image_tokens)
        self._check_t2i_length((side + pad[0] + pad[1]) * (side + pad[2] + pad[3]))  # before allocating the grid
        layout, uncond, side = self._image_layouts(image, prompt, settings)
        with torch.inference_mode():
            last = last_step(iter_extrapolate_image(self.model, layout, settings, self.vocab, grid=(side, side),
                                                    pad=pad, uncond=uncond, generator=generator))
        return self.decode_images(last.tokens, shape=(side + pad[0] + pad[1], side + pad[2] + pad[3]))[0]


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
