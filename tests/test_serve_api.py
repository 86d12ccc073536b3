"""The OpenAI-compatible server against the official `openai` client, live on loopback, built-in model.

Every answer is compared with the pipeline called directly (same settings, same seed), so the tests check
that the API adds nothing and loses nothing: batching, streaming and the request mapping included.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace
from urllib.parse import urlsplit

import numpy as np
import openai
import pytest
import torch
from PIL import Image

from mmada.serving import ServeConfig
from mmada.serving.metrics import Metrics
from mmada.serving.scheduler import Job, QueueFull, Scheduler
from mmada.serving.work import AnswerStream
from serve_helpers import (
    MODEL,
    builtin_pipe,
    data_url,
    decode_png,
    free_port,
    http,
    live_server,
    png_bytes,
    questions,
    vqa_example,
)

KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def pipe():
    return builtin_pipe()


@pytest.fixture(scope="module")
def url(pipe):
    with live_server(pipe, ServeConfig(batch_window_s=0.02)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _metric(url: str, name: str) -> float:
    text = http("GET", f"{url}/metrics").text
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_models(client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.models.retrieve("gpt-4")


def test_chat_equals_the_pipeline(client, pipe):
    q = questions(1)[0]
    history = [{"role": "user", "content": q}, {"role": "assistant", "content": "4"},
               {"role": "user", "content": "what is 7 + 5?"}]
    for messages in ([history[0]], history):
        reply = client.chat.completions.create(model=MODEL, messages=messages)
        assert reply.choices[0].message.content == pipe.chat(messages).text
        assert reply.choices[0].finish_reason == "stop"
        assert reply.usage.completion_tokens >= 1 and reply.usage.prompt_tokens > len(q.split())


def test_streamed_chat_forms_then_equals_the_answer(client, pipe):
    q = questions(2)[1]
    args = {"model": MODEL, "messages": [{"role": "user", "content": q}], "max_tokens": 64, "temperature": 1.0,
            "seed": 7, "extra_body": {"thinking": True}}
    full = client.chat.completions.create(**args).choices[0].message.content
    assert full == client.chat.completions.create(**args).choices[0].message.content  # the seed reproduces
    arrivals, chunks = [], []
    for chunk in client.chat.completions.create(**args, stream=True):
        arrivals.append(time.perf_counter())
        chunks.append(chunk)
    deltas = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert deltas == full and len(full) > 20
    states = [c.choices[0].model_extra["denoising"] for c in chunks if c.choices[0].model_extra.get("denoising")]
    assert len(states) >= 8 and "░" in states[0]["text"] and "░" not in states[-1]["text"]  # it forms in steps
    assert [s["step"] for s in states] == sorted(s["step"] for s in states)
    assert arrivals[1] < arrivals[-1]  # chunks came as the steps ran, not in one piece at the end
    assert chunks[-1].choices[0].finish_reason in ("stop", "length") and chunks[-1].usage.completion_tokens > 0
    direct = pipe.chat(args["messages"], thinking=True, generator=_gen(7),
                       sampling=pipe.text_settings(gen_length=64, steps=32, block_length=32, temperature=1.0))
    assert full == direct.text[: len(full)] and full.startswith("<think>")


def test_vision_equals_the_pipeline(client, pipe):
    example = vqa_example()
    image = Image.fromarray(example.image)
    content = [{"type": "image_url", "image_url": {"url": data_url(image)}}, {"type": "text", "text": example.question}]
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])
    assert reply.choices[0].message.content == pipe.understand(image, example.question).text
    assert reply.usage.prompt_tokens > pipe.num_image_tokens
    content[0]["image_url"]["url"] = data_url(image).split(",", 1)[1]  # bare base64 works too
    again = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])
    assert again.choices[0].message.content == reply.choices[0].message.content


def test_n_choices_and_stop(client):
    q = questions(1)[0]
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": q}], n=3,
                                           temperature=1.0, seed=3, max_tokens=64, extra_body={"thinking": True})
    assert [c.index for c in reply.choices] == [0, 1, 2]
    texts = [c.message.content for c in reply.choices]
    assert len(set(texts)) > 1  # three samples, not one copied
    cut = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": q}], n=3,
                                         temperature=1.0, seed=3, max_tokens=64, stop=["</think>"],
                                         extra_body={"thinking": True})
    for whole, choice in zip(texts, cut.choices):
        assert "</think>" not in choice.message.content
        assert whole.startswith(choice.message.content)
        assert choice.finish_reason == "stop" or choice.message.content == whole


def test_concurrent_requests_are_batched_and_unchanged(url, pipe):
    qs = questions(6, seed=11)

    async def ask_all():
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as aclient:
            replies = await asyncio.gather(*[aclient.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": q}]) for q in qs])
        return [r.choices[0].message.content for r in replies]

    batches, requests = _metric(url, "mmada_batch_requests_count"), _metric(url, "mmada_batch_requests_sum")
    answers = asyncio.run(ask_all())
    assert answers == [pipe.generate(q).text for q in qs]  # every row as it is alone
    new_batches = _metric(url, "mmada_batch_requests_count") - batches
    new_requests = _metric(url, "mmada_batch_requests_sum") - requests
    assert new_requests == len(qs) and new_batches < len(qs)  # some shared a model call


def test_concurrent_vision_requests_are_batched_and_unchanged(url, pipe):
    examples = [vqa_example(seed) for seed in range(4)]
    images = [Image.fromarray(e.image) for e in examples]

    contents = [[{"type": "image_url", "image_url": {"url": data_url(image)}}, {"type": "text", "text": e.question}]
                for image, e in zip(images, examples)]

    async def ask_all():
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as aclient:
            replies = await asyncio.gather(*[aclient.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": content}]) for content in contents])
        return [r.choices[0].message.content for r in replies]

    batches, requests = _metric(url, "mmada_batch_requests_count"), _metric(url, "mmada_batch_requests_sum")
    answers = asyncio.run(ask_all())
    assert answers == [pipe.understand(image, e.question).text for image, e in zip(images, examples)]
    new_batches = _metric(url, "mmada_batch_requests_count") - batches
    new_requests = _metric(url, "mmada_batch_requests_sum") - requests
    assert new_requests == len(examples) and new_batches < len(examples)


def test_seeded_sampling_is_reproducible_under_load(client, url):
    q = questions(3)[2]
    args = {"model": MODEL, "messages": [{"role": "user", "content": q}], "temperature": 1.0, "seed": 123,
            "max_tokens": 64, "extra_body": {"thinking": True}}
    alone = client.chat.completions.create(**args).choices[0].message.content
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        others = [pool.submit(client.chat.completions.create, **{**args, "seed": s}) for s in range(4)]
        again = pool.submit(client.chat.completions.create, **args)
        assert again.result().choices[0].message.content == alone
        assert len({f.result().choices[0].message.content for f in others}) > 1


def test_completions_fill_blanks_and_continue(client, pipe):
    text = "Tom has [BLANK] coins. He spends 2 coins."
    reply = client.completions.create(model=MODEL, prompt=text, seed=0)
    assert reply.choices[0].text == pipe.infill(text, blank_length=8, generator=_gen(0))
    cont = client.completions.create(model=MODEL, prompt="Tom has 5 coins.", max_tokens=8, seed=0)
    assert cont.usage.completion_tokens <= 8 and cont.choices[0].finish_reason in ("stop", "length")
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="Tom has 5 coins.", max_tokens=8, seed=0, stream=True))
    assert streamed == cont.choices[0].text


def test_images_equal_the_pipeline(client, pipe):
    reply = client.images.generate(model=MODEL, prompt="a red circle", n=2, response_format="b64_json",
                                   extra_body={"seed": 5, "steps": 6})
    images = [decode_png(d.b64_json) for d in reply.data]
    assert [im.size for im in images] == [(pipe.resolution, pipe.resolution)] * 2
    direct = pipe.text_to_image(["a red circle"] * 2, generator=_gen(5), timesteps=6)
    assert all(np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b)) for a, b in zip(images, direct))


def test_unseeded_image_requests_share_a_batch(client, url):
    batches, requests = _metric(url, "mmada_batch_requests_count"), _metric(url, "mmada_batch_requests_sum")
    prompts = ["a red circle", "two blue squares", "a yellow triangle"]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(lambda p: client.images.generate(model=MODEL, prompt=p), prompts))
    assert all(decode_png(r.data[0].b64_json).size == (32, 32) for r in replies)
    assert _metric(url, "mmada_batch_requests_sum") - requests == 3
    assert _metric(url, "mmada_batch_requests_count") - batches < 3  # they shared a model call...
    assert any(r.model_extra["seed"] is None for r in replies)  # ...so a shared row has no seed to replay


def test_the_reported_seed_reproduces_the_answer(client):
    args = {"model": MODEL, "messages": [{"role": "user", "content": questions(1)[0]}], "temperature": 1.0,
            "max_tokens": 64, "extra_body": {"thinking": True}}
    first = client.chat.completions.create(**args)
    again = client.chat.completions.create(**args, seed=first.model_extra["seed"])
    assert again.choices[0].message.content == first.choices[0].message.content
    image = client.images.generate(model=MODEL, prompt="a red circle")
    replay = client.images.generate(model=MODEL, prompt="a red circle", extra_body={"seed": image.model_extra["seed"]})
    assert replay.data[0].b64_json == image.data[0].b64_json


def test_image_streaming(client):
    events = list(client.images.generate(model=MODEL, prompt="a blue square", stream=True, partial_images=3,
                                         extra_body={"seed": 9}))
    kinds = [e.type for e in events]
    assert kinds == ["image_generation.partial_image"] * 3 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:3]] == [0, 1, 2]
    final = client.images.generate(model=MODEL, prompt="a blue square", extra_body={"seed": 9}).data[0].b64_json
    assert events[-1].b64_json == final and events[-1].usage.output_tokens > 0
    assert all(decode_png(e.b64_json).size == decode_png(final).size for e in events)


def test_edits_inpaint_the_transparent_region(client, pipe):
    side = pipe.resolution
    image = Image.new("RGB", (side, side), (200, 30, 30))
    mask = Image.new("RGBA", (side, side), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, side // 2, side))  # transparent left half = repaint
    reply = client.images.edit(model=MODEL, image=("image.png", png_bytes(image), "image/png"),
                               mask=("mask.png", png_bytes(mask), "image/png"), prompt="a green triangle",
                               extra_body={"seed": 1})
    edited = decode_png(reply.data[0].b64_json)
    region = np.zeros((side, side), dtype=bool)
    region[:, : side // 2] = True
    direct = pipe.inpaint(image, region, "a green triangle", generator=_gen(1))
    assert np.array_equal(np.asarray(edited.convert("RGB")), np.asarray(direct))
    events = list(client.images.edit(model=MODEL, image=("image.png", png_bytes(image), "image/png"),
                                     mask=("mask.png", png_bytes(mask), "image/png"), prompt="a green triangle",
                                     stream=True, partial_images=2, extra_body={"seed": 1}))
    assert [e.type for e in events] == ["image_edit.partial_image"] * 2 + ["image_edit.completed"]
    assert events[-1].b64_json == reply.data[0].b64_json


def test_auth_on_and_off(pipe, url):
    assert http("GET", f"{url}/health").json()["status"] == "ok"  # off: no key needed
    with live_server(pipe, ServeConfig(api_key=KEY)) as base:
        for key in ("wrong", None):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            assert http("GET", f"{base}/health", headers=headers).status == 401
        with pytest.raises(openai.AuthenticationError, match="API key"):
            openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
        assert good.models.list().data[0].id == MODEL
        reply = good.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "what is 7 + 5?"}],
                                             max_tokens=32)
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert http("GET", f"{base}/").status == 200  # the page itself is public; its API calls carry the key
        assert http("GET", f"{base}/metrics", headers={"Authorization": f"Bearer {KEY}"}).status == 200


def test_a_client_that_leaves_cancels_its_work(client, url):
    before = _metric(url, "mmada_cancelled_requests_total")
    tokens = _metric(url, "mmada_generated_tokens_total")
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": questions(1)[0]}],
                                            max_tokens=384, extra_body={"steps": 384, "thinking": True}, stream=True)
    next(iter(stream))
    stream.close()
    deadline = time.monotonic() + 10
    while _metric(url, "mmada_cancelled_requests_total") <= before:
        assert time.monotonic() < deadline, "the server did not notice the client leaving"
        time.sleep(0.05)
    while http("GET", f"{url}/health").json()["busy"]:
        assert time.monotonic() < deadline, "the abandoned run kept the worker busy"
        time.sleep(0.05)
    assert _metric(url, "mmada_generated_tokens_total") == tokens  # it stopped before producing its answer
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "what is 7 + 5?"}],
                                           max_tokens=32)
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_a_dropped_non_streaming_request_is_cancelled_too(url):
    before = _metric(url, "mmada_cancelled_requests_total")
    body = json.dumps({"messages": [{"role": "user", "content": questions(1)[0]}], "max_tokens": 384,
                       "steps": 384}).encode()
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.3)  # queued or running, then the client hangs up
    deadline = time.monotonic() + 10
    while _metric(url, "mmada_cancelled_requests_total") <= before:
        assert time.monotonic() < deadline, "the server did not notice the client leaving"
        time.sleep(0.05)


def test_overload_answers_429_then_recovers(pipe):
    config = ServeConfig(queue_size=1, max_batch=1, batch_window_s=0.0)
    with live_server(pipe, config) as base:
        body = {"messages": [{"role": "user", "content": "what is 7 + 5?"}], "max_tokens": 128, "steps": 128,
                "temperature": 1.0}
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            replies = list(pool.map(lambda s: http("POST", f"{base}/v1/chat/completions",
                                                         json_body={**body, "seed": s}), range(12)))
        codes = [r.status for r in replies]
        assert 429 in codes and 200 in codes and set(codes) <= {200, 429}
        busy = next(r for r in replies if r.status == 429)
        assert busy.headers["retry-after"] == "1" and busy.json()["error"]["type"] == "rate_limit_error"
        assert _metric(base, "mmada_rejected_requests_total") == codes.count(429)
        assert http("POST", f"{base}/v1/chat/completions", json_body={**body, "seed": 0}).status == 200


def test_health_and_metrics(url):
    health = http("GET", f"{url}/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL
    text = http("GET", f"{url}/metrics").text
    for name in ("mmada_queue_depth", "mmada_batch_rows_bucket", "mmada_generated_tokens_total",
                 "mmada_generated_images_total", "mmada_tokens_per_second", "mmada_images_per_second",
                 "mmada_request_latency_seconds_bucket"):
        assert name in text
    assert _metric(url, "mmada_generated_tokens_total") > 0


def test_the_mmada_serve_command(tmp_path):
    port = free_port()
    env = {**os.environ, "MMADA_API_KEY": KEY, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mmada", "serve", "--port", str(port), "--max-n", "2", "--preset", "fast",
               "--image-timesteps", "4", "-q"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {KEY}"}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if http("GET", f"{base}/health", headers=auth).status == 200:
                    break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, process.stdout.read().decode()
                time.sleep(0.2)
        assert http("GET", f"{base}/v1/models").status == 401  # the key came from $MMADA_API_KEY
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
        with pytest.raises(openai.BadRequestError, match="<= 2"):
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], n=3)
        events = list(client.images.generate(model=MODEL, prompt="a red circle", stream=True, partial_images=8))
        assert len(events) == 4  # --image-timesteps 4: three partial images before the final one
    finally:
        process.terminate()
        process.wait(timeout=30)


def _jobs_on_a_blocked_worker(specs, *, max_batch=4, queue_size=16):
    """A scheduler whose first batch waits until all `specs` (kind, key, rows) are queued; returns the batches
    it ran (as lists of job indices) and the scheduler."""
    release, ran = threading.Event(), []

    def runner(jobs):
        release.wait(5)
        ran.append([job.inputs for job in jobs])

    scheduler = Scheduler({"a": runner, "b": runner}, queue_size=queue_size, max_batch=max_batch,
                          batch_window_s=0.0, metrics=Metrics())
    scheduler.start()
    blocker = Job("a", None, 1, "blocker", lambda event: None, time.monotonic() + 30)
    scheduler.submit(blocker)
    while scheduler.depth:  # the worker holds the blocker
        time.sleep(0.01)
    for i, (kind, key, rows) in enumerate(specs):
        scheduler.submit(Job(kind, key, rows, i, lambda event: None, time.monotonic() + 30))
    release.set()
    while scheduler.depth or scheduler.busy:
        time.sleep(0.01)
    scheduler.stop()
    return ran[1:], scheduler


def test_the_scheduler_batches_equal_keys_up_to_max_batch_rows():
    specs = [("a", "k", 1), ("a", "k", 2), ("a", None, 1), ("b", "k", 1), ("a", "k", 2), ("a", "j", 1),
             ("a", "k", 1)]
    ran, _ = _jobs_on_a_blocked_worker(specs)
    # oldest first; same kind and key join it while the rows fit (1 + 2 + 1 = 4); None and other keys wait
    assert ran == [[0, 1, 6], [2], [3], [4], [5]]


def test_the_scheduler_refuses_beyond_its_queue_and_answers_the_queue_at_shutdown():
    release, events = threading.Event(), []
    scheduler = Scheduler({"a": lambda jobs: release.wait(5)}, queue_size=2, max_batch=1, batch_window_s=0.0,
                          metrics=Metrics())
    scheduler.start()
    jobs = [Job("a", None, 1, i, events.append, time.monotonic() + 30) for i in range(4)]
    scheduler.submit(jobs[0])
    while scheduler.depth:
        time.sleep(0.01)
    scheduler.submit(jobs[1])
    scheduler.submit(jobs[2])
    with pytest.raises(QueueFull):
        scheduler.submit(jobs[3])
    threading.Timer(0.2, release.set).start()  # the worker is still busy with job 0 when the server stops
    scheduler.stop()
    assert [(e.type, e.data.status) for e in events] == [("error", 503)] * 2  # jobs 1 and 2, still queued


class _BytePipe:
    """The parts of a pipeline `AnswerStream` reads, over a byte-level vocabulary: token t < 256 is byte t, so a
    prefix can end inside a multi-byte character, as with a BPE tokenizer."""

    MASK, EOS, EOT = 300, 301, 302

    def __init__(self):
        self.vocab = SimpleNamespace(mask_id=self.MASK, eos_id=self.EOS, eot_id=self.EOT)
        self.tokenizer = SimpleNamespace(decode=lambda ids: bytes(t for t in ids if t < 256).decode(errors="replace"))

    def preview(self, generated):
        return "".join("░" if t == self.MASK else chr(t) if t < 128 else "?" for t in generated.tolist())


def test_streamed_deltas_always_add_up_to_the_answer():
    """Random answers (spaces, two-byte characters, stop strings, an EOS), committed block by block in random
    order within each block as the sampler does: the deltas are always a prefix and add up to the answer."""
    rng, pipe = random.Random(0), _BytePipe()
    pieces = [b"a", b"b", b" ", b"ab", "é".encode(), "€".encode(), b"  "]
    for _ in range(400):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        tokens = list(body)[:24] + [rng.choice([pipe.EOS, pipe.EOT, 97])] + [rng.randrange(256) for _ in range(8)]
        tokens = tokens[:32]
        stops = rng.sample(["b", "ab", "a b", "é", "bb a", " a"], rng.randint(0, 3))
        stream = AnswerStream(pipe, stops, max_tokens=rng.choice([32, 20, 8]))
        current, sent = [pipe.MASK] * len(tokens), ""
        for start in range(0, len(tokens), 4):
            block = list(range(start, min(start + 4, len(tokens))))
            rng.shuffle(block)
            for position in block:
                current[position] = tokens[position]
                delta, preview = stream.update(torch.tensor(current))
                sent += delta
                assert len(preview) <= len(tokens)
        rest, answer = stream.finish(torch.tensor(tokens))
        assert sent + rest == answer.text, (tokens, stops)
        assert not any(stop in answer.text for stop in stops)
