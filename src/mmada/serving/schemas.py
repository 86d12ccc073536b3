"""Request and response bodies of the OpenAI-compatible API, as pydantic models.

The request models are strict (no "5" for 5) and refuse unknown fields, so a malformed body is
answered with a 400 naming the field before anything reaches the model. Fields marked *extension*
are ours, not OpenAI's (the `openai` client sends them through `extra_body=`):

- chat: `thinking` (reason in `<think>…</think>` first), `steps`, `block_length`, `preset`;
  streamed chunks carry `choices[i].denoising`, the whole partially unmasked answer;
- completions: `blank_length` (masked tokens per `[BLANK]` marker), `steps`;
- images: `guidance_scale`, `steps` (MaskGIT timesteps), `temperature`, `preset`.

Limits that depend on the server's configuration (`max_tokens`, `n`, ...) are checked in `app.py`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Preset = Literal["exact", "fast", "fastest"]
SEED_MAX = 2**63 - 1


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---- errors -------------------------------------------------------------------------------------
class ErrorDetail(_Response):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Response):
    error: ErrorDetail


# ---- chat ---------------------------------------------------------------------------------------
class TextPart(_Request):
    type: Literal["text"]
    text: str


class ImageURL(_Request):
    url: str
    """A `data:image/...;base64,` URL or bare base64; remote URLs are refused (nothing is fetched)."""
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Request):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None


class StreamOptions(_Request):
    include_usage: bool = True


class ChatCompletionRequest(_Request):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    """Tokens to generate (the denoising canvas is rounded up to whole blocks and cut back)."""
    max_completion_tokens: int | None = Field(None, ge=1)
    """OpenAI's newer name for `max_tokens`."""
    temperature: float | None = Field(None, ge=0, le=2)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    thinking: bool = False
    """Extension: thinking mode (the demo's `<think>` instruction; the reasoning is part of `content`)."""
    steps: int | None = Field(None, ge=1)
    """Extension: denoising steps (default: the model's steps per token, times the canvas)."""
    block_length: int | None = Field(None, ge=1)
    """Extension: semi-autoregressive block size (default: the model's, or the canvas if smaller)."""
    preset: Preset | None = None
    """Extension: sampling preset (`exact`, `fast`, `fastest`)."""


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(_Response):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    seed: int | None = None
    """Extension: a seed that reproduces this answer when sent back (a request without one gets a random
    one); null when the request shared a batch with random sampling (its noise came from the batch's)."""


class Delta(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None


class Denoising(_Response):
    """Extension: the current state of one choice's answer, every position at once."""

    text: str
    """The answer so far, still-masked positions shown as '░' (cut at the end of the answer)."""
    step: int
    """0-based denoising step."""
    steps: int
    """Steps planned (adaptive commit rules may finish sooner)."""


class ChunkChoice(_Response):
    index: int
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None
    denoising: Denoising | None = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


# ---- completions --------------------------------------------------------------------------------
class CompletionRequest(_Request):
    model: str | None = None
    prompt: str = Field(min_length=1)
    """Raw text (no chat template). With `[BLANK]` markers, each is filled and the whole text returned;
    otherwise `max_tokens` tokens are generated after it (or between it and `suffix`)."""
    suffix: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    blank_length: int | None = Field(None, ge=1)
    """Extension: masked tokens per `[BLANK]` (default 8)."""
    steps: int | None = Field(None, ge=1)
    """Extension: denoising steps (default: half the masked tokens)."""


class CompletionChoice(_Response):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None
    denoising: Denoising | None = None


class Completion(_Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


# ---- images -------------------------------------------------------------------------------------
class _ImageOptions(_Request):
    model: str | None = None
    prompt: str = Field(min_length=1, max_length=4000)
    n: int = Field(1, ge=1)
    response_format: Literal["b64_json"] | None = None
    """Only base64 (the server stores nothing to link to)."""
    size: str | None = None
    """`auto` or the model's `RxR` (the built-in model: 32x32)."""
    output_format: Literal["png"] | None = None
    quality: str | None = None
    background: Literal["opaque", "auto"] | None = None
    user: str | None = None
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    stream: bool = False
    partial_images: int | None = Field(None, ge=0)
    """Streamed intermediate images (evenly spaced over the steps)."""
    guidance_scale: float | None = Field(None, ge=0, le=100)
    """Extension: guidance weight w of (1 + w) cond - w uncond."""
    steps: int | None = Field(None, ge=1)
    """Extension: MaskGIT timesteps."""
    temperature: float | None = Field(None, ge=0, le=100)
    """Extension: initial temperature of the confidence noise."""
    preset: Preset | None = None
    """Extension: sampling preset."""


class ImageGenerationRequest(_ImageOptions):
    pass


class ImageEditForm(_ImageOptions):
    """The non-file fields of a multipart `/v1/images/edits` request (form values arrive as text)."""

    model_config = ConfigDict(extra="forbid", strict=False)


class ImageData(_Response):
    b64_json: str
    revised_prompt: str | None = None


class ImageUsage(_Response):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: dict[str, int]


class ImagesResponse(_Response):
    created: int
    data: list[ImageData]
    usage: ImageUsage | None = None
    seed: int | None = None
    """Extension: a seed that reproduces these images when sent back; null when the request shared a batch."""


class ImageStreamEvent(_Response):
    """`image_generation.partial_image` / `.completed` (or `image_edit.*`), as OpenAI streams them."""

    type: str
    b64_json: str
    created_at: int
    size: str
    quality: str = "auto"
    background: str = "opaque"
    output_format: str = "png"
    partial_image_index: int | None = None
    usage: ImageUsage | None = None
    index: int = 0
    """Extension: which of the `n` images this is."""
    step: int | None = None
    """Extension: the MaskGIT step a partial image shows."""


# ---- models -------------------------------------------------------------------------------------
class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mmada"


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def dump(model: BaseModel) -> dict[str, Any]:
    """A response model as JSON-ready data (None fields kept: OpenAI sends them as null)."""
    return model.model_dump(mode="json")
