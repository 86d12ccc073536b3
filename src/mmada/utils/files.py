"""Resolve a local folder or a Hugging Face hub repo id to a local folder.

Paths and hub ids are told apart before anything touches the network, so that a typo in a local path
never becomes a download of somebody else's repository:

* a name that exists on disk is that folder; a built-in name (`mmada-tiny`) is the checkpoint in the package;
* a name that looks like a path (absolute, starts with `.` or `~`, holds a backslash or more than one `/`,
  or whose first component is a local folder, as `runs/typo` next to a `runs/`) and does not exist is a
  `FolderNotFoundError` ("no such folder"), never a hub id;
* anything else must be shaped like a hub id, `owner/name`, and is fetched with
  `huggingface_hub.snapshot_download` (or taken from the hub cache). Offline mode (`HF_HUB_OFFLINE=1`, which
  `mmada --offline` sets) reads the cache only and makes no network attempt.

Tests and this project's CI use local folders only.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
BUILTIN_MODELS = {"mmada-tiny": PACKAGE_ROOT / "assets" / "mmada-tiny"}
"""Checkpoints shipped inside the package, usable wherever a folder or hub id is accepted."""
DEFAULT_MODEL = "mmada-tiny"
OFFLINE_ENV = "HF_HUB_OFFLINE"
"""The environment variable huggingface_hub reads for offline mode; `mmada --offline` sets it."""
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")  # the hub's rule: letters, digits, - _ .


class CheckpointError(ValueError):
    """A checkpoint or weight file cannot be used; the message names the file and the problem."""


class FolderNotFoundError(CheckpointError, FileNotFoundError):
    """A local folder that does not exist (a `FileNotFoundError` and, for older callers, a `CheckpointError`)."""


def offline() -> bool:
    """Whether hub access is off: `HF_HUB_OFFLINE` set to 1 / true / yes / on now, or when huggingface_hub was
    imported (it reads the variable once, into `huggingface_hub.constants.HF_HUB_OFFLINE`)."""
    constants = sys.modules.get("huggingface_hub.constants")
    return (os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}
            or bool(getattr(constants, "HF_HUB_OFFLINE", False)))


def looks_like_path(name: str) -> bool:
    """True for names that can only mean a local path (see the module docstring); `owner/name` is not one
    unless a local folder `owner` exists."""
    if name.startswith((".", "~", "/")) or "\\" in name or os.path.isabs(name) or name.count("/") > 1:
        return True
    head, sep, _ = name.partition("/")
    return bool(sep) and Path(head).is_dir()


def is_repo_id(name: str) -> bool:
    """Shaped like a hub repository id `owner/name` (and not like a path)."""
    return bool(_REPO_ID.fullmatch(name)) and ".." not in name and "--" not in name and not looks_like_path(name)


def resolve_folder(path_or_id: str | os.PathLike[str], *, allow_patterns: Sequence[str] | None = None) -> Path:
    """Return a local folder for `path_or_id`.

    A path that exists is used as it is; a built-in name (`mmada-tiny`) is the checkpoint shipped in
    the package; a hub id `owner/name` with no local folder of that name is downloaded (or taken from the
    cache) with `huggingface_hub.snapshot_download`, from the cache only when offline (`HF_HUB_OFFLINE=1`).

    Raises:
        FolderNotFoundError: a path-like name that does not exist, or a name that is neither a folder nor
            shaped like a hub id (also a `FileNotFoundError` and a `CheckpointError`).
        CheckpointError: a file instead of a folder; a hub id that cannot be fetched (offline and not cached,
            no network, unknown repository).
    """
    name = str(path_or_id)
    if name in BUILTIN_MODELS:
        builtin = BUILTIN_MODELS[name]
        if not (builtin / "config.json").is_file():
            raise CheckpointError(f"the built-in model {name!r} is missing from this installation ({builtin})")
        return builtin
    path = Path(os.path.expanduser(name))
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; pass the folder that holds config.json and the weights")
        return path
    if not name.strip():
        raise FolderNotFoundError("no folder given (an empty name)")
    if not is_repo_id(name):
        why = "a path is never looked up on the hub" if looks_like_path(name) else "not a hub id like 'owner/name'"
        raise FolderNotFoundError(f"no such folder: {name} (it does not exist; {why})")
    return _download(name, allow_patterns)


def _download(repo_id: str, allow_patterns: Sequence[str] | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as err:  # pragma: no cover - huggingface_hub is a dependency
        raise ImportError("loading from the hub needs huggingface_hub: pip install huggingface_hub") from err
    local_only = offline()
    try:
        return Path(snapshot_download(repo_id=repo_id, allow_patterns=list(allow_patterns) if allow_patterns else None,
                                      local_files_only=local_only))
    except LocalEntryNotFoundError as err:
        why = "offline mode is on (--offline / HF_HUB_OFFLINE=1)" if local_only else "no network connection"
        raise CheckpointError(
            f"could not download {repo_id!r} from the Hugging Face hub: {why} and no cached copy (there is no "
            f"local folder {repo_id!r} either); download it on a machine with network access and pass the local "
            "folder instead"
        ) from err
    except (HfHubHTTPError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"could not download {repo_id!r} from the Hugging Face hub: {first}") from err
