"""Judges of the tiny world: parser accuracy, t2i verdicts, digit judge, text scorers, malformed inputs."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from mmada.world.calibration import degrade, judge_report
from mmada.world.digits import digit_accuracy, load_digit_classifier, load_digit_data, render_digit
from mmada.world.judges import (
    classify_digit,
    normalize_answer,
    score_arithmetic,
    score_digit,
    score_format,
    score_t2i,
    t2i_reward,
    vqa_exact_match,
)
from mmada.world.parser import parse_scene
from mmada.world.preview import describe
from mmada.world.scenes import Scene, SceneObject, render_scene, sample_scene


@pytest.fixture(scope="module")
def report():
    """Parser and t2i judge accuracy over 1000 random scenes and 600 prompts (100 per category)."""
    return judge_report(num_scenes=1000, num_prompts=600, seed=0, blur=0.7, noise=8.0, digits=False)


def test_parser_reads_clean_and_degraded_renders(report):
    assert report.parser_clean >= 0.99
    assert report.parser_degraded >= 0.95


def test_t2i_judge_accepts_true_captions_and_rejects_mismatches(report):
    assert report.t2i_accept_clean >= 0.99
    assert report.t2i_accept_degraded >= 0.95
    assert set(report.t2i_reject) == {"color", "count", "shape", "position", "all"}
    assert report.num_mismatches >= 1800
    assert min(report.t2i_reject.values()) >= 0.99


def test_degradation_is_mild_but_real():
    image = render_scene(sample_scene(random.Random(0)))
    noisy = degrade(image, np.random.default_rng(0))
    assert 2.0 < np.abs(noisy.astype(float) - image).mean() < 30.0


def test_t2i_verdict_explains_and_accepts_caption_text():
    scene = Scene((SceneObject("circle", "red", 2, 10, 10), SceneObject("square", "blue", 18, 12, 9)))
    image = render_scene(scene)
    caption = "a red circle to the left of a blue square"
    assert score_t2i(image, caption) and t2i_reward(image, caption) == 1.0
    wrong = score_t2i(image, caption.replace("left", "right"))
    assert not wrong and wrong.category == "position" and "is not right of" in wrong.reasons[0]
    assert not score_t2i(image, "a purple hexagon")  # unparseable caption: falsy, no exception
    assert describe(image).splitlines()[1].startswith("- red circle at (7.0, 15.0), left")
    assert describe(np.zeros((32, 32, 3), np.uint8)) == "no objects"


@pytest.fixture(scope="module")
def digit_judge(tmp_path_factory):
    """Train the judge once into a fresh cache dir, so the test measures the real training path."""
    patch = pytest.MonkeyPatch()
    patch.setenv("MMADA_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    load_digit_classifier.cache_clear()
    yield load_digit_classifier()
    patch.undo()
    load_digit_classifier.cache_clear()


def test_digit_judge_accuracy_on_held_out_split(digit_judge):
    assert digit_accuracy(digit_judge, "validation") >= 0.95
    data = load_digit_data("validation")
    image, label = render_digit(data.images[0]), int(data.labels[0])
    assert classify_digit(image) == digit_judge.predict(image[None])[0]
    assert score_digit(Image.fromarray(image), label) == float(classify_digit(image) == label)
    assert score_digit(image, str(label)) == 0.0  # the label must be an int


@pytest.mark.parametrize(
    ("prediction", "answer"),
    [("Three.", "3"), ("3", "three"), ("The Red circle!", "red circle"), ("an orange square", "orange square"),
     ("<think> I count them. </think> 2", "2"), ("2.0", "2"), ("YES", "yes"), ("  blue ", "blue")],
)  # fmt: skip
def test_vqa_exact_match_normalises(prediction, answer):
    assert vqa_exact_match(prediction, answer) == 1.0


@pytest.mark.parametrize(
    ("prediction", "answer"),
    [("blue", "blue square"), ("4", "3"), ("no", "yes"), ("", ""), ("<think> blue </think>", "blue"),
     ("it is blue", "blue")],
)  # fmt: skip
def test_vqa_exact_match_rejects(prediction, answer):
    assert vqa_exact_match(prediction, answer) == 0.0


def test_normalize_answer():
    assert normalize_answer("The answer: 1,234.") == "answer 1234"
    assert normalize_answer("2.50 apples") == "2.5 apples"
    assert normalize_answer(None) == ""


@pytest.mark.parametrize(
    ("completion", "expected"),
    [("<think> 2 + 2 = 4 </think> 4", 1.0), ("\n<think>\nreason\n</think>\n answer \n", 1.0),
     ("4", 0.0), ("<think> </think> 4", 0.0), ("<think> reason </think>   ", 0.0), ("x <think> r </think> 4", 0.0),
     ("<think> a </think> b <think> c </think> d", 0.0), ("<think> r <think> r </think> 4", 0.0),
     ("</think> 4 <think>", 0.0), ("<think> reason 4", 0.0)],
)  # fmt: skip
def test_format_judge(completion, expected):
    assert score_format(completion) == expected


_GARBAGE = [None, 0, 3.5, b"4", [], {}, "", "   ", np.nan, object()]
_BAD_IMAGES = [
    None, "image", np.zeros((32, 32)), np.zeros((31, 32, 3), np.uint8), np.zeros((32, 32, 4), np.uint8),
    np.full((32, 32, 3), np.nan), np.full((32, 32, 3), 7.0), np.zeros((0, 0, 3)), np.zeros((32, 32, 3), bool),
    np.zeros((32, 32, 3), object), [[0] * 3] * 32,
]  # fmt: skip


@pytest.mark.parametrize("garbage", _GARBAGE, ids=repr)
def test_text_judges_return_zero_on_malformed_output(garbage):
    assert score_format(garbage) == 0.0
    assert score_arithmetic(garbage, 4) == 0.0
    assert vqa_exact_match(garbage, "4") == 0.0
    assert score_arithmetic("4", garbage) == 0.0


@pytest.mark.parametrize("image", _BAD_IMAGES, ids=lambda x: type(x).__name__ + str(getattr(x, "shape", "")))
def test_image_judges_return_falsy_on_malformed_images(image, digit_judge):
    assert parse_scene(image) is None
    assert not score_t2i(image, "a red circle") and t2i_reward(image, "a red circle") == 0.0
    assert classify_digit(image) is None and score_digit(image, 3) == 0.0
    assert describe(image).startswith("not a shapes image")


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60), st.one_of(st.integers(-5, 500), st.text(max_size=5)))
def test_text_judges_never_raise_on_random_strings(text, reference):
    for score in (score_format(text), score_arithmetic(text, reference), vqa_exact_match(text, reference)):
        assert score in (0.0, 1.0)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.float32, np.float64, np.int64]),
        shape=st.sampled_from([(32, 32, 3), (64, 64, 3), (32, 32), (8, 8, 3), (32, 33, 3)]),
    ),
    st.sampled_from(["a red circle", "two blue squares above a green circle", "nonsense"]),
)
def test_image_judges_never_raise_on_random_arrays(digit_judge, image, caption):
    verdict = score_t2i(image, caption)
    assert isinstance(verdict.correct, bool) and isinstance(verdict.reasons, tuple)
    assert score_digit(image, 5) in (0.0, 1.0)
    assert isinstance(describe(image), str)
    if image.shape not in ((32, 32, 3), (64, 64, 3)):
        assert not verdict and classify_digit(image) is None
