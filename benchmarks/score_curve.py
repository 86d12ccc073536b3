"""Score versus training minutes of a `mmada recipe tiny` run: every kept checkpoint, scored like the recipe.

Reads a recipe folder (`--recipe runs/mmada-tiny`): for each stage on the way to the shipped model
(pretrain, then sft) it exports every kept `step-*` checkpoint the way the recipe exports a stage (bf16
weights, tokenizers, sampler defaults), scores it on the first `--limit` examples of each group of the
world's evaluation suite (SFT checkpoints with the thinking instruction, as the recipe scores them), and
places it at its share of the stage's recorded training time (`scores.json` seconds x step / steps: the
steps of a stage take about the same time). Writes a PNG with one line per task and a JSON of the points.

    pip install matplotlib   # or: pip install 'mmada[plots]'
    python benchmarks/score_curve.py --recipe runs/mmada-tiny --limit 12 --out docs/score_curve.png
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import torch

from mmada.checkpoint.train_state import list_checkpoints
from mmada.evaluation.world import TASKS, evaluate_world
from mmada.pipelines import MMaDAPipeline
from mmada.recipe import export_model, stage_eval_config
from mmada.training.config import load_config


def stage_points(recipe: Path, stage: str, offset_s: float, stage_s: float, limit: int, work: Path) -> list[dict]:
    """[{"stage", "step", "minutes", "scores"}] for every kept checkpoint of one stage."""
    run = recipe / stage
    config = load_config([str(run / "config.yaml")])
    steps = int(config.schedule.max_steps)
    points = []
    for checkpoint in list_checkpoints(run):
        step = int(re.search(r"(\d+)$", checkpoint.name).group(1))
        model = export_model(run, config, work / f"{stage}-{step}", {}, {}, checkpoint=checkpoint)
        pipe = MMaDAPipeline.from_pretrained(model)
        scores = evaluate_world(pipe, stage_eval_config(limit, limit, thinking=stage == "sft"))
        minutes = (offset_s + stage_s * step / steps) / 60
        points.append({"stage": stage, "step": step, "minutes": minutes,
                       "scores": {task: scores[task]["overall"] for task in TASKS if task in scores}})
        print(f"{stage} step {step} ({minutes:.1f} min): {points[-1]['scores']}", flush=True)
    return points


def plot(points: list[dict], out: Path, pretrain_minutes: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for task in TASKS:
        xs = [p["minutes"] for p in points if task in p["scores"]]
        ax.plot(xs, [100 * p["scores"][task] for p in points if task in p["scores"]], marker="o", label=task)
    ax.axvline(pretrain_minutes, color="grey", linestyle="--", linewidth=1)
    ax.text(pretrain_minutes, 101, " mixed-CoT SFT →", fontsize=8, color="grey", va="bottom")
    ax.set_xlabel("training minutes on 2 CPU cores")
    ax.set_ylabel("accuracy on the world suite (%)")
    ax.set_ylim(0, 108)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("MMaDA-tiny: score vs training time (mmada recipe tiny)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, required=True, help="the `mmada recipe tiny --out` folder")
    parser.add_argument("--limit", type=int, default=12, help="examples per evaluation group")
    parser.add_argument("--out", type=Path, default=Path("score_curve.png"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seconds = json.loads((args.recipe / "scores.json").read_text())["seconds"]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        points = stage_points(args.recipe, "pretrain", 0.0, seconds["pretrain"], args.limit, Path(tmp))
        points += stage_points(args.recipe, "sft", seconds["pretrain"], seconds["sft"], args.limit, Path(tmp))
    plot(points, args.out, seconds["pretrain"] / 60)
    if args.json is not None:
        args.json.write_text(json.dumps(points, indent=2) + "\n")
    print(f"wrote {args.out} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
