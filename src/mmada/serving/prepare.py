"""Requests to work: map the OpenAI fields onto the sampler settings, enforce the limits, tokenize.

Each `prepare_*` returns the job kind, its batching key and its inputs (`work.TextWork`, ...), or raises
`ApiError(400)` naming the request field. Settings go through `pipe.text_settings` /
`pipe.image_settings` (the pipeline's defaults, then the `preset`, then the request's values), so the
settings classes' own checks apply, and their messages are rewritten to name the request's fields:

| request            | text sampler (`TextSampling`)                                    |
|--------------------|------------------------------------------------------------------|
| `max_tokens`       | `gen_length`: rounded up to whole blocks, the answer cut back    |
| `steps`            | `steps` (default: the model's steps per token x the canvas)       |
| `block_length`     | `block_length` (default: the model's, or the canvas if smaller)  |
| `temperature`      | `temperature`                                                    |

| request            | image sampler (`ImageSampling`)  |
|--------------------|----------------------------------|
| `steps`            | `timesteps`                      |
| `guidance_scale`   | `guidance_scale`                 |
| `temperature`      | `temperature`                    |
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Hashable
from dataclasses import replace
from typing import Any

from PIL import Image

from ..pipelines import BLANK, MMaDAPipeline
from ..prompting import encode_chat
from ..sampling import ImageSampling, TextSampling
from ..sampling.common import model_max_length
from .config import ServeConfig
from .errors import ApiError
from .images import center_square, decode_base64, open_image, repaint_region
from .schemas import ChatCompletionRequest, CompletionRequest, ImageEditForm, ImageGenerationRequest, ImagePart
from .work import CompletionWork, ImageWork, TextWork

TEXT_FIELDS = {"gen_length": "max_tokens", "steps": "steps", "block_length": "block_length",
               "temperature": "temperature"}
IMAGE_FIELDS = {"timesteps": "steps", "guidance_scale": "guidance_scale", "temperature": "temperature"}
MAX_STOPS, MAX_STOP_CHARS = 4, 64
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
DEFAULT_BLANK_LENGTH = 8


def check_model(name: str | None, config: ServeConfig) -> None:
    if name is not None and name != config.model_name:
        raise ApiError(404, f"`model`: the model {name!r} does not exist; this server serves "
                       f"{config.model_name!r}", param="model", code="model_not_found")


def _at_most(value: int, limit: int, param: str) -> None:
    if value > limit:
        raise ApiError(400, f"`{param}` ({value}) must be <= {limit} on this server", param=param,
                       code="limit_exceeded")


def _settings_error(err: ValueError, names: dict[str, str]) -> ApiError:
    """A settings class's ValueError, its field names replaced by the request's."""
    message = re.sub(r"`(\w+)`", lambda m: f"`{names.get(m.group(1), m.group(1))}`", str(err))
    found = re.search(r"`(\w+)`", str(err))
    param = names.get(found.group(1), found.group(1)) if found else None
    return ApiError(400, message, param=param, code="invalid_value")


def _seed(seed: int | None) -> int:
    return secrets.randbits(63) if seed is None else seed


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if len(stops) > MAX_STOPS or any(not 0 < len(s) <= MAX_STOP_CHARS for s in stops):
        raise ApiError(400, f"`stop`: at most {MAX_STOPS} strings of 1 to {MAX_STOP_CHARS} characters",
                       param="stop", code="invalid_value")
    return stops


def text_settings(pipe: MMaDAPipeline, config: ServeConfig, *, max_tokens: int | None, steps: int | None,
                  block_length: int | None, temperature: float | None, preset: str | None) -> tuple[TextSampling, int]:
    """The sampler settings of a chat request and the answer's token cap."""
    base = pipe.text_settings(preset=preset)
    tokens = max_tokens or base.gen_length
    _at_most(tokens, config.max_tokens, "max_tokens")
    block = block_length or min(base.block_length, tokens)
    canvas = math.ceil(tokens / block) * block  # the sampler fills whole blocks; the answer is cut back
    blocks = canvas // block
    if steps is None:  # the model's steps per token, in whole steps per block
        steps = max(1, round(canvas * base.steps / base.gen_length / blocks)) * blocks
    _at_most(steps, config.max_steps, "steps")
    values: dict[str, Any] = {"gen_length": canvas, "block_length": block, "steps": steps}
    if temperature is not None:
        values["temperature"] = float(temperature)
    try:
        return replace(base, **values), tokens
    except ValueError as err:
        raise _settings_error(err, TEXT_FIELDS) from None


def _check_length(pipe: MMaDAPipeline, config: ServeConfig, prompt_tokens: int, canvas: int, param: str) -> None:
    if prompt_tokens > config.max_prompt_tokens:
        raise ApiError(400, f"`{param}` ({prompt_tokens} tokens) must be <= {config.max_prompt_tokens} tokens on this "
                       "server", param=param, code="limit_exceeded")
    limit = model_max_length(pipe.model)
    if limit is not None and prompt_tokens + canvas > limit:
        raise ApiError(400, f"`{param}` ({prompt_tokens} tokens) + `max_tokens` (a canvas of {canvas}) exceed the "
                       f"model's context of {limit} tokens", param=param, code="context_length_exceeded")


def _chat_messages(body: ChatCompletionRequest, config: ServeConfig) -> tuple[list[dict[str, str]], Image.Image | None]:
    """Text-only messages for the chat template, and the conversation's one image (if any)."""
    messages, image = [], None
    for i, message in enumerate(body.messages):
        if isinstance(message.content, str):
            messages.append({"role": message.role, "content": message.content})
            continue
        texts = []
        for j, part in enumerate(message.content):
            if not isinstance(part, ImagePart):
                texts.append(part.text)
                continue
            param = f"messages[{i}].content[{j}].image_url"
            if image is not None:
                raise ApiError(400, f"`{param}`: this model reads one image per conversation", param=param,
                               code="too_many_images")
            raw = decode_base64(part.image_url.url, max_bytes=config.max_image_bytes, param=param)
            image = open_image(raw, max_bytes=config.max_image_bytes, max_pixels=config.max_image_pixels,
                               param=param).convert("RGB")
        messages.append({"role": message.role, "content": "\n".join(texts)})
    if not any(m["role"] == "user" for m in messages):
        raise ApiError(400, "`messages`: a conversation needs a user message", param="messages", code="invalid_value")
    return messages, image


def prepare_chat(pipe: MMaDAPipeline, config: ServeConfig,
                 body: ChatCompletionRequest) -> tuple[str, Hashable | None, TextWork, int]:
    """Kind, batching key, work and prompt token count of a chat request (understanding with an image)."""
    check_model(body.model, config)
    _at_most(body.n, config.max_n, "n")
    settings, max_tokens = text_settings(pipe, config, max_tokens=body.max_tokens or body.max_completion_tokens,
                                         steps=body.steps, block_length=body.block_length,
                                         temperature=body.temperature, preset=body.preset)
    messages, image = _chat_messages(body, config)
    if image is not None and pipe.image_tokenizer is None:
        raise ApiError(400, "`messages`: this model has no image tokenizer; send text only", param="messages")
    try:
        prompt = encode_chat(pipe.tokenizer, messages, thinking=body.thinking)
    except ValueError as err:
        raise ApiError(400, f"`messages`: {err}", param="messages", code="invalid_value") from None
    prompt_tokens = len(prompt) + (pipe.num_image_tokens + 3 if image is not None else 0)  # + <|mmu|><|soi|><|eoi|>
    _check_length(pipe, config, prompt_tokens, settings.gen_length, "messages")
    deterministic = settings.temperature == 0 and settings.remasking == "low_confidence"
    key = settings if deterministic or body.seed is None else None
    work = TextWork(prompt, image, settings, _seed(body.seed), body.n, max_tokens, _stops(body.stop), body.stream)
    return ("vision" if image is not None else "chat"), key, work, prompt_tokens


def prepare_completion(pipe: MMaDAPipeline, config: ServeConfig,
                       body: CompletionRequest) -> tuple[CompletionWork, int]:
    """The work of a raw-text request and its prompt token count."""
    check_model(body.model, config)
    _at_most(body.n, config.max_n, "n")
    blanks = body.prompt.count(BLANK)
    if blanks and body.suffix is not None:
        raise ApiError(400, f"`suffix`: use either {BLANK} markers in the prompt or a suffix", param="suffix")
    max_tokens = body.max_tokens or DEFAULT_COMPLETION_TOKENS
    _at_most(max_tokens, config.max_tokens, "max_tokens")
    span: tuple[int, int] | None = None
    if blanks:
        blank_length = body.blank_length or DEFAULT_BLANK_LENGTH
        _at_most(blanks * blank_length, config.max_tokens, "blank_length")
        text = body.prompt
    else:
        blank_length, text = max_tokens, body.prompt + BLANK + (body.suffix or "")
        span = (1 + len(pipe.tokenizer.encode(body.prompt, parse_special=False)), max_tokens)  # after <bos> prompt
    masks = text.count(BLANK) * blank_length
    if body.steps is not None:
        _at_most(body.steps, min(masks, config.max_steps), "steps")
    prompt_tokens = 1 + sum(len(pipe.tokenizer.encode(part, parse_special=False)) for part in text.split(BLANK))
    _check_length(pipe, config, prompt_tokens, masks, "prompt")
    temperature = pipe.settings.text.temperature if body.temperature is None else float(body.temperature)
    steps = body.steps or max(masks // 2, 1)  # the pipeline's default: half the masked tokens
    work = CompletionWork(text, span, blank_length, steps, temperature, _seed(body.seed), body.n,
                          _stops(body.stop), body.stream)
    return work, prompt_tokens


def image_settings(pipe: MMaDAPipeline, config: ServeConfig, body: ImageGenerationRequest | ImageEditForm
                   ) -> ImageSampling:
    given = {"timesteps": body.steps, "guidance_scale": body.guidance_scale, "temperature": body.temperature}
    if body.steps is not None:
        _at_most(body.steps, config.max_steps, "steps")
    try:
        return pipe.image_settings(None, body.preset, **{k: v for k, v in given.items() if v is not None})
    except ValueError as err:
        raise _settings_error(err, IMAGE_FIELDS) from None


def prepare_image(pipe: MMaDAPipeline, config: ServeConfig, body: ImageGenerationRequest | ImageEditForm,
                  image: bytes | None = None, mask: bytes | None = None) -> tuple[Hashable | None, ImageWork]:
    """The batching key and work of an image request (an edit when `image` is given)."""
    check_model(body.model, config)
    if pipe.image_tokenizer is None:
        raise ApiError(400, "this model has no image tokenizer: it cannot make images", param="model")
    _at_most(body.n, config.max_n, "n")
    side = pipe.resolution
    if body.size not in (None, "auto", f"{side}x{side}"):
        raise ApiError(400, f"`size` ({body.size!r}): this model makes {side}x{side} images ('auto' or "
                       f"'{side}x{side}')", param="size", code="invalid_value")
    partial = body.partial_images or 0
    _at_most(partial, config.max_partial_images, "partial_images")
    settings = image_settings(pipe, config, body)
    text_tokens = len(pipe.tokenizer.encode(body.prompt, parse_special=False))
    if text_tokens > pipe.settings.max_text_len:
        raise ApiError(400, f"`prompt` ({text_tokens} tokens) must be <= {pipe.settings.max_text_len} tokens for this "
                       "model", param="prompt", code="limit_exceeded")
    work = ImageWork(body.prompt, settings, _seed(body.seed), body.n, partial, body.stream)
    if image is None:
        return (settings if body.seed is None else None), work
    limits = {"max_bytes": config.max_image_bytes, "max_pixels": config.max_image_pixels}
    picture = open_image(image, param="image", **limits)
    drawn = open_image(mask, param="mask", **limits) if mask is not None else None
    region = repaint_region(picture, drawn, param="image" if drawn is None else "mask")
    return None, replace(work, image=center_square(picture.convert("RGB")), region=region)
