"""The prepared GPU benchmark (`benchmarks/gpu_fast_sampling.py`) runs end to end: its `--smoke` mode is the
same code on a CPU toy model, so a lent GPU never meets an untested script."""

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
