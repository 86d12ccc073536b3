"""`mmada train`, `mmada recipe`, `mmada consolidate`: training runs and what they produce."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import sys
from pathlib import Path
from typing import Any

from ..utils.config import field_docs
from . import _positive_int


def cmd_consolidate(args: argparse.Namespace) -> int:
    """Export a training checkpoint (multi-process or not) as a release checkpoint folder, tokenizer included."""
    from ..training.export import export_release

    source: Path = args.source
    if not source.is_dir():
        raise FileNotFoundError(errno.ENOENT, "No such folder", str(source))
    out = export_release(source, args.output, dtype=args.dtype)
    print(f"wrote {out} (from {source})")
    return 0


def cmd_recipe(args: argparse.Namespace) -> int:
    """Train MMaDA-tiny through the recipe: pretraining, mixed-CoT SFT, UniGRPO, the no-CoT ablation, scores."""
    from ..recipe import RecipeConfig, run_tiny_recipe, scores_table

    if args.name != "tiny":
        raise ValueError(f"unknown recipe {args.name!r}; available: tiny")
    recipe = RecipeConfig(out_dir=str(args.out), pretrain_steps=args.pretrain_steps, sft_steps=args.sft_steps,
                          rl=not args.no_rl, rl_steps=args.rl_steps,
                          ablation=not args.no_ablation, evaluate=not args.no_eval, eval_per_group=args.per_group,
                          eval_limit=args.limit, overrides=tuple(args.overrides), threads=args.threads,
                          seed=args.seed, progress=not args.quiet)
    result = run_tiny_recipe(recipe)
    if result.scores:
        print(scores_table(result.scores))
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result.seconds.items()))
    print(f"MMaDA-tiny written to {result.model_dir}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train, or resume, the run a YAML config describes; SIGTERM / Ctrl-C checkpoint and stop cleanly."""
    from ..rl.trainer import load_stage, train_stage  # a stage with an `rl:` section trains with UniGRPO
    from ..utils.device import seed_everything

    # the bar first, so that a `log.progress=false` of the user's still wins
    overrides = [*([] if args.quiet else ["log.progress=true"]), *args.overrides]
    if args.out is not None:
        overrides.append(f"log.run_dir={args.out}")
    config = load_stage([args.config], overrides)
    seed_everything(config.seed)  # the random initialisation of a preset; everything else has its own generator
    result = train_stage(config, resume=args.resume)
    if result.stopped_by is not None:
        print(f"stopped at step {result.step}; continue with: mmada train {args.config} ... --resume "
              f"(checkpoint {result.checkpoint})", file=sys.stderr)
    return result.exit_code


def _key_lines(prefix: str, cls: type) -> list[str]:
    """One help line per field of a config dataclass: key, its docstring, default (or "required")."""
    def default(f: dataclasses.Field) -> str:
        if f.default is not dataclasses.MISSING:
            return repr(f.default)
        return "required" if f.default_factory is dataclasses.MISSING else repr(f.default_factory())

    fields = {f.name: f for f in dataclasses.fields(cls)}
    return [f"  {prefix + '.' + name:<30} {doc} [{default(fields[name])}]" for name, doc in field_docs(cls).items()]


def _add_train_command(sub: Any) -> None:
    from ..training.config import TrainConfig
    from ..training.data import MixtureSpec
    from ..training.data_adapters import SourceSpec
    from ..training.data_tasks import TaskSpec
    from ..training.data_world import WorldSftSpec

    lines = ["config keys (section.key=value; see src/mmada/training/config.py):"]
    for section in dataclasses.fields(TrainConfig):
        factory = section.default_factory  # a section's default is its dataclass, built by calling it
        if isinstance(factory, type) and dataclasses.is_dataclass(factory):
            lines += _key_lines(section.name, factory)
    lines.append(f"  {'seed, device':<30} Top-level keys [10086, 'auto'].")
    lines += ["", "data: world_pretrain / world_sft (the tiny world; world_sft adds cot, thinking, plain_fraction):"]
    lines += _key_lines("data", WorldSftSpec)
    lines += ["", "data: mixture (files on disk; src/mmada/configs/train/stage1_1.yaml is an example):"]
    lines += _key_lines("data", MixtureSpec)
    lines += _key_lines("data.tasks.<task>", TaskSpec) + _key_lines("data.tasks.<task>", SourceSpec)
    p = sub.add_parser("train", help="train or resume a run from a YAML config", epilog="\n".join(lines),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path, help="YAML file, or the name of a shipped config (tiny_pretrain, "
                   "tiny_sft, tiny_sft_nocot, stage1_1 ... stage2_2)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. optim.lr=3e-4 batch.grad_accum=8")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    p.add_argument("--out", default=None, help="run folder (overrides log.run_dir)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    p.set_defaults(func=cmd_train)

def add_training_commands(sub: Any) -> None:
    """`train`, `recipe` and `consolidate`."""
    _add_train_command(sub)

    p = sub.add_parser("recipe", help="train MMaDA-tiny through the whole recipe on the tiny world")
    p.add_argument("name", nargs="?", default="tiny", help="recipe name (only: tiny)")
    p.add_argument("--out", type=Path, default=Path("runs/mmada-tiny"), help="run folder (default: runs/mmada-tiny)")
    p.add_argument("--pretrain-steps", type=_positive_int, default=None, help="override the pretraining steps")
    p.add_argument("--sft-steps", type=_positive_int, default=None, help="override the SFT steps")
    p.add_argument("--rl-steps", type=_positive_int, default=None, help="override the UniGRPO steps")
    p.add_argument("--no-rl", action="store_true", help="skip the UniGRPO stage (export the SFT model)")
    p.add_argument("--no-ablation", action="store_true", help="skip the no-CoT SFT ablation")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluations")
    p.add_argument("--per-group", type=_positive_int, default=50, help="evaluation examples per group (default: 50)")
    p.add_argument("--limit", type=_positive_int, default=None, help="cap evaluation examples per group")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", default=[], help="key=value overrides for every stage")
    p.set_defaults(func=cmd_recipe)

    p = sub.add_parser("consolidate", help="export a training checkpoint (any number of processes) as a release one")
    p.add_argument("source", type=Path, help="a run folder (its newest checkpoint), a step-* checkpoint folder, or "
                   "a multi-process checkpoint's sharded/ folder")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder (config.json + safetensors)")
    p.add_argument("--dtype", default=None, help="storage dtype, e.g. bfloat16 (default: the checkpoint's)")
    p.set_defaults(func=cmd_consolidate)
