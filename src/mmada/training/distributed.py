"""Distributed training: process group, FSDP2 wrapping, collectives and sharded checkpoints.

This is the only module of the package that imports `torch.distributed` (STYLE.md §5.13); the
trainer and everything else talk to it through a `DistributedContext` and the functions below.
MMaDA-8B was trained on 64 A100-80GB GPUs in bf16 (MMADA.md §2.3). 8B parameters in fp32 with
AdamW state are ~128 GB, so the model is sharded, not replicated: FSDP2 (`fully_shard`) shards
each transformer block, then the root (embedding, final norm, head), over all ranks.

Launching (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_distributed`
reads them, and runs as a plain single process when they are absent):

    # one node, 8 GPUs (NCCL)
    torchrun --nproc_per_node 8 -m mmada train CONFIG

    # N nodes of 8 GPUs: the same line on every node; the c10d rendezvous assigns node ranks
    torchrun --nnodes N --nproc_per_node 8 --rdzv_id JOB --rdzv_backend c10d \\
        --rdzv_endpoint HOST:29400 -m mmada train CONFIG
    # (or a static rendezvous: --nnodes N --node_rank R --master_addr HOST --master_port 29500)

    # CPU only (gloo), e.g. to test the sharded path on a laptop or in CI
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 -m mmada train CONFIG

Gradients: every rank computes the loss of its own rows; FSDP averages the gradients over ranks.
That equals the gradient of the global batch when the loss is a mean over *rows* and every rank
holds the same number of rows (the text losses: per-row sums / L or / answer length). The t2i loss
is a mean over masked *tokens*, so its sharded gradient weights ranks equally rather than tokens:
a small, standard data-parallel approximation (the official multi-GPU code makes it too).

Checkpoints: `save_sharded`/`load_sharded` write and read a `torch.distributed.checkpoint` (DCP)
folder in which every rank writes its own shards; it can be loaded back on any number of ranks
(DCP reshards on load). `consolidate_to_release` turns such a folder into the official release
format (`mmada.save_model`) on one process, with no process group.

No code runs from a checkpoint file. DCP's own reader unpickles two things with plain `pickle`: the
`.metadata` index, and every non-tensor entry (the optimizer's hyper-parameters) via
`torch.load(weights_only=False)`; a crafted folder would run any command on `--resume` or when
consolidated. Both are replaced here, for every read (`load_sharded`, `consolidate_to_release`):

* `.metadata` is read by `read_dcp_metadata`, an unpickler that resolves only the classes a DCP index is
  made of (its dataclasses in `torch.distributed.checkpoint.metadata`, `_StorageInfo`, `torch.Size`,
  torch dtypes and layouts, `pathlib` paths) and refuses any other global (`os.system`, `eval`,
  `builtins.getattr`, ...) before anything is called. The index is then checked: every entry is tensor or
  bytes metadata, and every data file it points to is a plain file name inside the folder.
* non-tensor entries are read with `torch.load(weights_only=True)` (plain numbers, strings, tuples, lists,
  dicts), tensors as DCP always reads them (`weights_only=True`).

A restricted reader rather than a hash of `.metadata` written at save time: whoever can write a
crafted `.metadata` can write its hash beside it too, so a hash only detects accidents, while the
allow-list also protects folders from other machines and older runs. Checkpoints written by DCP
itself load unchanged.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from ..checkpoint.hf import CONFIG_NAME, DEFAULT_SHARD_BYTES, save_model
from ..model.config import ModelConfig
from ..model.transformer import MMaDAModel
from ..utils.device import resolve_device, resolve_dtype
from ..utils.files import CheckpointError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Keys of the DCP state dict; `consolidate_to_release` reads only MODEL_KEY.
MODEL_KEY = "model"
OPTIMIZER_KEY = "optimizer"


# ---- process group ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job. A single process has rank 0 of world size 1."""

    rank: int
    """Global rank in [0, world_size)."""
    world_size: int
    """Number of processes in the job."""
    local_rank: int
    """Rank on this node; selects the GPU."""
    device: torch.device
    """The device this process computes on (cuda:LOCAL_RANK or cpu)."""
    backend: str | None
    """"nccl" or "gloo" when a process group is initialised, None for a single process."""

    @property
    def is_main(self) -> bool:
        """True on global rank 0, the process that logs and writes single-copy files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when there is a process group with more than one rank."""
        return self.world_size > 1


def _launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _pick_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    if device is None:
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)  # "cuda" means this rank's GPU, not GPU 0 for all
    return dev


def init_distributed(backend: str | None = None, device: str | torch.device | None = None) -> DistributedContext:
    """Join the torchrun job, or describe a single process when not launched by torchrun.

    Args:
        backend: "nccl" or "gloo"; None picks nccl for CUDA devices and gloo for the CPU.
        device: None picks cuda:LOCAL_RANK when CUDA is available, else the CPU; "cuda" also means
            cuda:LOCAL_RANK. An explicit "cpu" forces CPU training (with gloo) on a GPU machine.

    A process group is created only when WORLD_SIZE > 1; `torchrun --nproc_per_node 1` behaves
    exactly like a plain `python -m mmada ...` run (which may then use any device, MPS included).
    """
    if _launched_by_torchrun():
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    else:
        rank, world_size, local_rank = 0, 1, 0
    dev = _pick_device(device, local_rank)
    if backend is None:
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl' or 'gloo', got {backend!r}")
    if backend == "nccl" and dev.type != "cuda":
        raise ValueError(f"backend 'nccl' needs CUDA devices, got device {str(dev)!r}; use backend='gloo' on the CPU")
    if dev.type == "cuda":
        # Each process owns one GPU; collectives and `torch.cuda` calls then default to it.
        torch.cuda.set_device(dev)
    if world_size == 1:
        return DistributedContext(rank, world_size, local_rank, dev, None)
    if dev.type not in ("cuda", "cpu"):
        raise ValueError(f"multi-process training runs on CUDA or the CPU, got device {str(dev)!r}")
    if not dist.is_initialized():
        # device_id binds NCCL to this GPU eagerly (and silences its "guessing the device" warning).
        dist.init_process_group(backend=backend, device_id=dev if backend == "nccl" else None)
    logger.info("rank %d/%d (local %d) on %s with %s", rank, world_size, local_rank, dev, backend)
    return DistributedContext(rank, world_size, local_rank, dev, backend)


def teardown(ctx: DistributedContext) -> None:
    """Destroy the process group (call once at the end of training; a no-op for a single process).

    Every rank first waits for the others: a rank that destroys its group while a peer is still
    mid-collective (e.g. rank 0 writing results) can abort gloo's transport threads
    ("terminate called without an active exception").
    """
    if ctx.is_distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---- model wrapping -----------------------------------------------------------------------------
def wrap_model(
    model: MMaDAModel,
    ctx: DistributedContext,
    *,
    fsdp: bool = True,
    mixed_precision: bool = False,
    reshard_after_forward: bool = True,
) -> MMaDAModel:
    """Shard (FSDP2) or replicate the model over the job's ranks; the identity for one process.

    The model must already be on `ctx.device` with identical weights on every rank (same seed or the
    same checkpoint). FSDP2 keeps the module's class, attributes and parameter names, so
    `model.config`, `model(ids, mask, positions=...)` and `mmada` state-dict keys keep working.

    Args:
        fsdp: True shards parameters, gradients and optimizer state over all ranks (ZeRO-3). False
            replicates them (data parallel, like DDP), expressed as FSDP2 over a (world_size, 1)
            mesh so both modes share one code path and keep the module's attributes.
        mixed_precision: compute in bf16 (parameters all-gathered and used in bf16) while the
            sharded master weights, the optimizer and the gradient reduction stay in fp32 (the 8B
            recipe, MMADA.md §2.3). The logits come back in fp32 so the loss is computed in fp32.
        reshard_after_forward: free each block's gathered weights after its forward and gather
            them again in backward (less memory, more communication). The last block is never
            resharded: backward needs it immediately.
    Returns:
        The same module object, sharded in place (or untouched when world_size == 1).
    """
    if not ctx.is_distributed:
        return model
    mesh = (
        init_device_mesh(ctx.device.type, (ctx.world_size,))
        if fsdp
        else init_device_mesh(ctx.device.type, (ctx.world_size, 1), mesh_dim_names=("replicate", "shard"))
    )
    block_policy = root_policy = MixedPrecisionPolicy()
    if mixed_precision:
        block_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        root_policy = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32, output_dtype=torch.float32
        )
    blocks = list(model.blocks)
    for i, block in enumerate(blocks):
        last = i == len(blocks) - 1
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward and not last, mp_policy=block_policy)
    # The root groups what is left: embedding, final norm and head.
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=root_policy)
    return model


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Turn the gradient reduction after backward on or off (a no-op on an unwrapped model).

    For gradient accumulation: with sync off, FSDP keeps each micro-batch's *unsharded* gradients
    locally and reduces their sum after the last micro-batch (sync on again). That saves a
    reduce-scatter per micro-batch but holds a full fp32 gradient copy per rank (32 GB for 8B), so
    leave sync on under FSDP when memory is tight; with `fsdp=False` (replicated) it is the usual
    DDP `no_sync` trade.
    """
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)


# ---- collectives --------------------------------------------------------------------------------
def all_reduce_mean(tensor: Tensor, ctx: DistributedContext) -> Tensor:
    """The mean of `tensor` over all ranks (a new tensor; the input is not modified).

    Used for logging (loss, accuracy), not for gradients, which FSDP reduces itself. Implemented as
    SUM / world_size because gloo has no AVG reduction.
    """
    if not ctx.is_distributed:
        return tensor.detach().clone()
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ctx.world_size


def broadcast_object(obj: T, ctx: DistributedContext, src: int = 0) -> T:
    """Rank `src`'s picklable `obj` on every rank (e.g. a run id or a data-order seed)."""
    if not ctx.is_distributed:
        return obj
    box = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]  # type: ignore[return-value]


def barrier(ctx: DistributedContext) -> None:
    """Wait for every rank (e.g. before rank 0 reads what all ranks wrote)."""
    if ctx.is_distributed:
        dist.barrier()


def agree(ok: bool, ctx: DistributedContext) -> bool:
    """True when `ok` holds on every rank; a barrier that also tells whether all ranks succeeded."""
    if not ctx.is_distributed:
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device=ctx.device)
    dist.all_reduce(flag, op=dist.ReduceOp.SUM)
    return bool(flag.item() == 0)


def all_finite(model: nn.Module, ctx: DistributedContext) -> bool:
    """True when every weight of `model` is finite on every rank (sharded weights: each rank checks its shard).

    One read of the weights and no full-size temporary (a NaN or inf anywhere makes its tensor's fp32 sum
    non-finite; finite weights never sum to 3e38); the trainer calls it before a checkpoint, never per step.
    """
    with torch.no_grad():
        sums = [(p.to_local() if isinstance(p, DTensor) else p).sum(dtype=torch.float32) for p in model.parameters()]
        ok = bool(torch.stack(sums).sum().isfinite()) if sums else True
    return agree(ok, ctx)


def log0(ctx: DistributedContext, log: logging.Logger, msg: str, *args: Any, level: int = logging.INFO) -> None:
    """Log on rank 0 only, so a 64-rank job prints one line per event, not 64."""
    if ctx.is_main:
        log.log(level, msg, *args)


def clip_grad_norm(model: nn.Module, max_norm: float) -> Tensor:
    """Clip the global gradient norm to `max_norm`; returns the norm before clipping (a plain scalar
    tensor, the same on every rank).

    With FSDP the gradients are sharded DTensors: `clip_grad_norm_` reduces the norm over all ranks
    and returns a replicated DTensor, turned here into a plain tensor for logging.
    """
    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def full_state_dict(model: nn.Module, ctx: DistributedContext, *, every_rank: bool = False) -> dict[str, Tensor]:
    """A copy of the unsharded model weights on CPU, on rank 0 ({} on the other ranks); with `every_rank`,
    on every rank, on the model's device (a frozen replica, e.g. UniGRPO's reference model).

    Collective: every rank must call it. Keys are the plain `MMaDAModel` names.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=not every_rank)
    # A model's state dict holds tensors only (the declared value type also covers optimizer states).
    state = cast(dict[str, Tensor], get_model_state_dict(model, options=options))
    if not (ctx.is_main or every_rank):
        return {}
    if ctx.device.type == "cpu" or every_rank:
        # On CPU, "offloading" is a no-op: with one rank, or a replicated (fsdp=False) model, the
        # values are the live parameters themselves and the next optimizer step would change them.
        state = {k: v.detach().clone() for k, v in state.items()}
    return state


# ---- sharded checkpoints ------------------------------------------------------------------------
@contextmanager
def _dcp_call(single_process: bool) -> Iterator[None]:
    # Without a process group DCP warns on every call that it "assumes" a single process, even with
    # no_dist=True; here that is exactly the intent, so the warning is noise.
    with warnings.catch_warnings():
        if single_process:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def save_sharded(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, path: str | os.PathLike[str], ctx: DistributedContext
) -> Path:
    """Write model (and optimizer) state as a DCP checkpoint folder; every rank writes its shards.

    Collective: every rank must call it with the same `path` on a shared file system. Rank 0 also
    writes the model's `config.json` beside the shards, so `consolidate_to_release` needs nothing
    else. Training-loop state (step, scheduler, data position) is the trainer's to save.
    """
    out = Path(path)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        config = getattr(model, "config", None)
        if isinstance(config, ModelConfig):
            config.to_json(out / CONFIG_NAME)
    barrier(ctx)
    state: dict[str, Any] = {}
    if optimizer is None:
        state[MODEL_KEY] = get_model_state_dict(model)
    else:
        state[MODEL_KEY], state[OPTIMIZER_KEY] = get_state_dict(model, optimizer)
    try:
        with _dcp_call(single_process=not ctx.is_distributed):
            dcp.save(state, checkpoint_id=out, no_dist=not ctx.is_distributed)
    except CheckpointException as err:  # a BaseException gathering every rank's failure: raise this rank's cause
        causes = [exc for exc, _ in err.failures.values() if isinstance(exc, Exception)]
        if causes:
            raise causes[0] from None
        raise RuntimeError(str(err)) from None
    log0(ctx, logger, "saved sharded checkpoint to %s", out)
    return out


def load_sharded(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, path: str | os.PathLike[str], ctx: DistributedContext
) -> None:
    """Load a `save_sharded` folder into an already wrapped model (and its optimizer), in place.

    Collective. The folder may come from a run with a different world size: DCP reads each rank's
    slices from whichever files hold them. Nothing in the folder is unpickled unrestricted (module
    docstring); a checkpoint of a different model size is refused naming the first parameter that differs.
    """
    folder = Path(path)
    metadata = read_dcp_metadata(folder)
    state: dict[str, Any] = {}
    if optimizer is None:
        state[MODEL_KEY] = get_model_state_dict(model)
    else:
        # get_state_dict initialises empty optimizer state, so there are tensors to load into.
        state[MODEL_KEY], state[OPTIMIZER_KEY] = get_state_dict(model, optimizer)
    check_model_shapes(state[MODEL_KEY], metadata, folder)
    _safe_dcp_load(state, folder, single_process=not ctx.is_distributed)
    if optimizer is None:
        set_model_state_dict(model, state[MODEL_KEY])
    else:
        set_state_dict(model, optimizer, model_state_dict=state[MODEL_KEY], optim_state_dict=state[OPTIMIZER_KEY])
    log0(ctx, logger, "loaded sharded checkpoint from %s", folder)


# ---- reading a DCP folder without running code from it -------------------------------------------
METADATA_FILE = ".metadata"
_INDEX_CLASSES = frozenset(
    (cls.__module__, cls.__qualname__) for cls in (
        dcp_metadata.Metadata, dcp_metadata.MetadataIndex, dcp_metadata.StorageMeta, dcp_metadata.TensorProperties,
        dcp_metadata.TensorStorageMetadata, dcp_metadata.BytesStorageMetadata, dcp_metadata.ChunkStorageMetadata,
        dcp_metadata._MEM_FORMAT_ENCODING, _StorageInfo, torch.Size,
    )
) | {("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict")} | {
    ("pathlib", name) for name in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath")}
"""(module, name) globals a DCP `.metadata` pickle may name: plain records, a shape, a path, and
`_get_layout`, which maps a layout's name to the `torch.layout` object. Constructing any of them runs no
user-chosen code."""


class _IndexUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _INDEX_CLASSES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):  # torch.float32, ...
            return getattr(torch, name)
        raise CheckpointError(f"{self.path}: refusing to load: it names {module}.{name}, which a "
                              "torch.distributed.checkpoint index never holds (a crafted or foreign file; "
                              "nothing from it was run)")


def read_dcp_metadata(folder: str | os.PathLike[str], rank: int | None = None) -> dcp_metadata.Metadata:
    """The index of a DCP checkpoint folder, unpickled with an allow-list (module docstring) and checked.

    Raises `CheckpointError` naming the file for a missing, corrupt, crafted or inconsistent index.
    """
    folder = Path(folder)
    path = folder / (METADATA_FILE if rank is None else f"__{rank}{METADATA_FILE}")
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a DCP checkpoint folder (no {METADATA_FILE} file)")
    try:
        with open(path, "rb") as f:
            metadata = _IndexUnpickler(f, path).load()
    except CheckpointError:
        raise
    except Exception as err:  # truncated or garbage bytes: UnpicklingError, EOFError, ValueError, ...
        raise CheckpointError(f"{path}: not a readable DCP index ({type(err).__name__}: {err})") from None
    if not isinstance(metadata, dcp_metadata.Metadata):
        raise CheckpointError(f"{path}: not a DCP index (holds a {type(metadata).__name__})")
    entries = (dcp_metadata.TensorStorageMetadata, dcp_metadata.BytesStorageMetadata)
    for key, entry in metadata.state_dict_metadata.items():
        if not isinstance(key, str) or not isinstance(entry, entries):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(entry).__name__}, not tensor or bytes metadata")
    for index, info in (metadata.storage_data or {}).items():
        name = getattr(info, "relative_path", None)
        if not (isinstance(info, _StorageInfo) and isinstance(name, str) and name == Path(name).name
                and name not in ("", ".", "..") and "\\" not in name and not info.transform_descriptors):
            raise CheckpointError(f"{path}: entry {getattr(index, 'fqn', index)!r} points outside the folder "
                                  f"or through a transform ({info!r})")
    return metadata


class _SafeReader(dcp.FileSystemReader):
    """DCP's file reader with the allow-list index reader."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        metadata = read_dcp_metadata(Path(self.path), kwargs.get("rank"))
        storage_meta = metadata.storage_meta or dcp_metadata.StorageMeta()
        storage_meta.load_id = self.load_id  # as the base class does
        metadata.storage_meta = storage_meta
        return metadata


class _SafePlanner(dcp.DefaultLoadPlanner):
    """DCP's load planner, reading non-tensor entries with `weights_only=True` instead of plain pickle."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"entry {read_item.dest_index.fqn!r} holds something other than plain data "
                                  f"(refused, nothing run): {str(err).splitlines()[0]}") from None
        plain = io.BytesIO()
        torch.save(obj, plain)  # what the base class reads back: plain data we just wrote ourselves
        plain.seek(0)
        super().load_bytes(read_item, plain)


def _safe_dcp_load(state: dict[str, Any], folder: Path, *, single_process: bool) -> None:
    try:
        with _dcp_call(single_process=single_process):
            dcp.load(state, storage_reader=_SafeReader(folder), planner=_SafePlanner(), no_dist=single_process)
    except CheckpointException as err:  # DCP gathers every rank's failure into one BaseException
        causes = [exc for exc, _ in err.failures.values()]
        ours = next((c for c in causes if isinstance(c, CheckpointError)), None)
        if ours is not None:
            raise CheckpointError(f"{folder}: {ours}") from None
        first = causes[0] if causes else err
        raise CheckpointError(f"{folder}: cannot be loaded ({type(first).__name__}: "
                              f"{str(first).strip().splitlines()[-1] if str(first).strip() else ''})") from None
    except CheckpointError as err:
        raise CheckpointError(f"{folder}: {err}") from None


def check_model_shapes(model_state: Mapping[str, Any], metadata: dcp_metadata.Metadata, folder: Path) -> None:
    """Refuse a checkpoint of another model: name the first parameter missing, extra, or of another shape."""
    saved = {k[len(MODEL_KEY) + 1:]: v for k, v in metadata.state_dict_metadata.items()
             if k.startswith(f"{MODEL_KEY}.")}
    if not saved:
        raise CheckpointError(f"{folder} holds no model weights (no {MODEL_KEY}.* entries)")
    for name, value in model_state.items():
        entry = saved.get(name)
        if entry is None:
            raise CheckpointError(f"{folder}: parameter {name!r} of this model is not in the checkpoint "
                                  f"(a checkpoint of a different model?)")
        if not isinstance(entry, dcp_metadata.TensorStorageMetadata) or tuple(entry.size) != tuple(value.shape):
            shape = tuple(entry.size) if isinstance(entry, dcp_metadata.TensorStorageMetadata) else "no tensor"
            raise CheckpointError(f"{folder}: parameter {name!r} has shape {shape} in the checkpoint but "
                                  f"{tuple(value.shape)} in this model (a checkpoint of a different model size?)")
    extra = sorted(set(saved) - set(model_state))
    if extra:
        raise CheckpointError(f"{folder}: the checkpoint has parameter {extra[0]!r}, which this model lacks "
                              f"({len(extra)} in all; a checkpoint of a different model size?)")


def consolidate_to_release(
    dcp_dir: str | os.PathLike[str],
    config: ModelConfig | None,
    out_dir: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Turn a `save_sharded` folder into an official release checkpoint, on one process.

    No process group is needed: the model is built on the meta device, materialised empty on the
    CPU in the output dtype, and DCP reads every shard of every rank straight into it (casting on
    copy). Only the model entries are read, never the optimizer state, so peak memory is one copy
    of the weights in `dtype` (16 GB for MMaDA-8B in bf16).

    Args:
        dcp_dir: a folder written by `save_sharded` (by any number of ranks).
        config: the model's config; None reads the `config.json` that `save_sharded` wrote.
        out_dir: where `mmada.save_model` writes config.json and safetensors with the official names.
        dtype: storage dtype of the release weights; None keeps the checkpoint's (fp32 master
            weights for a mixed-precision run; the released MMaDA checkpoints are bf16).
        max_shard_bytes: safetensors shard size (default: `save_model`'s 5 GB).
    Returns:
        `out_dir` as a Path.
    """
    folder = Path(dcp_dir)
    metadata = read_dcp_metadata(folder)  # before anything else reads the folder: the allow-list reader
    if config is None:
        if not (folder / CONFIG_NAME).is_file():
            raise ValueError(f"{folder} has no {CONFIG_NAME}; pass the model's config explicitly")
        config = ModelConfig.from_json(folder / CONFIG_NAME)
    embed_key = f"{MODEL_KEY}.embed.weight"
    embed = metadata.state_dict_metadata.get(embed_key)
    if not isinstance(embed, dcp.TensorStorageMetadata):
        raise ValueError(f"{folder} holds no MMaDA model weights (no {embed_key!r} entry)")
    store = resolve_dtype(dtype) if dtype is not None else embed.properties.dtype
    with torch.device("meta"):
        model = MMaDAModel(config)
    model = model.to(store).to_empty(device="cpu")  # cast while on meta: never an fp32 copy of 8B
    state = {MODEL_KEY: model.state_dict()}
    check_model_shapes(state[MODEL_KEY], metadata, folder)
    # Reads into the (aliased) tensors of model.state_dict(): no second copy of the weights.
    _safe_dcp_load(state, folder, single_process=True)
    shard_bytes = DEFAULT_SHARD_BYTES if max_shard_bytes is None else max_shard_bytes
    return save_model(model, out_dir, max_shard_bytes=shard_bytes)
