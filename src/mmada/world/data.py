"""Datasets of the tiny world: seeded record iterators, disjoint splits and a fixed evaluation suite.

Every generated example is assigned to a split by a SHA-256 hash of its canonical content (the
scene's objects for image tasks, the question text for arithmetic), so a scene or problem can never
be in both splits, whatever the seed; `VALIDATION_PERCENT` of the content space is validation. The
real digits use their own fixed hold-out (`digits.is_holdout`). Iterators are infinite (digits:
reshuffled epochs) and deterministic in (split, seed); records are plain frozen dataclasses whose
images are read-only (32, 32, 3) uint8 arrays, excluded from equality (the scene or index defines
them). Mapping records to token layouts happens elsewhere.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import numpy as np

from mmada.world.arithmetic import MAX_STEPS, sample_problem
from mmada.world.captions import CATEGORIES, Prompt, sample_prompt, scene_for_prompt
from mmada.world.digits import DIGIT_QUESTION, digit_caption, digit_cot, load_digit_data, render_digit
from mmada.world.scenes import Scene, render_scene
from mmada.world.vqa import QTYPES, sample_vqa

Split = Literal["train", "validation"]
VALIDATION_PERCENT = 10
"""Share of the generated content space (scenes, problems) that belongs to validation."""
_T = TypeVar("_T")


def split_of(key: str) -> Split:
    """The split of a canonical content key; stable across runs, machines and Python versions."""
    digest = hashlib.sha256(f"mmada-world:{key}".encode()).digest()
    return "validation" if int.from_bytes(digest[:8], "big") % 100 < VALIDATION_PERCENT else "train"


def _check_split(split: str) -> None:
    if split not in ("train", "validation"):
        raise ValueError(f"`split` must be 'train' or 'validation', got {split!r}")


def _frozen_image(image: np.ndarray) -> np.ndarray:
    image.setflags(write=False)
    return image


@dataclass(frozen=True)
class T2IExample:
    """A caption and the scene it describes (text-to-image; reversed, image captioning)."""

    caption: str
    """Template caption, e.g. 'two red circles above a blue square'."""
    spec: Prompt
    """Structured prompt the t2i judge scores against."""
    scene: Scene
    """The ground-truth objects."""
    image: np.ndarray = field(compare=False, repr=False)
    """(32, 32, 3) uint8 render of `scene`, read-only."""


@dataclass(frozen=True)
class VQAExample:
    """A question about a shapes scene."""

    image: np.ndarray = field(compare=False, repr=False)
    """(32, 32, 3) uint8 render of `scene`, read-only."""
    question: str
    """E.g. 'what color is the square?'."""
    answer: str
    """Short answer, e.g. 'blue'."""
    cot_answer: str
    """'<think> reasoning </think> answer'."""
    qtype: str
    """One of `vqa.QTYPES`."""
    scene: Scene
    """The ground-truth objects."""


@dataclass(frozen=True)
class TextExample:
    """An arithmetic word problem."""

    question: str
    """The story and question."""
    answer: str
    """The integer answer as text, e.g. '12'."""
    cot_answer: str
    """'<think> worked steps </think> 12'."""
    num_steps: int
    """Operations needed, 1-4."""


@dataclass(frozen=True)
class DigitExample:
    """A real handwritten digit with its caption (for t2i) and question (for recognition)."""

    image: np.ndarray = field(compare=False, repr=False)
    """(32, 32, 3) uint8 white-on-black render, read-only."""
    label: int
    """The digit, 0-9."""
    caption: str
    """'a handwritten digit 7'."""
    question: str
    """'which digit is this?'."""
    answer: str
    """'7'."""
    cot_answer: str
    """'<think> ... </think> 7'."""
    index: int
    """Position in `sklearn.datasets.load_digits()`: the identity of the sample."""


def _filtered(make: Callable[[random.Random], tuple[str, Callable[[], _T]]], split: Split, seed: str) -> Iterator[_T]:
    """Draw (key, build) pairs from `make` forever; build the examples whose key hashes into `split`.

    `make` consumes the randomness, `build` only renders, so both splits see the same draws.
    """
    _check_split(split)
    rng = random.Random(seed)  # str seeds hash with SHA-512: identical on every machine
    while True:
        key, build = make(rng)
        if split_of(key) == split:
            yield build()


def iter_t2i(split: Split = "train", seed: int = 0, categories: Sequence[str] = CATEGORIES) -> Iterator[T2IExample]:
    """Infinite caption/scene pairs, categories drawn uniformly from `categories`."""

    def make(rng: random.Random) -> tuple[str, Callable[[], T2IExample]]:
        prompt = sample_prompt(rng, rng.choice(categories))
        scene = scene_for_prompt(prompt, rng)
        return scene.canonical(), lambda: T2IExample(prompt.caption, prompt, scene, _frozen_image(render_scene(scene)))

    return _filtered(make, split, f"t2i:{seed}")


def iter_vqa(split: Split = "train", seed: int = 0, qtypes: Sequence[str] = QTYPES) -> Iterator[VQAExample]:
    """Infinite scene/question pairs, question types drawn uniformly from `qtypes`."""

    def make(rng: random.Random) -> tuple[str, Callable[[], VQAExample]]:
        scene, item = sample_vqa(rng, rng.choice(qtypes))
        return scene.canonical(), lambda: VQAExample(
            _frozen_image(render_scene(scene)), item.question, item.answer, item.cot_answer, item.qtype, scene
        )

    return _filtered(make, split, f"vqa:{seed}")


def iter_text(
    split: Split = "train", seed: int = 0, steps: Sequence[int] = range(1, MAX_STEPS + 1)
) -> Iterator[TextExample]:
    """Infinite arithmetic word problems, step counts drawn uniformly from `steps`."""

    def make(rng: random.Random) -> tuple[str, Callable[[], TextExample]]:
        problem = sample_problem(rng, rng.choice(steps))
        example = TextExample(problem.question, str(problem.answer), problem.cot_answer, problem.num_steps)
        return problem.question, lambda: example

    return _filtered(make, split, f"text:{seed}")


def digit_examples(split: Split = "train") -> tuple[DigitExample, ...]:
    """All real digits of `split`, in dataset order (1454 train, 343 validation)."""
    data = load_digit_data(split)
    return tuple(
        DigitExample(
            _frozen_image(render_digit(pixels)),
            int(label),
            digit_caption(int(label)),
            DIGIT_QUESTION,
            str(int(label)),
            digit_cot(int(label)),
            int(index),
        )
        for pixels, label, index in zip(data.images, data.labels, data.indices)
    )


def iter_digits(split: Split = "train", seed: int = 0) -> Iterator[DigitExample]:
    """The digits of `split` in a fresh seeded order every epoch, forever."""
    examples = list(digit_examples(split))
    rng = random.Random(f"digits:{split}:{seed}")
    while True:
        rng.shuffle(examples)
        yield from examples


@dataclass(frozen=True)
class EvaluationSuite:
    """Fixed validation prompts per task, grouped for per-group reporting (see `evaluation_suite`)."""

    text: tuple[TextExample, ...]
    """Arithmetic, `per_group` problems for each step count 1-4."""
    vqa: tuple[VQAExample, ...]
    """`per_group` questions for each `vqa.QTYPES` type."""
    t2i: tuple[T2IExample, ...]
    """`per_group` prompts for each GenEval category."""
    digit_t2i: tuple[DigitExample, ...]
    """`per_group // 5` held-out digits per class; generate from `caption`, judge with `label`."""
    digit_recognition: tuple[DigitExample, ...]
    """Every held-out digit; answer `question` about `image`."""


def _take_unique(examples: Iterator[_T], count: int, key: Callable[[_T], str]) -> list[_T]:
    seen: dict[str, _T] = {}
    for example in examples:
        seen.setdefault(key(example), example)
        if len(seen) == count:
            break
    return list(seen.values())


def evaluation_suite(seed: int = 0, per_group: int = 50) -> EvaluationSuite:
    """The fixed evaluation suite: validation-split examples, identical across runs and machines.

    Args:
        seed: selects the suite; keep the default to compare numbers across experiments.
        per_group: examples per group (step count, question type, category); 50 gives 200
            arithmetic, 250 VQA, 300 t2i, 100 digit-t2i and 343 digit-recognition prompts.
    """
    if per_group < 1:
        raise ValueError(f"`per_group` must be >= 1, got {per_group}")
    text = [
        example
        for steps in range(1, MAX_STEPS + 1)
        for example in _take_unique(iter_text("validation", seed, (steps,)), per_group, lambda e: e.question)
    ]
    vqa = [
        example
        for qtype in QTYPES
        for example in _take_unique(
            iter_vqa("validation", seed, (qtype,)), per_group, lambda e: f"{e.scene.canonical()}|{e.question}"
        )
    ]
    t2i = [
        example
        for category in CATEGORIES
        for example in _take_unique(iter_t2i("validation", seed, (category,)), per_group, lambda e: e.scene.canonical())
    ]
    held_out = digit_examples("validation")
    per_digit = max(1, per_group // 5)
    digit_t2i = [e for label in range(10) for e in [d for d in held_out if d.label == label][:per_digit]]
    return EvaluationSuite(tuple(text), tuple(vqa), tuple(t2i), tuple(digit_t2i), held_out)
