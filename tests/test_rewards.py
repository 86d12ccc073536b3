"""UniGRPO's rule-based rewards (MMaDA §2.3.2, Eq. 6) on hand examples."""

from __future__ import annotations

import importlib
import math

import pytest

from mmada.rl import rewards
from mmada.rl.rewards import (
    REWARDS,
    ClipScore,
    ImageRewardScore,
    RewardMix,
    correctness_arithmetic,
    correctness_gsm8k,
    correctness_vqa,
    format_reward,
    gsm8k_answer,
    t2i_compositional,
)
from mmada.world.scenes import Scene, SceneObject, render_scene

# Two real GSM8K test-split references (/work/shared/data/gsm8k/test.jsonl).
JAMES = "He sprints 3*3=<<3*3=9>>9 times\nSo he runs 9*60=<<9*60=540>>540 meters\n#### 540"
JOSH = ("The cost of the house and repairs came out to 80,000+50,000=$<<80000+50000=130000>>130,000\n"
        "So he made a profit of 200,000-130,000=$<<200000-130000=70000>>70,000\n#### 70000")


def test_correctness_arithmetic_with_and_without_think():
    assert correctness_arithmetic("<think> 5 + 3 = 8 </think> The answer is 8.", 8) == 2.0
    assert correctness_arithmetic("8", 8) == 2.0
    assert correctness_arithmetic("<think> 5 + 3 = 8 </think> 9", 8) == 0.0
    assert correctness_arithmetic("<think> it is 8 </think>", 8) == 0.0  # final answer after </think> is empty
    assert correctness_arithmetic(None, 8) == 0.0


def test_format_reward_needs_one_leading_think_block_and_an_answer():
    assert format_reward("<think> 2 + 2 = 4 </think> 4") == 0.5
    assert format_reward("  <think> 2 + 2 = 4 </think> 4\n") == 0.5
    assert format_reward("4") == 0.0
    assert format_reward("so <think> 2 + 2 </think> 4") == 0.0
    assert format_reward("<think> </think> 4") == 0.0
    assert format_reward("<think> 2 + 2 = 4 </think>") == 0.0
    assert format_reward("<think> a </think> <think> b </think> 4") == 0.0


def test_correctness_vqa():
    assert correctness_vqa("<think> I count them. </think> Three.", "3") == 2.0
    assert correctness_vqa("a blue square", "blue square") == 2.0
    assert correctness_vqa("blue", "blue square") == 0.0
    assert correctness_vqa("", "") == 0.0


@pytest.mark.parametrize(("text", "expected"), [
    (JAMES, "540"),
    (JOSH, "70000"),
    ("#### 1,200", "1200"),
    ("He pays 8 * 3 = $24. So the final answer is \\boxed{64}.", "64"),
    ("first \\boxed{3} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("<think> 48 / 2 = 24, 48 + 24 = 72 </think> Natalia sold 72 clips.", "72"),
    ("<think> 5 * 3 = 15 </think> It costs $1,234.50.", "1234.50"),
    ("no number here", None),
    ("unclosed \\boxed{12", "12"),  # an unclosed box is ignored; the last number remains
    (None, None),
])
def test_gsm8k_answer(text, expected):
    assert gsm8k_answer(text) == expected


def test_correctness_gsm8k_against_real_references():
    assert correctness_gsm8k("9 sprints of 60 m: \\boxed{540}", JAMES) == 2.0
    assert correctness_gsm8k("<think> 200,000 - 130,000 </think> The profit is $70,000.", JOSH) == 2.0
    assert correctness_gsm8k("<think> ... </think> 70000.00", JOSH) == 2.0
    assert correctness_gsm8k("\\boxed{541}", JAMES) == 0.0
    assert correctness_gsm8k("I don't know", JAMES) == 0.0
    assert correctness_gsm8k("\\boxed{540}", "540") == 2.0  # a bare answer works as the reference


def test_t2i_compositional():
    scene = Scene((SceneObject("circle", "red", 2, 10, 10), SceneObject("square", "blue", 18, 12, 9)))
    image = render_scene(scene)
    assert t2i_compositional(image, "a red circle to the left of a blue square") == 1.0
    assert t2i_compositional(image, "a red circle to the right of a blue square") == 0.0
    assert t2i_compositional(None, "a red circle") == 0.0


def test_reward_mix_sums_weighted_rewards():
    mix = RewardMix()
    assert mix.score("text", "<think> 5 + 3 = 8 </think> 8", 8) == 2.5
    assert mix.score("text", "8", 8) == 2.0
    assert mix.score("text", "<think> 5 + 3 = 9 </think> 9", 8) == 0.5
    assert mix.score("vqa", "<think> count </think> three", "3") == 2.5
    assert mix.score("gsm8k", "<think> 9 * 60 </think> \\boxed{540}", JAMES) == 2.5
    reweighted = RewardMix({"text": (("correctness_arithmetic", 0.5), ("format", 2.0))})
    assert reweighted.score("text", "<think> 5 + 3 = 8 </think> 8", 8) == 0.5 * 2.0 + 2.0 * 0.5


def test_reward_mix_refuses_unknown_names_tasks_and_weights():
    with pytest.raises(ValueError, match="unknown reward 'bleu'"):
        RewardMix({"text": (("bleu", 1.0),)})
    with pytest.raises(ValueError, match="finite"):
        RewardMix({"text": (("format", math.nan),)})
    with pytest.raises(ValueError, match="no reward mix for task 'audio'"):
        RewardMix().score("audio", "x", None)


def test_registry_names():
    assert set(REWARDS) == {"correctness_arithmetic", "correctness_vqa", "correctness_gsm8k", "format",
                            "t2i_compositional"}
    assert set(RewardMix().mixes) == {"text", "gsm8k", "vqa", "t2i"}


def _missing(*names: str):
    real = importlib.import_module

    def fake(name: str, *args, **kwargs):
        if name in names:
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    return fake


def test_clip_adapter_names_the_missing_package(monkeypatch, tmp_path):
    monkeypatch.setattr(rewards.importlib, "import_module", _missing("transformers"))
    with pytest.raises(ImportError, match="optional package 'transformers'"):
        ClipScore(tmp_path)


def test_image_reward_adapter_names_the_missing_package(monkeypatch, tmp_path):
    monkeypatch.setattr(rewards.importlib, "import_module", _missing("ImageReward"))
    with pytest.raises(ImportError, match="optional package 'image-reward'"):
        ImageRewardScore(tmp_path / "ImageReward.pt", tmp_path / "med_config.json")
