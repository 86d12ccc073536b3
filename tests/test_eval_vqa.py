"""The VQA runner: VQAv2 soft accuracy and POPE metrics on hand-made cases, end to end on the tiny world's
questions with the built-in model, reproducible under a seed, and malformed rows refused before sampling."""

from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image

from mmada.evaluation.vqa import (
    VqaConfig,
    evaluate_vqa,
    majority_yesno,
    pope_scores,
    read_vqa,
    vqa_soft_accuracy,
    yesno_label,
)
from mmada.pipelines import MMaDAPipeline
from mmada.sampling import Overrides, TextSampling
from mmada.utils.files import BUILTIN_MODELS
from mmada.world import evaluation_suite
from mmada.world.judges import normalize_answer

SHORT = Overrides(TextSampling, gen_length=8, steps=8, block_length=8, temperature=0.0)


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return MMaDAPipeline.from_pretrained(BUILTIN_MODELS["mmada-tiny"])


def _write(folder, examples, answers=lambda e: [e.answer]):
    """The examples as a VQA jsonl beside their PNGs; returns the jsonl's path."""
    (folder / "images").mkdir(parents=True)
    rows = []
    for i, example in enumerate(examples):
        Image.fromarray(example.image).save(folder / "images" / f"{i}.png")
        rows.append({"image": f"images/{i}.png", "question": example.question, "answers": answers(example),
                     "category": example.qtype, "question_id": 100 + i})
    path = folder / "questions.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def suite():
    return evaluation_suite(per_group=4)


# ---- pure scorers ------------------------------------------------------------------------------
def _official(prediction, answers):
    """vqaEval.py's loop, transcribed: for each answer, min(1, matches among the others / 3), averaged."""
    accs = [min(1.0, sum(a == prediction for j, a in enumerate(answers) if j != i) / 3) for i in range(len(answers))]
    return sum(accs) / len(accs)


@pytest.mark.parametrize("matching", range(11))
def test_soft_accuracy_is_the_official_ten_choose_nine_average(matching):
    answers = ["red"] * matching + ["blue", "green", "pink", "black", "white", "gray", "brown", "tan", "gold", "teal"]
    answers = answers[:10]
    assert vqa_soft_accuracy("red", answers) == pytest.approx(_official("red", answers))


def test_soft_accuracy_hand_values():
    ten = lambda m: ["red"] * m + ["blue"] * (10 - m)  # noqa: E731
    assert vqa_soft_accuracy("red", ten(4)) == 1.0
    assert vqa_soft_accuracy("red", ten(3)) == pytest.approx(0.9)  # 7 * 1 + 3 * 2/3 over 10
    assert vqa_soft_accuracy("red", ten(2)) == pytest.approx(0.6)
    assert vqa_soft_accuracy("red", ten(1)) == pytest.approx(0.3)
    assert vqa_soft_accuracy("green", ten(3)) == 0.0
    # one answer: exact match, after normalisation
    assert vqa_soft_accuracy("Two.", ["2"]) == 1.0 and vqa_soft_accuracy("the red", ["red"]) == 1.0
    assert vqa_soft_accuracy("blue", ["red"]) == 0.0 and vqa_soft_accuracy("", ["red"]) == 0.0
    # two or three answers: full credit needs the other answers to agree
    assert vqa_soft_accuracy("red", ["red", "red"]) == 1.0 and vqa_soft_accuracy("red", ["red", "blue"]) == 0.5
    assert vqa_soft_accuracy("red", ["red", "red", "blue"]) == pytest.approx((1 + 0.5 + 0.5) / 3)
    with pytest.raises(ValueError, match="at least one answer"):
        vqa_soft_accuracy("red", [])


def test_yesno_labels_and_pope_metrics_on_a_hand_made_confusion():
    assert [yesno_label(t) for t in ("Yes, there is.", "no", "No.", "yesterday", "a red circle", "")] == [
        "yes", "no", "no", "other", "other", "other"]
    labels = ["yes"] * 5 + ["no"] * 3
    predictions = ["yes", "yes", "yes", "no", "other", "yes", "no", "no"]  # TP 3, FN 2 (one "other"), FP 1, TN 2
    scores = pope_scores(labels, predictions)
    precision, recall = 3 / 4, 3 / 5
    assert scores == pytest.approx({"accuracy": 5 / 8, "precision": precision, "recall": recall,
                                    "f1": 2 * precision * recall / (precision + recall), "yes_ratio": 4 / 8,
                                    "other": 1 / 8})
    assert pope_scores(["no", "no"], ["no", "other"])["f1"] == 0.0  # no positives: 0, not a division error
    assert majority_yesno(["yes", "Yes", "no"]) == "yes" and majority_yesno(["no"]) == "no"
    with pytest.raises(ValueError, match="split evenly"):
        majority_yesno(["yes", "no"])
    with pytest.raises(ValueError, match="'maybe' is not yes or no"):
        majority_yesno(["yes", "maybe"])


# ---- end to end --------------------------------------------------------------------------------
def test_open_mode_end_to_end(pipe, suite, tmp_path):
    examples = suite.vqa[::2]  # 2 per question type
    # a few rows with several human answers, so the soft accuracy differs from exact match
    path = _write(tmp_path, examples, lambda e: [e.answer] * 2 + ["something else"] * 2 if e.qtype == "color"
                  else [e.answer])
    run = evaluate_vqa(pipe, VqaConfig(path, batch_size=4, text=SHORT))
    assert run.task == "vqa" and len(run.outputs) == len(examples)
    scores = run.scores["vqa"]
    assert set(scores) == {"soft_accuracy", "exact_match", "count", "color", "shape", "position", "presence"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    for i, (output, example) in enumerate(zip(run.outputs, examples)):
        assert (output["index"], output["question_id"], output["category"]) == (i, 100 + i, example.qtype)
        assert output["normalized"] == normalize_answer(output["answer"])
        assert output["soft_accuracy"] == vqa_soft_accuracy(output["answer"], output["answers"])
        assert output["exact_match"] == float(output["normalized"] in map(normalize_answer, output["answers"]))
    mean = lambda key, rows: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    assert scores["soft_accuracy"] == pytest.approx(mean("soft_accuracy", run.outputs))
    assert scores["exact_match"] == pytest.approx(mean("exact_match", run.outputs))
    for qtype in ("count", "color", "shape", "position", "presence"):
        assert scores[qtype] == pytest.approx(mean("soft_accuracy", [o for o in run.outputs if o["category"] == qtype]))
    assert scores["exact_match"] > 0  # the trained model reads the images: some answers are right
    assert run.meter.sampler_calls == 3 and 3 <= run.meter.model_calls <= 3 * 8 and run.meter.tokens > 0
    assert run.settings["mode"] == "open" and run.settings["text"].gen_length == 8


def test_yesno_mode_end_to_end(pipe, suite, tmp_path):
    examples = [e for e in suite.vqa if e.qtype == "presence"]
    assert {e.answer for e in examples} == {"yes", "no"}
    path = _write(tmp_path, examples)
    run = evaluate_vqa(pipe, VqaConfig(path, mode="yesno", batch_size=8, text=SHORT))
    scores = run.scores["vqa"]
    assert set(scores) == {"accuracy", "precision", "recall", "f1", "yes_ratio", "other", "presence"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert [o["label"] for o in run.outputs] == [e.answer for e in examples]
    assert all(o["prediction"] == yesno_label(o["answer"]) for o in run.outputs)
    assert all(o["correct"] == (o["label"] == o["prediction"]) for o in run.outputs)
    recomputed = pope_scores([o["label"] for o in run.outputs], [o["prediction"] for o in run.outputs])
    assert {k: scores[k] for k in recomputed} == recomputed and scores["presence"] == recomputed["f1"]


def test_same_seed_same_scores(pipe, suite, tmp_path):
    """Sampling at temperature 1, the seed fixes every answer."""
    path = _write(tmp_path, suite.vqa[::4])
    config = VqaConfig(path, batch_size=3, seed=7, text=Overrides(TextSampling, gen_length=8, steps=8,
                                                                     block_length=8, temperature=1.0))
    first, second = evaluate_vqa(pipe, config), evaluate_vqa(pipe, config)
    assert first.scores == second.scores
    assert [o["output"] for o in first.outputs] == [o["output"] for o in second.outputs]


# ---- refused input -----------------------------------------------------------------------------
@pytest.mark.parametrize(("row", "mode", "message"), [
    ({"question": "q?", "answers": ["red"]}, "open", "missing key 'image'"),
    ({"image": "img.png", "answers": ["red"]}, "open", "missing key 'question'"),
    ({"image": "img.png", "question": "q?"}, "open", r"missing key 'answers' \(or 'answer'\)"),
    ({"image": "img.png", "question": "q?", "answers": "red"}, "open", "'answers' must be a non-empty list"),
    ({"image": "img.png", "question": "q?", "answers": ["the"]}, "open", "answer 'the' is not a string with words"),
    ({"image": "nowhere.png", "question": "q?", "answers": ["red"]}, "open", "image '.*nowhere.png' not found"),
    ({"image": "notes.png", "question": "q?", "answers": ["red"]}, "open",
     "image '.*notes.png' is not a readable image$"),
    ({"image": "img.png", "question": "q?", "answers": ["red"]}, "yesno", "answer 'red' is not yes or no"),
    ({"image": "img.png", "question": "q?", "answer": "yes", "category": "f1"}, "yesno",
     "category 'f1' is also the name of a score"),
    ("[1, 2]", "open", "expected a JSON object"),
    ("{not json", "open", "Expecting property name"),
])
def test_malformed_rows_are_refused_naming_file_and_line(tmp_path, row, mode, message):
    Image.new("RGB", (32, 32)).save(tmp_path / "img.png")
    (tmp_path / "notes.png").write_text("not a png")
    good = {"image": "img.png", "question": "is it?", "answers": ["yes"]}
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + (row if isinstance(row, str) else json.dumps(row)) + "\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:3: {message}"):
        evaluate_vqa(object(), VqaConfig(path, mode=mode))  # type: ignore[arg-type]  # refused before any pipe use


def test_rows_are_read_up_to_the_limit_with_paths_resolved(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "img.png")
    rows = [{"image": "img.png", "question": "a?", "answer": "Red"},
            {"image": str(tmp_path / "img.png"), "question": "b?", "answers": ["1", "one"]},
            {"image": "missing.png", "question": "c?", "answer": "x"}]
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = read_vqa(path, limit=2)  # the third row (a missing image) lies past the limit
    assert [(i.line, i.image, i.answers) for i in items] == [(1, tmp_path / "img.png", ("Red",)),
                                                             (2, tmp_path / "img.png", ("1", "one"))]
    with pytest.raises(ValueError, match=r":3: image"):
        read_vqa(path)
    with pytest.raises(ValueError, match="`mode` must be one of"):
        VqaConfig(path, mode="multiple")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`text` must be Overrides\(TextSampling"):
        VqaConfig(path, text={"temperature": 0.0})  # type: ignore[arg-type]
