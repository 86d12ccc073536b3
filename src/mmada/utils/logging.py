"""Logging helpers: one logger per module, rank-0 only output in distributed runs."""

from __future__ import annotations

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
