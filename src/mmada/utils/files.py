"""Resolve a local folder or a Hugging Face hub repo id to a local folder.

Tests and this project's CI use local folders only; hub ids go through `huggingface_hub` and fail
with a readable message when the network (or the repo) is not reachable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
BUILTIN_MODELS = {"mmada-tiny": PACKAGE_ROOT / "assets" / "mmada-tiny"}
"""Checkpoints shipped inside the package, usable wherever a folder or hub id is accepted."""
DEFAULT_MODEL = "mmada-tiny"


class CheckpointError(ValueError):
    """A checkpoint or weight file cannot be used; the message names the file and the problem."""


def _looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_folder(path_or_id: str | os.PathLike[str], *, allow_patterns: Sequence[str] | None = None) -> Path:
    """Return a local folder for `path_or_id`.

    A path that exists is used as it is; a built-in name (`mmada-tiny`) is the checkpoint shipped in
    the package. Something shaped like `owner/name` that is not a local path is downloaded (or taken
    from the cache) with `huggingface_hub.snapshot_download`.
    """
    if str(path_or_id) in BUILTIN_MODELS:
        builtin = BUILTIN_MODELS[str(path_or_id)]
        if not (builtin / "config.json").is_file():
            raise CheckpointError(f"the built-in model {path_or_id!r} is missing from this installation ({builtin})")
        return builtin
    path = Path(os.path.expanduser(str(path_or_id)))
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; pass the folder that holds config.json and the weights")
        return path
    name = str(path_or_id)
    if not _looks_like_repo_id(name):
        raise CheckpointError(f"checkpoint folder {name!r} does not exist (and is not a hub id like 'owner/name')")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as err:  # pragma: no cover - huggingface_hub is a dependency
        raise CheckpointError("loading from the hub needs `huggingface_hub` (pip install huggingface_hub)") from err
    try:
        return Path(snapshot_download(repo_id=name, allow_patterns=list(allow_patterns) if allow_patterns else None))
    except LocalEntryNotFoundError as err:
        raise CheckpointError(
            f"could not download {name!r} from the Hugging Face hub: no network connection and no cached copy. "
            "Download it on a machine with network access and pass the local folder instead."
        ) from err
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise CheckpointError(f"could not download {name!r} from the Hugging Face hub: {err}") from err
