"""Logging helpers: one logger per module, rank-0 only output in distributed runs, and errors as one line
for the command line (`describe_error`)."""

from __future__ import annotations

import errno
import logging
import os


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


class RankZeroFilter(logging.Filter):
    """Drop records on every process but global rank 0 (torchrun sets RANK)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return os.environ.get("RANK", "0") == "0"


def setup_logging(level: int = logging.INFO) -> None:
    """Configure the root logger for entry points (the CLI). Library code never calls this."""
    handler = logging.StreamHandler()
    handler.addFilter(RankZeroFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


# ---- errors as one line ------------------------------------------------------------------------------
PIP_NAMES = {"PIL": "pillow", "yaml": "pyyaml", "pyarrow": "'mmada[data]'", "tensorboard": "tensorboard",
             "torch.utils.tensorboard": "tensorboard", "wandb": "wandb", "matplotlib": "'mmada[plots]'",
             "sklearn": "scikit-learn", "cv2": "opencv-python"}
"""Import name -> what to `pip install` for it, where the two differ or an extra of ours brings it."""
_FILE_LOCALS = ("path", "file", "filename", "fname", "source", "config_path")
USER_ERROR, INTERNAL_ERROR = 2, 1
"""Exit codes: a problem the message names (bad input, missing file, full disk) / anything unexpected."""


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.strip().splitlines() if line.strip())


def _file_in_traceback(err: BaseException) -> str | None:
    """The innermost frame's local `path` (or `file`, ...) naming an existing file: the file being read."""
    tb, found = err.__traceback__, None
    while tb is not None:
        for name in _FILE_LOCALS:
            value = tb.tb_frame.f_locals.get(name)
            if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
                found = os.fspath(value)
                break
        tb = tb.tb_next
    return str(found) if found is not None else None


def _from_pil(err: BaseException) -> bool:
    tb = err.__traceback__
    while tb is not None:
        if f"{os.sep}PIL{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return type(err).__module__.startswith("PIL")


def describe_error(err: BaseException) -> tuple[str, int]:
    """A one-line message naming the problem, and the exit code, for an error that reached the CLI.

    Errors whose message already names the problem (ValueError and its CheckpointError, OS errors with
    their file, a missing optional package with its `pip install`) give exit code 2; anything else is
    reported as unexpected with its type, exit code 1 (`--debug` shows the traceback).
    """
    if isinstance(err, UnicodeDecodeError):
        where = _file_in_traceback(err) or "a file"
        byte = err.object[err.start : err.start + 1].hex() if isinstance(err.object, bytes) else "?"
        return f"{where} is not UTF-8 text (byte 0x{byte} at offset {err.start})", USER_ERROR
    if isinstance(err, UnicodeEncodeError):  # command-line text with undecodable bytes (surrogate escapes)
        return f"text is not valid UTF-8 (undecodable byte at position {err.start})", USER_ERROR
    if isinstance(err, ImportError):
        message = str(err)
        if "pip install" not in message:
            name = (err.name or message.rsplit(" ", 1)[-1].strip("'\"")).split(".")[0]
            message = f"the optional package {name!r} is not installed: pip install {PIP_NAMES.get(name, name)}"
        return _one_line(message), USER_ERROR
    if isinstance(err, ValueError):  # also CheckpointError, FolderNotFoundError, json and pydantic errors
        return _one_line(str(err)) or type(err).__name__, USER_ERROR
    if isinstance(err, OSError):
        if err.errno == errno.ENOSPC:
            where = f" while writing {err.filename}" if err.filename else ""
            return f"no space left on device{where}", USER_ERROR
        if err.filename is not None and err.strerror:
            target = f"{err.filename} -> {err.filename2}" if err.filename2 else str(err.filename)
            return f"{err.strerror.lower()}: {target}", USER_ERROR
        return _one_line(str(err)) or type(err).__name__, USER_ERROR
    if isinstance(err, MemoryError):
        return "out of memory (try a smaller batch, length or model)", USER_ERROR
    if _from_pil(err):  # DecompressionBombError, SyntaxError("broken PNG file"), ...
        image = _file_in_traceback(err) or "an image"
        return f"{image} is not a readable image: {_one_line(str(err))}", USER_ERROR
    if type(err).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch here
        return f"out of memory: {_one_line(str(err)).split(';')[0]}", USER_ERROR
    return (f"unexpected {type(err).__name__}: {_one_line(str(err))} (run with --debug for the traceback)",
            INTERNAL_ERROR)
