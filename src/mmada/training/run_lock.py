"""One writer per run folder: `run_dir/.lock` names the process that trains into it.

Two runs writing the same folder would write every metric twice, race on `step-N/` and delete each
other's temporary checkpoint folders. So the main process of a run takes the lock before it writes
anything, and gives it back when the run ends (normally, by an error or by SIGTERM/SIGINT):

    .lock    {"pid": 4242, "host": "node-3", "token": "9f...", "started": "2026-12-02T16:18:09Z",
              "identity": "<boot id>:<process start time>"}

* The lock is created atomically and complete: its text goes into a private temporary file that is then
  hard-linked to `.lock` (`os.link` fails if `.lock` exists), so no reader ever sees a half-written lock.
* A second run on the folder is refused with `RunLockedError`, naming the owner's PID and host.
* A lock whose process is gone (same host, and the PID is not alive, or alive but started at another time
  or boot than the lock records: a run killed with SIGKILL, a rebooted machine, a restarted container whose
  new process got the same PID) is stale: it is taken over, with a warning. A lock from another host cannot
  be checked and is always refused; the message says how to remove it by hand.
* Releasing removes the lock only if it still holds this run's random token, so a run never deletes a lock
  that another run has taken over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunLockedError(ValueError):
    """Another live run owns the run folder (a refused setting, so a `ValueError`: choose another folder)."""


class RunFolderError(PermissionError):
    """The run folder cannot be created or written; the message names it and the reason."""


_HELD: set[str] = set()
"""Tokens of the locks this process holds: a lock naming our own PID but another token is a leftover of an
earlier process that had the same PID (a restarted container), not a live owner."""


def _identity(pid: int) -> str | None:
    """The boot and start time of process `pid` (Linux /proc), which a reused PID does not share; else None."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
        return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"  # field 22, starttime; after the "(comm)"
    except (OSError, IndexError):
        return None


def _alive(owner: dict[str, Any]) -> bool:
    pid = int(owner["pid"])
    if pid == os.getpid():
        return owner.get("token") in _HELD
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        pass
    recorded, now = owner.get("identity"), _identity(pid)
    return recorded is None or now is None or recorded == now  # a different start: the PID was reused


def _describe(owner: dict[str, Any]) -> str:
    return f"PID {owner.get('pid')} on {owner.get('host')}, started {owner.get('started', '?')}"


class RunLock:
    """The lock of one run folder; `acquire()` then `release()` (or use it as a context manager)."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.token = secrets.token_hex(8)
        self.held = False

    def acquire(self) -> RunLock:
        """Take the lock (creating the run folder); raise `RunLockedError` if a live run holds it, or
        `RunFolderError` if the folder cannot be written."""
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "token": self.token,
                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "identity": _identity(os.getpid())}
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.run_dir / f"{LOCK_NAME}.{self.token}.tmp"
            tmp.write_text(json.dumps(owner) + "\n", encoding="utf-8")
            try:
                for _ in range(3):  # a stale lock taken over may be re-taken by a concurrent run: retry
                    if self._link(tmp):
                        self.held = True
                        _HELD.add(self.token)
                        return self
                    self._take_over_if_stale()
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as err:
            raise RunFolderError(f"cannot write to the run folder {self.run_dir}: "
                                 f"{err.strerror or err} (`log.run_dir` / --out)") from None
        raise RunLockedError(f"run folder {self.run_dir} is locked by a run that keeps changing hands ({self.path})")

    def _link(self, tmp: Path) -> bool:
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: an exclusive create is the next best thing
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(tmp.read_text(encoding="utf-8"))
        return True

    def _take_over_if_stale(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return  # released meanwhile: try again
        try:
            owner = json.loads(text)
            int(owner["pid"])
            host = str(owner["host"])
        except (ValueError, KeyError, TypeError):
            raise RunLockedError(f"run folder {self.run_dir} has an unreadable lock file {self.path}; if no run "
                                 "is using this folder, delete that file") from None
        if host != socket.gethostname():
            raise RunLockedError(f"run folder {self.run_dir} is in use by {_describe(owner)} (another machine: "
                                 f"if that run is gone, delete {self.path})")
        if _alive(owner):
            raise RunLockedError(f"run folder {self.run_dir} is in use by {_describe(owner)}; wait for it, stop "
                                 "it, or choose another --out")
        logger.warning("taking over the stale lock of %s: %s is no longer running", self.run_dir, _describe(owner))
        # Move it aside rather than delete it, and check what was moved: a run that took the stale lock over
        # between our read and this rename has written a new lock, which goes back where it was.
        aside = self.run_dir / f"{LOCK_NAME}.stale.{self.token}"
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        if aside.read_text(encoding="utf-8") != text:
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if this run still holds it."""
        if not self.held:
            return
        self.held = False
        _HELD.discard(self.token)
        try:
            if json.loads(self.path.read_text(encoding="utf-8")).get("token") == self.token:
                self.path.unlink()
            else:
                logger.warning("the lock %s was taken over by another run; leaving it", self.path)
        except (OSError, ValueError) as err:
            logger.warning("could not release the lock %s: %s", self.path, err)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire_on_main(lock: RunLock | None, agree: Callable[[bool], bool] = bool) -> None:
    """Take `lock` on the main process (the others pass None); every process raises if that failed, so no
    rank goes on alone into collectives. `agree(ok)` and-s `ok` over the processes (`distributed.agree`)."""
    error: Exception | None = None
    if lock is not None:
        try:
            lock.acquire()
        except (RunLockedError, RunFolderError) as err:
            error = err
    if not agree(error is None):
        raise error or RunLockedError("the main process could not take the run folder's lock (see its error)")

