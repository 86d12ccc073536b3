"""Convert pickle weight files (`pytorch_model.bin`, sharded or not) to safetensors, once.

The rest of mmada reads safetensors only. This converter is the single place that unpickles, and it
does so with `torch.load(weights_only=True)`, which refuses arbitrary Python objects.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..utils.files import CheckpointError

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def _target_name(name: str) -> str:
    # The transformers naming: pytorch_model[-0000i-of-0000n].bin -> model[-0000i-of-0000n].safetensors,
    # which both the model and the image-tokenizer loaders read.
    stem = Path(name).stem
    if m := re.fullmatch(r"pytorch_model-(\d+-of-\d+)", stem):
        return f"model-{m.group(1)}.safetensors"
    if stem == "pytorch_model":
        return "model.safetensors"
    return stem + ".safetensors"


def convert_to_safetensors(source: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Write a `.safetensors` twin of every pickle weight file in `source` (a folder or one file).

    Non-weight files (config.json, tokenizer files) are left alone; a sharded
    `pytorch_model.bin.index.json` gets a `model.safetensors.index.json` twin. Returns the written files.
    """
    src = Path(source)
    if not src.exists():
        raise CheckpointError(f"{src} does not exist")
    files = [src] if src.is_file() else sorted(p for p in src.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if not files:
        raise CheckpointError(f"{src} has no pickle weight files ({', '.join(_PICKLE_SUFFIXES)}) to convert")
    out = Path(out_dir) if out_dir is not None else (src.parent if src.is_file() else src)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in files:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for bad pickles; report them all the same way
            raise CheckpointError(f"cannot convert {path}: not a plain tensor checkpoint ({err})") from err
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"cannot convert {path}: it does not hold a flat name -> tensor dictionary")
        target = out / _target_name(path.name)
        # safetensors refuses shared storage: give every tensor its own contiguous copy
        tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
        save_file(tensors, str(target), metadata={"format": "pt"})
        written.append(target)
    index = (src if src.is_dir() else src.parent) / "pytorch_model.bin.index.json"
    if src.is_dir() and index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"] = {k: _target_name(v) for k, v in data.get("weight_map", {}).items()}
        (out / "model.safetensors.index.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        written.append(out / "model.safetensors.index.json")
    return written
