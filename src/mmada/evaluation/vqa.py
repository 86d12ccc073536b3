"""Visual question answering from a local jsonl: VQAv2 soft accuracy, or POPE-style yes/no scores.

The data is a jsonl, one question per line:
`{"image": "images/0001.png", "question": "what color is the circle?", "answers": ["red", ...]}`
(`"answer": "red"` is read as a one-answer list; optional `"question_id"` is copied to the outputs
and optional `"category"` is also reported as a group). Image paths are relative to the jsonl's
folder. Every row is checked before anything is sampled; a bad one is refused as `file:line: problem`.

The model answers each image and question (`pipe.understand_batch`); its answer is the text after
`</think>` (`TextResult.answer`). Two modes:

* `open` (VQAv2, Antol et al. 2015; official `PythonEvaluationTools/vqaEvaluation/vqaEval.py` in
  GT-Vision-Lab/VQA): `soft_accuracy` averages, over each human answer i, min(1, m_i / 3) where
  m_i is how many of the *other* answers equal the prediction (with VQAv2's 10 answers, the
  official "10 choose 9" average: 3 agreeing annotators give 0.9, 4 give 1.0). With fewer than 4
  answers the 3 becomes N - 1 (full credit needs every other answer to agree) and with one answer
  it is exact match; the official formula would give 1/3 for two agreeing answers and 0 for one.
  `exact_match` is 1 when the prediction equals any answer. Each `category` reports its soft accuracy.
* `yesno` (POPE, Li et al. 2023): the prediction is "yes" or "no" by the first word of the
  normalised answer, else "other"; the reference is the majority of the row's answers, which must
  all be yes or no. Scores: `accuracy`, `precision`, `recall`, `f1` with "yes" as the positive
  class, `yes_ratio` (share answered yes) and `other` (share with neither). POPE's own script reads
  any answer without "no"/"not" as yes; here such answers are counted apart, and a yes-question
  answered "other" is a miss for recall. Each `category` (POPE's random / popular / adversarial
  splits) reports its F1.

Normalisation is the project's one short-answer normaliser, `mmada.world.judges.normalize_answer`,
applied to the prediction and to every reference answer. Like the official VQA normaliser it lower-
cases, maps number words to digits and drops the articles a/an/the. It differs in that it maps number
words up to twenty (official: up to ten, plus "none" -> "0"), writes numbers canonically ("2.0" ->
"2"), replaces every punctuation mark by a space ("t-shirt" -> "t shirt"; the official keeps "-"
and "!" and, next to spaces, deletes rather than spaces the others) and expands no contractions
("dont" stays "dont"). The official script normalises only the prediction's digits and articles,
as VQAv2's answers are already normalised.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..pipelines import MMaDAPipeline
from ..sampling import Overrides, TextSampling
from ..world.judges import normalize_answer, vqa_exact_match
from .records import Meter, Run, batches, call_generator, check_run_settings, data_record, metered, read_jsonl

Mode = Literal["open", "yesno"]
MODES: tuple[str, ...] = ("open", "yesno")
YesNo = Literal["yes", "no", "other"]
VQA_AGREEMENT = 3  # vqaEval.py: an answer given by 3 of the other annotators earns full credit
OPEN_METRICS: tuple[str, ...] = ("soft_accuracy", "exact_match")
YESNO_METRICS: tuple[str, ...] = ("accuracy", "precision", "recall", "f1", "yes_ratio", "other")


@dataclass(frozen=True)
class VqaConfig:
    """What to evaluate and how to ask and sample."""

    path: Path
    """A jsonl of `{"image", "question", "answers"}` rows (see the module docstring)."""
    limit: int | None = None
    """Keep the first `limit` rows (None: all)."""
    mode: Mode = "open"
    """"open": VQAv2 soft accuracy and exact match; "yesno": POPE accuracy, precision, recall, F1."""
    thinking: bool = False
    """Ask in MMaDA's thinking mode (`<think>` reasoning, then the answer)."""
    batch_size: int = 8
    """Questions per sampler call (answers at temperature 0 do not depend on it)."""
    seed: int = 0
    """Seeds one generator per batch (only used when sampling at temperature > 0)."""
    text: Overrides[TextSampling] = field(default_factory=lambda: Overrides(TextSampling))
    """Sampler overrides applied over the pipeline's text defaults."""

    def __post_init__(self) -> None:
        check_run_settings(self.limit, self.batch_size, "text", self.text, TextSampling)
        if self.mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {self.mode!r}")


@dataclass(frozen=True)
class VqaItem:
    """One checked row of a VQA jsonl."""

    line: int
    """1-based line number in the file."""
    image: Path
    """The image file (resolved against the jsonl's folder)."""
    question: str
    answers: tuple[str, ...]
    """The reference answers as written (one or more)."""
    question_id: Any = None
    """The row's `question_id`, if any (copied to the outputs)."""
    category: str | None = None
    """The row's `category`, if any (reported as a group)."""


# ---- scorers (pure) ----------------------------------------------------------------------------
def vqa_soft_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQAv2 accuracy of one prediction against the human answers, after `normalize_answer`.

    mean over i of min(1, #{j != i: answer_j == prediction} / min(3, N - 1)); exact match when N = 1.
    Example: 10 answers of which 3 are "red": "red" scores (7 * 1 + 3 * 2/3) / 10 = 0.9; of which 4
    are: 1.0; of which 2 are: 0.6.
    """
    if not answers:
        raise ValueError("`answers` must hold at least one answer")
    predicted = normalize_answer(prediction)
    matches = [bool(predicted) and normalize_answer(answer) == predicted for answer in answers]
    if len(matches) == 1:
        return float(matches[0])
    need, total = min(VQA_AGREEMENT, len(matches) - 1), sum(matches)
    return sum(min(1.0, (total - match) / need) for match in matches) / len(matches)


def yesno_label(text: str) -> YesNo:
    """"yes" or "no" by the first word of the normalised answer, else "other".

    Example: "Yes, there is." -> "yes"; "No." -> "no"; "a red circle" -> "other"; "" -> "other".
    """
    words = normalize_answer(text).split()
    first = words[0] if words else ""
    return "yes" if first == "yes" else "no" if first == "no" else "other"


def pope_scores(labels: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """POPE's yes/no metrics with "yes" as the positive class (0 where a ratio has no denominator).

    Args:
        labels: the references, each "yes" or "no".
        predictions: `yesno_label`s of the answers, each "yes", "no" or "other".
    """
    if len(labels) != len(predictions) or not labels:
        raise ValueError(f"need as many labels as predictions, at least one; got {len(labels)} and {len(predictions)}")
    n = len(labels)
    said_yes = sum(p == "yes" for p in predictions)
    are_yes = sum(y == "yes" for y in labels)
    true_yes = sum(y == p == "yes" for y, p in zip(labels, predictions))
    precision = true_yes / said_yes if said_yes else 0.0
    recall = true_yes / are_yes if are_yes else 0.0
    return {"accuracy": sum(y == p for y, p in zip(labels, predictions)) / n, "precision": precision,
            "recall": recall, "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "yes_ratio": said_yes / n, "other": sum(p == "other" for p in predictions) / n}


def majority_yesno(answers: Sequence[str]) -> Literal["yes", "no"]:
    """The reference of a yes/no row: the majority of its answers, which must each be yes or no."""
    normalised = [normalize_answer(answer) for answer in answers]
    bad = next((a for a, n in zip(answers, normalised) if n not in ("yes", "no")), None)
    if bad is not None:
        raise ValueError(f"answer {bad!r} is not yes or no (mode 'yesno')")
    yes = normalised.count("yes")
    if 2 * yes == len(normalised):
        raise ValueError(f"answers {list(answers)} are split evenly between yes and no")
    return "yes" if 2 * yes > len(normalised) else "no"


# ---- reading -----------------------------------------------------------------------------------
def read_vqa(path: str | Path, *, limit: int | None = None, mode: Mode = "open") -> list[VqaItem]:
    """The first `limit` rows of a VQA jsonl, each checked (keys, types, image file, yes/no answers).

    Raises:
        ValueError: naming `file:line` and the problem; or the file holds no rows.
        FileNotFoundError: the jsonl does not exist.
    """
    folder = Path(path).parent
    return read_jsonl(path, "VQA", lambda row, _text, line, _index: _item(row, line, folder, mode), limit=limit)


def _item(row: Any, line: int, folder: Path, mode: Mode) -> VqaItem:
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    for key in ("image", "question"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise ValueError(f"missing key {key!r}" if key not in row else f"{key!r} must be a non-empty string")
    answers = _answers(row)
    if mode == "yesno":
        majority_yesno(answers)
    category = row.get("category")
    if category is not None and (not isinstance(category, str) or not category):
        raise ValueError(f"'category' must be a non-empty string, got {category!r}")
    metrics = YESNO_METRICS if mode == "yesno" else OPEN_METRICS
    if category in metrics:
        raise ValueError(f"category {category!r} is also the name of a score; rename it")
    image = Path(row["image"]).expanduser()
    image = image if image.is_absolute() else folder / image
    _check_image(image)
    return VqaItem(line, image, row["question"], answers, row.get("question_id"), category)


def _answers(row: Mapping[str, Any]) -> tuple[str, ...]:
    if "answers" in row and "answer" in row:
        raise ValueError("give 'answers' (a list) or 'answer' (a string), not both")
    if "answer" in row:
        answers = [row["answer"]]
    elif "answers" in row:
        answers = row["answers"]
        if not isinstance(answers, list) or not answers:
            raise ValueError(f"'answers' must be a non-empty list of strings, got {answers!r}")
    else:
        raise ValueError("missing key 'answers' (or 'answer')")
    for answer in answers:
        if not isinstance(answer, str) or not normalize_answer(answer):
            raise ValueError(f"answer {answer!r} is not a string with words (after normalisation)")
    return tuple(answers)


def _check_image(path: Path) -> None:
    """Refuse a missing file or one PIL cannot identify (the header only: no pixels are decoded)."""
    if not path.is_file():
        raise ValueError(f"image {str(path)!r} not found")
    try:
        with Image.open(path):
            pass
    except (UnidentifiedImageError, OSError):
        raise ValueError(f"image {str(path)!r} is not a readable image") from None


# ---- the runner --------------------------------------------------------------------------------
def evaluate_vqa(pipe: MMaDAPipeline, config: VqaConfig, *, progress: bool = False) -> Run:
    """Answer every question about its image and score the answers (task "vqa")."""
    items = read_vqa(config.path, limit=config.limit, mode=config.mode)
    settings = config.text.apply(pipe.settings.text)
    meter, outputs = Meter(), []
    calls = tqdm(batches(items, config.batch_size), desc="vqa", unit="batch", disable=not progress, leave=False)
    with metered(pipe.model, meter):
        for index, batch in enumerate(calls):
            generator = call_generator(pipe.device, config.seed, index)
            results = pipe.understand_batch([item.image for item in batch], [item.question for item in batch],
                                            thinking=config.thinking, sampling=settings, generator=generator)
            meter.add_text([r.tokens for r in results], pipe.vocab.mask_id)
            for offset, (item, result) in enumerate(zip(batch, results)):
                outputs.append(_output(index * config.batch_size + offset, item, result.text, result.answer,
                                       config.mode))
    return Run("vqa", {"vqa": vqa_scores(outputs, config.mode)}, outputs,
               {"data": data_record(config.path, len(items)), "limit": config.limit, "mode": config.mode,
                "thinking": config.thinking, "text": settings}, meter)


def _output(index: int, item: VqaItem, output: str, answer: str, mode: Mode) -> dict[str, Any]:
    record = {"index": index, "question_id": item.question_id, "category": item.category, "image": str(item.image),
              "question": item.question, "answers": list(item.answers), "output": output, "answer": answer,
              "normalized": normalize_answer(answer)}
    if mode == "yesno":
        label, prediction = majority_yesno(item.answers), yesno_label(answer)
        return record | {"label": label, "prediction": prediction, "correct": label == prediction}
    return record | {"soft_accuracy": vqa_soft_accuracy(answer, item.answers),
                     "exact_match": max(vqa_exact_match(answer, reference) for reference in item.answers)}


def vqa_scores(outputs: Sequence[Mapping[str, Any]], mode: Mode) -> dict[str, float]:
    """The run's scores from its per-item outputs, plus one score per category (soft accuracy or F1)."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for output in outputs:
        if output["category"] is not None:
            groups[output["category"]].append(output)
    if mode == "yesno":
        scores = pope_scores([o["label"] for o in outputs], [o["prediction"] for o in outputs])
        per_group = {name: pope_scores([o["label"] for o in group], [o["prediction"] for o in group])["f1"]
                     for name, group in groups.items()}
    else:
        count = max(len(outputs), 1)
        scores = {metric: sum(o[metric] for o in outputs) / count for metric in OPEN_METRICS}
        per_group = {name: sum(o["soft_accuracy"] for o in group) / len(group) for name, group in groups.items()}
    return scores | dict(sorted(per_group.items()))



def write_world_vqa(folder: str | Path, *, per_group: int = 50, yesno: bool = False) -> Path:
    """The tiny world's held-out VQA questions as `folder/vqa.jsonl` + `folder/images/NNNNN.png` (the
    format `evaluate_vqa` reads; `category` = question type), or with `yesno` only its yes/no
    (presence) questions as `folder/pope.jsonl`: local data for `mmada eval vqa` on any machine."""
    from ..world import evaluation_suite

    root = Path(folder)
    (root / "images").mkdir(parents=True, exist_ok=True)
    examples = [e for e in evaluation_suite(per_group=per_group).vqa if not yesno or e.qtype == "presence"]
    rows = []
    for index, example in enumerate(examples):
        name = f"images/{index:05d}.png"
        Image.fromarray(example.image).save(root / name)
        rows.append({"image": name, "question": example.question, "answers": [example.answer],
                     "category": example.qtype, "question_id": index})
    path = root / ("pope.jsonl" if yesno else "vqa.jsonl")
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path
