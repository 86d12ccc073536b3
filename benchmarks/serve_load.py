"""Load on `mmada serve`: concurrent clients (the async `openai` client) against the same requests one at a time.

Part 1: a server process on loopback serves the built-in model (or `--model`). The same chat requests (the
world's arithmetic questions, greedy, the model's defaults) are sent first one at a time, then by
`--clients` concurrent clients (each sending `--per-client` requests in a row). The table gives failures,
p50/p99 latency, requests/s and generated tokens/s of both runs, the ratio (the micro-batching gain), the
mean batch the worker ran (from /metrics), and whether every concurrent answer equals its one-at-a-time
answer (batching must never change an answer).

Part 2 (overload): a server with a small queue (`--overload-queue`) gets `--overload-clients` requests at
once: the excess is answered 429 with Retry-After; then requests sent one at a time must all succeed again
at the unloaded latency, with an empty queue (recovery).

    python benchmarks/serve_load.py [--clients 64] [--per-client 2] [--threads 1] [--preset fast]

Read the ratios, not the absolute seconds (the machine may be shared).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import openai

from mmada.world import iter_text

MODEL = "mmada-tiny"


@dataclass
class Run:
    name: str
    latencies: list[float]
    tokens: int
    seconds: float
    failures: int
    answers: list[str | None]

    def row(self) -> str:
        ok = sorted(self.latencies)
        p50 = statistics.median(ok) if ok else float("nan")
        p99 = ok[min(len(ok) - 1, round(0.99 * (len(ok) - 1)))] if ok else float("nan")
        return (f"| {self.name} | {len(self.answers)} | {self.failures} | {p50:.2f} | {p99:.2f} | "
                f"{len(ok) / self.seconds:.2f} | {self.tokens / self.seconds:.1f} |")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


@contextlib.contextmanager
def server(args: argparse.Namespace, *flags: str) -> Iterator[str]:
    port = _port()
    command = [sys.executable, "-m", "mmada", "serve", "--port", str(port), "--model", args.model, "-q",
               "--threads", str(args.threads), *flags]
    if args.preset:
        command += ["--preset", args.preset]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if json.loads(_get(f"{url}/health"))["status"] == "ok":
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"the server did not start: {' '.join(command)}") from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _metric(url: str, name: str) -> float:
    text = _get(f"{url}/metrics")
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


async def _ask(client: openai.AsyncOpenAI, question: str) -> tuple[float, int, str]:
    start = time.perf_counter()
    reply = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}])
    return time.perf_counter() - start, reply.usage.completion_tokens, reply.choices[0].message.content or ""


async def one_at_a_time(url: str, questions: list[str]) -> Run:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0) as client:
        start, latencies, tokens, answers = time.perf_counter(), [], 0, []
        for q in questions:
            seconds, count, answer = await _ask(client, q)
            latencies.append(seconds)
            tokens += count
            answers.append(answer)
    return Run("one at a time", latencies, tokens, time.perf_counter() - start, 0, list(answers))


async def concurrent(url: str, questions: list[str], clients: int, name: str) -> Run:
    answers: list[str | None] = [None] * len(questions)
    latencies: list[float] = []
    tokens = failures = 0

    async def client_loop(client: openai.AsyncOpenAI, indices: list[int]) -> None:
        nonlocal tokens, failures
        for i in indices:
            try:
                seconds, count, answers[i] = await _ask(client, questions[i])
            except openai.APIError:
                failures += 1
                continue
            latencies.append(seconds)
            tokens += count

    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0) as client:
        start = time.perf_counter()
        await asyncio.gather(*[client_loop(client, list(range(c, len(questions), clients))) for c in range(clients)])
    return Run(name, latencies, tokens, time.perf_counter() - start, failures, answers)


async def overload(url: str, questions: list[str], burst: int) -> tuple[dict[int, int], str, Run]:
    codes: dict[int, int] = {}
    retry_after = ""

    async def hit(client: openai.AsyncOpenAI, q: str) -> None:
        nonlocal retry_after
        try:
            await _ask(client, q)
            codes[200] = codes.get(200, 0) + 1
        except openai.APIStatusError as err:
            codes[err.status_code] = codes.get(err.status_code, 0) + 1
            retry_after = err.response.headers.get("retry-after", retry_after)

    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0) as client:
        await asyncio.gather(*[hit(client, questions[i % len(questions)]) for i in range(burst)])
    while json.loads(_get(f"{url}/health"))["queue_depth"]:
        await asyncio.sleep(0.1)
    after = await one_at_a_time(url, questions[:16])
    after.name = "after the burst, one at a time"
    return codes, retry_after, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL, help="checkpoint served (default: the built-in model)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (default: 64)")
    parser.add_argument("--per-client", type=int, default=2, help="requests each client sends in a row (default: 2)")
    parser.add_argument("--threads", type=int, default=1, help="the server's CPU threads (default: 1)")
    parser.add_argument("--preset", default=None, help="the server's sampling preset (default: the model's)")
    parser.add_argument("--overload-clients", type=int, default=128, help="requests of the burst (default: 128)")
    parser.add_argument("--overload-queue", type=int, default=16, help="queue size of the overloaded server")
    args = parser.parse_args()
    questions = [e.question for e in itertools.islice(iter_text("validation", seed=0), args.clients * args.per_client)]

    with server(args) as url:
        asyncio.run(one_at_a_time(url, questions[:4]))  # warm-up
        alone = asyncio.run(one_at_a_time(url, questions))
        rows, batches = _metric(url, "mmada_batch_rows_sum"), _metric(url, "mmada_batch_rows_count")
        together = asyncio.run(concurrent(url, questions, args.clients, f"{args.clients} concurrent clients"))
        mean_batch = (_metric(url, "mmada_batch_rows_sum") - rows) / (_metric(url, "mmada_batch_rows_count") - batches)
    same = sum(a == b for a, b in zip(alone.answers, together.answers))
    print(f"{len(questions)} chat requests ({args.clients} clients x {args.per_client}), model {args.model}, "
          f"server threads {args.threads}, preset {args.preset or 'the model default'}\n")
    print("| run | requests | failures | p50 latency s | p99 latency s | requests/s | tokens/s |")
    print("|---|---|---|---|---|---|---|")
    print(alone.row())
    print(together.row())
    print(f"\nmicro-batching gain: {alone.seconds / together.seconds:.2f}x requests/s; mean batch {mean_batch:.1f} "
          f"rows; answers equal to the one-at-a-time ones: {same}/{len(questions)}")

    with server(args, "--queue-size", str(args.overload_queue)) as url:
        asyncio.run(one_at_a_time(url, questions[:4]))
        before = asyncio.run(one_at_a_time(url, questions[:16]))
        before.name = "before the burst, one at a time"
        codes, retry_after, after = asyncio.run(overload(url, questions, args.overload_clients))
        depth = json.loads(_get(f"{url}/health"))["queue_depth"]
    print(f"\noverload: {args.overload_clients} requests at once, queue of {args.overload_queue}: "
          f"{', '.join(f'{n} x {code}' for code, n in sorted(codes.items()))} (Retry-After: {retry_after or '-'} s); "
          f"afterwards queue depth {depth}")
    print("\n| run | requests | failures | p50 latency s | p99 latency s | requests/s | tokens/s |")
    print("|---|---|---|---|---|---|---|")
    print(before.row())
    print(after.row())


if __name__ == "__main__":
    main()
