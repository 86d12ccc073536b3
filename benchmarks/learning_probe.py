"""What does a fresh MMaDA-tiny learn in a few minutes, per task and question type, under each variant?

Each variant is a list of `key=value` overrides of a shipped config (default `tiny_pretrain`). It trains a
fresh model with the project's own trainer for `--steps` steps, exports it like the recipe does (bf16
release weights, tokenizers, sampler defaults), and scores it on the first `--limit` examples of every
group of the world's pinned evaluation suite with the world's judges: VQA per question type, arithmetic
per number of steps, compositional t2i per GenEval category, digit t2i and digit recognition. The first
variant is the baseline. This is the instrument behind the tiny configs' choices (docs/results.md).

    python benchmarks/learning_probe.py --steps 300 --limit 12 \
        --variant baseline --variant std0.1 model.init_std=0.1 [--config tiny_pretrain] [--json out.json]

A variant is `NAME key=value key=value ...`, one shell word each (quote values with spaces).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from mmada.evaluation.world import evaluate_world
from mmada.pipelines import MMaDAPipeline
from mmada.recipe import export_model, stage_eval_config
from mmada.training.config import load_config
from mmada.training.trainer import run_training
from mmada.utils.device import seed_everything


def parse_variant(words: list[str]) -> tuple[str, list[str]]:
    """["name", "k=v", ...] -> (name, overrides)."""
    name, *overrides = words
    if "=" in name:
        raise SystemExit(f"--variant must start with a NAME, got {name!r}")
    return name, overrides


def probe(config_name: str, overrides: list[str], steps: int, limit: int, seed: int, work: Path) -> dict:
    """Train one variant and score it: {"train_s", "eval_s", "scores": task -> group -> accuracy}."""
    run_dir = work / "run"
    shutil.rmtree(work, ignore_errors=True)
    fixed = [f"schedule.max_steps={steps}", f"log.run_dir={run_dir}", f"checkpoint.every={steps}",
             "log.preview_every=0", "log.progress=false", f"seed={seed}"]
    config = load_config([config_name], [f"schedule.warmup_steps={min(steps, 100)}", *overrides, *fixed])
    seed_everything(seed)
    start = time.perf_counter()
    run_training(config)
    train_s = time.perf_counter() - start
    exported = export_model(run_dir, config, work / "model", {}, {})
    start = time.perf_counter()
    pipe = MMaDAPipeline.from_pretrained(exported)
    scores = evaluate_world(pipe, stage_eval_config(limit, limit, thinking=False, seed=seed))
    return {"train_s": train_s, "eval_s": time.perf_counter() - start, "scores": scores}


COLUMNS = (("vqa", ("count", "color", "shape", "position", "presence", "overall")),
           ("arithmetic", ("1 steps", "2 steps", "3 steps", "overall")),
           ("t2i", ("overall",)), ("digit_t2i", ("overall",)), ("digit_recognition", ("overall",)))


def table(rows: dict[str, dict]) -> str:
    """Markdown: one row per variant, one column per task group."""
    heads = [f"{task} {group}" if group != "overall" else f"{task}" for task, groups in COLUMNS for group in groups]
    lines = ["| variant | train s | " + " | ".join(heads) + " |", "|---" * (len(heads) + 2) + "|"]
    for name, row in rows.items():
        cells = [f"{row['scores'].get(task, {}).get(group, float('nan')):.0%}" for task, groups in COLUMNS
                 for group in groups]
        lines.append(f"| {name} | {row['train_s']:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", nargs="+", action="append", required=True, metavar="WORD",
                        help="NAME key=value ... (repeat for each variant; the first is the baseline)")
    parser.add_argument("--config", default="tiny_pretrain", help="shipped config the variants override")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--limit", type=int, default=12, help="examples per evaluation group")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="append each variant's result to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows: dict[str, dict] = {}
    if args.json is not None and args.json.is_file():
        rows = json.loads(args.json.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        for words in args.variant:
            name, overrides = parse_variant(words)
            row = probe(args.config, overrides, args.steps, args.limit, args.seed, Path(tmp) / "work")
            rows[name] = {"overrides": overrides, "steps": args.steps, "limit": args.limit, **row}
            print(f"{name}: train {row['train_s']:.0f} s, eval {row['eval_s']:.0f} s, "
                  f"{json.dumps(row['scores'])}", flush=True)
            if args.json is not None:
                args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
