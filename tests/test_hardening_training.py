"""Training under bad inputs and faults (issue #13): each case asserts the exact outcome, a one-line error
naming the file / key / owner, and that nothing already written is lost.

* no code runs from a checkpoint: crafted DCP `.metadata` / bytes entries / `optimizer.pt` are refused and
  their payload (creating a marker file) never runs, on the consolidate and the resume paths;
* one writer per run folder: a second run is refused naming the owner's PID, a stale lock is taken over;
* a diverging run stops (`optim.nonfinite_patience`) without checkpointing non-finite weights;
* unwritable run folders, a full disk while checkpointing, corrupt or foreign checkpoints on `--resume`,
  missing metrics packages, non-finite settings.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import pathlib
import pickle
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mmada
from mmada.checkpoint import train_state
from mmada.checkpoint.train_state import CheckpointWriteError, Collective
from mmada.model import MMaDAModel, ModelConfig
from mmada.training import trainer as trainer_module
from mmada.training.config import load_config
from mmada.training.distributed import (
    DistributedContext,
    consolidate_to_release,
    load_sharded,
    read_dcp_metadata,
    save_sharded,
)
from mmada.training.export import export_release
from mmada.training.metrics import MissingPackageError
from mmada.training.run_lock import LOCK_NAME, RunFolderError, RunLock, RunLockedError
from mmada.training.trainer import NonFiniteLossError, run_training
from mmada.utils.files import CheckpointError
from test_trainer import REFERENCE, TINY, TinySource, one_thread, spawn, tiny_config, tiny_model, wait_for  # noqa: F401 (one_thread: the trainer tests' autouse fixture, here too)

SINGLE = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)


class Payload:
    """Unpickling it runs `func(*args)`: the attack a crafted checkpoint file carries."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker: Path) -> dict[str, Payload]:
    return {"os.system": Payload(os.system, f"touch {marker}"), "Path.touch": Payload(pathlib.Path.touch, marker)}


@pytest.fixture
def dcp_folder(tmp_path) -> Path:
    """A single-process DCP checkpoint (model + AdamW after one step) of the 2-layer test model."""
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 300, (1, 8))).logsumexp(-1).mean().backward()
    optimizer.step()
    return save_sharded(model, optimizer, tmp_path / "dcp", SINGLE)


def fresh_model_and_optimizer(**overrides) -> tuple[MMaDAModel, torch.optim.Optimizer]:
    model = MMaDAModel(ModelConfig.tiny(**{**TINY, **overrides}))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


# ---- no code execution from a checkpoint ------------------------------------------------------------
@pytest.mark.parametrize("attack", ["os.system", "Path.touch"])
def test_crafted_metadata_is_refused_by_consolidate(dcp_folder, tmp_path, attack):
    marker = tmp_path / "pwned"
    (dcp_folder / ".metadata").write_bytes(pickle.dumps(payloads(marker)[attack]))
    with pytest.raises(CheckpointError, match=r"\.metadata: refusing to load: it names .*nothing from it was run"):
        consolidate_to_release(dcp_folder, None, tmp_path / "release")
    assert not marker.exists() and not (tmp_path / "release").exists()


def test_the_crafted_metadata_does_run_under_plain_pickle(dcp_folder, tmp_path):
    """The control: the file of the test above is a live attack for DCP's stock reader (plain pickle)."""
    marker = tmp_path / "pwned"
    (dcp_folder / ".metadata").write_bytes(pickle.dumps(payloads(marker)["Path.touch"]))
    with open(dcp_folder / ".metadata", "rb") as f:
        pickle.load(f)
    assert marker.exists()


@pytest.mark.parametrize("attack", ["os.system", "Path.touch"])
def test_crafted_metadata_is_refused_on_sharded_resume(dcp_folder, tmp_path, attack):
    marker = tmp_path / "pwned"
    (dcp_folder / ".metadata").write_bytes(pickle.dumps(payloads(marker)[attack]))
    model, optimizer = fresh_model_and_optimizer()
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_sharded(model, optimizer, dcp_folder, SINGLE)
    assert not marker.exists()


def test_crafted_metadata_is_refused_through_the_trainers_multi_process_resume(tmp_path):
    """`load_checkpoint` with a 2-process `Collective`: the code path of `mmada train --resume` under torchrun."""
    folder, co, model = _two_process_checkpoint(tmp_path / "run")
    fresh, fresh_optimizer = fresh_model_and_optimizer()
    assert train_state.load_checkpoint(folder, model=fresh, optimizer=fresh_optimizer, collective=co).step == 3
    assert torch.equal(fresh.head.weight, model.head.weight)  # the honest checkpoint loads
    marker = tmp_path / "pwned"
    (folder / "sharded" / ".metadata").write_bytes(pickle.dumps(payloads(marker)["os.system"]))
    with pytest.raises(CheckpointError, match="sharded/.metadata: refusing to load: it names posix.system"):
        train_state.load_checkpoint(folder, model=fresh, optimizer=fresh_optimizer, collective=co)
    assert not marker.exists()


def _two_process_checkpoint(run_dir: Path, assets: tuple[Path, ...] = ()) -> tuple[Path, Collective, MMaDAModel]:
    """A checkpoint as rank 0 of a 2-process run writes it (the shards come from this one process)."""
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    co = Collective(rank=0, world_size=2, save_sharded=lambda m, o, p: save_sharded(m, o, p, SINGLE),
                    load_sharded=lambda m, o, p: load_sharded(m, o, p, SINGLE))
    folder = train_state.save_checkpoint(run_dir, 3, model=model, optimizer=optimizer, scheduler=scheduler,
                                         data_state={"index": 6}, config={}, collective=co, assets=assets)
    return folder, co, model


def test_export_release_from_a_multi_process_run(tmp_path):
    tokenizer = REFERENCE / "tokenizer" / "tokenizer.json"
    folder, _, model = _two_process_checkpoint(tmp_path / "run", assets=(tokenizer,))
    out = export_release(tmp_path / "run", tmp_path / "release", dtype="bf16")  # the run folder: its latest
    stored = {t.dtype for t in load_file(str(out / "model.safetensors")).values()}
    assert stored == {torch.bfloat16} and (out / "tokenizer.json").is_file()
    released = mmada.load_model(out)
    assert torch.equal(released.head.weight, model.head.weight.to(torch.bfloat16).float())
    with pytest.raises(CheckpointError, match="already exists and is not empty"):
        export_release(folder, out)
    with pytest.raises(CheckpointError, match="holds no complete training checkpoint"):
        export_release(tmp_path, tmp_path / "other")


def test_export_release_from_a_single_process_run(finished_run, tmp_path):
    out = export_release(finished_run, tmp_path / "release")
    assert (out / "model.safetensors").read_bytes() == (
        finished_run / "step-000002" / "model" / "model.safetensors").read_bytes()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_crafted_non_tensor_entry_is_refused(dcp_folder, tmp_path):
    """DCP stores the optimizer's hyper-parameters as pickled bytes and reads them with plain pickle: a checkpoint
    whose `param_groups.0.lr` unpickles to a command is refused, the command never runs."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, optimizer = fresh_model_and_optimizer()
    model_state, optim_state = get_state_dict(model, optimizer)
    marker = tmp_path / "pwned"
    optim_state["param_groups"][0]["lr"] = payloads(marker)["os.system"]
    shutil.rmtree(dcp_folder)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=dcp_folder, no_dist=True)
    assert not marker.exists()
    fresh, fresh_optimizer = fresh_model_and_optimizer()
    with pytest.raises(CheckpointError, match=r"entry 'optimizer.param_groups.0.lr' holds something other than "
                                              r"plain data \(refused, nothing run\)"):
        load_sharded(fresh, fresh_optimizer, dcp_folder, SINGLE)
    assert not marker.exists()


def test_metadata_pointing_outside_the_folder_is_refused(dcp_folder):
    metadata = read_dcp_metadata(dcp_folder)
    index, info = next(iter(metadata.storage_data.items()))
    metadata.storage_data[index] = type(info)(relative_path="../../etc/passwd", offset=0, length=10)
    (dcp_folder / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointError, match=r"points outside the folder"):
        read_dcp_metadata(dcp_folder)


@pytest.mark.parametrize("content", [b"", b"\x80\x05garbage", b"not a pickle at all"])
def test_corrupt_metadata_is_one_clear_error(dcp_folder, tmp_path, content):
    (dcp_folder / ".metadata").write_bytes(content)
    with pytest.raises(CheckpointError, match=r"\.metadata: not a readable DCP index"):
        consolidate_to_release(dcp_folder, None, tmp_path / "release")


def test_metadata_of_another_type_is_refused(dcp_folder):
    (dcp_folder / ".metadata").write_bytes(pickle.dumps({"state_dict_metadata": {}}))
    with pytest.raises(CheckpointError, match=r"not a DCP index \(holds a dict\)"):
        read_dcp_metadata(dcp_folder)


def test_consolidate_and_sharded_resume_name_a_different_model_size(dcp_folder, tmp_path):
    wide = ModelConfig.tiny(**{**TINY, "d_model": 64, "mlp_hidden_size": 128})
    with pytest.raises(CheckpointError, match=r"parameter 'embed.weight' has shape \(512, 32\) in the checkpoint "
                                              r"but \(512, 64\) in this model"):
        consolidate_to_release(dcp_folder, wide, tmp_path / "release")
    model, optimizer = fresh_model_and_optimizer(n_layers=3)
    with pytest.raises(CheckpointError, match=r"parameter 'blocks.2.attn_norm.weight' of this model is not in the "
                                              r"checkpoint"):
        load_sharded(model, optimizer, dcp_folder, SINGLE)
    out = consolidate_to_release(dcp_folder, None, tmp_path / "release")  # the honest folder still consolidates
    assert mmada.load_model(out).config.d_model == 32


# ---- one writer per run folder -----------------------------------------------------------------------
def test_a_second_run_on_the_folder_is_refused_naming_the_owner(tmp_path):
    proc = spawn(tmp_path, "schedule.max_steps=1000")
    try:
        wait_for(lambda: (tmp_path / "metrics.jsonl").is_file(), proc)
        owner = json.loads((tmp_path / LOCK_NAME).read_text())
        assert owner["pid"] == proc.pid and owner["host"] == socket.gethostname()
        with pytest.raises(RunLockedError, match=rf"run folder {tmp_path} is in use by PID {proc.pid} on "):
            run_training(tiny_config(tmp_path), model=tiny_model(), source=TinySource())
        with pytest.raises(RunLockedError, match=f"PID {proc.pid}"):  # --resume too
            run_training(tiny_config(tmp_path), resume=True, model=tiny_model(), source=TinySource())
        assert (tmp_path / LOCK_NAME).is_file()  # the refused runs left the owner's lock alone
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert not (tmp_path / LOCK_NAME).exists()  # released at exit
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))  # one writer: every step once


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "token": "x"}))
    with caplog.at_level(logging.WARNING, logger="mmada.training.run_lock"):
        result = run_training(tiny_config(tmp_path, "schedule.max_steps=2", "schedule.warmup_steps=1"),
                              model=tiny_model(), source=TinySource())
    assert result.step == 2
    assert f"taking over the stale lock of {tmp_path}: PID {dead.pid}" in caplog.text
    assert not (tmp_path / LOCK_NAME).exists() and not list(tmp_path.glob(".lock*"))


def test_a_lock_left_by_an_earlier_process_with_our_pid_or_a_reused_pid_is_stale(tmp_path, caplog):
    """A restarted container's process can get the PID its predecessor wrote; a live PID that started at
    another time than the lock records was reused by an unrelated process."""
    here = socket.gethostname()
    for owner in ({"pid": os.getpid(), "host": here, "token": "an-earlier-process"},
                  {"pid": os.getppid(), "host": here, "token": "x", "identity": "another-boot:1"}):
        (tmp_path / LOCK_NAME).write_text(json.dumps(owner))
        with caplog.at_level(logging.WARNING, logger="mmada.training.run_lock"):
            lock = RunLock(tmp_path).acquire()
        assert f"PID {owner['pid']} on {here}" in caplog.text and "is no longer running" in caplog.text
        lock.release()
        caplog.clear()


def test_a_lock_from_another_host_is_refused(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "other-node", "token": "x"}))
    with pytest.raises(RunLockedError, match=rf"in use by PID 1 on other-node.*another machine: if that run is "
                                             rf"gone, delete {tmp_path / LOCK_NAME}"):
        RunLock(tmp_path).acquire()


def test_an_unreadable_lock_is_refused_naming_the_file(tmp_path):
    (tmp_path / LOCK_NAME).write_text("{garbage")
    with pytest.raises(RunLockedError, match=rf"unreadable lock file {tmp_path / LOCK_NAME}"):
        RunLock(tmp_path).acquire()


def test_the_lock_is_exclusive_within_a_process_and_released_only_by_its_owner(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunLockedError, match=f"PID {os.getpid()}"):
        RunLock(tmp_path).acquire()
    first.release()
    second = RunLock(tmp_path).acquire()
    first.held = True
    first.release()  # a stale handle must not delete the new owner's lock
    assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == second.token
    second.release()
    assert not (tmp_path / LOCK_NAME).exists()


# ---- unwritable run folders --------------------------------------------------------------------------
@pytest.mark.parametrize(("where", "reason"), [("file/run", "Not a directory"), ("file", "File exists")])
def test_a_run_folder_that_is_or_is_under_a_file_is_one_clear_error(tmp_path, where, reason):
    (tmp_path / "file").write_text("x")
    run_dir = tmp_path / where
    with pytest.raises(RunFolderError, match=rf"cannot write to the run folder {run_dir}: {reason}"):
        run_training(tiny_config(run_dir), model=tiny_model(), source=TinySource())
    assert (tmp_path / "file").read_text() == "x"


def test_a_read_only_run_folder_is_one_clear_error(tmp_path, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "write_text", refuse)  # root ignores chmod: simulate EACCES
    with pytest.raises(RunFolderError, match=rf"cannot write to the run folder {tmp_path}: Permission denied") as err:
        run_training(tiny_config(tmp_path), model=tiny_model(), source=TinySource())
    assert isinstance(err.value, PermissionError)


# ---- a full disk while checkpointing ------------------------------------------------------------------
def _full_disk_at(monkeypatch, step: int, target: str = "save_model") -> None:
    original = getattr(train_state, target) if target != "torch.save" else torch.save

    def write(*args, **kwargs):
        folder = next(Path(a) for a in args if isinstance(a, (str, Path)))
        if train_state.checkpoint_name(step) in str(folder):
            if target == "torch.save":
                raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 320 vs 256\n"
                                   "PytorchStreamWriter failed writing file data/0: file write failed")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
        return original(*args, **kwargs)

    if target == "torch.save":
        monkeypatch.setattr(train_state.torch, "save", write)
    else:
        monkeypatch.setattr(train_state, target, write)


@pytest.mark.parametrize(("target", "reason"), [("save_model", "No space left on device"),
                                                ("torch.save", "file write failed")])
def test_a_full_disk_keeps_the_previous_checkpoint_and_resumes(tmp_path, monkeypatch, target, reason):
    config = tiny_config(tmp_path, "schedule.max_steps=4", "checkpoint.every=2", "schedule.warmup_steps=1")
    _full_disk_at(monkeypatch, 4, target)
    with pytest.raises(CheckpointWriteError, match=rf"checkpoint of step 4 not written into .*{reason}.*; the "
                                                   rf"previous checkpoint {tmp_path / 'step-000002'} is intact"):
        run_training(config, model=tiny_model(), source=TinySource())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(("step-", ".tmp-"))] == ["step-000002"]
    assert (tmp_path / "latest").read_text().strip() == "step-000002"
    assert not (tmp_path / LOCK_NAME).exists()
    monkeypatch.undo()  # space freed: the run resumes from the intact checkpoint
    result = run_training(config, resume=True, model=tiny_model(seed=3), source=TinySource())
    assert result.step == 4 and train_state.find_latest(tmp_path).name == "step-000004"


def test_a_failing_latest_pointer_after_the_commit_only_warns(tmp_path, monkeypatch, caplog):
    def no_space(run, name):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train_state, "_write_latest", no_space)
    with caplog.at_level(logging.WARNING):
        result = run_training(tiny_config(tmp_path, "schedule.max_steps=1", "schedule.warmup_steps=0"),
                              model=tiny_model(), source=TinySource())
    assert result.checkpoint == tmp_path / "step-000001" and train_state.find_latest(tmp_path) == result.checkpoint
    assert "step-000001 committed, but" in caplog.text


# ---- --resume with a corrupt or foreign checkpoint ---------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished")
    run_training(tiny_config(run_dir, "schedule.max_steps=2", "schedule.warmup_steps=1"), model=tiny_model(),
                 source=TinySource())
    return run_dir


def _resume(run_dir: Path, model: MMaDAModel | None = None):
    config = tiny_config(run_dir, "schedule.max_steps=3", "schedule.warmup_steps=1")
    return run_training(config, resume=True, model=model or tiny_model(), source=TinySource())


def _copy(finished_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    return run_dir, run_dir / "step-000002"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {
    "optimizer garbage": ("optimizer.pt", lambda p: p.write_bytes(b"\x00garbage" * 10),
                          r"optimizer.pt is corrupt or not an optimizer state"),
    "optimizer truncated": ("optimizer.pt", _truncate, r"optimizer.pt is corrupt or not an optimizer state"),
    "optimizer missing": ("optimizer.pt", Path.unlink, r"optimizer.pt is missing"),
    "optimizer of another model": ("optimizer.pt", lambda p: torch.save({"state": {}, "param_groups": []}, p),
                                   r"optimizer.pt does not fit this model's optimizer"),
    "trainer.json corrupt": ("trainer.json", lambda p: p.write_text("{\"step\": 2,"), r"trainer.json is corrupt"),
    "trainer.json not a state": ("trainer.json", lambda p: p.write_text("[]"), r"trainer.json: not a trainer state"),
    "scheduler.json corrupt": ("scheduler.json", lambda p: p.write_text("nope"), r"scheduler.json is corrupt"),
    "data cursor missing": ("data-0.json", Path.unlink, r"data-0.json is missing"),
    "rng state truncated": ("rng-0.safetensors", _truncate, r"rng-0.safetensors is missing or corrupt"),
    "rng json wrong": ("rng-0.json", lambda p: p.write_text("{}"), r"rng-0.json: not an RNG state"),
    "weights truncated": ("model/model.safetensors", _truncate, r"model.safetensors.*(corrupt|cannot be read)"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_resume_from_a_corrupt_checkpoint_names_the_file(finished_run, tmp_path, case):
    name, corrupt, message = CORRUPTIONS[case]
    run_dir, folder = _copy(finished_run, tmp_path)
    corrupt(folder / name)
    with pytest.raises(CheckpointError, match=message):
        _resume(run_dir)
    assert not (run_dir / LOCK_NAME).exists()


def test_a_pickle_in_optimizer_pt_never_runs(finished_run, tmp_path):
    run_dir, folder = _copy(finished_run, tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"state": {}, "param_groups": [payloads(marker)["os.system"]]}, folder / "optimizer.pt")
    with pytest.raises(CheckpointError, match=r"optimizer.pt is corrupt or not an optimizer state"):
        _resume(run_dir)
    assert not marker.exists()


@pytest.mark.parametrize(("overrides", "message"), [
    ({"d_model": 64, "mlp_hidden_size": 128},
     r"parameter 'embed.weight' has shape \(512, 32\) in the checkpoint but \(512, 64\) in this model"),
    ({"n_layers": 3}, r"parameter 'blocks.2.attn_norm.weight' of this model is not in the checkpoint"),
    ({"n_layers": 1}, r"the checkpoint has parameter 'blocks.1.attn.k.weight', which this model lacks"),
])
def test_resume_with_a_different_model_size_names_the_parameter(finished_run, tmp_path, overrides, message):
    run_dir, _ = _copy(finished_run, tmp_path)
    with pytest.raises(CheckpointError, match=message):
        _resume(run_dir, MMaDAModel(ModelConfig.tiny(**{**TINY, **overrides})))


def test_resume_with_another_number_of_processes_is_refused(finished_run, tmp_path):
    run_dir, folder = _copy(finished_run, tmp_path)
    meta = json.loads((folder / "trainer.json").read_text())
    (folder / "trainer.json").write_text(json.dumps({**meta, "world_size": 2}))
    with pytest.raises(CheckpointError, match=r"step-000002 was written by 2 process\(es\); resume it with the same "
                                              r"number \(this run has 1\)"):
        _resume(run_dir)


def test_the_intact_checkpoint_still_resumes(finished_run, tmp_path):
    run_dir, _ = _copy(finished_run, tmp_path)
    assert _resume(run_dir).step == 3


# ---- a diverging run stops --------------------------------------------------------------------------
def _nan_after(monkeypatch, micro_batches: int) -> None:
    """The objective's loss becomes NaN from the given micro-batch on (an injected bad batch / overflow)."""
    original = trainer_module.MaskedDiffusionObjective

    def build(config):
        objective, calls = original(config), [0]

        def call(model, batch, generator):
            out = objective(model, batch, generator)
            calls[0] += 1
            return type(out)(**{**out.__dict__, "total": out.total * math.nan}) if calls[0] > micro_batches else out

        return call

    monkeypatch.setattr(trainer_module, "MaskedDiffusionObjective", build)


def test_a_non_finite_loss_stops_the_run_after_the_patience(tmp_path, monkeypatch):
    _nan_after(monkeypatch, 2 * 3)  # steps 1-3 fine (2 micro-batches each), NaN from step 4
    config = tiny_config(tmp_path, "checkpoint.every=2", "checkpoint.keep_last=5", "optim.nonfinite_patience=2")
    with pytest.raises(NonFiniteLossError, match=r"step 5: 2 consecutive step\(s\) with a non-finite loss or "
                                                 r"gradient norm \(last: loss nan, grad_norm nan; "
                                                 r"`optim.nonfinite_patience` = 2\), stopped. The last good "
                                                 rf"checkpoint is {tmp_path / 'step-000004'}"):
        run_training(config, model=tiny_model(), source=TinySource())
    # the NaN steps skipped their updates: step 4's checkpoint holds step 3's (finite) weights
    assert [p.name for p in train_state.list_checkpoints(tmp_path)] == ["step-000002", "step-000004"]
    weights = mmada.load_model(tmp_path / "step-000004" / "model").state_dict()
    assert all(v.isfinite().all() for v in weights.values())
    assert not (tmp_path / LOCK_NAME).exists()
    assert isinstance(NonFiniteLossError("x"), ValueError)  # the CLI prints it in one line, exit code 2


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    def poison(model, step):
        if step == 3:
            model.head.weight.fill_(math.nan)
        return {}

    config = tiny_config(tmp_path, "checkpoint.every=1", "checkpoint.keep_last=5", "log.eval_every=1")
    with pytest.raises(NonFiniteLossError, match=r"step 3: the weights hold non-finite values \(NaN/inf\), so they "
                                                 rf"are not checkpointed. The last good checkpoint is "
                                                 rf"{tmp_path / 'step-000002'}"):
        run_training(config, model=tiny_model(), source=TinySource(), evaluate=poison)
    assert train_state.find_latest(tmp_path) == tmp_path / "step-000002"
    assert (tmp_path / "latest").read_text().strip() == "step-000002"
    assert mmada.load_model(tmp_path / "step-000002" / "model").head.weight.isfinite().all()


def test_an_infinite_learning_rate_that_slips_past_the_config_stops_the_run(tmp_path):
    config = tiny_config(tmp_path)
    object.__setattr__(config.optim, "lr", math.inf)  # the config refuses it (below); as if set in code
    with pytest.raises(NonFiniteLossError, match=r"step 4: 3 consecutive step\(s\).*No checkpoint was written"):
        run_training(config, model=tiny_model(), source=TinySource())
    assert train_state.find_latest(tmp_path) is None


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_patience_zero_trains_to_the_end_as_before(tmp_path, monkeypatch):
    _nan_after(monkeypatch, 0)
    config = tiny_config(tmp_path, "schedule.max_steps=3", "optim.nonfinite_patience=0")
    result = run_training(config, model=tiny_model(), source=TinySource())
    assert result.step == 3 and result.exit_code == 0


# ---- settings ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("override", "message"), [
    ("optim.lr=inf", "`optim.lr` must be a finite number, got inf"),
    ("optim.lr=nan", "`optim.lr` must be a finite number, got nan"),
    ("optim.eps=inf", "`optim.eps` must be a finite number"),
    ("optim.weight_decay=nan", "`optim.weight_decay` must be a finite number"),
    ("optim.max_grad_norm=inf", "`optim.max_grad_norm` must be a finite number"),
    ("optim.betas=[0.9,nan]", "`optim.betas` must be two numbers in [0, 1)"),
    ("optim.nonfinite_patience=-1", "`optim.nonfinite_patience` must be >= 0"),
    ("schedule.min_lr_scale=nan", "`schedule.min_lr_scale` must be in [0, 1]"),
    ("model.init_std=nan", "`model.init_std` must be a finite number"),
    ("model.lora_alpha=inf", "`model.lora_alpha` must be a finite number"),
    ("model.lora_dropout=1.5", "`model.lora_dropout` must be in [0, 1)"),
])
def test_non_finite_and_out_of_range_settings_are_refused(override, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config([], [override])


@pytest.mark.parametrize(("switch", "module"), [("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb")])
def test_a_metrics_sink_without_its_package_is_one_line_before_training(tmp_path, monkeypatch, switch, module):
    monkeypatch.setitem(sys.modules, module, None)  # import fails, installed or not
    with pytest.raises(MissingPackageError, match=rf"`log.{switch}` is on but the `{switch}` package is not "
                                                  rf"installed: pip install {switch} \(or set log.{switch}=false\)"):
        run_training(tiny_config(tmp_path / "run", f"log.{switch}=true"), model=tiny_model(), source=TinySource())
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


@pytest.mark.slow
def test_crafted_metadata_is_refused_by_a_real_two_process_resume(tmp_path):
    """torchrun, 2 ranks on gloo: every rank refuses the crafted index before any collective (no hang), the
    payload never runs, and the run folder's lock is released."""
    from test_trainer import DISTRIBUTED_SCRIPT, ROOT

    def launch(resume: bool, max_steps: int) -> subprocess.CompletedProcess:
        script = tmp_path / f"run_{resume}.py"
        script.write_text(DISTRIBUTED_SCRIPT.format(tests=str(ROOT / "tests"), run_dir=str(tmp_path / "run"),
                                                    resume=resume, max_steps=max_steps))
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               str(script)], env={**env, "OMP_NUM_THREADS": "1"}, timeout=240, capture_output=True,
                              text=True)

    assert launch(False, 2).returncode == 0
    marker = tmp_path / "pwned"
    (tmp_path / "run" / "step-000002" / "sharded" / ".metadata").write_bytes(
        pickle.dumps(payloads(marker)["os.system"]))
    failed = launch(True, 4)
    assert failed.returncode != 0 and "refusing to load: it names posix.system" in failed.stdout + failed.stderr
    assert not marker.exists() and not (tmp_path / "run" / LOCK_NAME).exists()


def test_resume_drops_a_metrics_line_cut_short_by_a_kill(finished_run, tmp_path, caplog):
    run_dir, _ = _copy(finished_run, tmp_path)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 1.2')  # SIGKILL in the middle of a write
    with caplog.at_level(logging.WARNING, logger="mmada.training.metrics"):
        assert _resume(run_dir).step == 3
    assert f"{run_dir / 'metrics.jsonl'}:3 is not a metrics record; dropped" in caplog.text
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
