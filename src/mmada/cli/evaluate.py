"""`mmada eval ...`: the evaluation runners, each writing OUT/results.json + OUT/outputs.jsonl, and
the tools that read those records (`compare`, `plot`)."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from ..sampling import ImageSampling, TextSampling
from . import _add_dataclass_flags, _add_model_flags, _add_preset_flag, _check_output, _pipeline, _positive_int


# ---- shared ------------------------------------------------------------------------------------
def _out_folder(args: argparse.Namespace, task: str) -> Path:
    """--out, or mmada-eval/<task>-<time>; an existing results.json is never overwritten silently."""
    from ..evaluation.records import RESULTS_FILE

    out: Path = args.out or Path("mmada-eval") / f"{task}-{datetime.now():%Y%m%d-%H%M%S}"
    if (out / RESULTS_FILE).exists() and not args.overwrite:
        raise FileExistsError(f"{out / RESULTS_FILE} exists (an earlier run); pass --overwrite or another --out")
    _check_output(out / RESULTS_FILE)
    return out


def _overrides(args: argparse.Namespace, kind: type, *, greedy: bool = False) -> Any:
    """--preset, then the sampler flags of `kind` (TextSampling: --<field>; ImageSampling: --image-<field>),
    as overrides of the model's own settings; `greedy` forces temperature 0 first."""
    from ..sampling import IMAGE_PRESETS, PRESETS, Overrides

    image = kind is ImageSampling
    values = dict((IMAGE_PRESETS if image else PRESETS)[args.preset]) if args.preset else {}
    if greedy:
        values["temperature"] = 0.0
    for f in dataclasses.fields(kind):
        given = getattr(args, f"image_{f.name}" if image else f.name, None)
        if given is not None:
            values[f.name] = given
    return Overrides(kind, **values)


def _finish(args: argparse.Namespace, pipe: Any, run: Any, out: Path, batch_size: int) -> int:
    """Write the record, print the scores and where they are."""
    from ..evaluation.records import environment, record, write_run
    from ..evaluation.world import results_to_markdown
    from ..utils.files import resolve_folder

    env = environment(resolve_folder(args.model), model=pipe.model, hash_model=not args.no_hash)
    path = write_run(out, record(run, env, seed=args.seed or 0, batch_size=batch_size), run.outputs)
    print(results_to_markdown(run.scores))
    cost = run.meter.summary()
    print(f"{cost['wall_seconds']:.1f} s, {cost['tokens_per_second']:.1f} tokens/s, NFE {cost['nfe']:.1f}"
          + (f", {cost['images_per_second']:.3f} images/s" if cost["images"] else ""))
    print(f"wrote {path} and {out / 'outputs.jsonl'}")
    return 0


# ---- runners -----------------------------------------------------------------------------------
def cmd_world(args: argparse.Namespace) -> int:
    """The tiny world's fixed suite (greedy text, seeded images)."""
    from ..evaluation.world import WorldEvalConfig, world_run

    out = _out_folder(args, "world")
    pipe = _pipeline(args)
    text = _overrides(args, TextSampling, greedy=True)
    config = WorldEvalConfig(
        tasks=tuple(args.tasks.split(",")) if args.tasks else WorldEvalConfig.tasks,
        per_group=args.per_group, limit=args.limit, batch_size=args.batch_size, thinking=args.thinking,
        text=text, short=text, image=_overrides(args, ImageSampling), seed=args.seed or 0,
    )
    return _finish(args, pipe, world_run(pipe, config, progress=not args.quiet), out, args.batch_size)


def cmd_gsm8k(args: argparse.Namespace) -> int:
    """GSM8K from a local jsonl."""
    from ..evaluation.gsm8k import Gsm8kConfig, evaluate_gsm8k

    config = Gsm8kConfig(path=args.data, limit=args.limit, shots=args.shots, fewshot_path=args.fewshot_data,
                         template=args.template, thinking=args.thinking, batch_size=args.batch_size,
                         seed=args.seed or 0, text=_overrides(args, TextSampling))
    out = _out_folder(args, "gsm8k")
    pipe = _pipeline(args)
    return _finish(args, pipe, evaluate_gsm8k(pipe, config, progress=not args.quiet), out, args.batch_size)


def cmd_vqa(args: argparse.Namespace) -> int:
    """Visual question answering from a local jsonl of {image, question, answers}."""
    from ..evaluation.vqa import VqaConfig, evaluate_vqa

    config = VqaConfig(path=args.data, limit=args.limit, mode=args.mode, thinking=args.thinking,
                       batch_size=args.batch_size, seed=args.seed or 0, text=_overrides(args, TextSampling))
    out = _out_folder(args, "vqa")
    pipe = _pipeline(args)
    return _finish(args, pipe, evaluate_vqa(pipe, config, progress=not args.quiet), out, args.batch_size)


def cmd_geneval(args: argparse.Namespace) -> int:
    """GenEval images in the official evaluator's layout; the tiny world's prompts are also judged."""
    from ..evaluation.geneval import GenevalConfig, generate_geneval, world_geneval_prompts, write_prompts

    if (args.prompts is None) == (not args.world):
        raise ValueError("give either --prompts FILE (a GenEval evaluation_metadata.jsonl) or --world")
    out = _out_folder(args, "geneval")
    if args.overwrite and (out / "images").is_dir():
        shutil.rmtree(out / "images")  # the official evaluator reads every folder there: no mixing of two runs
    prompts = args.prompts
    if args.world:
        prompts = out / "evaluation_metadata.jsonl"
        write_prompts(prompts, world_geneval_prompts(args.per_group))
    config = GenevalConfig(prompts=prompts, out=out / "images", images_per_prompt=args.images_per_prompt,
                           batch_size=args.batch_size, seed=args.seed or 0, limit=args.limit,
                           judge=args.world or args.judge, image=_overrides(args, ImageSampling))
    pipe = _pipeline(args)
    run = generate_geneval(pipe, config, progress=not args.quiet)
    if not config.judge:
        print(f"images in {config.out}: score them with GenEval's evaluator (python evaluation/evaluate_images.py "
              f"{config.out} --outfile results.jsonl; then evaluation/summary_scores.py results.jsonl)")
    return _finish(args, pipe, run, out, args.batch_size)


# ---- records -----------------------------------------------------------------------------------
def cmd_compare(args: argparse.Namespace) -> int:
    """A markdown table of what differs between two runs."""
    from ..evaluation.records import read_results
    from ..evaluation.report import compare_markdown

    a, b = read_results(args.a), read_results(args.b)
    print(compare_markdown(a, b, names=(str(args.a), str(args.b))), end="")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Headline score vs steps and vs tokens/s, one line per sampler mode."""
    from ..evaluation.records import read_results
    from ..evaluation.report import plot_records

    _check_output(args.output)
    plot_records([read_results(path) for path in args.results], args.output, metric=args.metric, title=args.title)
    print(f"wrote {args.output}")
    return 0


# ---- parser ------------------------------------------------------------------------------------
def _run_flags(p: argparse.ArgumentParser, batch_size: int) -> None:
    p.add_argument("--out", "-o", type=Path, default=None, help="run folder for results.json and outputs.jsonl "
                   "(default: mmada-eval/<task>-<date>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    p.add_argument("--limit", type=_positive_int, default=None, help="keep only the first N items (per group for "
                   "world)")
    p.add_argument("--batch-size", type=_positive_int, default=batch_size, help=f"items per sampler call (default: "
                   f"{batch_size}; exact-mode answers do not depend on it)")
    p.add_argument("--no-hash", action="store_true", help="do not hash the model's weight files into the record")


def add_eval_commands(sub: Any) -> None:
    p = sub.add_parser("eval", help="evaluate a model (world, gsm8k, vqa, geneval); compare and plot results")
    runners = p.add_subparsers(dest="runner", required=True, metavar="RUNNER")

    r = runners.add_parser("world", help="the tiny world's fixed evaluation suite (greedy; images seeded)")
    r.add_argument("--tasks", default=None, help="comma-separated subset of arithmetic,vqa,t2i,digit_t2i,"
                   "digit_recognition (default: all)")
    r.add_argument("--per-group", type=_positive_int, default=50, help="examples per group (default: 50)")
    r.add_argument("--thinking", action="store_true", help="ask reasoning questions in thinking mode")
    _run_flags(r, 32)
    _add_preset_flag(r)
    _add_model_flags(r)
    _add_dataclass_flags(r, TextSampling, "text sampling (every text task)", "text")
    _add_dataclass_flags(r, ImageSampling, "image sampling (t2i, digit t2i)", "image", prefix="image")
    r.set_defaults(func=cmd_world)

    r = runners.add_parser("gsm8k", help="GSM8K from a local jsonl ({question, answer with #### N})")
    r.add_argument("--data", type=Path, required=True, help="GSM8K-format jsonl, e.g. ../shared/data/gsm8k/test.jsonl")
    r.add_argument("--shots", type=int, default=0, help="worked examples before each question (default: 0)")
    r.add_argument("--fewshot-data", type=Path, default=None, help="where the worked examples come from (default: "
                   "train.jsonl beside --data)")
    r.add_argument("--template", default="{question}", help="the question's prompt, with {question} (default: the "
                   "bare question)")
    r.add_argument("--thinking", action="store_true", help="MMaDA's thinking mode: <think> reasoning, then the answer")
    _run_flags(r, 8)
    _add_preset_flag(r)
    _add_model_flags(r)
    _add_dataclass_flags(r, TextSampling, "text sampling", "text")
    r.set_defaults(func=cmd_gsm8k)

    r = runners.add_parser("vqa", help="visual question answering from a local jsonl ({image, question, answers})")
    r.add_argument("--data", type=Path, required=True, help="jsonl of {image, question, answers}; image paths "
                   "relative to the file")
    r.add_argument("--mode", choices=("open", "yesno"), default="open", help="open: VQAv2 soft accuracy and exact "
                   "match; yesno: POPE accuracy, precision, recall, F1 (default: open)")
    r.add_argument("--thinking", action="store_true", help="MMaDA's thinking mode")
    _run_flags(r, 8)
    _add_preset_flag(r)
    _add_model_flags(r)
    _add_dataclass_flags(r, TextSampling, "text sampling", "text")
    r.set_defaults(func=cmd_vqa)

    r = runners.add_parser("geneval", help="GenEval images in the official evaluator's folder layout")
    r.add_argument("--prompts", type=Path, default=None, help="GenEval's evaluation_metadata.jsonl")
    r.add_argument("--world", action="store_true", help="the tiny world's t2i suite as GenEval prompts, judged by "
                   "the world's scene parser")
    r.add_argument("--per-group", type=_positive_int, default=50, help="with --world: prompts per category "
                   "(default: 50)")
    r.add_argument("--images-per-prompt", type=_positive_int, default=4, help="images per prompt (GenEval: 4)")
    r.add_argument("--judge", action="store_true", help="score the images with the world's judge (the default "
                   "with --world; other prompts need GenEval's own evaluator)")
    _run_flags(r, 8)
    _add_preset_flag(r)
    _add_model_flags(r)
    _add_dataclass_flags(r, ImageSampling, "image sampling", "image", prefix="image")
    r.set_defaults(func=cmd_geneval)

    r = runners.add_parser("compare", help="markdown table of the differences between two runs")
    r.add_argument("a", type=Path, help="results.json (or its run folder)")
    r.add_argument("b", type=Path, help="results.json (or its run folder)")
    r.set_defaults(func=cmd_compare)

    r = runners.add_parser("plot", help="score vs steps and vs tokens/s, one line per sampler mode (PNG)")
    r.add_argument("results", type=Path, nargs="+", help="results.json files or run folders")
    r.add_argument("-o", "--output", type=Path, default=Path("mmada-eval.png"), help="PNG to write")
    r.add_argument("--metric", default=None, help="task/key to plot, e.g. gsm8k/accuracy or world... "
                   "(default: each runner's headline)")
    r.add_argument("--title", default=None, help="figure title")
    r.set_defaults(func=cmd_plot)

