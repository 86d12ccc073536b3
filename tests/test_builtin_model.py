"""The committed MMaDA-tiny: complete, the default everywhere, and its outputs do not drift.

`tests/fixtures/mmada_tiny_golden.json` holds greedy answers and a seeded image the model produced when it
was committed (1 thread). Any regression in a layer under it — weights loading, the transformer, the
tokenizers, the layouts, the samplers, the image tokenizer — changes these tokens.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mmada.pipelines import MMaDAPipeline
from mmada.utils.files import BUILTIN_MODELS, DEFAULT_MODEL, resolve_folder
from mmada.world import iter_vqa

FOLDER = BUILTIN_MODELS[DEFAULT_MODEL]
GOLDEN = Path(__file__).parent / "fixtures" / "mmada_tiny_golden.json"


@pytest.fixture(scope="module")
def pipe():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield MMaDAPipeline.from_pretrained(DEFAULT_MODEL)
    torch.set_num_threads(threads)


def outputs(pipe: MMaDAPipeline) -> dict[str, list[int]]:
    vqa = next(iter_vqa("validation", seed=2))
    return {
        "generate": pipe.generate("Tom has 3 apples and buys 4 more. How many apples does he have?").tokens.tolist(),
        "generate_thinking": pipe.generate("What is 12 + 30?", thinking=True).tokens.tolist(),
        "understand": pipe.understand(vqa.image, vqa.question, gen_length=32, steps=16).tokens.tolist(),
        "t2i": pipe.iter_text_to_image("a red circle", generator=torch.Generator().manual_seed(0))
        .__next__().tokens.tolist(),
    }


def test_builtin_model_is_complete_and_the_default():
    assert resolve_folder(DEFAULT_MODEL) == FOLDER
    for name in ("config.json", "model.safetensors", "tokenizer.json", "mmada_pipeline.json", "README.md",
                 "scores.json", "image_tokenizer/config.json", "image_tokenizer/model.safetensors"):
        assert (FOLDER / name).is_file(), name
    scores = json.loads((FOLDER / "scores.json").read_text())["scores"]
    assert set(scores) == {"pretrain", "sft", "sft_direct", "sft_nocot"}


def test_builtin_model_outputs_do_not_drift(pipe):
    assert pipe.settings.resolution == 32 and pipe.num_image_tokens == 64
    assert outputs(pipe) == json.loads(GOLDEN.read_text())


SLICE = 4
"""Examples per group of the floor check (the recorded table used 50)."""
FLOOR = 0.8
"""The slice must reach this share of the recorded table value, counted in whole examples."""
TASKS = ("arithmetic", "vqa", "t2i", "digit_t2i", "digit_recognition")


@pytest.fixture(scope="module")
def slice_scores(pipe):
    from mmada.recipe import RecipeConfig, evaluate_stage

    return evaluate_stage(FOLDER, RecipeConfig(eval_limit=SLICE), thinking=True)


def floor(recorded: dict[str, float]) -> tuple[int, int]:
    """(examples the slice must get right, examples in the slice) for one task of the recorded table."""
    groups = [g for g in recorded if g not in ("overall", "think format")]
    n = SLICE * len(groups)
    return math.floor(FLOOR * recorded["overall"] * n), n


def test_builtin_model_scores_above_its_floor(slice_scores):
    """The model as committed still scores what its table says (the mixed-CoT SFT column, asked in thinking
    mode), on a slice of the same suite with the same settings: per task, at least 80% of the recorded
    accuracy in whole examples. A broken layer anywhere drops the tasks the model does solve to ~0."""
    table = json.loads((FOLDER / "scores.json").read_text())["scores"]["sft"]
    needed = 0
    for task in TASKS:
        need, n = floor(table[task])
        got = round(slice_scores[task]["overall"] * n)
        recorded = table[task]["overall"]
        assert got >= need, f"{task}: {got}/{n} right on the slice < {need} (= {FLOOR} x recorded {recorded:.3f})"
        needed += need
    assert needed >= 10, f"the floor asks for only {needed} right answers in all: too weak to catch a regression"
