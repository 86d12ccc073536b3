"""Worker results as OpenAI responses: JSON bodies, and Server-Sent Events for `stream: true`.

Chat streams are `chat.completion.chunk`s: a first chunk with the role, one chunk per denoising step
whose `delta.content` is the newly final text (often empty: a diffusion model fills all positions at
once) and whose `choices[i].denoising` (our extension) is the whole answer so far, then a last chunk
with the rest of the text, the `finish_reason` and `usage`, then `data: [DONE]`. Image streams are
`image_generation.partial_image` / `image_generation.completed` events (`image_edit.*` for edits), as
OpenAI sends them. An error after the stream started is sent as `data: {"error": ...}`, which the
`openai` client raises as an `APIError`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from ..pipelines import MMaDAPipeline
from .errors import ApiError
from .scheduler import Event, Job
from .schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChunkChoice,
    Completion,
    CompletionChoice,
    Delta,
    Denoising,
    ImageData,
    ImagesResponse,
    ImageStreamEvent,
    ImageUsage,
    Usage,
    dump,
)
from .work import CompletionWork, ImageDone, ImageProgress, ImageWork, TextDone, TextProgress, TextWork


def _data(payload: dict[str, Any], event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _error(err: Any) -> str:
    error = err if isinstance(err, ApiError) else ApiError(500, str(err), code="internal_error")
    return _data(error.body(), "error")


def _usage(done: TextDone, prompt_tokens: int) -> Usage:
    completion = sum(answer.tokens for _, answer in done.choices)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion)


# ---- chat ---------------------------------------------------------------------------------------
def chat_response(done: TextDone, meta: dict[str, Any], work: TextWork, prompt_tokens: int) -> dict[str, Any]:
    choices = [ChatChoice(index=i, message=AssistantMessage(content=answer.text),
                          finish_reason=answer.finish_reason)  # type: ignore[arg-type]
               for i, (_, answer) in enumerate(done.choices)]
    return dump(ChatCompletion(**meta, choices=choices, usage=_usage(done, prompt_tokens), seed=done.seed))


async def chat_events(events: AsyncIterator[Event], job: Job, meta: dict[str, Any], work: TextWork,
                      prompt_tokens: int) -> AsyncIterator[str]:
    def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        return _data(dump(ChatCompletionChunk(**meta, choices=choices, usage=usage)))

    yield chunk([ChunkChoice(index=i, delta=Delta(role="assistant", content="")) for i in range(work.n)])
    async for event in events:
        if event.type == "error":
            job.finished = True
            yield _error(event.data)
            return
        if event.type == "step":
            progress: TextProgress = event.data
            yield chunk([ChunkChoice(index=i, delta=Delta(content=delta),
                                     denoising=Denoising(text=preview, step=progress.step, steps=progress.steps))
                         for i, (delta, preview) in enumerate(progress.choices)])
            continue
        done: TextDone = event.data
        job.finished = True
        yield chunk([ChunkChoice(index=i, delta=Delta(content=rest), finish_reason=answer.finish_reason)  # type: ignore[arg-type]
                     for i, (rest, answer) in enumerate(done.choices)], _usage(done, prompt_tokens))
        yield "data: [DONE]\n\n"


# ---- completions --------------------------------------------------------------------------------
def completion_response(done: TextDone, meta: dict[str, Any], prompt_tokens: int) -> dict[str, Any]:
    choices = [CompletionChoice(index=i, text=answer.text, finish_reason=answer.finish_reason)  # type: ignore[arg-type]
               for i, (_, answer) in enumerate(done.choices)]
    return dump(Completion(**meta, choices=choices, usage=_usage(done, prompt_tokens)))


async def completion_events(events: AsyncIterator[Event], job: Job, meta: dict[str, Any], work: CompletionWork,
                            prompt_tokens: int) -> AsyncIterator[str]:
    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        return _data(dump(Completion(**meta, choices=choices, usage=usage)))

    async for event in events:
        if event.type == "error":
            job.finished = True
            yield _error(event.data)
            return
        if event.type == "step":
            progress: TextProgress = event.data
            index = len(progress.choices) - 1  # choices run one after the other
            delta, preview = progress.choices[index]
            yield chunk([CompletionChoice(index=index, text=delta, denoising=Denoising(
                text=preview, step=progress.step, steps=progress.steps))])
            continue
        done: TextDone = event.data
        job.finished = True
        yield chunk([CompletionChoice(index=i, text=rest, finish_reason=answer.finish_reason)  # type: ignore[arg-type]
                     for i, (rest, answer) in enumerate(done.choices)], _usage(done, prompt_tokens))
        yield "data: [DONE]\n\n"


# ---- images -------------------------------------------------------------------------------------
def _image_usage(pipe: MMaDAPipeline, work: ImageWork, output_tokens: int, image_tokens: int) -> ImageUsage:
    text = len(pipe.tokenizer.encode(work.prompt, parse_special=False))
    return ImageUsage(input_tokens=text + image_tokens, output_tokens=output_tokens,
                      total_tokens=text + image_tokens + output_tokens,
                      input_tokens_details={"text_tokens": text, "image_tokens": image_tokens})


def image_response(done: ImageDone, work: ImageWork, pipe: MMaDAPipeline, image_tokens: int) -> dict[str, Any]:
    return dump(ImagesResponse(created=int(time.time()), data=[ImageData(b64_json=b64) for b64 in done.images],
                               usage=_image_usage(pipe, work, done.output_tokens, image_tokens), seed=done.seed))


async def image_events(events: AsyncIterator[Event], job: Job, work: ImageWork, pipe: MMaDAPipeline, prefix: str,
                       image_tokens: int) -> AsyncIterator[str]:
    size = f"{pipe.resolution}x{pipe.resolution}"
    async for event in events:
        if event.type == "error":
            job.finished = True
            yield _error(event.data)
            return
        if event.type == "step":
            progress: ImageProgress = event.data
            for index, b64 in enumerate(progress.images):
                if b64:
                    kind = f"{prefix}.partial_image"
                    yield _data(dump(ImageStreamEvent(type=kind, b64_json=b64, created_at=int(time.time()), size=size,
                                                      partial_image_index=progress.partial_index, index=index,
                                                      step=progress.step)), kind)
            continue
        done: ImageDone = event.data
        job.finished = True
        usage = _image_usage(pipe, work, done.output_tokens, image_tokens)
        for index, b64 in enumerate(done.images):
            kind = f"{prefix}.completed"
            yield _data(dump(ImageStreamEvent(type=kind, b64_json=b64, created_at=int(time.time()), size=size,
                                              usage=usage, index=index)), kind)
