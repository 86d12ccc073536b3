"""The world evaluation runs every task through a pipeline and the world's judges."""

from __future__ import annotations

import pytest

from mmada.evaluation.world import TASKS, WorldEvalConfig, evaluate_world, results_to_markdown
from mmada.pipelines import MMaDAPipeline
from mmada.sampling import ImageSampling, Overrides, TextSampling


@pytest.fixture(scope="module")
def pipe(reference_dir):
    return MMaDAPipeline.from_pretrained(
        reference_dir / "mmada_a", image_tokenizer=reference_dir / "magvitv2_tiny", max_text_len=16
    )


def test_every_task_is_scored_per_group(pipe):
    text = Overrides(TextSampling, gen_length=8, steps=4, block_length=8, temperature=0)
    config = WorldEvalConfig(per_group=2, limit=1, batch_size=8, text=text, short=text,
                             image=Overrides(ImageSampling, timesteps=2, guidance_scale=0.0))
    results = evaluate_world(pipe, config)
    assert set(results) == set(TASKS)
    assert set(results["arithmetic"]) == {"1 steps", "2 steps", "3 steps", "4 steps", "overall", "think format"}
    assert {"count", "color", "shape", "position", "presence", "overall"} == set(results["vqa"])
    assert len(results["t2i"]) == 7 and "overall" in results["digit_t2i"]
    assert all(0.0 <= v <= 1.0 for groups in results.values() for v in groups.values())
    # a random model answers nothing right: a judge that accepted garbage would show here
    assert results["arithmetic"]["overall"] == 0.0 and results["t2i"]["overall"] == 0.0
    assert "| overall |" in results_to_markdown(results)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="unknown evaluation task 'poetry'"):
        WorldEvalConfig(tasks=("poetry",))
    with pytest.raises(ValueError, match="must be >= 1"):
        WorldEvalConfig(batch_size=0)
    with pytest.raises(ValueError, match=r"`text` must be Overrides\(TextSampling"):
        WorldEvalConfig(text={"temperature": 0.0})
    with pytest.raises(ValueError, match="unknown sampler setting 'gen_lenght'"):
        Overrides(TextSampling, gen_lenght=8)


@pytest.mark.parametrize("thinking", [False, True])
def test_vqa_gives_thinking_answers_the_reasoning_settings(pipe, monkeypatch, thinking):
    """Asked to think, a VQA answer is a whole <think> trace: it gets `text` (room for it), not `short`."""
    seen = []
    original = pipe.understand_batch

    def spy(images, questions, **kwargs):
        seen.append((kwargs.get("thinking", False), kwargs["sampling"].gen_length))
        return original(images, questions, **kwargs)

    monkeypatch.setattr(pipe, "understand_batch", spy)
    text = Overrides(TextSampling, gen_length=16, steps=4, block_length=16, temperature=0)
    short = Overrides(TextSampling, gen_length=8, steps=4, block_length=8, temperature=0)
    evaluate_world(pipe, WorldEvalConfig(tasks=("vqa", "digit_recognition"), per_group=1, limit=1, thinking=thinking,
                                         text=text, short=short))
    vqa, digits = seen[0], seen[-1]
    assert vqa == (thinking, 16 if thinking else 8)
    assert digits[1] == 8  # digit recognition always asks for the short answer
