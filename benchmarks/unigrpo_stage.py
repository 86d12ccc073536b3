"""The recipe's UniGRPO stage from an SFT model, exported and scored like every recipe stage (issue 15).

    python benchmarks/unigrpo_stage.py --out runs/unigrpo_stage --json docs/unigrpo/stage.json \
        schedule.max_steps=60 rl.thinking=true

Trains `tiny_unigrpo` (`mmada train tiny_unigrpo`, the trainer's checkpoints and metrics) from `--init`
(default: the built-in MMaDA-tiny, which is the recipe's mixed-CoT SFT model), exports the last checkpoint
as the recipe exports a stage (`recipe.export_model`), and scores it on the world's suite with the recipe's
greedy settings (`recipe.stage_eval_config`, 50 per group), asked with thinking and directly. The "before"
scores are the init model's own `scores.json` (the recipe's "sft" and "sft_direct" rows, the same
evaluation of the same weights) unless `--before` scores it again. Extra arguments are stage overrides.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from mmada.evaluation.world import evaluate_world
from mmada.pipelines import MMaDAPipeline
from mmada.recipe import export_model, stage_eval_config
from mmada.rl.trainer import load_stage, train_stage

BUILTIN = Path(__file__).resolve().parents[1] / "src" / "mmada" / "assets" / "mmada-tiny"


def _score(model: Path, per_group: int) -> dict:
    pipe = MMaDAPipeline.from_pretrained(model)
    return {mode: evaluate_world(pipe, stage_eval_config(per_group, None, thinking=(mode == "thinking")))
            for mode in ("thinking", "direct")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", type=Path, default=BUILTIN, help="the SFT model (an exported folder)")
    parser.add_argument("--out", type=Path, required=True, help="run folder; the export goes to OUT/model")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--per-group", type=int, default=50)
    parser.add_argument("--before", action="store_true", help="score the init model again")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="stage overrides, key=value")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = load_stage(["tiny_unigrpo"], [f"model.init={args.init}", f"log.run_dir={args.out / 'run'}",
                                           "log.progress=false", *args.overrides])
    out: dict = {"command": " ".join(sys.argv), "overrides": args.overrides}
    recorded = args.init / "scores.json"
    if args.before or not recorded.is_file():
        out["before"] = _score(args.init, args.per_group)
    else:
        scores = json.loads(recorded.read_text())["scores"]
        out["before"] = {"thinking": scores["sft"], "direct": scores["sft_direct"], "source": str(recorded)}
    t0 = time.perf_counter()
    train_stage(config, resume=(args.out / "run").is_dir())
    out["train_s"] = time.perf_counter() - t0
    model = export_model(args.out / "run", config, args.out / "model", {}, {"unigrpo": out["train_s"]})
    t0 = time.perf_counter()
    out["after"] = _score(model, args.per_group)
    out["eval_s"] = time.perf_counter() - t0
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    for mode in ("thinking", "direct"):
        print(mode, {t: (round(out["before"][mode][t]["overall"], 3), round(r["overall"], 3))
                     for t, r in out["after"][mode].items()})


if __name__ == "__main__":
    main()
