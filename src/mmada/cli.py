"""The `mmada` command line: a table of subcommands, each a thin wrapper over the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from .utils.files import CheckpointError
from .utils.logging import setup_logging

logger = logging.getLogger("mmada")


def _human(n: float) -> str:
    for unit in ("", "K", "M", "B"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}T"


def cmd_info(args: argparse.Namespace) -> int:
    """Describe a checkpoint without loading its weights."""
    from safetensors import safe_open

    from .checkpoint.hf import CONFIG_NAME, weight_files
    from .model.config import ModelConfig
    from .utils.files import resolve_folder

    folder = resolve_folder(args.checkpoint)
    config = ModelConfig.from_json(folder / CONFIG_NAME)
    files = weight_files(folder)
    dtypes, count = set(), 0
    for path in files:
        with safe_open(path, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                sl = f.get_slice(name)
                dtypes.add(sl.get_dtype())
                n = 1
                for d in sl.get_shape():
                    n *= d
                count += n
    info = {
        "folder": str(folder),
        "architecture": f"{config.n_layers} layers, d_model {config.d_model}, {config.n_heads} heads "
        f"({config.kv_heads} kv), SwiGLU {config.hidden_size}",
        "parameters": _human(count),
        "vocab_size": config.vocab_size,
        "mask_token_id": config.mask_token_id,
        "codebook_size": config.codebook_size,
        "weights": f"{len(files)} safetensors file(s), {'/'.join(sorted(dtypes))}",
        "tokenizer": "yes" if (folder / "tokenizer.json").is_file() else "no",
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert pickle weights (.bin/.pt) to safetensors, once."""
    from .checkpoint.convert import convert_to_safetensors

    for path in convert_to_safetensors(args.source, args.output, overwrite=args.overwrite):
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmada", description="Multimodal large diffusion language models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="describe a checkpoint (folder or hub id)")
    p.add_argument("checkpoint", help="checkpoint folder or hub id")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="convert pickle weights (.bin) to safetensors")
    p.add_argument("source", type=Path, help="a folder with .bin files, or one .bin file")
    p.add_argument("-o", "--output", type=Path, default=None, help="output folder (default: beside the source)")
    p.add_argument("--overwrite", action="store_true", help="replace existing .safetensors files")
    p.set_defaults(func=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        # User errors get one line, not a traceback (run with -v for the traceback).
        if args.verbose:
            raise
        print(f"mmada {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
