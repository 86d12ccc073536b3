"""Load and save MMaDA checkpoints in the official (Hugging Face `save_pretrained`) format.

A checkpoint folder holds `config.json`, `generation_config.json` and the weights: one
`model.safetensors`, or shards `model-0000i-of-0000n.safetensors` with
`model.safetensors.index.json` (`{"metadata": {"total_size": …}, "weight_map": {name: shard}}`).
Tensor names are the official ones (`model.transformer.blocks.{i}.q_proj.weight`, …); the key map
below is the only bridge to our readable module names.

Only safetensors are read: a pickle (`.bin`/`.pt`) can run arbitrary code when loaded.
Weights are read shard by shard into a model built on the meta device and attached with
`load_state_dict(assign=True)`, so peak memory stays near one copy of the weights.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..model.config import ModelConfig
from ..model.lora import has_lora, merged_state_dict
from ..model.transformer import MMaDAModel
from ..utils.device import resolve_device, resolve_dtype
from ..utils.files import CheckpointError, resolve_folder

CONFIG_NAME = "config.json"
SINGLE_WEIGHTS = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DEFAULT_SHARD_BYTES = 5 * 1024**3  # transformers' default max_shard_size ("5GB")

# official name pattern -> our name pattern (the only place the two namings meet)
_BLOCK_MAP = {
    "attn_norm": "attn_norm",
    "q_proj": "attn.q",
    "k_proj": "attn.k",
    "v_proj": "attn.v",
    "attn_out": "attn.out",
    "ff_norm": "mlp_norm",
    "ff_proj": "mlp.gate",  # SwiGLU gate: silu(ff_proj x) * up_proj x
    "up_proj": "mlp.up",
    "ff_out": "mlp.down",
}
_TOP_MAP = {"wte": "embed", "ln_f": "norm", "ff_out": "head"}
_BLOCK_RE = re.compile(r"^model\.transformer\.blocks\.(\d+)\.(\w+)\.weight$")
_TOP_RE = re.compile(r"^model\.transformer\.(\w+)\.weight$")
_OURS_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)\.weight$")


def official_to_ours(name: str) -> str | None:
    """Map an official tensor name to ours; None when it is not a name the model has."""
    if m := _BLOCK_RE.match(name):
        sub = _BLOCK_MAP.get(m.group(2))
        return f"blocks.{m.group(1)}.{sub}.weight" if sub else None
    if m := _TOP_RE.match(name):
        sub = _TOP_MAP.get(m.group(1))
        return f"{sub}.weight" if sub else None
    return None


def ours_to_official(name: str) -> str:
    if m := _OURS_BLOCK_RE.match(name):
        inverse = {v: k for k, v in _BLOCK_MAP.items()}
        return f"model.transformer.blocks.{m.group(1)}.{inverse[m.group(2)]}.weight"
    inverse_top = {v: k for k, v in _TOP_MAP.items()}
    return f"model.transformer.{inverse_top[name.removesuffix('.weight')]}.weight"


# ---- reading ------------------------------------------------------------------------------------
def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder, refusing pickles with a reason."""
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{index} is not a valid safetensors index (needs a `weight_map`): {err}") from err
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shard {missing[0]!r}, which is missing from {folder}")
        return [folder / s for s in shards]
    if (folder / SINGLE_WEIGHTS).is_file():
        return [folder / SINGLE_WEIGHTS]
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{folder} holds only pickle weights ({', '.join(pickles[:3])}). mmada loads safetensors only, because "
            "unpickling can execute arbitrary code. Convert once with `mmada convert "
            f"{folder}` (or transformers' `save_pretrained(..., safe_serialization=True)`)."
        )
    raise CheckpointError(f"{folder} has no {SINGLE_WEIGHTS} or {INDEX_NAME}: not a safetensors checkpoint")


def iter_tensors(files: list[Path], device: torch.device) -> Iterator[tuple[Path, str, torch.Tensor]]:
    """(file, name, tensor) for every tensor; corrupt or truncated files raise CheckpointError."""
    load_device = "cpu" if device.type == "mps" else str(device)  # safetensors cannot target mps directly
    for path in files:
        try:
            with safe_open(path, framework="pt", device=load_device) as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    yield path, name, f.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError) as err:
            raise CheckpointError(f"cannot read {path}: it is corrupt or truncated ({err})") from err


def load_model(
    path_or_id: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype = torch.float32,
    device: str | torch.device | None = "cpu",
) -> MMaDAModel:
    """Load an official MMaDA checkpoint (local folder or hub id) into `MMaDAModel`.

    Args:
        path_or_id: a folder with config.json + safetensors weights, or a hub id such as
            "Gen-Verse/MMaDA-8B-MixCoT".
        dtype: compute dtype; weights are cast tensor by tensor while loading.
        device: "cpu" (default), "cuda", "mps", or None/"auto" for the best available.
    """
    dtype, device = resolve_dtype(dtype), resolve_device(device)
    folder = resolve_folder(path_or_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
    config = ModelConfig.from_json(folder / CONFIG_NAME) if (folder / CONFIG_NAME).is_file() else None
    if config is None:
        raise CheckpointError(f"{folder} has no {CONFIG_NAME}: not an MMaDA checkpoint folder")
    with torch.device("meta"):
        model = MMaDAModel(config)
    expected = {name: p.shape for name, p in model.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    for path, name, tensor in iter_tensors(weight_files(folder), device):
        ours = official_to_ours(name)
        if ours is None or ours not in expected:
            raise CheckpointError(
                f"{path.name}: unexpected tensor {name!r} (not part of an MMaDA model with this config)"
            )
        if not tensor.dtype.is_floating_point:  # a cast would turn integers into weights silently
            raise CheckpointError(f"{path.name}: tensor {name!r} has dtype {str(tensor.dtype).removeprefix('torch.')}; "
                                  "MMaDA weights must be floating point (float32, bfloat16 or float16)")
        if tensor.shape != expected[ours]:
            raise CheckpointError(_shape_message(path, name, tuple(tensor.shape), tuple(expected[ours]), config))
        state[ours] = tensor.to(device=device, dtype=dtype)
        del tensor
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(
            f"{folder}: weight {ours_to_official(missing[0])!r} is missing ({len(missing)} missing in all)"
        )
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _shape_message(path: Path, name: str, got: tuple[int, ...], want: tuple[int, ...], config: ModelConfig) -> str:
    msg = f"{path.name}: tensor {name!r} has shape {list(got)} but the config expects {list(want)}"
    if name.endswith(("wte.weight", "transformer.ff_out.weight")) and got[0] != config.vocab_size:
        msg += f" (config.json says vocab_size {config.vocab_size}, the weights have {got[0]} rows)"
    return msg


# ---- writing ------------------------------------------------------------------------------------
def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def save_model(
    model: MMaDAModel,
    directory: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> Path:
    """Write `model` in the official format (official names, config.json, shards + index above
    `max_shard_bytes`), so the official `MMadaModelLM.from_pretrained` can load it.

    Args:
        dtype: storage dtype (default: the model's). The released checkpoints are bf16.
    """
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    store = resolve_dtype(dtype) if dtype is not None else model.dtype
    # A model training with LoRA adapters is saved with the adapters folded in: a plain release checkpoint.
    state = merged_state_dict(model) if has_lora(model) else model.state_dict()
    tensors = {ours_to_official(k): v.detach().to("cpu", store).contiguous() for k, v in state.items()}
    shards = _plan_shards(tensors, max_shard_bytes)
    for stale in [*out.glob("model-*-of-*.safetensors"), out / SINGLE_WEIGHTS, out / INDEX_NAME]:
        stale.unlink(missing_ok=True)  # never leave shards of an older save beside the new ones
    names = (
        [SINGLE_WEIGHTS]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for file_name, shard in zip(names, shards):
        tmp = out / (file_name + ".tmp")
        save_file({k: tensors[k] for k in shard}, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, out / file_name)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
            "weight_map": {k: f for f, shard in zip(names, shards) for k in sorted(shard)},
        }
        _atomic_write_text(out / INDEX_NAME, json.dumps(index, indent=2, sort_keys=True) + "\n")
    config = model.config.to_dict()
    config["torch_dtype"] = str(store).removeprefix("torch.")
    _atomic_write_text(out / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    generation = {
        "_from_model_config": True,
        "eos_token_id": model.config.eos_token_id,
        "pad_token_id": model.config.pad_token_id,
        "use_cache": False,
    }
    _atomic_write_text(out / "generation_config.json", json.dumps(generation, indent=2) + "\n")
    return out


def _plan_shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[list[str]]:
    """Greedy in name order, like transformers: start a new shard when the next tensor overflows."""
    shards: list[list[str]] = [[]]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards
