"""Convert pickle weight files (`pytorch_model.bin`, sharded or not) to safetensors, once.

The rest of mmada reads safetensors only. This converter is the single place that unpickles, and it
does so with `torch.load(weights_only=True)`, which rebuilds tensors and plain containers only: a
pickle that would run code fails instead. Used by `mmada convert` for MMaDA checkpoints and for the
`showlab/magvitv2` image tokenizer (which ships `pytorch_model.bin`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..utils.files import CheckpointError

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Small files that travel with converted weights when writing to another folder.
_COMPANIONS = (
    "config.json",
    "tiny_arch.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def _target_name(name: str) -> str:
    # The transformers naming: pytorch_model[-0000i-of-0000n].bin -> model[-0000i-of-0000n].safetensors,
    # which both the model and the image-tokenizer loaders read.
    stem = Path(name).stem
    if m := re.fullmatch(r"pytorch_model-(\d+-of-\d+)", stem):
        return f"model-{m.group(1)}.safetensors"
    if stem == "pytorch_model":
        return "model.safetensors"
    return stem + ".safetensors"


def _tensor_dict(obj: Any, source: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # Lightning-style wrapper
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"cannot convert {source}: it does not hold a state dict (name -> tensor)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"cannot convert {source}: entry {bad[0]!r} is not a tensor")
    return obj


def convert_to_safetensors(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Write a `.safetensors` twin of every pickle weight file in `source` (a folder or one file).

    A sharded `pytorch_model.bin.index.json` gets a `model.safetensors.index.json` twin; when writing to
    another folder, config and tokenizer files are copied along. Existing outputs are never replaced
    unless `overwrite`. Returns the written weight (and index) files.
    """
    src = Path(os.path.expanduser(str(source)))
    if not src.exists():
        raise CheckpointError(f"{src} does not exist")
    folder = src.parent if src.is_file() else src
    files = [src] if src.is_file() else sorted(p for p in src.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not files:
        raise CheckpointError(f"{src} has no pickle weight files ({', '.join(PICKLE_SUFFIXES)}) to convert")
    out = Path(out_dir) if out_dir is not None else folder
    targets = [out / _target_name(p.name) for p in files]
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise CheckpointError(f"{existing[0]} already exists; pass overwrite=True (--overwrite) to replace it")
    out.mkdir(parents=True, exist_ok=True)
    for path, target in zip(files, targets):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for bad or unsafe pickles; report them alike
            raise CheckpointError(
                f"cannot convert {path}: not a weights-only checkpoint (refused for safety, or corrupt): {err}"
            ) from err
        # safetensors refuses tensors that share storage (torch.save keeps sharing): copy each one
        tensors = {k: v.detach().clone().contiguous() for k, v in _tensor_dict(obj, path).items()}
        save_file(tensors, str(target), metadata={"format": "pt"})
        logger.info("converted %s -> %s (%d tensors)", path, target, len(tensors))
    written = list(targets)
    index = folder / "pytorch_model.bin.index.json"
    if src.is_dir() and index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"] = {k: _target_name(v) for k, v in data.get("weight_map", {}).items()}
        (out / "model.safetensors.index.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        written.append(out / "model.safetensors.index.json")
    if out.resolve() != folder.resolve():
        for name in _COMPANIONS:
            if (folder / name).is_file() and not (out / name).exists():
                shutil.copyfile(folder / name, out / name)
    return written
