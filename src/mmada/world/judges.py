"""Judges for the tiny world: pure scorers shared by evaluation and RL rewards.

Every judge takes a model output (an image or a completion string) and the reference, and returns a
float in {0.0, 1.0} (or a falsy `T2IVerdict`) for malformed output, e.g. None, a wrong type, an
empty string, an image of the wrong shape or with NaNs. None of them raises (STYLE.md section 5,
item 14), so an RL rollout that produces garbage simply earns no reward.

- `score_t2i(image, prompt)`: GenEval-style verdict from the rule-based scene parser.
- `score_digit(image, label)`: the digit judge (an MLP trained on the train split of real digits).
- `vqa_exact_match(prediction, answer)`: exact match after normalisation.
- `score_arithmetic(completion, answer)`: the last number of the final answer equals `answer`.
- `score_format(completion)`: one non-empty `<think>...</think>` block followed by an answer.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from mmada.world.captions import Prompt, T2IVerdict, evaluate_prompt, parse_caption
from mmada.world.cot import THINK_CLOSE, THINK_OPEN, final_answer
from mmada.world.digits import load_digit_classifier
from mmada.world.parser import as_canvas_image, parse_scene

_NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate((
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
    ))
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")


def _malformed(reason: str, category: str = "") -> T2IVerdict:
    return T2IVerdict(correct=False, category=category, reasons=(reason,))


def score_t2i(image: Any, prompt: Prompt | str) -> T2IVerdict:
    """Judge a generated shapes image against a prompt spec (or a caption in the template language).

    Example: ``score_t2i(render_scene(scene), "a red circle")`` is truthy when the image holds exactly
    one red circle; ``.reasons`` explains a failure ("expected 1 red circle, found 0").

    Args:
        image: (32, 32, 3) uint8 RGB (see `parser.as_canvas_image` for other accepted forms).
        prompt: a `Prompt`, or caption text parsed with `parse_caption`.
    """
    try:
        if isinstance(prompt, str):
            prompt = parse_caption(prompt)
        if not isinstance(prompt, Prompt):
            return _malformed(f"prompt must be a Prompt or caption, got {type(prompt).__name__}")
        objects = parse_scene(image)
        if objects is None:
            return _malformed("image is not a 32x32 RGB image", prompt.category)
        return evaluate_prompt(objects, prompt)
    except (ValueError, TypeError) as err:
        return _malformed(str(err))


def t2i_reward(image: Any, prompt: Prompt | str) -> float:
    """`score_t2i` as a float reward in {0.0, 1.0}."""
    return score_t2i(image, prompt).score


def classify_digit(image: Any) -> int | None:
    """The digit (0-9) in a white-on-black 32x32 render, or None when `image` is malformed.

    The first call trains or loads the cached judge (`digits.load_digit_classifier`); a missing
    scikit-learn or an unreadable cache raises, as that is a broken environment, not a bad output.
    """
    classifier = load_digit_classifier()
    array = as_canvas_image(image)  # (32, 32, 3) float in [0, 255], or None
    return None if array is None else int(classifier.predict(array[None])[0])


def score_digit(image: Any, label: Any) -> float:
    """1.0 when the digit judge reads `label` in `image` (e.g. a t2i sample for "a handwritten digit 7")."""
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
        return 0.0
    predicted = classify_digit(image)
    return 1.0 if predicted is not None and predicted == int(label) else 0.0


def _canonical_number(match: re.Match[str]) -> str:
    value = float(match.group())
    return str(int(value)) if value.is_integer() else str(value)


def normalize_answer(text: Any) -> str:
    """Normalise a short answer: final answer only, lower case, numbers as digits, no articles.

    Example: ``normalize_answer("<think> ... </think> The Three.")`` -> ``"3"``; "Red circle!" ->
    "red circle"; "2.0" -> "2". Returns "" for non-strings.
    """
    if not isinstance(text, str):
        return ""
    answer = _NUMBER.sub(_canonical_number, _THOUSANDS.sub("", final_answer(text).lower()))
    answer = re.sub(r"[^\w\s.]|(?<!\d)\.|\.(?!\d)", " ", answer)  # drop punctuation, keep "2.5"
    return " ".join(_NUMBER_WORDS.get(token, token) for token in answer.split() if token not in _ARTICLES)


def vqa_exact_match(prediction: Any, answer: Any) -> float:
    """1.0 when normalised prediction == normalised answer (both non-empty), else 0.0.

    Example: ``vqa_exact_match("Three.", "3") == 1.0``; ``vqa_exact_match("a blue square", "blue
    square") == 1.0``; ``vqa_exact_match("blue", "blue square") == 0.0``.
    """
    expected = normalize_answer(answer)
    return 1.0 if expected and normalize_answer(prediction) == expected else 0.0


def extract_number(text: Any) -> float | None:
    """The last number in the final answer (the text after `</think>`), or None.

    Tolerates thousands separators, signs, decimals and words around it: "The answer is 1,234." ->
    1234.0.
    """
    if not isinstance(text, str):
        return None
    numbers = _NUMBER.findall(_THOUSANDS.sub("", final_answer(text)))
    if not numbers:
        return None
    value = float(numbers[-1])
    return value if math.isfinite(value) else None


def score_arithmetic(completion: Any, answer: Any) -> float:
    """1.0 when the completion's final number equals the integer `answer`.

    Example: ``score_arithmetic("<think> 5 + 3 = 8. </think> The answer is 8.", 8) == 1.0``; the
    plain form "8" scores the same; "9" or "" score 0.0.
    """
    if isinstance(answer, bool) or not isinstance(answer, (int, float, np.integer, np.floating)):
        return 0.0
    value = extract_number(completion)
    return 1.0 if value is not None and math.isfinite(answer) and abs(value - float(answer)) < 1e-6 else 0.0


def score_format(completion: Any) -> float:
    """1.0 for '<think> reasoning </think> answer' with exactly one think block and both parts non-empty.

    Leading and trailing whitespace is ignored; anything before `<think>` fails the format.
    Example: ``score_format("<think> 2 + 2 = 4 </think> 4") == 1.0``; ``score_format("4") == 0.0``.
    """
    if not isinstance(completion, str):
        return 0.0
    text = completion.strip()
    if text.count(THINK_OPEN) != 1 or text.count(THINK_CLOSE) != 1 or not text.startswith(THINK_OPEN):
        return 0.0
    reasoning, answer = text[len(THINK_OPEN) :].split(THINK_CLOSE)
    return 1.0 if reasoning.strip() and answer.strip() else 0.0
