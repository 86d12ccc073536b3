"""UniGRPO as a training stage: the one `Trainer` with an RL step (`mmada train tiny_unigrpo`).

A stage with an `rl:` section (`RLTrainConfig`) is a UniGRPO run. Everything else is the supervised
trainer's: the run folder and its lock, `model.init` (the SFT model), LoRA, bf16 autocast, the metrics
sinks, atomic checkpoints every `checkpoint.every` steps, SIGTERM/SIGINT handling and exact resume.
One optimizer step of the trainer is one RL step here:

    prompts = next(PromptSource)                       # task drawn by the mixture, seeded by (seed, step)
    rollout = roll_out(pipeline(model), prompts)       # G responses each, eval mode, rewarded
    unigrpo_update(model, rollout, ...)                # μ clipped-surrogate steps (AdamW, clipping)
    scheduler.step()                                   # the learning rate moves once per RL step

`optim.lr` is the update's learning rate; `schedule.max_steps` counts RL steps. A checkpoint saves the
prompt cursor and both generators (sampling, masking); the frozen reference model of Eq. 5 is the
starting weights, rebuilt from `model.init` on resume, so a resumed run continues exactly.

Under torchrun (FSDP2 or replicated) every rank rolls out the *same* prompts with the same generator, so
the ranks run identical forwards (a sharded model's all-gathers line up, even where sampling stops early)
and hold the same rollout; the update is data-parallel: each rank trains on its share of the kept groups'
rows under the same masks, weighted so that the averaged gradients are the one-process gradients
(`loop.Shard`). A 2-rank run takes the same steps as one process (tests/test_distributed_rl.py). The
rollouts are therefore replicated, not sharded: sharding them needs per-row random streams in the
samplers (a batch's rows share one generator today), the next step for large runs. The reference model
is an unsharded frozen replica on every rank.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..model import MMaDAModel
from ..pipelines import PIPELINE_FILE, MMaDAPipeline, PipelineSettings
from ..training.config import TrainConfig, load_config, resolve_init
from ..training.trainer import Trainer, TrainResult, run_training
from ..utils.config import build, merge, read_yaml, set_override
from .loop import PromptSource, RLSamplers, RLSection, Shard, roll_out, unigrpo_update
from .rollout import WorldPrompts


@dataclass(frozen=True)
class RLTrainConfig(TrainConfig):
    """A training stage whose step is UniGRPO: `TrainConfig` plus the `rl:` section (and no `data:`)."""

    rl: RLSection = field(default_factory=RLSection)
    """What each RL step rolls out and how it is scored (`rl.loop.RLSection`)."""
    pipeline: dict[str, Any] = field(default_factory=dict)
    """`PipelineSettings` of the rollouts over those saved with `model.init` (its `mmada_pipeline.json`,
    when it has one): `max_text_len`, `resolution`, `text: {...}`, `image: {...}`."""

    def __post_init__(self) -> None:
        if self.data is not None:
            raise ValueError("a UniGRPO stage draws its prompts from the world (`rl.tasks`); remove `data:`")


def is_rl_stage(paths: Sequence[str | Path]) -> bool:
    """True when any of the stage files has an `rl:` section."""
    from ..training.config import resolve_config_path

    return any("rl" in read_yaml(resolve_config_path(p)) for p in paths)


def load_rl_config(paths: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> RLTrainConfig:
    """Defaults <- each YAML file <- `key=value` overrides, as `training.config.load_config`."""
    from ..training.config import resolve_config_path

    raw: dict[str, Any] = {}
    for path in paths:
        merge(raw, read_yaml(resolve_config_path(path)))
    for item in overrides:
        set_override(raw, item, RLTrainConfig)
    return build(RLTrainConfig, raw)


def rollout_settings(config: RLTrainConfig) -> PipelineSettings:
    """The pipeline settings of the rollouts: `model.init`'s saved ones, then `pipeline:`."""
    base = PipelineSettings()
    folder = Path(resolve_init(config.model.init))
    if (folder / PIPELINE_FILE).is_file():
        base = PipelineSettings.from_dict(_read_json(folder / PIPELINE_FILE))
    merged = base.to_dict()
    merge(merged, config.pipeline)
    return PipelineSettings.from_dict(merged)


def _read_json(path: Path) -> dict[str, Any]:
    import json

    return dict(json.loads(path.read_text(encoding="utf-8")))


class UniGRPOTrainer(Trainer):
    """The trainer with UniGRPO's step (see the module docstring)."""

    def __init__(self, model: MMaDAModel, config: RLTrainConfig, *, ctx: Any, tokenizers: Any,
                 evaluate: Any = None, preview: Any = None) -> None:
        if tokenizers.text is None:
            raise ValueError("a UniGRPO stage needs `model.tokenizer` (rollouts are decoded and judged)")
        super().__init__(model, None, PromptSource(config.rl, config.seed), config, ctx=ctx, evaluate=evaluate,
                         preview=preview, assets=tokenizers.files)
        self.section = config.rl
        self.pipe = MMaDAPipeline(model, tokenizers.text, tokenizers.vocab, tokenizers.image,
                                  rollout_settings(config))
        self.samplers = RLSamplers.of(self.pipe, config.rl)
        self.sampling = torch.Generator(self.ctx.device).manual_seed(config.seed + 1)
        self.generators["sampling"] = self.sampling
        self.generator.manual_seed(config.seed)  # the same masks on every rank (`loop.Shard`)
        self.shard = Shard(self.ctx.rank, self.ctx.world_size, self._reduce_sum)
        if self.ctx.world_size > 1:
            # FSDP2 allocates each block's unsharded weights at its first all-gather and copies into them ever
            # after. Were that first gather inside the samplers' inference mode, they would be inference
            # tensors and the training forward could not fill them: gather once outside it.
            with torch.no_grad():
                model(torch.zeros(1, 1, dtype=torch.long, device=self.ctx.device))
        # Eq. 5's π_ref: the starting weights, frozen (built before any resume loads the trained ones)
        self.reference = None
        if config.rl.unigrpo.kl_reference == "ref":
            self.reference = self._frozen_copy(model)

    def _frozen_copy(self, model: MMaDAModel) -> MMaDAModel:
        if self.ctx.world_size == 1:
            return copy.deepcopy(model).eval().requires_grad_(False)
        state = self.dist.full_state_dict(model, self.ctx, every_rank=True)  # collective
        replica = MMaDAModel(model.config)
        replica.load_state_dict(state)
        return replica.to(self.ctx.device).eval().requires_grad_(False)

    def _reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        mean = self.dist.all_reduce_mean(values.to(self.ctx.device), self.ctx)
        return (mean * self.ctx.world_size).cpu()

    def train_step(self, batches: Iterator[Any]) -> dict[str, float]:
        """One RL step: roll out the next prompts, then μ UniGRPO updates; returns its metrics."""
        start = time.perf_counter()
        prompts: WorldPrompts = next(batches)
        rollout = roll_out(self.pipe, prompts, self.section, self.samplers, self.sampling, bf16=self.bf16)
        rollout_s = time.perf_counter() - start
        lr = self.optimizer.param_groups[0]["lr"]
        self.model.train()
        max_norm = self.config.optim.max_grad_norm
        out = unigrpo_update(self.model, rollout, self.section.unigrpo, self.optimizer,
                             mask_id=self.pipe.vocab.mask_id, reference=self.reference, generator=self.generator,
                             max_grad_norm=max_norm, bf16=self.bf16, shard=self.shard,
                             clip_grad=lambda norm: self.dist.clip_grad_norm(self.model, norm))
        self.scheduler.step()
        elapsed = time.perf_counter() - start
        tokens = float(rollout.input_ids.numel())
        metrics = {
            "loss": out.get("loss_last", 0.0), "grad_norm": out.get("grad_norm_last", 0.0), "lr": lr,
            "tokens": tokens, "tokens_per_s": tokens / elapsed, "step_time_s": elapsed, "rollout_s": rollout_s,
            f"reward/{prompts.task}": out["reward"],
        }
        if "accuracy" in out:
            metrics[f"accuracy/{prompts.task}"] = out["accuracy"]
        metrics.update({k: v for k, v in out.items() if k in _LOGGED})
        return metrics


_LOGGED = ("reward", "accuracy", "kept_fraction", "skipped", "kl_last", "clip_fraction_last", "ratio_mean_last",
           "kl_first", "clip_fraction_first")
"""`unigrpo_update` metrics that go to the run's metrics as they are."""


def run_rl_training(config: RLTrainConfig, *, resume: bool = False, max_steps: int | None = None) -> TrainResult:
    """Build the UniGRPO run `config` describes and train it (`training.trainer.run_training`'s set-up)."""

    def make(model: MMaDAModel, cfg: TrainConfig, **parts: Any) -> Trainer:
        assert isinstance(cfg, RLTrainConfig)
        return UniGRPOTrainer(model, cfg, **parts)

    return run_training(config, resume=resume, max_steps=max_steps, make_trainer=make)


def load_stage(paths: Sequence[str | Path], overrides: Sequence[str] = ()) -> TrainConfig:
    """A stage's config: `RLTrainConfig` when it has an `rl:` section, else `TrainConfig`."""
    return load_rl_config(paths, overrides) if is_rl_stage(paths) else load_config(paths, overrides)


def train_stage(config: TrainConfig, *, resume: bool = False, max_steps: int | None = None) -> TrainResult:
    """Train a loaded stage with the step its config asks for."""
    if isinstance(config, RLTrainConfig):
        return run_rl_training(config, resume=resume, max_steps=max_steps)
    return run_training(config, resume=resume, max_steps=max_steps)
