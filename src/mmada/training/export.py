"""Export a training checkpoint as a release checkpoint (what `mmada consolidate` runs).

A single-process checkpoint already holds one (`step-N/model/`); a multi-process one holds DCP shards
(`step-N/sharded/`) that `training.distributed.consolidate_to_release` gathers on one process, without a
process group and without unpickling anything from the folder. Either way the result is a folder that
`mmada.load_model` and every command read: config.json, safetensors with the official names, and the
text tokenizer's files when the run had them (`step-N/tokenizer/` beside the shards).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ..checkpoint import train_state
from ..checkpoint.hf import DEFAULT_SHARD_BYTES, load_model, save_model
from ..utils.files import CheckpointError
from .config import TOKENIZER_FILES

TOKENIZER_DIR = train_state.TOKENIZER_DIR


def find_checkpoint(source: str | os.PathLike[str]) -> Path:
    """A run folder's latest complete checkpoint, a `step-N` folder, or a DCP folder, as given."""
    path = Path(source)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder (pass a run folder, a step-N checkpoint or a DCP folder)")
    if (path / "trainer.json").is_file() or (path / ".metadata").is_file():
        return path
    latest = train_state.find_latest(path)
    if latest is None:
        raise CheckpointError(f"{path} holds no complete training checkpoint (no step-N folder with trainer.json)")
    return latest


def export_release(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write the release checkpoint of `source` (a run folder: its latest checkpoint; a `step-N` folder; or a
    DCP folder) into `out_dir`, which must not exist or be empty; return `out_dir`.

    Args:
        dtype: storage dtype of the release weights (e.g. "bf16"); None keeps the checkpoint's (float32 when
            a single-process checkpoint is re-sharded).
        max_shard_bytes: safetensors shard size (default: `save_model`'s 5 GB).
    """
    checkpoint, out = find_checkpoint(source), Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out} already exists and is not empty; choose another output folder")
    shard_bytes = DEFAULT_SHARD_BYTES if max_shard_bytes is None else max_shard_bytes
    sharded = checkpoint if (checkpoint / ".metadata").is_file() else checkpoint / "sharded"
    if (sharded / ".metadata").is_file():
        from .distributed import consolidate_to_release  # imports torch.distributed

        consolidate_to_release(sharded, None, out, dtype=dtype, max_shard_bytes=shard_bytes)
        assets = checkpoint / TOKENIZER_DIR
        for asset in sorted(assets.iterdir()) if assets.is_dir() else []:
            shutil.copy2(asset, out / asset.name)
        return out
    model_dir = checkpoint / "model"
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(f"{checkpoint} holds neither sharded/ (multi-process) nor model/ (single process)")
    if dtype is None and max_shard_bytes is None:
        shutil.copytree(model_dir, out, dirs_exist_ok=True)  # already the release format
        return out
    # a re-shard or a cast: through the model (training stores float32 master weights, the default here)
    save_model(load_model(model_dir, dtype=dtype or torch.float32), out, max_shard_bytes=shard_bytes)
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, out / name)
    return out
