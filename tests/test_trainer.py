"""The trainer: loss goes down, exact resume, crash safety, signals, config loading, optimizer and schedule.

Runs use a 2-layer random model over a fixed cycle of real layouts (t2i + lm + mmu rows built with the
fixture tokenizer), so they take a fraction of a second per step on a CPU.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import mmada
from mmada.checkpoint import train_state
from mmada.cli import main
from mmada.model import MMaDAModel, ModelConfig
from mmada.prompting import TextTokenizer, Vocab, build_lm_batch, build_mmu_batch, build_t2i_batch
from mmada.training.config import TrainConfig, load_config
from mmada.training.data_world import WorldSpec
from mmada.training.optim import build_optimizer, lr_scale
from mmada.training.trainer import run_training
from mmada.utils.device import seed_everything

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "fixtures" / "mmada_reference"
CONFIGS = ROOT / "src" / "mmada" / "configs" / "train"
M = 16  # max_text_len of the test layouts: rows are M + 16 image tokens + 3 = 35 long
TINY = dict(vocab_size=512, embedding_size=512, mask_token_id=315, eos_token_id=301, pad_token_id=301,
            llm_vocab_size=384, codebook_size=128)
"""`ModelConfig.tiny()` resized to the fixture tokenizer (319 text ids, 128 image codes)."""


class TinySource:
    """A `BatchSource` cycling through `n` fixed micro-batches (2 t2i + 1 lm + 1 mmu rows each).

    Captions map to fixed random images, so the t2i and mmu rows are learnable by heart; `delay` slows each
    micro-batch down so that a subprocess can be signalled mid-run.
    """

    CAPTIONS = ("a red cube", "two blue balls", "a green ring on the left", "one yellow star", "a purple cone",
                "three small dots", "a big white square", "an orange triangle")

    def __init__(self, n: int = 4, delay: float = 0.0) -> None:
        tok = TextTokenizer.from_pretrained(REFERENCE / "tokenizer")
        vocab = Vocab.from_tokenizer(tok, vocab_size=512, codebook_size=128, reserved=None)
        gen = torch.Generator().manual_seed(1234)
        images = vocab.image_ids(torch.randint(0, 128, (len(self.CAPTIONS), 16), generator=gen))
        self.batches = []
        for i in range(n):
            rows = [(2 * i) % len(self.CAPTIONS), (2 * i + 1) % len(self.CAPTIONS)]
            texts = tok.encode_batch([self.CAPTIONS[r] for r in rows])
            t2i = build_t2i_batch(texts, images[rows], images[rows], vocab=vocab, max_text_len=M,
                                  cond_dropout_prob=0.0)
            lm = build_lm_batch(tok.encode_batch([f"the {self.CAPTIONS[rows[0]]} is next to it"]), vocab=vocab,
                                max_seq_len=t2i.seq_len)
            chat = ("<|start_header_id|>user<|end_header_id|>\nWhat is it?<|eot_id|>"
                    f"<|start_header_id|>assistant<|end_header_id|>\n{self.CAPTIONS[rows[1]]}")
            mmu = build_mmu_batch(images[rows[1:]], tok.encode_batch([chat]), vocab=vocab, max_text_len=M)
            self.batches.append({"t2i": t2i, "lm": lm, "mmu": mmu})
        self.index, self.delay = 0, delay

    def __iter__(self):
        while True:
            batch = self.batches[self.index % len(self.batches)]
            self.index += 1  # before yielding: a state saved now resumes after this micro-batch
            time.sleep(self.delay)
            yield batch

    def state_dict(self):
        return {"index": self.index}

    def load_state_dict(self, state):
        self.index = int(state["index"])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices gain nothing from threads, and a busy 2-core machine makes OpenMP spin 40x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(seed: int = 0) -> MMaDAModel:
    seed_everything(seed)
    model = MMaDAModel(ModelConfig.tiny(**TINY))
    model.reset_parameters()
    return model


def tiny_config(run_dir: Path, *overrides: str) -> TrainConfig:
    """Every setting of a test run, through the same key=value overrides as the command line."""
    base = [f"log.run_dir={run_dir}", "model.init=tiny", "device=cpu", "seed=7", "optim.lr=3e-3",
            "schedule.warmup_steps=3", "schedule.max_steps=12", "batch.grad_accum=2", "log.log_every=1",
            "checkpoint.every=0", "objective.padding=hide"]
    return load_config([], [*base, *overrides])


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> list[tuple[int, float, float, float]]:
    return [(r["step"], r["loss"], r["lr"], r["grad_norm"]) for r in read_metrics(run_dir) if "loss" in r]


# ---- training ----------------------------------------------------------------------------------------
def test_loss_goes_down(tmp_path):
    config = tiny_config(tmp_path, "schedule.max_steps=60", "schedule.warmup_steps=5", "batch.grad_accum=1",
                         "optim.lr=1e-2")
    result = run_training(config, model=tiny_model(), source=TinySource())
    assert result.step == 60 and result.stopped_by is None and result.exit_code == 0
    curve = [loss for _, loss, _, _ in losses(tmp_path)]
    first, last = sum(curve[:10]) / 10, sum(curve[-10:]) / 10
    assert last < 0.7 * first, (first, last)
    record = read_metrics(tmp_path)[-1]
    assert {"loss/t2i", "loss/lm", "loss/mmu", "lr", "grad_norm", "tokens_per_s", "step_time_s"} <= set(record)
    assert record["tokens"] == (2 + 1 + 1) * 35  # rows x length of one micro-batch


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """12 uninterrupted steps: the reference the interrupted runs must reproduce."""
    run_dir = tmp_path_factory.mktemp("straight")
    run_training(tiny_config(run_dir), model=tiny_model(), source=TinySource())
    return run_dir


def test_resume_reproduces_the_uninterrupted_run_exactly(straight_run, tmp_path):
    first = run_training(tiny_config(tmp_path), model=tiny_model(), source=TinySource(), max_steps=5)
    assert first.step == 5 and first.checkpoint == tmp_path / "step-000005"
    # a different random model and fresh RNGs: everything must come from the checkpoint
    resumed = run_training(tiny_config(tmp_path), resume=True, model=tiny_model(seed=99), source=TinySource())
    assert resumed.step == 12
    assert losses(tmp_path) == losses(straight_run)  # bit-identical floats: loss, lr, grad norm per step
    for name in ("model.safetensors",):
        assert (tmp_path / "step-000012" / "model" / name).read_bytes() == (
            straight_run / "step-000012" / "model" / name).read_bytes()


def test_run_dir_with_checkpoints_needs_resume(straight_run):
    with pytest.raises(ValueError, match="already holds checkpoints.*--resume"):
        run_training(tiny_config(straight_run), model=tiny_model(), source=TinySource())


def test_checkpoint_is_a_release_checkpoint_and_pruned(tmp_path):
    config = tiny_config(tmp_path, "checkpoint.every=2", "checkpoint.keep_last=2", "schedule.max_steps=6",
                         f"model.tokenizer={REFERENCE / 'tokenizer'}")
    run_training(config, model=tiny_model(), source=TinySource())
    assert [p.name for p in train_state.list_checkpoints(tmp_path)] == ["step-000004", "step-000006"]
    assert (tmp_path / "latest").read_text().strip() == "step-000006"
    folder = tmp_path / "step-000006"
    model = mmada.load_model(folder / "model")  # the release format, tokenizer beside it
    assert (folder / "model" / "tokenizer.json").is_file() and model.config.vocab_size == 512
    meta = json.loads((folder / "trainer.json").read_text())
    assert meta["step"] == 6 and meta["config"]["optim"]["lr"] == 3e-3
    assert {"optimizer.pt", "scheduler.json", "rng-0.safetensors", "rng-0.json", "data-0.json"} <= {
        p.name for p in folder.iterdir()}
    assert json.loads((folder / "data-0.json").read_text()) == {"index": 12}
    assert (tmp_path / "config.yaml").is_file()


def test_latest_survives_partial_and_stale_folders(tmp_path):
    config = tiny_config(tmp_path, "checkpoint.every=2", "schedule.max_steps=4")
    run_training(config, model=tiny_model(), source=TinySource())
    (tmp_path / ".tmp-step-000006" / "model").mkdir(parents=True)  # a save killed half-way
    (tmp_path / ".tmp-step-000006" / "model" / "model.safetensors").write_bytes(b"\0" * 10)
    (tmp_path / "step-000008").mkdir()  # a folder without trainer.json is not a checkpoint
    assert train_state.find_latest(tmp_path) == tmp_path / "step-000004"
    (tmp_path / "latest").write_text("step-000099\n")  # names a folder that is gone
    assert train_state.find_latest(tmp_path) == tmp_path / "step-000004"
    (tmp_path / "latest").unlink()
    assert train_state.find_latest(tmp_path) == tmp_path / "step-000004"


def test_default_preview_and_world_evaluation_hooks(tmp_path):
    config = tiny_config(tmp_path, "schedule.max_steps=2", "schedule.warmup_steps=1", "log.preview_every=2",
                         "log.eval_every=2",
                         f"model.tokenizer={REFERENCE / 'tokenizer'}",
                         f"model.image_tokenizer={REFERENCE / 'magvitv2_tiny'}", "log.sample_gen_length=8",
                         "log.eval_tasks=[arithmetic,vqa]", "log.eval_limit=1")
    run_training(config, model=tiny_model(), source=TinySource())
    assert (tmp_path / "previews" / "step-000002.txt").read_text().startswith("Q: What is 12 + 30?\nA:")
    assert (tmp_path / "previews" / "step-000002-0.png").is_file()
    scores = [r for r in read_metrics(tmp_path) if "eval/arithmetic/overall" in r]
    assert len(scores) == 1 and 0.0 <= scores[0]["eval/vqa/overall"] <= 1.0


# ---- processes: signals and crashes ------------------------------------------------------------------
SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import torch
from test_trainer import TinySource, tiny_config, tiny_model
from mmada.training.trainer import run_training
from mmada.utils.logging import setup_logging

torch.set_num_threads(1)  # as the in-process runs it is compared with
setup_logging()
config = tiny_config({run_dir!r}, *{overrides!r})
result = run_training(config, resume={resume!r}, model=tiny_model(), source=TinySource(delay={delay!r}))
sys.exit(result.exit_code)
"""


def spawn(run_dir: Path, *overrides: str, resume: bool = False, delay: float = 0.05) -> subprocess.Popen:
    code = SCRIPT.format(tests=str(ROOT / "tests"), run_dir=str(run_dir), overrides=overrides, resume=resume,
                         delay=delay)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the run exited early ({proc.returncode}):\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the run")
        time.sleep(0.05)


def logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_signal_finishes_the_step_checkpoints_and_exits(tmp_path, signum, code):
    proc = spawn(tmp_path, "schedule.max_steps=1000")
    wait_for(lambda: logged_steps(tmp_path) >= 3, proc)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == code, out
    latest = train_state.find_latest(tmp_path)
    step = json.loads((latest / "trainer.json").read_text())["step"]
    assert step == logged_steps(tmp_path) >= 3  # the step in flight was finished, then saved
    assert signal.Signals(signum).name in out


def test_sigkill_resumes_from_the_last_complete_checkpoint(straight_run, tmp_path):
    proc = spawn(tmp_path, "checkpoint.every=2", "checkpoint.keep_last=10", delay=0.15)  # steps 7-12: >= 1.8 s
    wait_for(lambda: (tmp_path / "step-000006").is_dir(), proc)
    proc.kill()  # SIGKILL: no handler runs, whatever was being written stays half-written
    proc.wait()
    partial = tmp_path / ".tmp-step-000008"
    partial.mkdir(exist_ok=True)
    (partial / "trainer.json").write_text("{")  # even a corrupt marker inside a temp folder is never read
    latest = train_state.find_latest(tmp_path)
    assert latest is not None and latest.name >= "step-000006"
    resumed = run_training(tiny_config(tmp_path, "checkpoint.every=2", "checkpoint.keep_last=10"), resume=True,
                           model=tiny_model(seed=99), source=TinySource())
    assert resumed.step == 12 and not partial.exists()  # the next save swept the leftover
    assert losses(tmp_path) == losses(straight_run)


DISTRIBUTED_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import torch
from test_trainer import TinySource, tiny_config, tiny_model
from mmada.training.trainer import run_training

torch.set_num_threads(1)
config = tiny_config({run_dir!r}, "checkpoint.every=2")
run_training(config, resume={resume!r}, model=tiny_model(), source=TinySource(), max_steps={max_steps!r})
"""


def torchrun(tmp_path: Path, run_dir: Path, *, resume: bool, max_steps: int | None) -> None:
    script = tmp_path / f"run_{resume}_{max_steps}.py"
    script.write_text(DISTRIBUTED_SCRIPT.format(tests=str(ROOT / "tests"), run_dir=str(run_dir), resume=resume,
                                                max_steps=max_steps))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(script)], env={**env, "OMP_NUM_THREADS": "1"}, check=True, timeout=240,
                   capture_output=True)


@pytest.mark.slow
def test_two_process_fsdp_run_resumes_exactly(tmp_path):
    """2 ranks on gloo: sharded checkpoints (one RNG and data cursor per rank), resumed bit for bit."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    torchrun(tmp_path, straight, resume=False, max_steps=6)
    torchrun(tmp_path, stopped, resume=False, max_steps=4)
    torchrun(tmp_path, stopped, resume=True, max_steps=6)
    assert losses(stopped) == losses(straight) and len(losses(straight)) == 6
    folder = train_state.find_latest(stopped)
    assert folder.name == "step-000006" and (folder / "sharded" / ".metadata").is_file()
    per_rank = {"data-0.json", "data-1.json", "rng-0.safetensors", "rng-1.safetensors"}
    assert per_rank <= {p.name for p in folder.iterdir()}


# ---- configuration -----------------------------------------------------------------------------------
def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent("""
        optim: {lr: 1e-4, betas: [0.9, 0.95]}   # YAML reads 1e-4 as a string; the field type makes it a float
        schedule: {kind: linear, warmup_steps: 10, max_steps: 100}
        objective: {lm_coeff: 0.5}
        data: {name: world_pretrain, max_text_len: 48}
    """))
    config = load_config([path], ["optim.lr=2e-4", "data.batch_sizes.t2i=4", "log.progress=yes"])
    assert config.optim.lr == 2e-4 and config.optim.betas == (0.9, 0.95)
    assert config.schedule.kind == "linear" and config.schedule.max_steps == 100
    assert config.schedule.min_lr_scale == 0.0 and config.optim.eps == 1e-8  # untouched: the defaults
    assert config.objective.lm_coeff == 0.5 and config.objective.t2i_coeff == 1.0
    assert config.data == WorldSpec(name="world_pretrain", max_text_len=48, batch_sizes={"t2i": 4})  # typed
    assert config.log.progress is True
    assert load_config([], ["model.overrides.d_model=64"]).model.model_config().d_model == 64


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", "unknown config key `optim.lrr`; valid keys of `optim`: lr, betas"),
        ("optimizer.lr=1", "unknown config key `optimizer`; valid keys: model, optim"),
        ("optim.lr=fast", "`optim.lr` expects float, got 'fast'"),
        ("optim.lr=-1", "`optim.lr` must be > 0"),
        ("schedule.max_steps=1.5", "`schedule.max_steps` expects int"),
        ("schedule.kind=step", "`schedule.kind` must be one of 'cosine', 'linear', 'constant'"),
        ("objective.padding=none", "`objective.padding` must be one of"),
        ("model.overrides.n_layer=2", "`model.overrides` has unknown ModelConfig field 'n_layer'"),
        ("optim", "must look like section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config([], [override])


def test_cli_refuses_bad_keys_with_one_line(capsys):
    assert main(["train", str(CONFIGS / "tiny_pretrain.yaml"), "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmada train: error: unknown config key `optim.lrr`") and err.count("\n") == 1
    assert main(["train", str(CONFIGS / "tiny_pretrain.yaml"), "log.log_every=often"]) == 2
    assert "`log.log_every` expects int, got 'often'" in capsys.readouterr().err


def test_cli_trains_the_tiny_world_and_resumes(tmp_path, monkeypatch, capsys):
    """`mmada train configs/train/tiny_pretrain.yaml` end to end (world data, fixture tokenizers), shrunk."""
    monkeypatch.chdir(ROOT)  # the config's tokenizer paths are relative to the repository root
    small = ["model.overrides.d_model=32", "model.overrides.n_layers=1", "model.overrides.mlp_hidden_size=64",
             "schedule.warmup_steps=1", "data.pool_size=64", "data.batch_sizes={t2i: 2, mmu: 2, lm: 1, lm_chat: 1}",
             "log.preview_every=0", "log.eval_every=0", "log.log_every=1"]
    config = str(CONFIGS / "tiny_pretrain.yaml")
    assert main(["train", config, *small, "schedule.max_steps=4", "--out", str(tmp_path), "-q"]) == 0
    assert main(["train", config, *small, "schedule.max_steps=4", "--out", str(tmp_path), "-q"]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main(["train", config, *small, "schedule.max_steps=6", "--out", str(tmp_path), "--resume", "-q"]) == 0
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]
    assert train_state.find_latest(tmp_path) == tmp_path / "step-000006"
    assert (tmp_path / "step-000006" / "model" / "tokenizer.json").is_file()


STAGES = {  # MMADA.md §2.3: lr, warmup, min_lr_scale, grad_accum, (t2i, lm, mmu) coefficients, rows t2i/lm/mmu
    "stage1_1": (1e-4, 5000, 0.0, 2, (1.0, 0.1, 1.0), (7, 2, 6)),
    "stage1_2": (5e-5, 5000, 0.1, 2, (1.0, 0.1, 0.5), (7, 2, 3)),
    "stage1_3": (5e-5, 5000, 0.1, 4, (1.0, 0.4, 0.5), (4, 1, 1)),
    "stage2_1": (5e-5, 5000, 0.1, 4, (1.0, 0.5, 0.5), (1, 2, 1)),
    "stage2_2": (5e-5, 5000, 0.1, 4, (0.05, 0.6, 0.4), (1, 2, 1)),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_official_stage_configs(stage):
    config = load_config([CONFIGS / f"{stage}.yaml"])
    lr, warmup, min_scale, accum, coeffs, rows = STAGES[stage]
    assert (config.optim.lr, config.schedule.warmup_steps, config.schedule.min_lr_scale) == (lr, warmup, min_scale)
    assert config.batch.grad_accum == accum and config.optim.max_grad_norm == 1.0
    assert (config.objective.t2i_coeff, config.objective.lm_coeff, config.objective.mmu_coeff) == coeffs
    assert config.optim.betas == (0.9, 0.999) and config.optim.weight_decay == 0.01 and config.seed == 10086
    assert config.model.gradient_checkpointing and config.model.mixed_precision == "bf16"
    tasks = config.data.tasks
    lm = tasks.get("lm", tasks.get("lm_chat"))
    assert (tasks["t2i"]["batch_size"], lm["batch_size"], tasks["mmu"]["batch_size"]) == rows


@pytest.mark.parametrize("name", ["tiny_pretrain", "tiny_sft", "tiny_sft_nocot"])
def test_tiny_world_configs(name):
    config = load_config([CONFIGS / f"{name}.yaml"])
    assert config.data.name == ("world_pretrain" if name == "tiny_pretrain" else "world_sft")
    assert config.model.mixed_precision == "bf16" and config.schedule.max_steps <= 20_000  # measured faster on CPU
    assert getattr(config.data, "cot", True) is (name != "tiny_sft_nocot")
    objective = config.objective  # the answer loss that teaches from scratch (docs/results.md)
    assert objective.divides_by_real_length("mmu") and objective.divides_by_real_length("lm_chat")
    assert objective.whole_answer_max_tokens["mmu"] >= 8 and not objective.ignores_padding("mmu")


# ---- optimizer and schedule --------------------------------------------------------------------------
def test_no_weight_decay_on_norms_and_embeddings():
    model = tiny_model()
    optimizer = build_optimizer(model, load_config([], ["optim.weight_decay=0.1"]).optim)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert set(plain["names"]) == {"embed.weight", "norm.weight"} | {
        f"blocks.{i}.{n}.weight" for i in range(2) for n in ("attn_norm", "mlp_norm")}
    assert "head.weight" in decayed["names"] and "blocks.0.attn.q.weight" in decayed["names"]
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_lr_schedule_shapes():
    def curve(kind, min_scale=0.1):
        return [lr_scale(s, kind=kind, warmup_steps=10, max_steps=110, min_lr_scale=min_scale) for s in range(131)]

    cosine = curve("cosine")
    assert cosine[:11] == [s / 10 for s in range(11)]  # linear warmup from 0 to the peak
    assert all(a >= b for a, b in itertools.pairwise(cosine[10:]))  # then never increases
    assert math.isclose(cosine[60], 0.1 + 0.9 * 0.5)  # half way: half way between the peak and the floor
    assert cosine[110] == pytest.approx(0.1) and cosine[130] == pytest.approx(0.1)  # the floor, then flat
    linear = curve("linear", 0.0)
    assert linear[35] == pytest.approx(0.75) and linear[110] == 0.0
    assert curve("constant")[10:] == [1.0] * 121


# ---- LoRA ---------------------------------------------------------------------------------------------
def test_lora_run_resumes_exactly_and_checkpoints_the_merged_model(tmp_path_factory):
    from mmada.model.lora import LoRAConfig, apply_lora, load_adapter, merge_lora

    def lora_model() -> MMaDAModel:
        model = tiny_model()
        apply_lora(model, LoRAConfig(rank=4, alpha=8))
        return model

    straight, part = tmp_path_factory.mktemp("lora_straight"), tmp_path_factory.mktemp("lora_part")
    run_training(tiny_config(straight), model=lora_model(), source=TinySource())
    run_training(tiny_config(part), model=lora_model(), source=TinySource(), max_steps=5)
    run_training(tiny_config(part), resume=True, model=lora_model(), source=TinySource())
    assert losses(part) == losses(straight)
    final = part / "step-000012"
    expected = lora_model()
    load_adapter(expected, final / "adapter.safetensors")
    merge_lora(expected)
    released = mmada.load_model(final / "model")  # a plain release checkpoint, adapters folded in
    for (name, a), b in zip(expected.state_dict().items(), released.state_dict().values()):
        assert torch.equal(a, b), name
    base = tiny_model()
    assert not torch.equal(base.blocks[0].attn.q.weight, released.blocks[0].attn.q.weight)  # the adapters trained
    assert torch.equal(base.embed.weight, released.embed.weight)  # and nothing else did


def test_lora_from_the_config(tmp_path):
    from mmada.model.lora import LoRALinear
    from mmada.training.config import build_model

    config = tiny_config(tmp_path, "model.lora_rank=2", "model.lora_targets=[attn.q,attn.v]")
    model = build_model(config.model, "cpu")
    lora = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    assert lora and all(name.endswith(("attn.q", "attn.v")) for name in lora)
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())
    with pytest.raises(ValueError, match="lora_rank"):
        tiny_config(tmp_path, "model.lora_rank=-1")
