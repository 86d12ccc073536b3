"""What the model worker runs: one function per job kind, over the pipeline's streaming methods.

Each runner takes a batch of `scheduler.Job`s of one kind whose inputs were validated by `app.py`, runs
the sampler once for all of them, and emits per job: a `step` event per denoising step (when the job
streams) and a `done` event with the result. Text answers stream as OpenAI deltas (`AnswerStream`): the
committed prefix of the answer, which only grows, so the deltas concatenate to exactly the final
answer, while the whole partially unmasked answer goes with each step as a preview.

Batching and seeds: a batch uses one generator, seeded by its first job's seed. Text jobs share a batch
only when their sampling is deterministic (temperature 0, low-confidence remasking: the seed plays no
part, and the batched sampler keeps every row as it would be alone) or when they bring no seed of their
own; image jobs only when they bring no seed. A job with a seed of its own and random sampling runs
alone, so the same seed always gives the same answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..pipelines import BLANK, MMaDAPipeline
from ..prompting import build_mmu_gen_batch, build_text_gen_batch
from ..sampling import ImageSampling, TextSampling
from .images import to_png
from .metrics import Metrics
from .scheduler import Event, Job, still_wanted

REPLACEMENT = "\ufffd"  # a prefix cut inside a multi-byte character decodes to this; hold it back


# ---- inputs and results -------------------------------------------------------------------------
@dataclass(frozen=True)
class TextWork:
    """A chat or understanding request, tokenized."""

    prompt_ids: list[int]
    image: Image.Image | None
    """The conversation's image (understanding), decoded and size-checked; else None."""
    settings: TextSampling
    seed: int
    n: int
    max_tokens: int
    """The answer is cut to this many tokens (the canvas, `settings.gen_length`, may be longer)."""
    stop: tuple[str, ...]
    stream: bool


@dataclass(frozen=True)
class CompletionWork:
    """A raw-text request: `text` holds `[BLANK]` markers; `span` is the generated part to return
    (start, length) in the token sequence, or None to return the whole filled text."""

    text: str
    span: tuple[int, int] | None
    blank_length: int
    steps: int
    temperature: float
    seed: int
    n: int
    stop: tuple[str, ...]
    stream: bool


@dataclass(frozen=True)
class ImageWork:
    """A text-to-image request, or an edit when `image` and `region` are set."""

    prompt: str
    settings: ImageSampling
    seed: int
    n: int
    partial_images: int
    stream: bool
    image: Image.Image | None = None
    region: np.ndarray | None = None
    """(H, W) bool over `image`, True = repaint."""


@dataclass(frozen=True)
class Answer:
    text: str
    finish_reason: str
    tokens: int


@dataclass(frozen=True)
class TextProgress:
    """One denoising step of a text job: per choice, (new text, preview)."""

    step: int
    steps: int
    choices: list[tuple[str, str]]


@dataclass(frozen=True)
class TextDone:
    """Per choice: the text not yet sent as a delta, and the answer."""

    choices: list[tuple[str, Answer]]
    seed: int | None = None
    """A seed that reproduces the answer when sent back (see `replay_seed`)."""


@dataclass(frozen=True)
class ImageProgress:
    step: int
    partial_index: int
    images: list[str]
    """Base64 PNGs, one per image of the job."""


@dataclass(frozen=True)
class ImageDone:
    images: list[str]
    output_tokens: int
    seed: int | None = None
    """A seed that reproduces the images when sent back (see `replay_seed`)."""


def replay_seed(job: Job, batch: Sequence[Job], deterministic: bool) -> int | None:
    """The job's seed if sending it back reproduces the answer: when the job ran alone (its noise came from
    its own generator) or its sampling uses no noise; None when it shared a batch with random sampling."""
    return job.inputs.seed if len(batch) == 1 or deterministic else None


# ---- streaming text -----------------------------------------------------------------------------
class AnswerStream:
    """One answer's deltas: the committed, final-for-sure prefix of the answer, as it grows.

    The final answer is the generated text up to the first EOS / `<|eot_id|>` (at most `max_tokens`
    tokens), stripped, and cut at the first `stop` string. A step's candidate is the decoded prefix before
    the first still-masked position, right-stripped, without the last `len(longest stop) - 1` characters
    (which may yet become a stop string): every candidate is a prefix of the final answer, so the
    concatenated deltas equal it.
    """

    def __init__(self, pipe: MMaDAPipeline, stop: Sequence[str], max_tokens: int) -> None:
        self.pipe, self.stop, self.max_tokens = pipe, tuple(stop), max_tokens
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.stop_ids = {pipe.vocab.eos_id, pipe.vocab.eot_id}
        self.sent = ""

    def _end(self, ids: list[int]) -> int:
        """Index of the first stop token (or the token cap)."""
        ids = ids[: self.max_tokens]
        return next((i for i, t in enumerate(ids) if t in self.stop_ids), len(ids))

    def _cut(self, text: str) -> tuple[str, bool]:
        """`text` cut at its first stop string, and whether one was found."""
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return (text[: min(hits)], True) if hits else (text, False)

    def update(self, generated: Tensor) -> tuple[str, str]:
        """(delta, preview) after a step; `generated` is the row's (G,) generated ids."""
        ids = generated.tolist()
        end = self._end(ids)
        preview = self.pipe.preview(generated[:end])
        mask_id = self.pipe.vocab.mask_id
        committed = next((i for i, t in enumerate(ids[:end]) if t == mask_id), end)  # committed ids never change
        text = self.pipe.tokenizer.decode(ids[:committed]).strip()
        # A stop string wholly inside the committed text is final; one across its end starts in its last
        # `hold` characters, which wait (as does a character cut in the middle) while more may follow.
        safe = len(text) - self.hold if committed < end else len(text)
        text, stopped = self._cut(text)
        if len(text) > safe:
            text, stopped = text[:safe], False
        if committed < end and not stopped:
            text = text.rstrip(REPLACEMENT).rstrip()  # the final answer is stripped, unless more text follows
        delta = text[len(self.sent) :] if text.startswith(self.sent) else ""
        self.sent += delta
        return delta, preview

    def finish(self, generated: Tensor) -> tuple[str, Answer]:
        """The rest of the answer to send, and the answer."""
        ids = generated.tolist()
        end = self._end(ids)
        text = self.pipe.tokenizer.decode([t for t in ids[:end] if t != self.pipe.vocab.mask_id]).strip()
        text, stopped = self._cut(text)
        ended = end < min(len(ids), self.max_tokens)  # by a generated EOS / <|eot_id|>, counted as a token
        reason = "stop" if stopped or ended else "length"
        rest = text[len(self.sent) :] if text.startswith(self.sent) else text
        return rest, Answer(text, reason, end + ended)


# ---- runners ------------------------------------------------------------------------------------
def _rows(jobs: Sequence[Job]) -> list[tuple[Job, int]]:
    """Each job with the index of its first row in the batch."""
    out, offset = [], 0
    for job in jobs:
        out.append((job, offset))
        offset += job.rows
    return out


def run_text(pipe: MMaDAPipeline, metrics: Metrics, jobs: list[Job]) -> None:
    """Chat and understanding: one batched run of the text sampler for every choice of every job."""
    works: list[TextWork] = [job.inputs for job in jobs]
    prompts = [w.prompt_ids for w in works for _ in range(w.n)]
    if works[0].image is not None:
        codes = torch.cat([pipe.encode_image(w.image) for w in works for _ in range(w.n)])  # (B, N)
        layout = build_mmu_gen_batch(pipe.vocab.image_ids(codes), prompts, vocab=pipe.vocab)
    else:
        layout = build_text_gen_batch(prompts, vocab=pipe.vocab)
    generator = torch.Generator(pipe.device).manual_seed(works[0].seed)
    streams = [[AnswerStream(pipe, w.stop, w.max_tokens) for _ in range(w.n)] for w in works]
    rows = _rows(jobs)
    last = None
    # The pipeline's own batched text loop (what generate_batch / understand_batch run), over our layout.
    for state in pipe._iter_text(layout, works[0].settings, generator):
        if not still_wanted(jobs):
            return
        last = state
        for (job, offset), work, answers in zip(rows, works, streams):
            if work.stream:
                row = state.step.tokens[offset : offset + work.n, state.prompt_length :]
                choices = [answer.update(generated) for answer, generated in zip(answers, row)]
                job.send(Event("step", TextProgress(state.step.step, work.settings.steps, choices)))
    if last is None:
        return
    for (job, offset), work, answers in zip(rows, works, streams):
        row = last.step.tokens[offset : offset + work.n, last.prompt_length :]
        done = [answer.finish(generated) for answer, generated in zip(answers, row)]
        metrics.add_tokens(sum(answer.tokens for _, answer in done))
        deterministic = work.settings.temperature == 0 and work.settings.remasking == "low_confidence"
        job.send(Event("done", TextDone(done, replay_seed(job, jobs, deterministic))))


def run_completion(pipe: MMaDAPipeline, metrics: Metrics, jobs: list[Job]) -> None:
    """Raw text: the infilling sampler over `[BLANK]` markers, one choice after the other."""
    (job,) = jobs
    work: CompletionWork = job.inputs
    generator = torch.Generator(pipe.device).manual_seed(work.seed)
    done: list[tuple[str, Answer]] = []
    for index in range(work.n):
        stream = AnswerStream(pipe, work.stop, work.span[1] if work.span else 1 << 30)
        last = None
        for state in pipe.iter_infill(work.text, blank_length=work.blank_length, steps=work.steps,
                                      generator=generator, temperature=work.temperature):
            if not still_wanted(jobs):
                return
            last = state
            if work.stream:
                delta, preview = _completion_update(stream, state, work)
                choices = [("", "")] * index + [(delta, preview)]
                job.send(Event("step", TextProgress(state.step.step, work.steps, choices)))
        if last is None:
            return
        if work.span is None:  # the whole text, blanks filled
            text = last.previews[0]
            masks = work.text.count(BLANK) * work.blank_length
            done.append(("" if work.stream else text, Answer(text, "length", masks)))
        else:
            start, length = work.span
            done.append(stream.finish(last.step.tokens[0, start : start + length]))
    metrics.add_tokens(sum(answer.tokens for _, answer in done))
    job.send(Event("done", TextDone(done, work.seed)))


def _completion_update(stream: AnswerStream, state: Any, work: CompletionWork) -> tuple[str, str]:
    if work.span is None:
        return "", state.previews[0]
    start, length = work.span
    return stream.update(state.step.tokens[0, start : start + length])


def partial_steps(steps: int, count: int) -> list[int]:
    """The steps (0-based, before the last) whose images a stream of `count` partial images shows,
    evenly spaced."""
    if steps < 2 or count < 1:
        return []
    if count >= steps - 1:
        return list(range(steps - 1))
    return [(j + 1) * (steps - 1) // (count + 1) for j in range(count)]


def run_images(pipe: MMaDAPipeline, metrics: Metrics, jobs: list[Job]) -> None:
    """Text-to-image: one batched MaskGIT run for every image of every job."""
    works: list[ImageWork] = [job.inputs for job in jobs]
    prompts = [w.prompt for w in works for _ in range(w.n)]
    generator = torch.Generator(pipe.device).manual_seed(works[0].seed)
    rows = _rows(jobs)
    shows = [partial_steps(w.settings.timesteps, w.partial_images) if w.stream else [] for w in works]
    last = None
    for step in pipe.iter_text_to_image(prompts, generator=generator, sampling=works[0].settings):
        if not still_wanted(jobs):
            return
        last = step
        for (job, offset), work, show in zip(rows, works, shows):
            if step.step in show:
                images = [to_png(im) for im in pipe.decode_images(step.tokens[offset : offset + work.n])]
                job.send(Event("step", ImageProgress(step.step, show.index(step.step), images)))
    if last is None:
        return
    for (job, offset), work in zip(rows, works):
        images = [to_png(im) for im in pipe.decode_images(last.tokens[offset : offset + work.n])]
        metrics.add_images(len(images))
        job.send(Event("done", ImageDone(images, last.tokens.shape[1] * work.n, replay_seed(job, jobs, False))))


def run_edit(pipe: MMaDAPipeline, metrics: Metrics, jobs: list[Job]) -> None:
    """Inpainting: the region of the image repainted under the prompt, one image after the other."""
    (job,) = jobs
    work: ImageWork = job.inputs
    generator = torch.Generator(pipe.device).manual_seed(work.seed)
    show = partial_steps(work.settings.timesteps, work.partial_images) if work.stream else []
    finals: list[str] = []
    for index in range(work.n):
        last = None
        for step in pipe.iter_inpaint(work.image, work.region, work.prompt, generator=generator,
                                      sampling=work.settings):
            if not still_wanted(jobs):
                return
            last = step
            if step.step in show:
                images = [""] * index + [to_png(pipe.decode_images(step.tokens)[0])]
                job.send(Event("step", ImageProgress(step.step, show.index(step.step), images)))
        if last is None:
            return
        finals.append(to_png(pipe.decode_images(last.tokens)[0]))
    metrics.add_images(len(finals))
    job.send(Event("done", ImageDone(finals, pipe.num_image_tokens * work.n, work.seed)))
