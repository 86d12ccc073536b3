"""Load, save and convert MAGVIT-v2 tokenizer checkpoints (safetensors only).

Folder layout (what the official `MAGVITv2.save_pretrained(safe_serialization=True)` writes, plus
one file of ours):

    config.json                 {"_class_name": "MAGVITv2", ...}: no architecture numbers
    pytorch_model.safetensors   weights under the official key names (or model.safetensors)
    tiny_arch.json              optional: architecture numbers; absent means the official model

Pickle checkpoints (`pytorch_model.bin`, `*.pt`, `*.ckpt`) can run code when unpickled, so the
loader refuses them; `convert_pickle_checkpoint` (the `mmada convert` command) rewrites them once,
with `torch.load(weights_only=True)`, as safetensors.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mmada.image_tokenizer.config import MagvitConfig
from mmada.image_tokenizer.lfq import bit_weights, indices_to_codes
from mmada.image_tokenizer.magvit2 import MagvitV2
from mmada.image_tokenizer.patch_codebook import CLASS_NAME as PATCH_CODEBOOK
from mmada.image_tokenizer.patch_codebook import PatchCodebook, load_patch_codebook
from mmada.utils.device import resolve_device, resolve_dtype
from mmada.utils.files import CheckpointError, resolve_folder

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("pytorch_model.safetensors", "model.safetensors")
"""Tried in this order; the official loader also tries `pytorch_model.safetensors` first."""
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
ARCH_FILE = "tiny_arch.json"
CONFIG_FILE = "config.json"
OFFICIAL_CLASS_NAME = "MAGVITv2"
# The diffusers version the official repository pins (Gen-Verse/MMaDA requirements.txt); the official
# ConfigMixin writes it next to `_class_name`, and we write the same so its loader accepts our folders.
OFFICIAL_DIFFUSERS_VERSION = "0.32.2"
_LFQ_BUFFERS = ("quantize.embedding", "quantize.power_vals")


def load_image_tokenizer(
    path_or_id: str | os.PathLike[str],
    *,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = torch.float32,
) -> MagvitV2 | PatchCodebook:
    """Load an image tokenizer from a local folder or a hub id (e.g. a converted showlab/magvitv2).

    A folder whose config.json names a "PatchCodebook" gives that tokenizer (`patch_codebook.py`);
    anything else is read as MAGVIT-v2.

    The module is built on the meta device and the checkpoint tensors are assigned to it, so no
    random initialisation runs. The result is in eval mode with gradients off (MMaDA keeps it frozen).

    Raises:
        CheckpointError: missing folder, pickle-only folder, unreadable file, missing/unexpected key or
            shape mismatch; the message names the file or the key.
    """
    folder = resolve_folder(path_or_id, allow_patterns=["*.json", "*.safetensors"])
    meta = _read_json(folder / CONFIG_FILE) if (folder / CONFIG_FILE).is_file() else None
    if isinstance(meta, dict) and meta.get("_class_name") == PATCH_CODEBOOK:
        return load_patch_codebook(folder, meta, resolve_device(device))
    config = _read_config(folder, meta)
    weights = _find_weights(folder)
    target_device, target_dtype = resolve_device(device), resolve_dtype(dtype)
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights} is not a readable safetensors file: {err}") from err
    state = _complete_lfq_buffers(state, config, weights)
    with torch.device("meta"):
        model = MagvitV2(config)
    _check_state_dict(model, state, weights)
    state = {k: v.to(target_dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.to(target_device).eval().requires_grad_(False)
    logger.info(
        "loaded MAGVIT-v2 tokenizer from %s (%d codes, f=%d)", weights, model.codebook_size, model.downsample_factor
    )
    return model


def save_image_tokenizer(tokenizer: MagvitV2, folder: str | os.PathLike[str]) -> Path:
    """Write `config.json` (official form), `tiny_arch.json` and `pytorch_model.safetensors`.

    Returns:
        The folder written to (created if needed).
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": OFFICIAL_CLASS_NAME, "_diffusers_version": OFFICIAL_DIFFUSERS_VERSION}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    (out / ARCH_FILE).write_text(json.dumps(tokenizer.config.to_arch_json(), indent=2) + "\n")
    state = {k: v.detach().to("cpu").contiguous() for k, v in tokenizer.state_dict().items()}
    save_file(state, out / WEIGHT_FILES[0], metadata={"format": "pt"})
    return out


def _read_config(folder: Path, meta: Any) -> MagvitConfig:
    """Architecture from `tiny_arch.json`, else the official numbers; `meta` (the parsed `config.json`, None
    when absent) must name MAGVITv2."""
    name = meta.get("_class_name") if isinstance(meta, dict) else None
    if name is not None and name != OFFICIAL_CLASS_NAME:
        raise CheckpointError(
            f"{folder / CONFIG_FILE} describes a {name!r}, not a {OFFICIAL_CLASS_NAME} image tokenizer")
    arch_path = folder / ARCH_FILE
    if not arch_path.is_file():
        return MagvitConfig.official()
    arch = _read_json(arch_path)
    if not isinstance(arch, dict):
        raise CheckpointError(f"{arch_path} must hold a json object")
    try:
        return MagvitConfig.from_arch_json(arch)
    except ValueError as err:
        raise CheckpointError(f"{arch_path}: {err}") from err


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not valid json: {err}") from err


def _find_weights(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    pickles = sorted(p.name for pattern in PICKLE_PATTERNS for p in folder.glob(pattern))
    if pickles:
        raise CheckpointError(
            f"{folder} holds only pickle weights ({', '.join(pickles)}); pickle files are refused for "
            f"security because loading them can run arbitrary code. Run `mmada convert {folder}` once "
            f"to write {WEIGHT_FILES[0]}, then load the folder again."
        )
    raise CheckpointError(
        f"{folder} has no {' or '.join(WEIGHT_FILES)}. If the checkpoint only ships pickle files "
        "(pytorch_model.bin), download it and run `mmada convert <folder>` to write safetensors."
    )


def _complete_lfq_buffers(
    state: dict[str, torch.Tensor], config: MagvitConfig, weights: Path
) -> dict[str, torch.Tensor]:
    """Recompute the LFQ tables when a checkpoint lacks them; refuse tables in another bit order."""
    dim = config.quantizer.codebook_dim
    expected = {
        "quantize.embedding": indices_to_codes(torch.arange(2**dim), dim),
        "quantize.power_vals": bit_weights(dim),
    }
    state = dict(state)
    for key in _LFQ_BUFFERS:
        if key not in state:
            state[key] = expected[key]
            continue
        stored = state[key]
        if stored.shape != expected[key].shape:
            raise CheckpointError(
                f"{weights}: {key} has shape {tuple(stored.shape)}, expected {tuple(expected[key].shape)} "
                f"for codebook_dim {dim}"
            )
        if not torch.equal(stored.to(expected[key].dtype), expected[key]):
            raise CheckpointError(f"{weights}: {key} is not the MSB-first LFQ table this implementation uses")
        state[key] = stored.to(expected[key].dtype)
    return state


def _check_state_dict(model: MagvitV2, state: dict[str, torch.Tensor], weights: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{weights} is missing the key {missing[0]!r}{more}; wrong architecture or file?")
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{weights} has an unexpected key {unexpected[0]!r}{more}; wrong architecture?")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise CheckpointError(
                f"{weights}: {key} has shape {tuple(state[key].shape)}, the architecture expects "
                f"{tuple(tensor.shape)} (is tiny_arch.json right?)"
            )
