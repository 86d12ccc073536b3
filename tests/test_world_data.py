"""Datasets of the tiny world: disjoint deterministic splits and a fixed evaluation suite."""

from __future__ import annotations

import hashlib
from collections import Counter
from itertools import islice

import numpy as np
import pytest

from mmada.world.captions import CATEGORIES
from mmada.world.data import (
    digit_examples,
    evaluation_suite,
    iter_digits,
    iter_t2i,
    iter_text,
    iter_vqa,
    split_of,
)
from mmada.world.digits import is_holdout, load_digit_data
from mmada.world.judges import score_t2i
from mmada.world.scenes import render_scene
from mmada.world.vqa import QTYPES

_KEYS = {
    iter_t2i: lambda e: e.scene.canonical(),
    iter_vqa: lambda e: e.scene.canonical(),
    iter_text: lambda e: e.question,
}


@pytest.mark.parametrize("iterate", list(_KEYS), ids=lambda f: f.__name__)
def test_splits_are_disjoint_and_deterministic(iterate):
    key = _KEYS[iterate]
    train = list(islice(iterate("train", seed=1), 300))
    validation = list(islice(iterate("validation", seed=1), 100))
    assert {split_of(key(e)) for e in train} == {"train"}
    assert {split_of(key(e)) for e in validation} == {"validation"}
    assert not {key(e) for e in train} & {key(e) for e in validation}
    assert list(islice(iterate("train", seed=1), 50)) == train[:50]
    assert list(islice(iterate("train", seed=2), 50)) != train[:50]


def test_records_hold_read_only_renders_of_their_scene():
    for example in islice(iter_t2i("train"), 20):
        assert example.caption == example.spec.caption
        assert not example.image.flags.writeable
        np.testing.assert_array_equal(example.image, render_scene(example.scene))
        assert score_t2i(example.image, example.spec)
    for example in islice(iter_vqa("train"), 20):
        assert not example.image.flags.writeable
        assert example.cot_answer.endswith(f"</think> {example.answer}")


def test_category_and_qtype_filters():
    assert {e.spec.category for e in islice(iter_t2i("train", categories=["counting"]), 30)} == {"counting"}
    assert {e.qtype for e in islice(iter_vqa("train", qtypes=["presence"]), 30)} == {"presence"}
    assert {e.num_steps for e in islice(iter_text("train", steps=[3]), 30)} == {3}
    with pytest.raises(ValueError, match="split"):
        next(iter_text("test"))


def test_digit_split_is_fixed_and_disjoint():
    train, validation = load_digit_data("train"), load_digit_data("validation")
    assert not set(train.indices) & set(validation.indices)
    assert len(train.indices) + len(validation.indices) == 1797
    assert len(validation.indices) == 343  # ~20%, fixed by hash
    assert all(is_holdout(int(i)) for i in validation.indices)
    examples = digit_examples("validation")
    assert [e.index for e in examples] == validation.indices.tolist()
    first = examples[0]
    assert first.caption == f"a handwritten digit {first.label}" and first.answer == str(first.label)
    assert first.image.shape == (32, 32, 3) and first.image.dtype == np.uint8
    epoch = list(islice(iter_digits("validation", seed=0), len(examples)))
    assert sorted(e.index for e in epoch) == sorted(e.index for e in examples)


def test_evaluation_suite_is_fixed_and_from_validation():
    suite, again = evaluation_suite(), evaluation_suite()
    assert suite == again
    for ours, theirs in zip(suite.t2i + suite.vqa, again.t2i + again.vqa):
        np.testing.assert_array_equal(ours.image, theirs.image)
    assert Counter(e.num_steps for e in suite.text) == {steps: 50 for steps in range(1, 5)}
    assert Counter(e.qtype for e in suite.vqa) == {qtype: 50 for qtype in QTYPES}
    assert Counter(e.spec.category for e in suite.t2i) == {category: 50 for category in CATEGORIES}
    assert Counter(e.label for e in suite.digit_t2i) == {label: 10 for label in range(10)}
    assert suite.digit_recognition == digit_examples("validation")
    assert {split_of(e.question) for e in suite.text} == {"validation"}
    assert {split_of(e.scene.canonical()) for e in suite.t2i + suite.vqa} == {"validation"}
    assert len({e.scene.canonical() for e in suite.t2i}) == len(suite.t2i)
    assert _digest(suite) == SUITE_DIGEST, "the evaluation suite changed: numbers are no longer comparable"


SUITE_DIGEST = "4c7e1fe2b0a3376aee148e13a26347532529a05d6e4af5a949e98dc39384aab2"
"""SHA-256 of evaluation_suite(seed=0)'s text content; update only on a deliberate change of the world."""


def _digest(suite) -> str:
    lines = [e.question + e.cot_answer for e in suite.text]
    lines += [e.scene.canonical() + e.question + e.cot_answer for e in suite.vqa]
    lines += [e.caption + e.scene.canonical() for e in suite.t2i]
    lines += [str(e.index) for e in suite.digit_t2i + suite.digit_recognition]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
