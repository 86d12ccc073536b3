"""Reward curves of UniGRPO runs (issue 15): one panel per task, one line per run, reward vs RL step.

    python benchmarks/unigrpo_plot.py docs/unigrpo/ablation.json --out docs/unigrpo_ablations.png
    pip install matplotlib   # or: pip install 'mmada[plots]'

Reads the JSON files `benchmarks/unigrpo_tiny.py --json` writes (every variant of each file becomes a line,
named "file:variant" when several files are given). Each task's reward is plotted against the RL step at
which that task was rolled out, as a moving average over `--window` of that task's steps (the raw points
faint behind it), so runs with the same steps and prompts spend the same compute per point.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def curves(paths: list[Path]) -> dict[str, list[dict]]:
    """Run name -> its metrics rows, from unigrpo_tiny.py result files (.json) or run logs (.jsonl)."""
    runs: dict[str, list[dict]] = {}
    for path in paths:
        if path.suffix == ".jsonl":  # a run's own log as it grows: `RLConfig.log_path` or a trainer's metrics.jsonl
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            runs[path.parent.name if path.stem == "metrics" else path.stem] = [_plain(r) for r in rows]
            continue
        data = json.loads(path.read_text())
        for name, entry in data["variants"].items():
            runs[name if len(paths) == 1 else f"{path.stem}:{name}"] = entry["rows"]
    return runs


def _plain(row: dict) -> dict:
    """A trainer metrics row (`reward/<task>`, steps from 1) as a `run_unigrpo` row (`task`, steps from 0)."""
    if "task" in row:
        return row
    task = next(key.split("/", 1)[1] for key in row if key.startswith("reward/"))
    return {**row, "task": task, "step": row["step"] - 1}


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--window", type=int, default=5, help="moving-average window, in steps of a task")
    parser.add_argument("--metric", default="reward", help="row key to plot (reward, accuracy, kl_last, ...)")
    parser.add_argument("--title", default="UniGRPO on MMaDA-tiny")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = curves(args.results)
    tasks = sorted({row["task"] for rows in runs.values() for row in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for i, (name, rows) in enumerate(runs.items()):
            mine = [r for r in rows if r["task"] == task and args.metric in r]
            steps, values = [r["step"] + 1 for r in mine], [float(r[args.metric]) for r in mine]
            color = f"C{i}"
            ax.plot(steps, values, color=color, alpha=0.2, linewidth=0.8)
            ax.plot(steps, moving_average(values, args.window), color=color, label=name, linewidth=1.8)
        ax.set_title(task)
        ax.set_xlabel("RL step")
        ax.set_ylabel(f"{args.metric} (moving average of {args.window})")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(args.title)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
