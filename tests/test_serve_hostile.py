"""Malformed and hostile requests: each gets its 4xx, OpenAI's error JSON and a message naming the problem,
and the server keeps serving (checked after all of them, and between kinds)."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import struct
import zlib
from urllib.parse import urlsplit

import pytest
from PIL import Image

from mmada.serving import ServeConfig
from serve_helpers import MODEL, builtin_pipe, data_url, http, live_server, png_bytes

LIMIT = 1024 * 1024  # the test server's body limit
Q = "what is 7 + 5?"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int = 12_000) -> bytes:
    """A valid 1-bit PNG of side x side pixels (144 M for 12,000) that compresses to a few kilobytes."""
    raw = (b"\x00" + b"\x00" * ((side + 7) // 8)) * side
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw, 9))
            + _png_chunk(b"IEND", b""))


def multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, dict[str, str]]:
    boundary = "----mmada-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{k}.png"\r\n'
              f"Content-Type: image/png\r\n\r\n".encode() + v + b"\r\n" for k, v in files.items()]
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), headers


RED = Image.new("RGB", (32, 32), (200, 30, 30))
OPAQUE = Image.new("RGBA", (32, 32), (0, 0, 0, 255))
HOLED = OPAQUE.copy()
HOLED.paste((0, 0, 0, 0), (0, 0, 16, 32))
CHAT = "/v1/chat/completions"
IMAGES = "/v1/images/generations"


def chat(**extra):
    return {"model": MODEL, "messages": [{"role": "user", "content": Q}], **extra}


def vision(*urls):
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return {"model": MODEL, "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": "is it red?"}]}]}


# (id, method, path, body: dict = JSON | bytes = raw | ("form", fields, files), status, message pattern, param)
CASES = [
    ("bad-json", "POST", CHAT, b'{"model": "mmada-tiny", "messages": [', 400, "not valid JSON", None),
    ("json-array", "POST", CHAT, b"[1, 2, 3]", 400, "JSON object", None),
    ("invalid-utf8", "POST", CHAT, b'{"messages": "\xff\xfe"}', 400, "JSON", None),
    ("deep-nesting", "POST", CHAT, b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "JSON|messages", None),
    ("missing-messages", "POST", CHAT, {"model": MODEL}, 400, "Field required", "messages"),
    ("empty-messages", "POST", CHAT, {"model": MODEL, "messages": []}, 400, "at least 1", "messages"),
    ("messages-string", "POST", CHAT, {"messages": "hi"}, 400, "valid list", "messages"),
    ("bad-role", "POST", CHAT, {"messages": [{"role": "robot", "content": Q}]}, 400, "system|user", "messages[0].role"),
    ("content-number", "POST", CHAT, {"messages": [{"role": "user", "content": 5}]}, 400, "valid string",
     "messages[0].content"),
    ("no-user-message", "POST", CHAT, {"messages": [{"role": "system", "content": "be nice"}]}, 400, "user message",
     "messages"),
    ("max-tokens-string", "POST", CHAT, chat(max_tokens="lots"), 400, "valid integer", "max_tokens"),
    ("max-tokens-huge", "POST", CHAT, chat(max_tokens=10**12), 400, "<= 512", "max_tokens"),
    ("max-tokens-negative", "POST", CHAT, chat(max_tokens=-5), 400, "greater than or equal to 1", "max_tokens"),
    ("max-tokens-float", "POST", CHAT, chat(max_tokens=1e308), 400, "valid integer", "max_tokens"),
    ("temperature-high", "POST", CHAT, chat(temperature=5), 400, "less than or equal to 2", "temperature"),
    ("steps-negative", "POST", CHAT, chat(steps=-3), 400, "greater than or equal to 1", "steps"),
    ("steps-huge", "POST", CHAT, chat(steps=10**9), 400, "<= 512", "steps"),
    ("steps-over-tokens", "POST", CHAT, chat(max_tokens=32, steps=64), 400, r"`steps` \(64\) must be <=", "steps"),
    ("block-not-dividing", "POST", CHAT, chat(max_tokens=64, block_length=32, steps=3), 400, "divisible", "steps"),
    ("n-zero", "POST", CHAT, chat(n=0), 400, "greater than or equal to 1", "n"),
    ("n-huge", "POST", CHAT, chat(n=1000), 400, "<= 4", "n"),
    ("seed-negative", "POST", CHAT, chat(seed=-1), 400, "greater than or equal to 0", "seed"),
    ("seed-huge", "POST", CHAT, chat(seed=2**70), 400, "less than or equal", "seed"),
    ("unknown-field", "POST", CHAT, chat(frobnicate=True), 400, "Extra inputs", "frobnicate"),
    ("too-many-stops", "POST", CHAT, chat(stop=[str(i) for i in range(10)]), 400, "at most 4", "stop"),
    ("bad-preset", "POST", CHAT, chat(preset="ludicrous"), 400, "exact", "preset"),
    ("unknown-model", "POST", CHAT, chat(model="gpt-5"), 404, "does not exist", "model"),
    ("context-overflow", "POST", CHAT, {"messages": [{"role": "user", "content": "seven " * 80}], "max_tokens": 256},
     400, "exceed the model's context", "messages"),
    ("broken-base64", "POST", CHAT, vision("data:image/png;base64,@@@not*base64@@@"), 400, "not valid base64",
     "messages[0].content[0].image_url"),
    ("remote-url", "POST", CHAT, vision("http://169.254.169.254/latest/meta-data"), 400, "not fetched",
     "messages[0].content[0].image_url"),
    ("file-url", "POST", CHAT, vision("file:///etc/passwd"), 400, "not fetched", "messages[0].content[0].image_url"),
    ("not-an-image", "POST", CHAT, vision(base64.b64encode(b"just some text, not pixels").decode()), 400,
     "not a readable image", "messages[0].content[0].image_url"),
    ("png-bomb", "POST", CHAT, vision("data:image/png;base64," + base64.b64encode(png_bomb()).decode()), 400,
     "12000x12000 pixels", "messages[0].content[0].image_url"),
    ("png-bomb-400m", "POST", CHAT, vision("data:image/png;base64," + base64.b64encode(png_bomb(20_000)).decode()),
     400, "more pixels than the limit", "messages[0].content[0].image_url"),
    ("truncated-png", "POST", CHAT, vision("data:image/png;base64," + base64.b64encode(png_bytes(RED)[:60]).decode()),
     400, "corrupt or truncated", "messages[0].content[0].image_url"),
    ("two-images", "POST", CHAT, vision(data_url(RED), data_url(RED)), 400, "one image",
     "messages[0].content[1].image_url"),
    ("unknown-part", "POST", CHAT, {"messages": [{"role": "user", "content": [{"type": "audio", "data": "x"}]}]}, 400,
     "tag", "messages[0].content[0]"),
    ("huge-prompt", "POST", CHAT, {"messages": [{"role": "user", "content": "seven " * 150_000}]}, 400,
     "must be <= 384 tokens", "messages"),
    ("unknown-route", "GET", "/v1/engines", None, 404, "unknown route", None),
    ("path-traversal", "GET", "/static/../../../../etc/passwd", None, 404, "", None),
    ("wrong-method", "GET", CHAT, None, 405, "not allowed", None),
    ("image-size", "POST", IMAGES, {"prompt": "a red circle", "size": "1024x1024"}, 400, "32x32", "size"),
    ("image-url-format", "POST", IMAGES, {"prompt": "a red circle", "response_format": "url"}, 400, "b64_json",
     "response_format"),
    ("image-partials", "POST", IMAGES, {"prompt": "a red circle", "stream": True, "partial_images": 1000}, 400,
     "<= 32", "partial_images"),
    ("image-guidance", "POST", IMAGES, {"prompt": "a red circle", "guidance_scale": -1}, 400,
     "greater than or equal to 0", "guidance_scale"),
    ("image-empty-prompt", "POST", IMAGES, {"prompt": ""}, 400, "at least 1", "prompt"),
    ("image-long-prompt", "POST", IMAGES, {"prompt": "red " * 500}, 400, "<= 64 tokens", "prompt"),
    ("image-n", "POST", IMAGES, {"prompt": "a red circle", "n": 50}, 400, "<= 4", "n"),
    ("edit-json", "POST", "/v1/images/edits", {"prompt": "x"}, 400, "image", "image"),
    ("edit-no-image", "POST", "/v1/images/edits", ("form", {"prompt": "x"}, {}), 400, "required", "image"),
    ("edit-opaque-mask", "POST", "/v1/images/edits", ("form", {"prompt": "x"}, {"image": png_bytes(RED),
     "mask": png_bytes(OPAQUE)}), 400, "no transparent pixels", "mask"),
    ("edit-mask-size", "POST", "/v1/images/edits", ("form", {"prompt": "x"}, {"image": png_bytes(RED),
     "mask": png_bytes(HOLED.resize((16, 16)))}), 400, "must match", "mask"),
    ("edit-no-alpha", "POST", "/v1/images/edits", ("form", {"prompt": "x"}, {"image": png_bytes(RED)}), 400,
     "alpha", "image"),
    ("edit-bad-n", "POST", "/v1/images/edits", ("form", {"prompt": "x", "n": "many"}, {"image": png_bytes(RED),
     "mask": png_bytes(HOLED)}), 400, "valid integer", "n"),
    ("edit-bomb", "POST", "/v1/images/edits", ("form", {"prompt": "x"}, {"image": png_bomb()}), 400, "pixels",
     "image"),
    ("completion-empty", "POST", "/v1/completions", {"prompt": ""}, 400, "at least 1", "prompt"),
    ("completion-blank-and-suffix", "POST", "/v1/completions", {"prompt": "a [BLANK] b", "suffix": "c"}, 400,
     "either", "suffix"),
    ("completion-steps", "POST", "/v1/completions", {"prompt": "a", "max_tokens": 4, "steps": 99}, 400, "<= 4",
     "steps"),
]


@pytest.fixture(scope="module")
def url():
    with live_server(builtin_pipe(), ServeConfig(max_body_bytes=LIMIT)) as base:
        yield base


def _send(url, method, path, body):
    if body is None:
        return http(method, url + path)
    if isinstance(body, bytes):
        return http(method, url + path, data=body, headers={"Content-Type": "application/json"})
    if isinstance(body, tuple):
        data, headers = multipart(body[1], body[2])
        return http(method, url + path, data=data, headers=headers)
    return http(method, url + path, json_body=body)


def _healthy(url):
    assert http("GET", f"{url}/health").json()["status"] == "ok"
    reply = http("POST", f"{url}{CHAT}", json_body=chat(max_tokens=32))
    assert reply.status == 200 and reply.json()["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize(("method", "path", "body", "status", "pattern", "param"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_refused_with_a_named_reason(url, method, path, body, status, pattern, param):
    reply = _send(url, method, path, body)
    assert reply.status == status, reply.text[:300]
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert re.search(pattern, error["message"]), error["message"]
    if param is not None:
        assert error["param"] == param, error


def test_at_least_thirty_kinds():
    assert len(CASES) >= 30


def test_streamed_oversized_body_and_a_lying_length(url):
    host, port = urlsplit(url).hostname, urlsplit(url).port
    for head, body in [
        (f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
         b"".join(b"%x\r\n" % 65536 + b"a" * 65536 + b"\r\n" for _ in range(LIMIT // 65536 + 2)) + b"0\r\n\r\n"),
        (f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {10 * LIMIT}\r\n\r\n",
         b"{}"),
    ]:
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(head.encode())
            with contextlib.suppress(OSError):  # the server may answer and close before the whole body is sent
                sock.sendall(body)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
                if b"}}" in answer:
                    break
            answer = answer.decode(errors="replace")
        assert answer.startswith("HTTP/1.1 413"), answer[:200]
        assert "larger than" in answer
    _healthy(url)


def test_garbage_on_the_socket(url):
    host, port = urlsplit(url).hostname, urlsplit(url).port
    for junk in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, b"GET / HTTP/9.9\r\n\r\n",
                 b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -1\r\n\r\n"):
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(junk)
            with contextlib.suppress(OSError):
                sock.recv(4096)
    _healthy(url)


def test_still_healthy_after_everything(url):
    _healthy(url)
    metrics = http("GET", f"{url}/metrics").text
    assert 'status="400"' in metrics and 'status="404"' in metrics


def test_a_request_past_the_time_limit_gets_504():
    with live_server(builtin_pipe(), ServeConfig(request_timeout_s=0.2)) as base:
        reply = http("POST", f"{base}{CHAT}", json_body=chat(max_tokens=384, steps=384))
        assert reply.status == 504 and "time limit" in reply.json()["error"]["message"]
        assert json.loads(http("GET", f"{base}/health").body)["status"] == "ok"
        assert http("POST", f"{base}{CHAT}", json_body=chat(max_tokens=32, steps=8)).status == 200


def test_missing_or_wrong_key():
    with live_server(builtin_pipe(), ServeConfig(api_key="secret")) as base:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic c2VjcmV0"}):
            reply = http("POST", f"{base}{CHAT}", json_body=chat(), headers=headers)
            assert reply.status == 401 and reply.json()["error"]["code"] == "invalid_api_key"
        assert http("GET", f"{base}/v1/nothing").status == 401  # no key: not even the routes are revealed
