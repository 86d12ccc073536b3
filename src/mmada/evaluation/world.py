"""Score a pipeline on the tiny world's fixed evaluation suite, with the world's own judges.

Five tasks, each reported per group and overall, as the paper's tables report them (MMaDA §4-5):

* arithmetic: word problems by number of steps (1-4); the answer after `</think>` must be right;
* vqa: shapes questions by type (count, color, shape, position, presence), exact match;
* t2i: compositional generation by GenEval category, judged by the scene parser; "overall" is the
  mean of the category scores, as GenEval's;
* digit_t2i: "a handwritten digit k" generated, then read back by the digit classifier;
* digit_recognition: "which digit is this?" about real held-out digits.

The same scorers are the RL rewards (`mmada.world.judges`), so "reward went up" and "score went up"
measure the same thing. Prompts are batched; text decoding is deterministic at temperature 0, and
image sampling uses one seeded generator per batch (results are reproducible for a given batch size).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from ..pipelines import MMaDAPipeline, TextResult
from ..sampling import ImageSampling, Overrides, TextSampling
from ..world import evaluation_suite
from ..world.data import EvaluationSuite
from ..world.judges import score_arithmetic, score_digit, score_format, score_t2i, vqa_exact_match
from .records import Meter, Run, batches, call_generator, metered

logger = logging.getLogger(__name__)

TASKS = ("arithmetic", "vqa", "t2i", "digit_t2i", "digit_recognition")
_T = TypeVar("_T")


@dataclass(frozen=True)
class WorldEvalConfig:
    """What to evaluate and how to sample."""

    tasks: tuple[str, ...] = TASKS
    """Subset of TASKS."""
    per_group: int = 50
    """Examples per group (50: 200 arithmetic, 250 VQA, 300 t2i, 100 digit-t2i; all 343 held-out digits)."""
    limit: int | None = None
    """Keep only the first `limit` examples of each group (quick checks); None keeps all."""
    batch_size: int = 32
    """Prompts per sampler call."""
    thinking: bool = False
    """Prefix reasoning prompts (arithmetic, VQA) with MMaDA's thinking instruction."""
    text: Overrides[TextSampling] = field(default_factory=lambda: Overrides(TextSampling))
    """Sampler overrides for arithmetic, and for VQA when `thinking` (its answers are then whole
    `<think>` traces), applied over the pipeline's text defaults."""
    short: Overrides[TextSampling] = field(default_factory=lambda: Overrides(TextSampling))
    """Sampler overrides for short answers: VQA without thinking and digit recognition, applied over
    the pipeline's text defaults."""
    image: Overrides[ImageSampling] = field(default_factory=lambda: Overrides(ImageSampling))
    """Sampler overrides for t2i, applied over the pipeline's image defaults."""
    seed: int = 0
    """Seed of the image-sampling generators."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown evaluation task {unknown[0]!r}; choose from {TASKS}")
        if self.per_group < 1 or self.batch_size < 1 or (self.limit is not None and self.limit < 1):
            raise ValueError("`per_group`, `batch_size` and `limit` must be >= 1")
        for name, kind in (("text", TextSampling), ("short", TextSampling), ("image", ImageSampling)):
            value = getattr(self, name)
            if not isinstance(value, Overrides) or value.kind is not kind:
                raise ValueError(f"`{name}` must be Overrides({kind.__name__}, ...), got {value!r}")


Results = dict[str, dict[str, float]]


def _limited(items: Sequence[_T], group: Callable[[_T], Any], limit: int | None) -> list[_T]:
    if limit is None:
        return list(items)
    counts: dict[Any, int] = defaultdict(int)
    kept = []
    for item in items:
        if counts[group(item)] < limit:
            counts[group(item)] += 1
            kept.append(item)
    return kept


def _summary(scores: dict[str, list[float]], overall: str = "micro") -> dict[str, float]:
    out = {str(k): float(np.mean(v)) for k, v in sorted(scores.items())}
    if overall == "macro":  # GenEval: mean of the category scores
        out["overall"] = float(np.mean(list(out.values())))
    else:
        out["overall"] = float(np.mean([x for v in scores.values() for x in v]))
    return out


class WorldEvaluator:
    """Runs the suite through a pipeline; one method per task, each returning {group: score}."""

    def __init__(self, pipe: MMaDAPipeline, config: WorldEvalConfig | None = None, progress: bool = False) -> None:
        self.pipe, self.config, self.progress = pipe, config or WorldEvalConfig(), progress
        self.meter = Meter()
        self.outputs: list[dict[str, Any]] = []
        """One record per item: task, group, input, reference, output, verdict (`mmada eval world`'s jsonl)."""
        self._text = self.config.text.apply(pipe.settings.text)
        self._short = self.config.short.apply(pipe.settings.text)
        self._image = self.config.image.apply(pipe.settings.image)

    def run(self, suite: EvaluationSuite | None = None) -> Results:
        suite = suite or evaluation_suite(per_group=self.config.per_group)
        with metered(self.pipe.model, self.meter):
            return {task: getattr(self, task)(suite) for task in self.config.tasks}

    def _record(self, task: str, group: Any, given: str, reference: Any, output: str, score: float) -> float:
        self.outputs.append({"task": task, "group": str(group), "input": given, "reference": str(reference),
                             "output": output, "score": score})
        return score

    def _texts(self, results: Sequence[TextResult]) -> Sequence[TextResult]:
        self.meter.add_text([r.tokens for r in results], self.pipe.vocab.mask_id)
        return results

    def _bar(self, items: Sequence[_T], desc: str) -> Iterable[Sequence[_T]]:
        return tqdm(batches(items, self.config.batch_size), desc=desc, unit="batch", disable=not self.progress,
                    leave=False)

    def arithmetic(self, suite: EvaluationSuite) -> dict[str, float]:
        items = _limited(suite.text, lambda e: e.num_steps, self.config.limit)
        scores: dict[str, list[float]] = defaultdict(list)
        formats: list[float] = []
        for batch in self._bar(items, "arithmetic"):
            results = self._texts(self.pipe.generate_batch([e.question for e in batch], thinking=self.config.thinking,
                                                           sampling=self._text))
            for example, result in zip(batch, results):
                group = f"{example.num_steps} steps"
                scores[group].append(self._record("arithmetic", group, example.question, example.answer, result.text,
                                                  score_arithmetic(result.text, int(example.answer))))
                formats.append(score_format(result.text))
        out = _summary(scores)
        out["think format"] = float(np.mean(formats)) if formats else 0.0
        return out

    def vqa(self, suite: EvaluationSuite) -> dict[str, float]:
        items = _limited(suite.vqa, lambda e: e.qtype, self.config.limit)
        settings = self._text if self.config.thinking else self._short  # a trace needs room
        scores: dict[str, list[float]] = defaultdict(list)
        for batch in self._bar(items, "vqa"):
            results = self._texts(self.pipe.understand_batch([e.image for e in batch], [e.question for e in batch],
                                                             thinking=self.config.thinking, sampling=settings))
            for example, result in zip(batch, results):
                scores[example.qtype].append(self._record("vqa", example.qtype, example.question, example.answer,
                                                          result.text, vqa_exact_match(result.answer, example.answer)))
        return _summary(scores)

    def _generate_images(self, captions: Sequence[str], index: int) -> list[np.ndarray]:
        generator = call_generator(self.pipe.device, self.config.seed, index)
        images = self.pipe.text_to_image(list(captions), generator=generator, sampling=self._image)
        self.meter.add_images(len(images))
        return [np.asarray(image.convert("RGB")) for image in images]

    def t2i(self, suite: EvaluationSuite) -> dict[str, float]:
        items = _limited(suite.t2i, lambda e: e.spec.category, self.config.limit)
        scores: dict[str, list[float]] = defaultdict(list)
        for i, batch in enumerate(self._bar(items, "t2i")):
            for example, image in zip(batch, self._generate_images([e.caption for e in batch], i)):
                verdict = score_t2i(image, example.spec)
                scores[example.spec.category].append(self._record("t2i", example.spec.category, example.caption,
                                                                  example.caption, "; ".join(verdict.reasons),
                                                                  verdict.score))
        return _summary(scores, overall="macro")

    def digit_t2i(self, suite: EvaluationSuite) -> dict[str, float]:
        items = _limited(suite.digit_t2i, lambda e: e.label, self.config.limit)
        scores: dict[str, list[float]] = defaultdict(list)
        for i, batch in enumerate(self._bar(items, "digit t2i")):
            for example, image in zip(batch, self._generate_images([e.caption for e in batch], 10_000 + i)):
                scores[str(example.label)].append(self._record("digit_t2i", example.label, example.caption,
                                                               example.label, "", score_digit(image, example.label)))
        return _summary(scores)

    def digit_recognition(self, suite: EvaluationSuite) -> dict[str, float]:
        items = _limited(suite.digit_recognition, lambda e: e.label, self.config.limit)
        scores: dict[str, list[float]] = defaultdict(list)
        for batch in self._bar(items, "digit recognition"):
            results = self._texts(self.pipe.understand_batch([e.image for e in batch], [e.question for e in batch],
                                                             sampling=self._short))
            for example, result in zip(batch, results):
                scores[str(example.label)].append(self._record("digit_recognition", example.label, example.question,
                                                               example.answer, result.text,
                                                               vqa_exact_match(result.answer, example.answer)))
        return _summary(scores)


def evaluate_world(pipe: MMaDAPipeline, config: WorldEvalConfig | None = None, *, progress: bool = False) -> Results:
    """Score `pipe` on the world's evaluation suite: {task: {group: accuracy, ..., "overall": ...}}."""
    return WorldEvaluator(pipe, config, progress).run()


def world_run(pipe: MMaDAPipeline, config: WorldEvalConfig | None = None, *, progress: bool = False) -> Run:
    """The suite as an evaluation record (`mmada eval world`): scores, per-item outputs, settings, cost."""
    evaluator = WorldEvaluator(pipe, config, progress)
    scores = evaluator.run()
    config = evaluator.config
    settings = {"tasks": list(config.tasks), "per_group": config.per_group, "limit": config.limit,
                "thinking": config.thinking, "text": evaluator._text, "short": evaluator._short,
                "image": evaluator._image}
    return Run("world", scores, evaluator.outputs, settings, evaluator.meter)


def results_to_markdown(results: Results) -> str:
    """One small table per task: group | score."""
    lines = []
    for task, groups in results.items():
        lines += [f"**{task}**", "", "| group | score |", "|---|---|"]
        lines += [f"| {group} | {100 * score:.1f}% |" for group, score in groups.items()]
        lines.append("")
    return "\n".join(lines)


def compare_to_markdown(columns: Mapping[str, Results]) -> str:
    """One table, task | group | one column per run (e.g. the recipe's stages); missing groups show "-"."""
    names = list(columns)
    first = columns[names[0]]
    lines = ["| task | group | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for task, groups in first.items():
        for group in groups:
            cells = [columns[name].get(task, {}).get(group) for name in names]
            lines.append(f"| {task} | {group} | " + " | ".join("-" if c is None else f"{100 * c:.1f}%" for c in cells)
                         + " |")
    return "\n".join(lines) + "\n"


def save_results(results: Results, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
