"""Distributed training on CPU/gloo: FSDP2 on 2 ranks takes the same steps as 1 process; sharded
checkpoints resume exactly and consolidate into the release format.

The 2-rank runs are real `torch.distributed.run` launches of tests/_distributed_worker.py (its
docstring explains how both runs see the same global batch). Each launch is time-limited, so a hung
collective fails the test instead of blocking CI.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mmada
from mmada.training.distributed import (
    DistributedContext,
    all_reduce_mean,
    barrier,
    broadcast_object,
    clip_grad_norm,
    consolidate_to_release,
    full_state_dict,
    init_distributed,
    load_sharded,
    save_sharded,
    wrap_model,
)

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "_distributed_worker.py"
RL_WORKER = TESTS / "_rl_distributed_worker.py"
SRC = TESTS.parent / "src" / "mmada"
TIMEOUT_S = 120
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env["OMP_NUM_THREADS"] = "1"  # 2 ranks on 2 cores: oversubscribed threads make gloo crawl
    return env


def _launch(out: Path, *args: str, nproc: int, worker: Path = WORKER) -> subprocess.Popen:
    if nproc == 1:
        cmd = [sys.executable, str(worker)]
    else:
        # --standalone: a local c10d rendezvous on a port the OS picks, so parallel runs never collide.
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(worker)]
    # A session of its own, so a hung run can be killed with its torchrun workers (see _kill).
    return subprocess.Popen(
        [*cmd, "--out", str(out), *args], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )


def _kill(proc: subprocess.Popen) -> None:
    """Kill a launch and the workers it spawned (its process group), if still running."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


def _wait(proc: subprocess.Popen) -> None:
    try:
        log, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill(proc)
        log, _ = proc.communicate()
        pytest.fail(f"worker timed out after {TIMEOUT_S} s:\n{log[-4000:]}")
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{log[-4000:]}"


def _finish(proc: subprocess.Popen, out: Path) -> dict[str, torch.Tensor]:
    _wait(proc)
    return load_file(str(out / "result.safetensors"))


def _weights(result: dict[str, torch.Tensor], prefix: str = "weight.") -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in result.items() if k.startswith(prefix)}


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process on the full batch, and 2 FSDP2 ranks on half each (+ a DCP checkpoint), run together."""
    root = tmp_path_factory.mktemp("distributed")
    single = _launch(root / "single", nproc=1)
    sharded = _launch(root / "sharded", "--dcp", str(root / "dcp"), nproc=2)
    try:
        return {"single": _finish(single, root / "single"), "sharded": _finish(sharded, root / "sharded"),
                "dcp": root / "dcp"}
    finally:
        _kill(single)
        _kill(sharded)


def test_two_fsdp_ranks_take_the_same_steps_as_one_process(runs, reference_dir):
    single, sharded = runs["single"], runs["sharded"]
    torch.testing.assert_close(sharded["losses"], single["losses"], rtol=0, atol=1e-5)
    torch.testing.assert_close(sharded["grad_norms"], single["grad_norms"], rtol=1e-5, atol=0)
    assert (single["grad_norms"] > 0.5).all()  # clipping was active in both runs
    _assert_same_weights(_weights(sharded), _weights(single), atol=1e-5)
    # ... and the steps did something: the comparison is not between two untouched models.
    initial = mmada.load_model(reference_dir / "mmada_a").state_dict()
    moved = max((_weights(single)[k] - v).abs().max().item() for k, v in initial.items())
    assert moved > 1e-3


def test_resuming_from_a_sharded_checkpoint_restores_model_and_optimizer(runs):
    # One more step from the checkpoint (fresh model + fresh AdamW) equals continuing in memory: AdamW's
    # moments and step count were restored, not just the weights.
    sharded = runs["sharded"]
    _assert_same_weights(_weights(sharded, "resumed."), _weights(sharded, "continued."), atol=0)
    assert any((_weights(sharded, "continued.")[k] != v).any() for k, v in _weights(sharded).items())


def test_two_rank_checkpoint_consolidates_to_the_release_format(runs, tmp_path):
    out = consolidate_to_release(runs["dcp"], None, tmp_path / "release")
    loaded = mmada.load_model(out).state_dict()
    _assert_same_weights(loaded, _weights(runs["sharded"]), atol=0)

    config = mmada.ModelConfig.from_json(runs["dcp"] / "config.json")
    bf16 = consolidate_to_release(runs["dcp"], config, tmp_path / "bf16", dtype="bf16")
    assert mmada.load_model(bf16, dtype=torch.bfloat16).embed.weight.dtype == torch.bfloat16
    assert '"torch_dtype": "bfloat16"' in (bf16 / "config.json").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("flags", [["--replicate"], ["--accumulate", "2"], ["--mixed-precision"]], ids=lambda f: f[0])
def test_two_rank_variants(runs, tmp_path, flags):
    result = _finish(_launch(tmp_path, *flags, nproc=2), tmp_path)
    single = runs["single"]
    if flags[0] != "--mixed-precision":  # data parallel and accumulation without per-micro-batch sync: exact too
        torch.testing.assert_close(result["losses"], single["losses"], rtol=0, atol=1e-5)
        _assert_same_weights(_weights(result), _weights(single), atol=1e-5)
    else:  # bf16 compute: close to fp32, not equal; master weights stay fp32
        assert 0 < abs(result["losses"][0] - single["losses"][0]) < 2e-2
        assert all(v.dtype == torch.float32 for v in _weights(result).values())


# ---- UniGRPO: ranks share one replicated rollout and split its rows ---------------------------------
def test_two_fsdp_ranks_take_the_same_unigrpo_steps_as_one_process(tmp_path):
    """tests/_rl_distributed_worker.py: 3 RL steps of the tiny_unigrpo stage (shrunk rollouts, lr 1e-3)."""
    from mmada.checkpoint.train_state import find_latest

    single = _launch(tmp_path / "single", nproc=1, worker=RL_WORKER)
    sharded = _launch(tmp_path / "sharded", nproc=2, worker=RL_WORKER)
    try:
        _wait(single)
        _wait(sharded)
    finally:
        _kill(single)
        _kill(sharded)
    rows = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("single", "sharded")}
    # the same prompts, rollouts and rewards (every rank rolls out the same batch), and the same updates
    assert [r["reward"] for r in rows["sharded"]] == [r["reward"] for r in rows["single"]]
    assert [r["skipped"] for r in rows["single"]].count(0.0) >= 2  # at least two real updates compared
    for a, b in zip(rows["sharded"], rows["single"]):
        assert a.get("kl_last", 0.0) == pytest.approx(b.get("kl_last", 0.0), rel=1e-4, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    one = find_latest(tmp_path / "single")
    two = find_latest(tmp_path / "sharded")
    assert one is not None and two is not None and one.name == two.name == "step-000003"
    single_weights = mmada.load_model(one / "model").state_dict()
    sharded_weights = mmada.load_model(consolidate_to_release(two / "sharded", None, tmp_path / "release")).state_dict()
    _assert_same_weights(sharded_weights, single_weights, atol=1e-5)
    start = mmada.load_model(SRC / "assets" / "mmada-tiny").state_dict()
    assert max((single_weights[k].float() - v.float()).abs().max().item() for k, v in start.items()) > 1e-4


# ---- one process: no process group, every helper is the identity ----------------------------------
@pytest.fixture
def single_ctx(monkeypatch) -> DistributedContext:
    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    return init_distributed(device="cpu")


def test_single_process_context_and_helpers(single_ctx):
    ctx = single_ctx
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.device.type) == (0, 1, None, "cpu")
    assert ctx.is_main and not ctx.is_distributed
    model = mmada.MMaDAModel(mmada.ModelConfig.tiny())
    assert wrap_model(model, ctx, mixed_precision=True) is model
    x = torch.tensor([1.0, 2.0])
    y = all_reduce_mean(x, ctx)
    assert torch.equal(y, x) and y is not x
    assert broadcast_object({"seed": 3}, ctx) == {"seed": 3}
    barrier(ctx)
    model(torch.arange(10)[None]).sum().backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    torch.testing.assert_close(clip_grad_norm(model, 0.5), norm)
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    torch.testing.assert_close(clipped, torch.tensor(0.5), rtol=1e-4, atol=0)
    state = full_state_dict(model, ctx)
    state["embed.weight"].zero_()  # a copy, not the live parameter
    assert model.embed.weight.abs().sum() > 0


def test_init_distributed_refuses_bad_backends(single_ctx):
    with pytest.raises(ValueError, match="'mpi'"):
        init_distributed(backend="mpi")
    with pytest.raises(ValueError, match="nccl"):
        init_distributed(backend="nccl", device="cpu")


def _tiny_step(model: mmada.MMaDAModel, optimizer: torch.optim.Optimizer, seed: int) -> None:
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(seed))
    model(ids).logsumexp(-1).mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_single_process_sharded_checkpoint_round_trip(single_ctx, tmp_path):
    torch.manual_seed(0)
    model = mmada.MMaDAModel(mmada.ModelConfig.tiny())
    model.reset_parameters()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _tiny_step(model, optimizer, 0)
    save_sharded(model, optimizer, tmp_path / "dcp", single_ctx)
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    fresh = mmada.MMaDAModel(mmada.ModelConfig.tiny())
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    load_sharded(fresh, fresh_optimizer, tmp_path / "dcp", single_ctx)
    _assert_same_weights(fresh.state_dict(), model.state_dict(), atol=0)
    _tiny_step(model, optimizer, 1)
    _tiny_step(fresh, fresh_optimizer, 1)
    _assert_same_weights(fresh.state_dict(), model.state_dict(), atol=0)

    release = consolidate_to_release(tmp_path / "dcp", None, tmp_path / "release")
    _assert_same_weights(mmada.load_model(release).state_dict(), saved, atol=0)
    with pytest.raises(ValueError, match="not a DCP checkpoint"):
        consolidate_to_release(tmp_path / "release", None, tmp_path / "again")


def test_only_the_distributed_module_imports_torch_distributed():
    """STYLE §5.13: init, wrapping, collectives and DCP live in one module."""
    offenders = []
    for path in SRC.rglob("*.py"):
        if path == SRC / "training" / "distributed.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "torch.distributed" or n.startswith("torch.distributed.") for n in names):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not offenders, f"only training/distributed.py may import torch.distributed: {offenders}"
