"""Evaluation records: the GSM8K runner, results.json / outputs.jsonl, `mmada eval` runs, compare and plot.

The built-in model on the real GSM8K test set (../shared/data/gsm8k/test.jsonl) scores near zero; these
tests check that the harness is exact about what it did, not that the model is good.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmada.cli import main
from mmada.evaluation.gsm8k import Gsm8kConfig, build_prompt, evaluate_gsm8k, fewshot_prefix
from mmada.evaluation.records import FORMAT, Meter, folder_sha256, read_results, record, write_run
from mmada.evaluation.report import compare_markdown, headline, mode_label
from mmada.pipelines import MMaDAPipeline
from mmada.rl.rewards import correctness_gsm8k, gsm8k_answer
from mmada.sampling import Overrides, TextSampling
from mmada.utils.files import BUILTIN_MODELS

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"
SHORT = Overrides(TextSampling, gen_length=32, steps=16, block_length=32, temperature=0.0)


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return MMaDAPipeline.from_pretrained(BUILTIN_MODELS["mmada-tiny"])


@pytest.fixture
def gsm8k_file(tmp_path):
    """Six real test questions plus two the tiny model might get (the runner must not care which is which)."""
    rows = [json.loads(line) for line in GSM8K.read_text(encoding="utf-8").splitlines()[:6]]
    rows += [{"question": "Tom has 3 apples and buys 4 more. How many apples does he have?", "answer": "3+4=7\n#### 7"},
             {"question": "What is 2 + 2?", "answer": "#### 4"}]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "train.jsonl").write_text(json.dumps({"question": "What is 1 + 1?", "answer": "1+1=2\n#### 2"}) + "\n",
                                          encoding="utf-8")
    return path


def test_gsm8k_scores_are_the_rl_reward_over_the_outputs(pipe, gsm8k_file):
    run = evaluate_gsm8k(pipe, Gsm8kConfig(gsm8k_file, batch_size=4, text=SHORT))
    rows = [json.loads(line) for line in gsm8k_file.read_text().splitlines()]
    assert [o["question"] for o in run.outputs] == [r["question"] for r in rows]
    for out, row in zip(run.outputs, rows):
        assert out["extracted"] == gsm8k_answer(out["output"])
        assert out["correct"] == (correctness_gsm8k(out["output"], row["answer"]) > 0)
        assert out["reference"] == gsm8k_answer(row["answer"])
    scores = run.scores["gsm8k"]
    assert scores["accuracy"] == sum(o["correct"] for o in run.outputs) / len(rows)
    assert scores["answered"] == sum(o["extracted"] is not None for o in run.outputs) / len(rows)
    assert run.meter.sampler_calls == 2 and run.meter.model_calls >= 2 and run.meter.seconds > 0
    assert run.settings["text"].gen_length == 32 and run.settings["data"]["items"] == 8


def test_exact_answers_do_not_depend_on_the_batch_size(pipe, gsm8k_file):
    """Batch invariance (Fast-dLLM #39: accuracy changing with batch size): left padding is masked out."""
    one = evaluate_gsm8k(pipe, Gsm8kConfig(gsm8k_file, batch_size=1, text=SHORT))
    four = evaluate_gsm8k(pipe, Gsm8kConfig(gsm8k_file, batch_size=4, text=SHORT))
    assert [o["output"] for o in one.outputs] == [o["output"] for o in four.outputs]
    assert any(o["output"] for o in one.outputs)  # something was generated: equal empty strings prove nothing
    assert one.scores == four.scores


def test_sampled_runs_repeat_with_the_same_seed(pipe, gsm8k_file):
    sampled = Overrides(TextSampling, gen_length=32, steps=16, block_length=32, temperature=1.0)
    runs = [evaluate_gsm8k(pipe, Gsm8kConfig(gsm8k_file, batch_size=4, seed=seed, text=sampled)) for seed in (3, 3, 4)]
    outputs = [[o["output"] for o in run.outputs] for run in runs]
    assert outputs[0] == outputs[1] and runs[0].scores == runs[1].scores
    assert outputs[0] != outputs[2]


def test_fewshot_prompts_hold_the_worked_examples():
    prefix = fewshot_prefix([("What is 1 + 1?", "1+1=2\n#### 2")])
    expected = "Question: What is 1 + 1?\nAnswer: 1+1=2\n#### 2\n\nQuestion: Q?\nAnswer:"
    assert build_prompt("Q?", "{question}", prefix) == expected
    assert build_prompt("Q?", "{question} Put it in \\boxed{{}}.", "") == "Q? Put it in \\boxed{}."


def test_bad_gsm8k_settings_and_data_are_refused(pipe, tmp_path, gsm8k_file):
    with pytest.raises(ValueError, match="must contain '\\{question\\}'"):
        Gsm8kConfig(gsm8k_file, template="no slot")
    with pytest.raises(ValueError, match="`shots` must be >= 0"):
        Gsm8kConfig(gsm8k_file, shots=-1)
    with pytest.raises(ValueError, match="fewer than shots=3"):
        evaluate_gsm8k(pipe, Gsm8kConfig(gsm8k_file, shots=3, text=SHORT))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "no answer"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a GSM8K row"):
        evaluate_gsm8k(pipe, Gsm8kConfig(bad, text=SHORT))


def test_results_json_records_what_produced_the_scores(tmp_path, pipe, gsm8k_file):
    run = evaluate_gsm8k(pipe, Gsm8kConfig(gsm8k_file, limit=2, batch_size=2, text=SHORT))
    from mmada.evaluation.records import environment

    env = environment(BUILTIN_MODELS["mmada-tiny"], model=pipe.model)
    path = write_run(tmp_path / "run", record(run, env, seed=0, batch_size=2), run.outputs)
    data = read_results(path.parent)
    assert data["format"] == FORMAT and data["task"] == "gsm8k" and data["scores"] == run.scores
    assert data["settings"]["text"]["gen_length"] == 32 and data["settings"]["data"]["sha256"]
    assert data["model"]["sha256"] == folder_sha256(BUILTIN_MODELS["mmada-tiny"])
    assert data["dtype"] == "float32" and data["device"] == "cpu" and data["batch_size"] == 2
    assert data["package"]["version"] and data["wall_seconds"] > 0 and data["nfe"] > 0
    lines = (tmp_path / "run" / "outputs.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["output"] for line in lines] == [o["output"] for o in run.outputs]
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_meter_counts_forward_calls_and_decoded_tokens():
    meter = Meter()
    meter.add_text([torch.tensor([5, 6, 9, 9]), torch.tensor([5, 9, 9, 9])], mask_id=9)
    meter.model_calls, meter.seconds = 8, 2.0
    summary = meter.summary()
    assert summary["generated_tokens"] == 3 and summary["tokens_per_second"] == 1.5 and summary["nfe"] == 8.0


def test_a_foreign_or_missing_results_file_is_named(tmp_path):
    (tmp_path / "x.json").write_text('{"accuracy": 1}', encoding="utf-8")
    with pytest.raises(ValueError, match="not an mmada evaluation record"):
        read_results(tmp_path / "x.json")
    with pytest.raises(FileNotFoundError, match="no such results file"):
        read_results(tmp_path / "missing.json")


def _record(accuracy: float, **text: object) -> dict:
    settings = {"cache": "none", "cache_refresh": 0, "cache_keep": "none", "threshold": None, "factor": None,
                "entropy_bound": None, "early_commit": None, "steps": 64, **text}
    return {"format": FORMAT, "task": "gsm8k", "scores": {"gsm8k": {"accuracy": accuracy}}, "settings":
            {"text": settings}, "seed": 0, "wall_seconds": 10.0, "tokens_per_second": 100.0, "nfe": 64.0,
            "created": "2026-12-03T10:00:00+00:00"}


def test_compare_shows_score_deltas_cost_and_only_the_settings_that_differ():
    a, b = _record(0.25), _record(0.30, cache="delayed", cache_keep="finished")
    b["tokens_per_second"] = 350.0
    table = compare_markdown(a, b)
    assert "| gsm8k | accuracy | 25.0% | 30.0% | +5.0 |" in table
    assert "| tokens_per_second | 100 | 350 | 3.50x |" in table
    assert "| settings.text.cache | none | delayed |" in table
    assert "settings.text.steps" not in table and "created" not in table
    same = compare_markdown(a, dict(a, created="2026-12-04T00:00:00+00:00"))
    assert "Same settings" in same


def test_modes_are_named_after_presets_or_the_speed_settings():
    assert mode_label(_record(0.1)) == "exact"
    assert mode_label(_record(0.1, cache="delayed", cache_keep="finished")) == "fast"
    assert mode_label(_record(0.1, cache="delayed", cache_keep="all", threshold=0.9)) == "fastest"
    assert mode_label(_record(0.1, cache="dual")) == "cache=dual"
    world = {"task": "world", "scores": {"vqa": {"overall": 0.5}, "arithmetic": {"overall": 0.1, "1 steps": 0.2}}}
    assert headline(world) == pytest.approx(0.3) and headline(world, "arithmetic/1 steps") == 0.2


def test_cli_gsm8k_run_then_compare_and_plot(tmp_path, gsm8k_file, capsys):
    flags = ["--data", str(gsm8k_file), "--limit", "2", "--gen-length", "32", "--steps", "16", "--block-length", "32",
             "-q", "--no-hash"]
    assert main(["eval", "gsm8k", *flags, "--out", str(tmp_path / "a")]) == 0
    assert main(["eval", "gsm8k", *flags, "--out", str(tmp_path / "b"), "--preset", "fast"]) == 0
    a, b = read_results(tmp_path / "a"), read_results(tmp_path / "b")
    assert a["settings"]["text"]["steps"] == 16 and b["settings"]["text"]["cache"] == "delayed"
    assert main(["eval", "gsm8k", *flags, "--out", str(tmp_path / "a")]) == 2  # never overwritten silently
    assert "exists" in capsys.readouterr().err
    assert main(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "| settings.text.cache | none | delayed |" in capsys.readouterr().out
    assert main(["eval", "plot", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_world_run_writes_a_record_per_item(tmp_path):
    out = tmp_path / "world"
    assert main(["eval", "world", "--tasks", "vqa,digit_recognition", "--per-group", "1", "--limit", "1",
                 "--out", str(out), "-q", "--no-hash"]) == 0
    data = read_results(out)
    lines = [json.loads(line) for line in (out / "outputs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {line["task"] for line in lines} == {"vqa", "digit_recognition"}
    for task in ("vqa", "digit_recognition"):
        scores = [line["score"] for line in lines if line["task"] == task]
        assert data["scores"][task]["overall"] == pytest.approx(sum(scores) / len(scores))
    assert data["settings"]["text"]["temperature"] == 0.0 and data["tokens_per_second"] > 0


def test_cli_world_export_feeds_the_vqa_pope_and_geneval_runners(tmp_path):
    data = tmp_path / "data"
    for kind in ("vqa", "pope", "geneval"):
        assert main(["world", "export", kind, "-o", str(data), "--per-group", "1"]) == 0
    rows = [json.loads(line) for line in (data / "vqa.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {row["category"] for row in rows} == {"count", "color", "shape", "position", "presence"}
    assert all((data / row["image"]).is_file() for row in rows)
    short = ["--gen-length", "16", "--steps", "8", "--block-length", "16", "-q", "--no-hash"]
    assert main(["eval", "vqa", "--data", str(data / "vqa.jsonl"), "--out", str(tmp_path / "v"), *short]) == 0
    assert main(["eval", "vqa", "--data", str(data / "pope.jsonl"), "--mode", "yesno", "--out", str(tmp_path / "p"),
                 *short]) == 0
    assert set(read_results(tmp_path / "v")["scores"]["vqa"]) >= {"soft_accuracy", "exact_match", "color"}
    assert set(read_results(tmp_path / "p")["scores"]["vqa"]) >= {"accuracy", "precision", "recall", "f1"}
    assert read_results(tmp_path / "v")["settings"]["data"]["sha256"]  # the data's bytes, as for GSM8K
    out = tmp_path / "g"
    assert main(["eval", "geneval", "--prompts", str(data / "evaluation_metadata.jsonl"), "--judge", "--limit", "2",
                 "--images-per-prompt", "1", "--image-timesteps", "2", "--out", str(out), "-q", "--no-hash"]) == 0
    record = read_results(out)
    assert record["images"] == 2 and "overall" in record["scores"]["geneval"]
    assert record["settings"]["data"]["items"] == 2 and record["settings"]["data"]["sha256"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["00000", "00001"]
    assert (out / "images" / "00000" / "samples" / "00000.png").is_file()


def test_a_prompt_too_long_for_the_context_is_skipped_and_counted_wrong(pipe, tmp_path):
    rows = [{"question": "What is 2 + 2?", "answer": "#### 4"}, {"question": "word " * 600, "answer": "#### 1"}]
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run = evaluate_gsm8k(pipe, Gsm8kConfig(path, text=SHORT))
    assert run.outputs[0]["skipped"] is None and "exceeds the model's context" in run.outputs[1]["skipped"]
    assert run.outputs[1]["output"] == "" and not run.outputs[1]["correct"]
    assert run.scores["gsm8k"]["skipped"] == 0.5 and run.meter.sampler_calls == 1


def test_every_mmada_command_in_the_readme_parses():
    """The README's command lines stay in step with the parser (the Evaluation block was also run as written)."""
    import shlex

    from mmada.cli import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    commands = [part.strip() for line in readme.splitlines() for part in line.split("#")[0].split("&&")
                if part.strip().startswith("mmada ")]
    assert sum(c.startswith("mmada eval ") for c in commands) >= 8
    parser = build_parser()
    for command in commands:
        _, extra = parser.parse_known_args(shlex.split(command)[1:])
        assert all("=" in e for e in extra), (command, extra)  # only `key=value` training overrides may be left
