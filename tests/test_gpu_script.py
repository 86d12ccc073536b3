"""The prepared GPU scripts (`benchmarks/gpu_fast_sampling.py`, `gpu_eval_gsm8k.py`) run end to end: their
`--smoke` mode is the same code on a CPU toy model, so a lent GPU never meets an untested script."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def test_gpu_benchmark_script_runs_every_task_and_preset(tmp_path):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_fast_sampling.py"
    spec = importlib.util.spec_from_file_location("gpu_fast_sampling", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--smoke", "--out", str(tmp_path / "r.json")])
    rows = {(r["task"], r["preset"]) for r in results["rows"]}
    tasks = ("text", "understanding", "text-to-image", "text, 8 ragged, batch 1 x 8", "text, 8 ragged, batch 8")
    assert rows == {(t, p) for t in tasks for p in ("exact", "fast", "fastest")}
    assert all(r["per_s"] > 0 and r["speedup"] > 0 for r in results["rows"])
    assert (tmp_path / "r.json").exists()


def test_gpu_gsm8k_script_runs_the_runner_per_preset_and_writes_records(tmp_path):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_eval_gsm8k.py"
    spec = importlib.util.spec_from_file_location("gpu_eval_gsm8k", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary = module.main(["--smoke", "--out", str(tmp_path)])
    assert [row["preset"] for row in summary["rows"]] == ["exact", "fast", "fastest"]
    for row in summary["rows"]:
        assert row["tokens_per_second"] > 0 and row["nfe"] > 0
        assert (tmp_path / row["preset"] / "results.json").exists()
        assert len((tmp_path / row["preset"] / "outputs.jsonl").read_text().splitlines()) == summary["limit"]
