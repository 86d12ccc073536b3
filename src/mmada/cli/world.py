"""`mmada world ...`: train the tiny world's tokenizers, draw sample grids, run its judges."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from . import _check_output, _positive_int


def cmd_world_train_tokenizers(args: argparse.Namespace) -> int:
    """Train the world's text and image tokenizers, then print their held-out evaluation."""
    import time

    import torch

    from ..world.tokenizers import (
        IMAGE_TOKENIZER_SUBDIR,
        TEXT_TOKENIZER_SUBDIR,
        build_world_patch_codebook,
        evaluate_tokenizers,
        format_evaluation,
        train_image_tokenizer,
        train_text_tokenizer,
    )

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    text_dir = train_text_tokenizer(args.output / TEXT_TOKENIZER_SUBDIR, vocab_size=args.vocab_size, seed=args.seed)
    text_seconds = time.perf_counter() - start
    print(f"wrote {text_dir} ({text_seconds:.1f} s)")
    start = time.perf_counter()
    image_dir = args.output / IMAGE_TOKENIZER_SUBDIR
    if args.image_tokenizer == "magvit":
        train_image_tokenizer(image_dir, steps=args.steps, seed=args.seed, progress=not args.quiet)
    else:
        build_world_patch_codebook(image_dir, seed=args.seed)
    image_seconds = time.perf_counter() - start
    print(f"wrote {image_dir} ({image_seconds:.1f} s on {torch.get_num_threads()} threads)")
    results = evaluate_tokenizers(text_dir, image_dir)
    results["training_seconds"] = {"text": round(text_seconds, 1), "image": round(image_seconds, 1),
                                   "threads": torch.get_num_threads()}
    print(format_evaluation(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def cmd_world_sample(args: argparse.Namespace) -> int:
    """Draw a captioned grid of world scenes."""
    from ..world.preview import sample_grid

    _check_output(args.output)
    grid = sample_grid(args.n, seed=args.seed)
    grid.save(args.output)
    print(f"wrote {args.output}")
    return 0


def cmd_world_judge(args: argparse.Namespace) -> int:
    """Print what the scene parser sees in an image and the GenEval-style verdict for a caption."""
    import numpy as np

    from ..image_tokenizer import load_image
    from ..world.captions import parse_caption
    from ..world.judges import score_t2i
    from ..world.preview import describe

    prompt = parse_caption(args.caption)  # a caption outside the template language is a usage error
    image = np.asarray(load_image(args.image))
    print(describe(image))
    verdict = score_t2i(image, prompt)
    print(f"verdict: {'correct' if verdict else 'incorrect'} ({prompt.category})")
    for reason in verdict.reasons:
        print(f"- {reason}")
    return 0 if verdict else 1


def cmd_world_export(args: argparse.Namespace) -> int:
    """The world's held-out evaluation data as the files `mmada eval vqa` / `mmada eval geneval` read."""
    from ..evaluation.geneval import world_geneval_prompts, write_prompts
    from ..evaluation.vqa import write_world_vqa

    _check_output(args.output / "x")
    if args.kind == "geneval":
        path = write_prompts(args.output / "evaluation_metadata.jsonl", world_geneval_prompts(args.per_group))
    else:
        path = write_world_vqa(args.output, per_group=args.per_group, yesno=args.kind == "pope")
    print(f"wrote {path}")
    return 0


def add_world_commands(sub: Any) -> None:
    world = sub.add_parser("world", help="the tiny world: tokenizers, sample grids, judges")
    commands = world.add_subparsers(dest="world_command", required=True, metavar="WORLD_COMMAND")

    p = commands.add_parser("train-tokenizers", help="train the world's text and image tokenizers and evaluate them")
    p.add_argument("--image-tokenizer", choices=("patches", "magvit"), default="patches",
                   help="patches: the committed patch codebook (one code per exact 4x4 patch, ~10 s); magvit: a "
                   "learned MAGVIT-v2/LFQ (~5 min; its codes depend on each patch's neighbourhood)")
    p.add_argument("-o", "--output", type=Path, default=Path("world-tokenizers"),
                   help="folder for text_tokenizer/ and image_tokenizer/ (default: world-tokenizers; the "
                   "committed ones live in src/mmada/world/assets)")
    p.add_argument("--seed", type=int, default=0, help="selects corpora, initial weights and batches (default: 0)")
    p.add_argument("--steps", type=_positive_int, default=None, help="magvit optimizer steps (default: the recipe's)")
    p.add_argument("--vocab-size", type=_positive_int, default=None,
                   help="text tokens incl. specials (default: the recipe's)")
    p.add_argument("--json", type=Path, default=None, help="also write the evaluation as JSON")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: torch's; the image "
                   "tokenizer's weights depend on it)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_world_train_tokenizers)

    p = commands.add_parser("sample", help="draw a captioned grid of world scenes")
    p.add_argument("-o", "--output", type=Path, default=Path("world.png"), help="PNG to write")
    p.add_argument("--n", type=_positive_int, default=16, help="number of scenes (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="selects the scenes (default: 0)")
    p.set_defaults(func=cmd_world_sample)

    p = commands.add_parser("export", help="held-out evaluation data as local files for mmada eval vqa / geneval")
    p.add_argument("kind", choices=("vqa", "pope", "geneval"), help="vqa: every question type (vqa.jsonl + images/); "
                   "pope: the yes/no questions (pope.jsonl); geneval: t2i prompts (evaluation_metadata.jsonl)")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder to write into")
    p.add_argument("--per-group", type=_positive_int, default=50, help="examples per group (default: 50)")
    p.set_defaults(func=cmd_world_export)

    p = commands.add_parser("judge", help="what the scene parser sees, and whether a caption holds (exit 1 if not)")
    p.add_argument("image", help="image file (32x32, or a multiple of it)")
    p.add_argument("caption", help='caption in the world\'s language, e.g. "a red circle above a blue square"')
    p.set_defaults(func=cmd_world_judge)
