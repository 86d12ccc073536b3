"""UniGRPO as a training stage (`mmada.rl.trainer`): the stage config, the trainer's RL step, checkpoints
and exact resume, and `mmada train tiny_unigrpo` end to end, on the built-in tiny model (shrunk rollouts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmada.checkpoint.train_state import find_latest
from mmada.rl.trainer import RLTrainConfig, load_stage, rollout_settings, run_rl_training
from mmada.training.config import TrainConfig
from mmada.utils.device import seed_everything

TINY = Path(__file__).resolve().parents[1] / "src" / "mmada" / "assets" / "mmada-tiny"
SMALL = [
    f"model.init={TINY}", "model.mixed_precision=none", "rl.prompts_per_step=2", "rl.unigrpo.group_size=4",
    "rl.unigrpo.inner_steps=2", "rl.text={gen_length: 16, steps: 8, block_length: 16, temperature: 1.0}",
    "rl.short={gen_length: 8, steps: 4, block_length: 8, temperature: 1.0}", "rl.image={timesteps: 4}",
    "log.progress=false", "checkpoint.every=2", "optim.lr=1e-4",
]


def _config(tmp_path: Path, name: str, *extra: str) -> RLTrainConfig:
    config = load_stage(["tiny_unigrpo"], [f"log.run_dir={tmp_path / name}", *SMALL, *extra])
    assert isinstance(config, RLTrainConfig)
    return config


def _weights(run: Path) -> dict[str, torch.Tensor]:
    latest = find_latest(run)
    assert latest is not None
    return load_file(str(latest / "model" / "model.safetensors"))


def test_a_stage_with_an_rl_section_is_a_unigrpo_stage(tmp_path):
    config = _config(tmp_path, "run", "rl.unigrpo.beta=0.05")
    assert config.rl.unigrpo.beta == 0.05 and config.rl.tasks == {"arithmetic": 1.0, "vqa": 1.0, "t2i": 1.0}
    assert type(load_stage(["tiny_sft"])) is TrainConfig  # no `rl:` section: the supervised trainer
    # the rollouts sample like the exported model, with the stage's `pipeline:` on top
    settings = rollout_settings(config)
    assert settings.max_text_len == 64 and settings.text.gen_length == 128 and settings.image.timesteps == 12


@pytest.mark.parametrize("override, message", [
    ("rl.tasks={chess: 1.0}", "unknown RL task"),
    ("rl.text={gen_lenght: 8}", "gen_lenght"),
    ("rl.unigrpo.clip_eps=2", "clip_eps"),
    ("rl.unigrpo.kl_reference=sft", "kl_reference"),
    ("rl.prompt_per_step=3", "prompts_per_step"),
])
def test_bad_rl_settings_are_refused_naming_the_key(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, "bad", override)


def test_a_unigrpo_stage_has_no_data_section(tmp_path):
    extra = tmp_path / "with_data.yaml"
    extra.write_text("data:\n  name: world_sft\n  max_text_len: 64\n  resolution: 32\n")
    with pytest.raises(ValueError, match="remove `data:`"):
        load_stage(["tiny_unigrpo", extra])


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Path, list[dict]]:
    """4 RL steps in one go (checkpoints at 2 and 4)."""
    root = tmp_path_factory.mktemp("rl")
    seed_everything(0)
    result = run_rl_training(_config(root, "straight", "schedule.max_steps=4"))
    assert result.step == 4
    rows = [json.loads(line) for line in (root / "straight" / "metrics.jsonl").read_text().splitlines()]
    return root / "straight", rows


def test_the_rl_step_logs_rewards_per_task_and_moves_the_weights(straight):
    run, rows = straight
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    for row in rows:
        task = next(k.split("/")[1] for k in row if k.startswith("reward/"))
        assert task in ("arithmetic", "vqa", "t2i") and row["reward"] == row[f"reward/{task}"]
        assert {"loss", "grad_norm", "lr", "kept_fraction", "rollout_s"} <= set(row)
    assert any(row["skipped"] == 0.0 for row in rows)  # at least one update happened ...
    start = load_file(str(TINY / "model.safetensors"))
    trained = _weights(run)
    moved = [name for name in trained if not torch.equal(trained[name].float(), start[name].float())]
    assert moved  # ... and changed the weights


def test_resume_continues_exactly(straight, tmp_path):
    run, rows = straight
    seed_everything(0)
    first = run_rl_training(_config(tmp_path, "resumed", "schedule.max_steps=4"), max_steps=2)
    assert first.step == 2
    seed_everything(123)  # resume must not depend on the global RNG
    second = run_rl_training(_config(tmp_path, "resumed", "schedule.max_steps=4"), resume=True)
    assert second.step == 4
    a, b = _weights(run), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    resumed = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["reward"] for r in resumed] == [r["reward"] for r in rows]


def test_cli_trains_a_unigrpo_stage(tmp_path, capsys):
    from mmada.cli import main

    code = main(["train", "tiny_unigrpo", "--out", str(tmp_path / "cli"), "-q", *SMALL, "schedule.max_steps=1"])
    assert code == 0
    assert (tmp_path / "cli" / "step-000001" / "model" / "model.safetensors").is_file()


def test_the_8b_shaped_stage_has_the_papers_and_dllm_rls_values():
    gsm8k = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"
    with pytest.raises(ValueError, match="does not exist"):  # the placeholder is refused before any weights load
        load_stage(["mmada8b_unigrpo"])
    config = load_stage(["mmada8b_unigrpo"], [f"rl.files.gsm8k={gsm8k}"])
    assert isinstance(config, RLTrainConfig) and config.rl.tasks == {"gsm8k": 1.0} and config.rl.thinking
    assert (config.optim.lr, config.optim.weight_decay, config.schedule.max_steps) == (1e-6, 0.0, 50)
    u = config.rl.unigrpo
    assert (u.group_size, u.clip_eps, u.beta, u.kl_reference, u.min_accuracy, u.max_accuracy) == (
        8, 0.2, 0.01, "old", 0.2, 0.8)
    assert config.rl.prompts_per_step == 32 and config.rl.text == {"temperature": 0.8}
    assert config.pipeline["text"] == {"gen_length": 512, "steps": 512, "block_length": 32,
                                       "remasking": "low_confidence"}
    assert config.model.mixed_precision == "bf16" and config.model.gradient_checkpointing
