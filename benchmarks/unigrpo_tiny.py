"""UniGRPO on MMaDA-tiny: judged accuracy before and after RL, and the reward curve (issue 15).

    python benchmarks/unigrpo_tiny.py --tasks vqa=1 --steps 40 --lr 1e-4 --json docs/unigrpo/vqa.json

Scores the starting model on the world's evaluation suite (the tasks trained, greedy decoding, the
recipe's `stage_eval_config`), runs `mmada.rl.run_unigrpo` on prompts from the world's *training*
split, scores again, and writes one JSON file: the settings, the scores before and after, and one
metrics row per RL step. `--variant NAME KEY=VALUE ...` runs several settings from the same start
(the ablations: `estimator=fully_masked`, `timesteps=random`), each with its own RL run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from mmada.evaluation.world import evaluate_world
from mmada.pipelines import MMaDAPipeline
from mmada.recipe import stage_eval_config
from mmada.rl import RLConfig, UniGRPOConfig, run_unigrpo

UNIGRPO_KEYS = {"estimator", "timesteps", "kl_reference", "beta", "clip_eps", "inner_steps", "group_size"}


def _mixture(text: str) -> dict[str, float]:
    out = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        out[name.strip()] = float(weight or 1.0)
    return out


def _value(text: str) -> object:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _config(args: argparse.Namespace, sets: list[str], log_path: str | None) -> RLConfig:
    unigrpo = UniGRPOConfig(group_size=args.group, inner_steps=args.inner)
    rl = RLConfig(tasks=_mixture(args.tasks), prompts_per_step=args.prompts, steps=args.steps, lr=args.lr,
                  preset=args.preset, thinking=args.thinking, unigrpo=unigrpo, seed=args.seed, log_path=log_path,
                  bf16=args.bf16)
    for item in sets:
        key, _, raw = item.partition("=")
        if key in UNIGRPO_KEYS:
            rl = replace(rl, unigrpo=replace(rl.unigrpo, **{key: _value(raw)}))
        else:
            rl = replace(rl, **{key: _value(raw)})
    return rl


def _score(pipe: MMaDAPipeline, args: argparse.Namespace, tasks: tuple[str, ...]) -> dict:
    config = replace(stage_eval_config(per_group=50, limit=args.eval_limit, thinking=args.thinking), tasks=tasks)
    return evaluate_world(pipe, config)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mmada-tiny")
    parser.add_argument("--tasks", default="arithmetic=1,vqa=1,t2i=1", help="RL task mixture, NAME=WEIGHT,...")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per RL step")
    parser.add_argument("--group", type=int, default=8, help="G responses per prompt")
    parser.add_argument("--inner", type=int, default=4, help="mu inner updates per rollout batch")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--preset", default="fast", help="rollout sampler preset")
    parser.add_argument("--thinking", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="rollouts and updates under bf16 autocast")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-limit", type=int, default=None, help="examples per evaluation group")
    parser.add_argument("--no-eval", action="store_true", help="reward curves only (the ablations)")
    parser.add_argument("--variant", nargs="+", action="append", default=None, metavar="NAME KEY=VALUE",
                        help="a named RL setting over the flags; repeat for several")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = args.variant or [["unigrpo"]]
    tasks = tuple(_mixture(args.tasks))
    out: dict = {"command": " ".join(sys.argv), "variants": {}}
    before = None
    for name, *sets in variants:
        pipe = MMaDAPipeline.from_pretrained(args.model)
        if not args.no_eval and before is None:
            t0 = time.perf_counter()
            before = _score(pipe, args, tasks)
            out["before"], out["eval_s"] = before, time.perf_counter() - t0
            print("before", json.dumps(before), flush=True)
        log = str(args.json.with_suffix(f".{name}.jsonl"))
        Path(log).unlink(missing_ok=True)
        config = _config(args, sets, log)
        t0 = time.perf_counter()
        rows = run_unigrpo(pipe, config)
        entry = {"settings": sets, "rl_s": time.perf_counter() - t0, "rows": rows}
        if not args.no_eval:
            entry["after"] = _score(pipe, args, tasks)
            print(name, "after", json.dumps(entry["after"]), flush=True)
        out["variants"][name] = entry
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
