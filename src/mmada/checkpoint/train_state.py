"""Training checkpoints that never lose work: write aside, rename atomically, then move `latest`.

A run folder:

    run_dir/
      latest                  one line naming the newest complete checkpoint ("step-000123"), for people and tools
      step-000123/            a complete checkpoint
        model/                the weights in the release format (`mmada.save_model`; `mmada.load_model` reads it)
        adapter.safetensors   LoRA runs only: the adapters (resume reloads them onto the frozen base)
        sharded/, tokenizer/  multi-process runs, instead of model/ and optimizer.pt: DCP shards of both, and
                              the tokenizer files (`training.export.export_release` makes a release of them)
        optimizer.pt          AdamW state (torch.save; loaded with weights_only=True, see below)
        scheduler.json        learning-rate scheduler state
        rng-0.safetensors     torch CPU / CUDA RNG states and the trainer's generators, rank 0
        rng-0.json            Python and NumPy RNG states, rank 0
        data-0.json           the data source's cursor, rank 0 (one rng/data pair per rank)
        trainer.json          step, world size, the run's config; written last
      .tmp-step-000456/       a checkpoint being written: never read, deleted by the next save

Commit protocol: everything is written into `.tmp-step-N/` and flushed to disk, `trainer.json` last, and
the folder is renamed to `step-N/` (atomic on POSIX file systems): that rename is the commit. Only then is
`latest` replaced (written to `latest.tmp`, flushed, `os.replace`d) and are old checkpoints pruned. A
process killed at any moment leaves every `step-*` folder complete and `latest` naming one of them; a
half-written checkpoint only ever exists under a `.tmp-` name, which nothing reads and the next save
deletes. `find_latest` returns the newest complete `step-*` folder.

Formats: safetensors for every tensor that stands alone (weights, RNG states). The optimizer state is
a nested structure (per-parameter dicts keyed by integer ids holding `step`, `exp_avg`, `exp_avg_sq`,
plus `param_groups` of hyper-parameters); safetensors stores only a flat name -> tensor map, so it is
saved with `torch.save` and loaded with `weights_only=True`, whose unpickler accepts only tensors and
plain containers and therefore cannot execute code from the file.

Failures leave no garbage and lose nothing. A write that fails (a full disk, a quota, a folder that became
read-only: any error while `.tmp-step-N/` is written) deletes that temporary folder and raises
`CheckpointWriteError` (an `OSError`) naming the step and the reason; the committed checkpoints and `latest`
are untouched, so the run can be resumed from the previous one. Loading names the file for every problem
(`CheckpointError`): a missing or corrupt `optimizer.pt`, `trainer.json`, RNG or data file, and weights of a
different model size (the first parameter that differs, with both shapes).

A multi-process run passes a `Collective` (built by the trainer from `training.distributed`): each rank
writes its own RNG and data cursor, the model and optimizer go through `torch.distributed.checkpoint`
(`save_sharded` into `sharded/` instead of `model/` and `optimizer.pt`; `training.distributed.
consolidate_to_release` turns that folder into the release format), and rank 0 alone renames and moves
`latest`, between barriers.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..model.lora import load_adapter, lora_config_of, save_adapter
from ..model.transformer import MMaDAModel
from ..utils.files import CheckpointError
from .hf import iter_tensors, official_to_ours, save_model, weight_files

logger = logging.getLogger(__name__)

LATEST = "latest"
ADAPTER_FILE = "adapter.safetensors"  # LoRA runs: the trained adapters, for an exact resume
TOKENIZER_DIR = "tokenizer"  # multi-process runs: the tokenizer files beside the shards (for the release export)
PREFIX = "step-"
TMP_PREFIX = ".tmp-"
_STEP_RE = re.compile(rf"^{PREFIX}(\d+)$")


def _noop() -> None:
    return None


@dataclass(frozen=True)
class Collective:
    """How the processes of a run cooperate on a checkpoint; the default is a single process."""

    rank: int = 0
    world_size: int = 1
    barrier: Callable[[], None] = _noop
    save_sharded: Callable[[nn.Module, torch.optim.Optimizer, Path], Any] | None = None
    """Write the model and optimizer shards of every rank into a folder (torch.distributed.checkpoint)."""
    load_sharded: Callable[[nn.Module, torch.optim.Optimizer | None, Path], Any] | None = None
    """Load them back in place (on any number of ranks)."""
    agree: Callable[[bool], bool] = bool
    """A barrier that also tells whether every process succeeded (`ok` of all ranks, and-ed); a single
    process just returns its own `ok`."""

    @property
    def sharded(self) -> bool:
        return self.world_size > 1


@dataclass(frozen=True)
class Resumed:
    """What `load_checkpoint` restored besides the objects it loaded in place."""

    step: int
    """Optimizer steps completed when the checkpoint was written."""
    path: Path
    data_state: dict[str, Any]
    """This rank's data-source cursor (`BatchSource.load_state_dict`)."""
    config: dict[str, Any] = field(default_factory=dict)
    """The run's config as saved (for comparison with the current one)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the previous complete checkpoint is intact (message says which)."""


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:06d}"


# ---- finding checkpoints ----------------------------------------------------------------------------
def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints of a run, oldest first (a `step-*` folder holding `trainer.json`)."""
    run = Path(run_dir)
    if not run.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run.iterdir() if (m := _STEP_RE.match(p.name)) and _complete(p)]
    return [p for _, p in sorted(found)]


def _complete(folder: Path) -> bool:
    return folder.is_dir() and (folder / "trainer.json").is_file()


def find_latest(run_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint, or None.

    The folder rename is the commit, so this scans for complete folders instead of trusting `latest`: a run
    killed between the rename and the pointer update resumes from the newer checkpoint, and a pointer that
    names a deleted folder misleads nobody.
    """
    complete = list_checkpoints(run_dir)
    return complete[-1] if complete else None


# ---- saving -----------------------------------------------------------------------------------------
def save_checkpoint(
    run_dir: str | os.PathLike[str],
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    data_state: Mapping[str, Any],
    config: Mapping[str, Any],
    generators: Mapping[str, torch.Generator] | None = None,
    keep_last: int | None = None,
    assets: tuple[Path, ...] = (),
    collective: Collective | None = None,
) -> Path:
    """Write a complete checkpoint for `step` and make it `latest`; return its folder.

    Args:
        model: the trained `MMaDAModel` (or, in a sharded run, the wrapped module).
        scheduler: anything with `state_dict()` returning plain data (a `LambdaLR`).
        data_state: this rank's `BatchSource.state_dict()`; must be JSON-serialisable.
        config: the run's config as a plain dict (`TrainConfig.to_dict()`).
        generators: the trainer's own RNGs by name (e.g. the masking generator).
        keep_last: after committing, delete all but this many newest complete checkpoints.
        assets: small files copied beside the weights (tokenizer files), so `model/` is a usable checkpoint.
    """
    co = collective or Collective()
    run = Path(run_dir)
    final, tmp = run / checkpoint_name(step), run / f"{TMP_PREFIX}{checkpoint_name(step)}"
    error: BaseException | None = None
    if co.rank == 0:
        try:
            run.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a killed save of the same step
            tmp.mkdir()
        except OSError as err:
            error = err
    _check_written(co, error, run, tmp, step)
    try:
        _save_rng(tmp, co.rank, generators or {})
        _write_json(tmp / f"data-{co.rank}.json", dict(data_state), what="the data source state")
        if co.sharded:
            if co.save_sharded is None:
                raise ValueError("a multi-process checkpoint needs `save_sharded`")
            co.save_sharded(model, optimizer, tmp / "sharded")
            if co.rank == 0 and assets:
                (tmp / TOKENIZER_DIR).mkdir()
                for asset in assets:
                    shutil.copy2(asset, tmp / TOKENIZER_DIR / asset.name)
        elif co.rank == 0:
            _save_single(tmp, model, optimizer, assets)
    except (ValueError, TypeError):
        raise  # a programming error (nothing to do with the disk): as it is
    except Exception as err:  # OSError; safetensors and torch.save report a full disk as their own errors
        error = err
    _check_written(co, error, run, tmp, step)
    if co.rank == 0:
        try:
            _write_json(tmp / "scheduler.json", scheduler.state_dict(), what="the scheduler state")
            _write_json(tmp / "trainer.json", {"step": step, "world_size": co.world_size, "config": dict(config)},
                        what="the config")
            _fsync_tree(tmp)
            _commit(tmp, final)
        except OSError as err:
            error = err
    _check_written(co, error, run, tmp, step)
    if co.rank == 0:
        try:  # the checkpoint is committed: the pointer and pruning are conveniences that may fail
            _write_latest(run, final.name)
        except OSError as err:
            logger.warning("%s committed, but %s/%s could not be updated: %s", final.name, run, LATEST, err)
        if keep_last is not None:
            prune(run, keep_last)
    co.barrier()
    return final


def _check_written(co: Collective, error: BaseException | None, run: Path, tmp: Path, step: int) -> None:
    """Every process's part written? Otherwise delete the temporary folder and raise on every process."""
    if co.agree(error is None):
        return
    if co.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # frees the space; nothing reads a .tmp- folder anyway
    previous = find_latest(run)
    kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
    if error is None:
        raise CheckpointWriteError(f"checkpoint of step {step} not written: another process failed to write "
                                   f"its part; {kept}")
    # torch.save's write error ends with the useful line ("... file write failed"); an OSError has strerror
    reason = error.strerror if isinstance(error, OSError) and error.strerror else _first_line(error, last=True)
    where = f" ({error.filename})" if isinstance(error, OSError) and error.filename else ""
    raise CheckpointWriteError(f"checkpoint of step {step} not written into {tmp}{where}: {reason}; {kept}") from error


def _save_single(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, assets: tuple[Path, ...]) -> None:
    if not isinstance(model, MMaDAModel):
        raise ValueError(f"a single-process checkpoint expects an MMaDAModel, got {type(model).__name__}")
    save_model(model, folder / "model")  # adapters (if any) folded in: a usable release checkpoint
    lora = lora_config_of(model)
    if lora is not None:  # resuming needs the adapters themselves (the base stays frozen at `model.init`)
        save_adapter(model, lora, folder / ADAPTER_FILE)
    for asset in assets:
        shutil.copy2(asset, folder / "model" / asset.name)
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")


def _commit(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`. A step already committed is kept and the new copy dropped: replacing a folder
    cannot be atomic, and the trainer never saves a step twice, so this only guards against misuse."""
    if final.exists():
        logger.warning("%s already exists; keeping it and discarding the new copy", final)
        shutil.rmtree(tmp)
        return
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _write_latest(run: Path, name: str) -> None:
    tmp = run / f"{LATEST}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, run / LATEST)
    _fsync_dir(run)


def prune(run_dir: str | os.PathLike[str], keep_last: int) -> list[Path]:
    """Delete all but the `keep_last` newest complete checkpoints, and leftover temporary folders; return
    what was deleted."""
    if keep_last < 1:
        raise ValueError(f"`keep_last` must be >= 1, got {keep_last}")
    run = Path(run_dir)
    doomed = list_checkpoints(run)[:-keep_last]
    doomed += [p for p in run.iterdir() if p.name.startswith(TMP_PREFIX) and p.is_dir()]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def _write_json(path: Path, data: Any, *, what: str) -> None:
    try:
        text = json.dumps(data, indent=1)
    except TypeError as err:
        raise ValueError(f"{what} must be JSON-serialisable (dicts, lists, numbers, strings): {err}") from err
    path.write_text(text + "\n", encoding="utf-8")


def _fsync_tree(folder: Path) -> None:
    """Flush every file, then the folders, so the rename never publishes data still in the page cache."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        else:
            _fsync_dir(path)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory file descriptors (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


# ---- RNG states -------------------------------------------------------------------------------------
def _save_rng(folder: Path, rank: int, generators: Mapping[str, torch.Generator]) -> None:
    tensors = {"torch.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"torch.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    tensors.update({f"generator.{name}": g.get_state() for name, g in generators.items()})
    save_file(tensors, str(folder / f"rng-{rank}.safetensors"))
    version, state, gauss = random.getstate()
    # The global RandomState is an MT19937, whose legacy state is this tuple (the stubs allow a dict too).
    kind, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    host = {"python": [version, list(state), gauss],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    _write_json(folder / f"rng-{rank}.json", host, what="the RNG state")


def _load_rng(folder: Path, rank: int, generators: Mapping[str, torch.Generator]) -> None:
    file = folder / f"rng-{rank}.safetensors"
    try:
        tensors = load_file(str(file))
    except Exception as err:
        raise CheckpointError(f"{file} is missing or corrupt ({_first_line(err)}); resume from another "
                              "checkpoint") from None
    torch.set_rng_state(tensors["torch.cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    for name, gen in generators.items():
        key = f"generator.{name}"
        if key not in tensors:
            raise CheckpointError(f"{folder.name}: no state for generator {name!r} (saved: {sorted(tensors)})")
        gen.set_state(tensors[key])
    file = folder / f"rng-{rank}.json"
    host = _read_json(file)
    try:
        version, state, gauss = host["python"]
        random.setstate((version, tuple(state), gauss))
        kind, keys, pos, has_gauss, cached = host["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{file}: not an RNG state ({type(err).__name__}: {err})") from None


# ---- loading ----------------------------------------------------------------------------------------
def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    collective: Collective | None = None,
) -> Resumed:
    """Restore a checkpoint into the given objects, in place; return the step and the data cursor."""
    co = collective or Collective()
    folder = Path(path)
    if not _complete(folder):
        raise CheckpointError(f"{folder} is not a complete training checkpoint (no trainer.json)")
    meta = _read_json(folder / "trainer.json")
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int) or "world_size" not in meta:
        raise CheckpointError(f"{folder / 'trainer.json'}: not a trainer state (needs `step` and `world_size`)")
    if meta["world_size"] != co.world_size:
        raise CheckpointError(f"{folder.name} was written by {meta['world_size']} process(es); resume it with the "
                              f"same number (this run has {co.world_size})")
    if co.sharded:
        if co.load_sharded is None:
            raise ValueError("a multi-process resume needs `load_sharded`")
        co.load_sharded(model, optimizer, folder / "sharded")
    else:
        if (folder / ADAPTER_FILE).is_file():
            _load_adapter(model, folder / ADAPTER_FILE)
        else:
            _load_weights(model, folder / "model")
        if optimizer is not None:
            _load_optimizer(optimizer, folder / "optimizer.pt")
    if scheduler is not None:
        file = folder / "scheduler.json"
        try:
            scheduler.load_state_dict(_read_json(file))
        except (KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{file}: not a scheduler state ({type(err).__name__}: {err})") from None
    _load_rng(folder, co.rank, generators or {})
    data_state = _read_json(folder / f"data-{co.rank}.json")
    return Resumed(step=int(meta["step"]), path=folder, data_state=data_state, config=meta.get("config", {}))


def _read_json(file: Path) -> Any:
    """A checkpoint's JSON file; `CheckpointError` naming it when it is missing or corrupt."""
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing: the checkpoint is incomplete; resume from another one "
                              f"(delete {file.parent.name} to fall back to the one before)") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file} is corrupt ({err}); resume from another checkpoint "
                              f"(delete {file.parent.name} to fall back to the one before)") from None


def _load_optimizer(optimizer: torch.optim.Optimizer, file: Path) -> None:
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: the checkpoint is incomplete")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, garbage, or a pickle naming forbidden globals
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{file} is corrupt or not an optimizer state ({first}); resume from another "
                              f"checkpoint (delete {file.parent.name} to fall back to the one before)") from None
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{file} does not fit this model's optimizer ({err}); a checkpoint of a different "
                              "model or trainable set?") from None
    # Adam's state tensors are used as they are: one of another shape would only fail deep in the next step.
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, param_state in optimizer.state_dict()["state"].items():
        shape = tuple(params[index].shape)
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != shape:
                raise CheckpointError(f"{file}: state {key!r} of parameter #{index} has shape "
                                      f"{tuple(value.shape)} but the parameter has {shape} (a checkpoint of a "
                                      "different model size?)")


def _load_adapter(model: nn.Module, file: Path) -> None:
    try:
        load_adapter(model, file)
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"{file} cannot be loaded into this model ({_first_line(err)})") from None


def _first_line(err: BaseException, *, last: bool = False) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[-1] if last else lines[0]) if lines else type(err).__name__


def _load_weights(model: nn.Module, folder: Path) -> None:
    """Copy release-format weights into an existing model (keeping its device, dtype and wrappers).

    A checkpoint of another model is refused naming the first parameter that is missing, extra or of
    another shape (with both shapes), before anything is copied."""
    device = next(model.parameters()).device
    state = {}
    try:
        for file, name, tensor in iter_tensors(weight_files(folder), device):
            ours = official_to_ours(name)
            if ours is None:
                raise CheckpointError(f"{file}: unexpected tensor {name!r}")
            state[ours] = tensor
    except CheckpointError:
        raise  # names the file already
    except Exception as err:  # a truncated or garbage safetensors file
        raise CheckpointError(f"{folder}: the weights cannot be read ({_first_line(err)}); resume from another "
                              "checkpoint") from None
    expected = model.state_dict()
    for name, value in expected.items():
        if name not in state:
            raise CheckpointError(f"{folder}: parameter {name!r} of this model is not in the checkpoint (a "
                                  "checkpoint of a different model size?)")
        if tuple(state[name].shape) != tuple(value.shape):
            raise CheckpointError(f"{folder}: parameter {name!r} has shape {tuple(state[name].shape)} in the "
                                  f"checkpoint but {tuple(value.shape)} in this model (a checkpoint of a "
                                  "different model size?)")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise CheckpointError(f"{folder}: the checkpoint has parameter {extra[0]!r}, which this model lacks "
                              f"({len(extra)} in all; a checkpoint of a different model size?)")
    model.load_state_dict(state, strict=True)
