"""Where training metrics go: a `MetricsSink` protocol, a jsonl file (always), TensorBoard and W&B (optional).

Inference never imports this module; the optional packages are imported only when a run asks for them, and
`check_sinks` (called before the model is built) turns a missing one into a `MissingPackageError` with the
`pip install` line, instead of a traceback after the model has loaded.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .config import LogConfig

logger = logging.getLogger(__name__)


class MissingPackageError(ImportError):
    """A metrics sink is enabled but its package is not installed; the message has the `pip install` line."""


_OPTIONAL = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}
"""`LogConfig` switch -> (module to import, package to pip install)."""


def _require(switch: str) -> Any:
    module, package = _OPTIONAL[switch]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingPackageError(f"`log.{switch}` is on but the `{package}` package is not installed: "
                                  f"pip install {package} (or set log.{switch}=false)", name=package) from None


def check_sinks(log: LogConfig) -> None:
    """Raise `MissingPackageError` now if an enabled sink's package is missing."""
    for switch in _OPTIONAL:
        if getattr(log, switch):
            _require(switch)


class MetricsSink(Protocol):
    def log(self, metrics: Mapping[str, float], step: int) -> None: ...
    def close(self) -> None: ...


class JsonlSink:
    """run_dir/metrics.jsonl, one `{"step": n, ...}` per line (always on). On resume, the records a stopped run
    wrote after its last checkpoint are dropped, so the file reads as one uninterrupted run."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        if resume_step is not None and path.is_file():
            kept = []
            for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    if int(json.loads(line)["step"]) <= resume_step:
                        kept.append(line + "\n")
                except (ValueError, KeyError, TypeError):  # a line cut short by a killed run
                    logger.warning("%s:%d is not a metrics record; dropped: %.60r", path, number, line)
            path.with_suffix(".tmp").write_text("".join(kept), encoding="utf-8")
            path.with_suffix(".tmp").replace(path)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self._file.write(json.dumps({"step": step, **metrics}) + "\n")  # repr floats: exact round trip
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True)
class CallbackSink:
    """A `MetricsSink` from two callables (the TensorBoard and W&B adapters)."""

    log: Callable[[Mapping[str, float], int], Any]
    close: Callable[[], Any]


def open_sinks(log: LogConfig, run_dir: Path, config: Mapping[str, Any], resume_step: int | None) -> list[Any]:
    """jsonl always; TensorBoard and W&B when asked (their packages are imported only then)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    sinks: list[Any] = [JsonlSink(run_dir / "metrics.jsonl", resume_step)]
    if log.tensorboard:
        tb = _require("tensorboard").SummaryWriter(str(run_dir / "tensorboard"))

        def add_scalars(metrics: Mapping[str, float], step: int) -> None:
            for key, value in metrics.items():
                tb.add_scalar(key, value, step)

        sinks.append(CallbackSink(add_scalars, tb.close))
    if log.wandb:
        wandb = _require("wandb")
        run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]  # the same W&B run on resume
        run = wandb.init(project=log.wandb_project, dir=str(run_dir), config=dict(config), id=run_id, resume="allow")
        sinks.append(CallbackSink(lambda m, s: run.log(dict(m), step=s), run.finish))
    return sinks
