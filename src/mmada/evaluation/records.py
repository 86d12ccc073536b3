"""Evaluation records: every score written together with everything that produced it.

The most common complaint about diffusion-LM numbers is that nobody can reproduce them (Gen-Verse/MMaDA
#40: GSM8K 73.4 reported, 40.6 measured; #29, #37: steps, block length and resolution never stated;
Fast-dLLM #39: accuracy changing with the batch size). So an evaluation run is a folder:

    OUT/results.json   scores + sampler settings, seed, batch size, dtype, device, model path and hash,
                       data path and hash, package version and git commit, wall time, tokens/s, NFE
    OUT/outputs.jsonl  one line per item: its input, the model's output, what was extracted, the verdict

`Meter` measures a run from the outside (model calls by a forward hook, wall time), so the runners
stay plain loops and the numbers mean the same for every runner: NFE = model forward calls per
sampler call (one batched forward counts once, as in Fast-dLLM's tables), tokens/s = generated answer
positions decoded per second of the whole run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import torch

from .. import __version__
from ..sampling import Overrides
from ..utils.config import to_dict

RESULTS_FILE = "results.json"
OUTPUTS_FILE = "outputs.jsonl"
FORMAT = "mmada-eval/1"
Scores = dict[str, dict[str, float]]
"""{task: {metric or group: value}}, the same shape for every runner (the world suite's `Results`)."""
_HASH_CHUNK = 1 << 22
_T = TypeVar("_T")


@dataclass
class Meter:
    """What a run cost: model calls, sampler calls, generated tokens and images, wall seconds."""

    model_calls: int = 0
    sampler_calls: int = 0
    tokens: int = 0
    images: int = 0
    seconds: float = 0.0

    @property
    def nfe(self) -> float:
        """Model forward calls per sampler call (0 when nothing was sampled)."""
        return self.model_calls / self.sampler_calls if self.sampler_calls else 0.0

    def add_text(self, generated: Iterable[torch.Tensor], mask_id: int) -> None:
        """Count one sampler call and its decoded answer positions (still-masked ones are not counted)."""
        self.sampler_calls += 1
        self.tokens += sum(int((row != mask_id).sum()) for row in generated)

    def add_images(self, count: int) -> None:
        self.sampler_calls += 1
        self.images += count

    def summary(self) -> dict[str, float | int]:
        per_second = self.seconds if self.seconds > 0 else math.inf
        return {
            "wall_seconds": round(self.seconds, 3),
            "model_calls": self.model_calls,
            "sampler_calls": self.sampler_calls,
            "nfe": round(self.nfe, 3),
            "generated_tokens": self.tokens,
            "tokens_per_second": round(self.tokens / per_second, 3),
            "images": self.images,
            "images_per_second": round(self.images / per_second, 4),
        }


@contextmanager
def metered(model: torch.nn.Module, meter: Meter) -> Iterator[Meter]:
    """Count `model`'s forward calls into `meter` and time the block."""

    def count(*_: Any) -> None:
        meter.model_calls += 1

    handle = model.register_forward_hook(count)
    start = time.perf_counter()
    try:
        yield meter
    finally:
        meter.seconds += time.perf_counter() - start
        handle.remove()


@dataclass(frozen=True)
class Run:
    """What a runner returns: scores, one record per item, and the settings it sampled with."""

    task: str
    scores: Scores
    outputs: list[dict[str, Any]]
    settings: dict[str, Any]
    """The runner's own settings (data path, shots, thinking, ...) and the full sampler settings."""
    meter: Meter = field(default_factory=Meter)


def batches(items: Sequence[_T], size: int) -> list[Sequence[_T]]:
    """`items` in consecutive batches of at most `size` (one sampler call each; the last may be shorter)."""
    return [items[start : start + size] for start in range(0, len(items), size)]


def check_run_settings(limit: int | None, batch_size: int, name: str, overrides: Any, kind: type) -> None:
    """The checks every runner config makes: `limit` None or >= 1, `batch_size` >= 1, `name` an Overrides of `kind`."""
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise ValueError(f"`limit` must be >= 1 or None, got {limit}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    if not isinstance(overrides, Overrides) or overrides.kind is not kind:
        raise ValueError(f"`{name}` must be Overrides({kind.__name__}, ...), got {overrides!r}")


def read_jsonl(path: str | os.PathLike[str], what: str, parse: Callable[[Any, str, int, int], _T], *,
               limit: int | None = None) -> list[_T]:
    """The first `limit` records of a jsonl, each `parse(object, line text, line number, index)`d.

    Blank lines are skipped. A line that is not JSON, or that `parse` refuses with a ValueError, is
    reported as `file:line: problem`; so is a file without records. Raises FileNotFoundError naming `what`.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{what} file {str(file)!r} does not exist")
    records: list[_T] = []
    with file.open(encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if limit is not None and len(records) >= limit:
                break
            if not text.strip():
                continue
            try:
                records.append(parse(json.loads(text), text.strip(), number, len(records)))
            except ValueError as err:  # json.JSONDecodeError is a ValueError
                raise ValueError(f"{file}:{number}: {err}") from None
    if not records:
        raise ValueError(f"{file} holds no {what} records")
    return records


def call_generator(device: torch.device, seed: int, index: int) -> torch.Generator:
    """The generator of one sampler call (batch or prompt `index`) of a run seeded `seed`.

    Seeding per call, not once per run, makes a call's draws independent of the calls before it (a
    `--limit` run reproduces the start of a full one). Batched samplers share one generator across the
    rows of a call, so sampled outputs still depend on how rows are batched; exact (greedy) ones do not.
    """
    return torch.Generator(device).manual_seed(seed * 100003 + index)


# ---- provenance --------------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def folder_sha256(folder: str | os.PathLike[str], patterns: Sequence[str] = ("*.safetensors", "config.json")) -> str:
    """One hash of a checkpoint's weights and config: sha256 over (name, file sha256) in name order.

    Reads every weight file once (an 8B checkpoint: ~16 GB, about a minute from a fast disk).
    """
    root = Path(folder)
    files = sorted({p for pattern in patterns for p in root.glob(pattern) if p.is_file()})
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def git_commit(where: str | os.PathLike[str] | None = None) -> str | None:
    """The commit of the git work tree holding the package (with "+dirty" for local changes), or None
    for an installed wheel."""
    cwd = Path(where) if where is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def environment(model_path: str | os.PathLike[str] | None, *, model: torch.nn.Module, hash_model: bool = True,
                ) -> dict[str, Any]:
    """Model path and hash, dtype, device, package / torch versions, git commit, host, time."""
    folder = Path(model_path) if model_path is not None else None
    parameter = next(model.parameters(), None)
    return {
        "model": {
            "path": None if folder is None else str(folder),
            "sha256": folder_sha256(folder) if folder is not None and folder.is_dir() and hash_model else None,
        },
        "dtype": None if parameter is None else str(parameter.dtype).removeprefix("torch."),
        "device": None if parameter is None else str(parameter.device),
        "package": {"name": "mmada", "version": __version__, "git_commit": git_commit()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def data_record(path: str | os.PathLike[str], items: int) -> dict[str, Any]:
    """Where the data came from and which bytes it was: path, sha256, number of items used."""
    return {"path": str(path), "sha256": file_sha256(path), "items": items}


# ---- writing and reading -----------------------------------------------------------------------
def record(run: Run, env: Mapping[str, Any], *, seed: int, batch_size: int) -> dict[str, Any]:
    """The results.json mapping of a finished run."""
    return {
        "format": FORMAT,
        "task": run.task,
        "scores": run.scores,
        "settings": jsonable(run.settings),
        "seed": seed,
        "batch_size": batch_size,
        **env,
        **run.meter.summary(),
        "outputs": OUTPUTS_FILE,
    }


def jsonable(value: Any) -> Any:
    """Settings objects (frozen dataclasses), paths and tuples as plain JSON values."""
    if hasattr(value, "__dataclass_fields__"):
        return to_dict(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_run(out: str | os.PathLike[str], result: Mapping[str, Any], outputs: Iterable[Mapping[str, Any]]) -> Path:
    """Write OUT/outputs.jsonl then OUT/results.json (each to a temporary name, then renamed: a full
    disk or a kill never leaves a half-written results.json that looks finished)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(jsonable(item), ensure_ascii=False) + "\n" for item in outputs)
    _atomic_write(folder / OUTPUTS_FILE, lines)
    _atomic_write(folder / RESULTS_FILE, json.dumps(jsonable(result), indent=2, ensure_ascii=False) + "\n")
    return folder / RESULTS_FILE


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A results.json (or a run folder holding one), checked to be one of ours."""
    file = Path(path)
    if file.is_dir():
        file = file / RESULTS_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{file}: no such results file") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{file}: not a JSON results file ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("scores"), dict):
        raise ValueError(f"{file}: not an mmada evaluation record (expected \"format\": \"{FORMAT}\" and scores)")
    return data
