"""Shapes scenes, captions and VQA: generation contracts (the judges are tested in test_world_judges)."""

from __future__ import annotations

import random
import re
from itertools import combinations

import numpy as np
import pytest

from mmada.world.captions import (
    CATEGORIES,
    ObjectSpec,
    Prompt,
    evaluate_prompt,
    parse_caption,
    sample_prompt,
    scene_for_prompt,
)
from mmada.world.cot import final_answer
from mmada.world.judges import score_format
from mmada.world.scenes import (
    CANVAS,
    MAX_OBJECT_SIZE,
    MIN_OBJECT_SIZE,
    OBJECT_GAP,
    PALETTE,
    STATE_STRENGTH,
    SceneObject,
    relation_strength,
    render_scene,
    sample_scene,
)
from mmada.world.vqa import QTYPES, make_question, sample_vqa


def test_scenes_are_deterministic_separated_and_on_canvas():
    for seed in range(300):
        scene = sample_scene(random.Random(seed))
        assert scene == sample_scene(random.Random(seed))
        assert 1 <= len(scene.objects) <= 4
        for obj in scene.objects:
            assert MIN_OBJECT_SIZE <= obj.size <= MAX_OBJECT_SIZE
            assert obj.x >= 1 and obj.y >= 1 and max(obj.x, obj.y) + obj.size <= CANVAS - 1
        for a, b in combinations(scene.objects, 2):
            gap_x = max(b.x - (a.x + a.size), a.x - (b.x + b.size))
            gap_y = max(b.y - (a.y + a.size), a.y - (b.y + b.size))
            assert max(gap_x, gap_y) >= OBJECT_GAP


def test_render_uses_palette_colours_only_and_is_deterministic():
    allowed = {(0, 0, 0), *PALETTE.values()}
    for seed in range(50):
        scene = sample_scene(random.Random(seed))
        image = render_scene(scene)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert {tuple(p) for p in image.reshape(-1, 3).tolist()} <= allowed
        np.testing.assert_array_equal(image, render_scene(scene))
        assert render_scene(scene, size=128).shape == (128, 128, 3)


def test_each_object_is_drawn_in_its_colour_inside_its_box():
    scene = sample_scene(random.Random(7), min_objects=4)
    image = render_scene(scene)
    for obj in scene.objects:
        crop = image[obj.y : obj.y + obj.size, obj.x : obj.x + obj.size].reshape(-1, 3)
        share = (crop == PALETTE[obj.color]).all(axis=1).mean()
        expected = {"square": 1.0, "circle": 0.78, "triangle": 0.5}[obj.shape]
        assert share == pytest.approx(expected, abs=0.12)


def test_invalid_objects_name_the_parameter():
    with pytest.raises(ValueError, match="shape"):
        SceneObject("hexagon", "red", 1, 1, 8)
    with pytest.raises(ValueError, match="color"):
        SceneObject("circle", "pink", 1, 1, 8)
    with pytest.raises(ValueError, match="canvas"):
        SceneObject("circle", "red", 28, 1, 8)


def test_relation_strength_follows_geneval():
    left, right = (2.0, 10.0, 12.0, 20.0), (15.0, 10.0, 25.0, 20.0)  # 13 px apart, same row
    assert relation_strength(left, right, "left of") == pytest.approx((13 - 2) / 13)
    assert relation_strength(left, right, "right of") == pytest.approx(-(13 - 2) / 13)
    assert relation_strength(left, right, "above") == 0.0
    assert relation_strength(left, left, "below") == 0.0
    for a, b in [(left, right), ((3.0, 1.0, 11.0, 9.0), (14.0, 20.0, 26.0, 32.0))]:
        assert relation_strength(a, b, "left of") == pytest.approx(relation_strength(b, a, "right of"))
        assert relation_strength(a, b, "above") == pytest.approx(relation_strength(b, a, "below"))


@pytest.mark.parametrize("category", CATEGORIES)
def test_captions_round_trip_and_scenes_satisfy_them(category):
    for seed in range(150):
        rng = random.Random(f"{category}:{seed}")
        prompt = sample_prompt(rng, category)
        assert prompt.category == category
        assert parse_caption(prompt.caption) == prompt
        scene = scene_for_prompt(prompt, rng)
        assert evaluate_prompt(scene.objects, prompt), prompt.caption
        assert len(scene.objects) == sum(group.count for group in prompt.objects)  # nothing extra
        if prompt.relation is not None:
            first = [o for o in scene.objects if prompt.objects[0].matches(o)]
            second = [o for o in scene.objects if prompt.objects[1].matches(o)]
            for a in first:
                for b in second:
                    assert relation_strength(a.box, b.box, prompt.relation) >= STATE_STRENGTH


def test_parse_caption_accepts_variations_and_rejects_the_rest():
    expected = Prompt("color_attr", (ObjectSpec("circle", "red", 2), ObjectSpec("square", "blue")), "above")
    assert parse_caption("  A photo of Two red circles above a blue square. ") == expected
    assert parse_caption("2 red circles above a blue square") == expected
    assert parse_caption("an orange triangle").objects == (ObjectSpec("triangle", "orange"),)
    assert parse_caption("a circle") == Prompt("single_object", (ObjectSpec("circle", None),))
    assert parse_caption("a red circle to the right of a green circle").relation == "right of"
    assert parse_caption("a red circle and a blue circle").category == "colors"
    assert parse_caption("three green triangles").category == "counting"
    for bad in ["", "a pink circle", "five red circles", "a red hexagon", "a red circle near a blue square",
                "a red circle and a red circle"]:  # fmt: skip
        with pytest.raises(ValueError, match="caption"):
            parse_caption(bad)


def test_evaluate_prompt_counts_exactly_and_ignores_unnamed_objects():
    red_left = SceneObject("circle", "red", 2, 10, 10)
    blue_right = SceneObject("square", "blue", 18, 10, 10)
    green_top = SceneObject("triangle", "green", 12, 1, 8)
    objects = [red_left, blue_right, green_top]
    assert evaluate_prompt(objects, parse_caption("a red circle to the left of a blue square"))
    assert not evaluate_prompt(objects, parse_caption("a red circle to the right of a blue square"))
    verdict = evaluate_prompt(objects, parse_caption("two red circles"))
    assert not verdict and verdict.reasons == ("expected 2 red circles, found 1",)
    assert evaluate_prompt(objects, parse_caption("a circle"))  # colour-free group


def _answer_from_truth(scene, item):
    """Recompute the answer of a generated question from the ground-truth objects."""
    objects = scene.objects
    if item.qtype == "count":
        words = re.match(r"how many (\w+)(?: (\w+))? are there\?", item.question).groups()
        words = [w.rstrip("s") for w in words if w]
        keep = [o for o in objects if all(w in (o.color, o.shape, "object") for w in words)]
        return str(len(keep))
    if item.qtype == "color":
        shape = item.question.removeprefix("what color is the ").rstrip("?")
        (obj,) = [o for o in objects if o.shape == shape]
        return obj.color
    if item.qtype == "shape":
        color = item.question.split()[4]
        (obj,) = [o for o in objects if o.color == color]
        return obj.shape
    if item.qtype == "presence":
        color, shape = item.question.rstrip("?").split()[-2:]
        return "yes" if any(o.name == f"{color} {shape}" for o in objects) else "no"
    relation = next(r for r in ("left of", "right of", "above", "below") if r in item.question)
    reference = item.question.rstrip("?").split(" the ")[-1]
    (ref,) = [o for o in objects if o.name == reference]
    holding = [o for o in objects if o is not ref and relation_strength(o.box, ref.box, relation) >= STATE_STRENGTH]
    (answer,) = holding
    return answer.name


@pytest.mark.parametrize("qtype", QTYPES)
def test_vqa_answers_match_the_scene_and_cot_is_well_formed(qtype):
    answers = set()
    for seed in range(200):
        scene, item = sample_vqa(random.Random(f"{qtype}:{seed}"), qtype)
        assert item.qtype == qtype
        assert _answer_from_truth(scene, item) == item.answer, item.question
        assert score_format(item.cot_answer) == 1.0
        assert final_answer(item.cot_answer) == item.answer
        answers.add(item.answer)
    if qtype == "presence":
        assert answers == {"yes", "no"}
    if qtype == "count":
        assert {"0", "1", "2", "3"} <= answers


def test_vqa_rejects_unknown_question_type():
    with pytest.raises(ValueError, match="qtype"):
        make_question(sample_scene(random.Random(0)), "why", random.Random(0))
