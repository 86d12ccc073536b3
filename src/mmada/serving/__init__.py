"""An OpenAI-compatible server for MMaDA pipelines, with micro-batching, streamed denoising and a web page.

`create_app(pipe, ServeConfig(...))` builds the FastAPI app (`app.py`); `mmada serve` runs it with uvicorn.
The app needs the `serve` extra (`pip install 'mmada[serve]'`: fastapi, uvicorn, python-multipart,
prometheus_client); it is imported on first use, so `ServeConfig` and the CLI work without it. See
docs/serving.md.
"""

from __future__ import annotations

from typing import Any

from .config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
