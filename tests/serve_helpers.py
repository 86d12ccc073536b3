"""A live `mmada serve` app for the serving tests: uvicorn on a free loopback port, in a thread.

`live_server(pipe, config)` is a context manager yielding the base URL; the model is the built-in
MMaDA-tiny (`builtin_pipe()`, loaded once per process). Import with `from serve_helpers import ...`.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import io
import itertools
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import torch
import uvicorn
from PIL import Image

from mmada import MMaDAPipeline
from mmada.serving import ServeConfig, create_app
from mmada.world import iter_text, iter_vqa

MODEL = "mmada-tiny"


@functools.cache
def builtin_pipe() -> MMaDAPipeline:
    torch.set_num_threads(1)  # the tiny model gains nothing from threads (see mmada.cli SMALL_MODEL)
    return MMaDAPipeline.from_pretrained(MODEL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(pipe: MMaDAPipeline, config: ServeConfig | None = None) -> Iterator[str]:
    """Serve `pipe` on 127.0.0.1 until the block ends; yields the base URL (no trailing slash)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(pipe, config or ServeConfig()), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def questions(count: int, seed: int = 3) -> list[str]:
    """World arithmetic questions the built-in model answers with a few tokens."""
    return [e.question for e in itertools.islice(iter_text("validation", seed=seed), count)]


def vqa_example(seed: int = 1):
    return next(iter_vqa("validation", seed=seed))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def decode_png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    image.load()
    return image


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def http(method: str, url: str, *, json_body: Any = None, data: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 60) -> Reply:
    """One raw HTTP request (stdlib only: hostile bodies need no client library's help)."""
    headers = dict(headers or {})
    if json_body is not None:
        data = json.dumps(json_body).encode()
        headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, {k.lower(): v for k, v in response.headers.items()}, response.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())
