"""The UniGRPO update and training loop (MMaDA §2.3, Algorithm 1).

One RL step: sample prompts from the world's training split, roll out G responses per prompt with the
current policy π_old (`rl.rollout`), then `unigrpo_update`:

1. group-normalised advantages Â_i from the rewards (App. Eq. 15); groups with no reward spread or an
   accuracy outside the configured band are dropped (dLLM-RL reward/rl_reward.py);
2. μ mask ratios p_n = t_n / T from Algorithm 1's uniformly spaced timesteps (or the Fig. 4 random
   ones), and for each one a structurally noised copy of the kept rows: response tokens masked with
   probability p_n, the prompt never (§2.3.1); d1's fully masked estimator is the alternative;
3. log π_old under each of the μ masks with the weights *before* any update (no grad, all μ computed
   first, as dLLM-RL's `compute_logp_old_tok_parallel`), and log π_ref under the frozen reference
   model when the KL is taken against it (Eq. 5);
4. μ gradient steps, step n on mask n: Eq. 5's clipped surrogate minus β·KL (`objective.unigrpo_loss`),
   gradient clipping, one optimizer step each.

At the first inner step the weights are still π_old, so ρ = 1 and the KL against π_old is 0 exactly.
Simplifications: one task per RL step (drawn by the mixture weights: sub-batches never mix layouts),
no gradient accumulation over micro-batches, and a constant learning rate (dLLM-RL's cosine with
`min_lr_scale` 1.0 is constant too).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..diffusion.masking import MaskedBatch
from ..pipelines import MMaDAPipeline
from ..sampling import ImageSampling, Overrides, TextSampling
from ..training.config import OptimConfig
from ..training.optim import build_optimizer
from ..utils.config import REPLACE
from .objective import (
    PositionDenoiser,
    UniGRPOConfig,
    fully_masked_noise,
    group_advantages,
    keep_groups,
    mask_ratios,
    masked_token_logprobs,
    structured_noise,
    timesteps,
    unigrpo_loss,
)
from .rollout import RL_TASKS, RLTask, Rollout, WorldPrompts, read_gsm8k, rollout_world, world_prompts

DATA_TASKS = ("gsm8k",)
"""RL tasks whose prompts come from a local file (`RLSection.files`) instead of the world's generators."""

logger = logging.getLogger(__name__)

RL_TEMPERATURE = 0.8  # dLLM-RL configs/rl_llada.yaml rollout temperature


# ---- one update ------------------------------------------------------------------------------------
def inner_noise(
    ids: Tensor, response: Tensor, config: UniGRPOConfig, *, mask_id: int, generator: torch.Generator | None = None
) -> list[MaskedBatch]:
    """The μ noised copies of one rollout batch, one per inner iteration (Algorithm 1).

    Args:
        ids: (B, L) int64 prompt + response; response: (B, L) bool, the maskable positions.
    Returns:
        μ `MaskedBatch`es: structured noise at ratio t_n / T ("partial"), or every response token
        masked ("fully_masked", d1), the prompt never masked.
    """
    if config.estimator == "fully_masked":
        return [fully_masked_noise(ids, response, mask_id=mask_id) for _ in range(config.inner_steps)]
    steps = timesteps(config.inner_steps, total=config.total_timesteps, kind=config.timesteps, generator=generator)
    ratios = mask_ratios(steps, config.total_timesteps)
    return [structured_noise(ids, response, torch.full((ids.shape[0],), p, device=ids.device), mask_id=mask_id,
                             generator=generator) for p in ratios]


@torch.no_grad()
def _frozen_logprobs(model: PositionDenoiser, noised: list[MaskedBatch], ids: Tensor,
                     attention_mask: Tensor | None) -> list[Tensor]:
    """log π at the masked tokens of each noised copy, without gradients: μ tensors (N_n,)."""
    return [masked_token_logprobs(model, b.noisy, b.is_masked, ids, attention_mask) for b in noised]


def _rollout_metrics(rollout: Rollout, kept: Tensor) -> dict[str, float]:
    metrics = {"reward": float(rollout.rewards.mean()), "kept_fraction": float(kept.float().mean())}
    if rollout.correct is not None:
        metrics["accuracy"] = float(rollout.correct.mean())
    return metrics


@dataclass(frozen=True)
class Shard:
    """This process's share of an update that every rank computes on the same rollout (`unigrpo_update`).

    Every rank holds the whole rollout and draws the same masks; rank r trains on the r-th contiguous
    share of the kept rows and weights its loss by its share of them, so the gradients FSDP averages over
    the ranks are those of the one-process loss over all kept rows. `reduce_sum` sums a tensor over the
    ranks (the logged statistics); None in one process.
    """

    rank: int = 0
    world_size: int = 1
    reduce_sum: Callable[[Tensor], Tensor] | None = None

    def rows(self, kept: int) -> tuple[Tensor, float]:
        """This rank's rows of `kept` rows and its loss weight (share × world size: FSDP averages gradients).

        A rank left without a row (fewer kept rows than ranks) still runs the forwards and backward of the
        others, so the collectives line up: on row 0, with weight 0.
        """
        mine = torch.arange(kept).tensor_split(self.world_size)[self.rank]
        if mine.numel() == 0:
            return torch.zeros(1, dtype=torch.long), 0.0
        return mine, mine.numel() * self.world_size / kept


def _share(batch: MaskedBatch, rows: Tensor) -> MaskedBatch:
    return MaskedBatch(batch.noisy[rows], batch.is_masked[rows], batch.p_mask[rows])


def unigrpo_update(
    model: nn.Module,
    rollout: Rollout,
    config: UniGRPOConfig,
    optimizer: torch.optim.Optimizer,
    *,
    mask_id: int,
    reference: nn.Module | None = None,
    generator: torch.Generator | None = None,
    max_grad_norm: float = 1.0,
    clip_grad: Callable[[float], Tensor] | None = None,
    bf16: bool = False,
    shard: Shard | None = None,
) -> dict[str, float]:
    """μ UniGRPO gradient steps on one rollout batch (see the module docstring).

    Args:
        model: the policy (`MMaDAModel`), in train mode for the call.
        rollout: R = Q * G rows with rewards; `rollout.group_size` must equal `config.group_size`.
        mask_id: the [MASK] id the responses are noised with (`Vocab.mask_id`).
        reference: the frozen π_ref, required when `config.kl_reference == "ref"`.
        generator: draws the timesteps and the masks.
        max_grad_norm: clip the global gradient norm to this (0 = no clipping, the norm is still logged).
        clip_grad: max_norm -> total norm, clipping in place (the trainer's sharding-aware clip); default
            `torch.nn.utils.clip_grad_norm_` over the trainable parameters. A non-finite norm skips the step.
        bf16: run the forwards under bf16 autocast (the trainer's `model.mixed_precision`).
        shard: this rank's share when several ranks update one replicated rollout (`Shard`); None = all.
    Returns:
        reward, accuracy (when the rollout has correctness), kept_fraction, skipped (1 when every group
        was dropped and no step was taken), and the loss stats (loss, ratio_mean, clip_fraction, kl,
        surrogate, grad_norm) of the first and last inner steps, suffixed `_first` / `_last`.
    """
    if rollout.group_size != config.group_size:
        raise ValueError(f"rollout.group_size ({rollout.group_size}) must equal config.group_size "
                         f"({config.group_size})")
    if config.kl_reference == "ref" and reference is None:
        raise ValueError('kl_reference="ref" needs the frozen `reference` model')
    if not (math.isfinite(max_grad_norm) and max_grad_norm >= 0):
        raise ValueError(f"max_grad_norm must be finite and >= 0, got {max_grad_norm}")
    advantages = group_advantages(rollout.rewards, config.group_size)  # (R,)
    kept = keep_groups(rollout.rewards, rollout.correct, config.group_size, min_accuracy=config.min_accuracy,
                       max_accuracy=config.max_accuracy)  # (R,)
    metrics = _rollout_metrics(rollout, kept)
    if not bool(kept.any()):
        return metrics | {"skipped": 1.0}
    rows = kept.to(rollout.input_ids.device)
    ids, response = rollout.input_ids[rows], rollout.response[rows]  # (B, L)
    attention = None if rollout.attention_mask is None else rollout.attention_mask[rows]
    advantages = advantages[kept].to(ids.device)  # (B,)
    noised = inner_noise(ids, response, config, mask_id=mask_id, generator=generator)  # every rank: all B rows
    shard = shard or Shard()
    mine, weight = shard.rows(ids.shape[0])
    mine = mine.to(ids.device)
    ids, advantages, noised = ids[mine], advantages[mine], [_share(b, mine) for b in noised]
    attention = None if attention is None else attention[mine]
    autocast = torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=bf16)
    with autocast:
        logp_old = _frozen_logprobs(model, noised, ids, attention)  # before any update
        logp_ref = (_frozen_logprobs(reference, noised, ids, attention) if config.kl_reference == "ref"
                    and reference is not None else [None] * len(noised))
    params = [p for p in model.parameters() if p.requires_grad]
    if clip_grad is None:
        def clip_grad(max_norm: float) -> Tensor:
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
    for n, (batch, old, ref) in enumerate(zip(noised, logp_old, logp_ref)):
        with autocast:
            logp_new = masked_token_logprobs(model, batch.noisy, batch.is_masked, ids, attention)  # (N,)
        out = unigrpo_loss(logp_new.float(), old.float(), advantages, batch.is_masked, clip_eps=config.clip_eps,
                           beta=config.beta, logp_ref=None if ref is None else ref.float())
        (out.loss * weight).backward()
        norm = clip_grad(max_grad_norm if max_grad_norm > 0 else math.inf)
        if math.isfinite(float(norm)):  # a non-finite gradient must not poison the weights: skip the step
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stats = _reduced(out.stats | {"loss": float(out.loss.detach())}, weight, shard) | {"grad_norm": float(norm)}
        for suffix in (["first"] if n == 0 else []) + (["last"] if n == len(noised) - 1 else []):
            metrics |= {f"{k}_{suffix}": v for k, v in stats.items()}
    return metrics | {"skipped": 0.0}


def _reduced(stats: dict[str, float], weight: float, shard: Shard) -> dict[str, float]:
    """Statistics over all ranks: each rank's value weighted by its share of the rows (exact for row means)."""
    if shard.reduce_sum is None or shard.world_size == 1:
        return stats
    values = torch.tensor([v * weight / shard.world_size for v in stats.values()], dtype=torch.float64)
    return dict(zip(stats, shard.reduce_sum(values).tolist()))


# ---- what each RL step rolls out -------------------------------------------------------------------
def _default_text() -> dict[str, Any]:
    return {"temperature": RL_TEMPERATURE}


def _default_short() -> dict[str, Any]:
    """Short answers (VQA without thinking): 32 tokens in one block, as the world evaluation asks them."""
    return {"temperature": RL_TEMPERATURE, "gen_length": 32, "steps": 16, "block_length": 32}


@dataclass(frozen=True)
class RLSection:
    """What UniGRPO rolls out and how it scores it: the `rl:` section of a training stage (`rl.trainer`),
    and the base of the in-memory `RLConfig`."""

    tasks: dict[str, float] = field(default_factory=lambda: {"arithmetic": 1.0}, metadata={REPLACE: True})
    """Task mixture: each RL step rolls out one task, drawn with these weights (keys: rollout.RL_TASKS). A
    mixture in a stage file replaces this default whole."""
    prompts_per_step: int = 8
    """Q prompts per RL step, each answered G = unigrpo.group_size times (dLLM-RL: 32 tasks x 8)."""
    preset: str | None = None
    """A sampler preset ("fast", ...) applied under the overrides below, e.g. for faster rollouts."""
    thinking: bool = False
    """Prefix text and VQA prompts with MMaDA's `<think>` instruction."""
    text: dict[str, Any] = field(default_factory=_default_text)
    """`TextSampling` fields over the pipeline's defaults for arithmetic, and for VQA when `thinking`
    (temperature 0.8 as dLLM-RL's rollouts)."""
    short: dict[str, Any] = field(default_factory=_default_short)
    """`TextSampling` fields for short answers (VQA without thinking), as `WorldEvalConfig.short`."""
    image: dict[str, Any] = field(default_factory=dict)
    """`ImageSampling` fields over the pipeline's image defaults."""
    files: dict[str, str] = field(default_factory=dict)
    """Local prompt files of the tasks that read data: `gsm8k` -> a GSM8K-format jsonl (its train split)."""
    unigrpo: UniGRPOConfig = field(default_factory=UniGRPOConfig)
    """G, μ, ε, β, the KL reference, the timestep schedule and the group filter."""

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("tasks must name at least one task")
        for task, weight in self.tasks.items():
            if task not in RL_TASKS:
                raise ValueError(f"unknown RL task {task!r}; choose from {RL_TASKS}")
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"tasks[{task!r}] weight must be finite and >= 0, got {weight}")
        if sum(self.tasks.values()) <= 0:
            raise ValueError(f"tasks weights must not all be 0, got {self.tasks}")
        if self.prompts_per_step < 1:
            raise ValueError(f"prompts_per_step must be >= 1, got {self.prompts_per_step}")
        for task in self.files:
            if task not in DATA_TASKS:
                raise ValueError(f"files[{task!r}]: only {DATA_TASKS} read prompt files")
        for task in DATA_TASKS:
            if self.tasks.get(task, 0) > 0:
                if task not in self.files:
                    raise ValueError(f"the {task} task reads a local file: set files.{task} (a {task}-format jsonl)")
                read_gsm8k(self.files[task])  # a missing or malformed file is refused now, not at step k
        self.overrides()  # unknown sampler fields are refused here, before any rollout

    def overrides(self) -> tuple[Overrides[TextSampling], Overrides[TextSampling], Overrides[ImageSampling]]:
        """The text, short-answer and image sampler overrides."""
        return (Overrides(TextSampling, **self.text), Overrides(TextSampling, **self.short),
                Overrides(ImageSampling, **self.image))


@dataclass(frozen=True)
class RLSamplers:
    """The resolved sampler settings of the rollouts."""

    text: TextSampling
    short: TextSampling
    image: ImageSampling

    @classmethod
    def of(cls, pipe: MMaDAPipeline, section: RLSection) -> RLSamplers:
        text, short, image = section.overrides()
        return cls(text.apply(pipe.text_settings(preset=section.preset)),
                   short.apply(pipe.text_settings(preset=section.preset)),
                   image.apply(pipe.image_settings(preset=section.preset)))


class PromptSource:
    """An endless, resumable stream of RL steps' prompts: step k draws its task (by the mixture weights)
    and its `prompts_per_step` training prompts from a generator seeded by (seed, k), so a resumed run
    draws exactly what the uninterrupted one would have. State: the next step."""

    def __init__(self, section: RLSection, seed: int) -> None:
        self.section, self.seed, self.step = section, seed, 0

    def draw(self, step: int) -> WorldPrompts:
        rng = random.Random(self.seed * 1_000_003 + step)
        names, weights = list(self.section.tasks), list(self.section.tasks.values())
        task = rng.choices(names, weights)[0]
        return world_prompts(cast(RLTask, task), self.section.prompts_per_step, rng, self.section.files.get(task))

    def __iter__(self) -> Iterator[WorldPrompts]:
        while True:
            prompts = self.draw(self.step)
            self.step += 1
            yield prompts

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])


@torch.no_grad()
def roll_out(pipe: MMaDAPipeline, prompts: WorldPrompts, section: RLSection, samplers: RLSamplers,
             generator: torch.Generator, *, bf16: bool = False) -> Rollout:
    """G responses to each prompt from the current policy, in eval mode (restores the model's mode)."""
    was_training = pipe.model.training
    pipe.model.eval()
    answers = samplers.short if prompts.task == "vqa" and not section.thinking else samplers.text
    try:
        with torch.autocast(pipe.device.type, dtype=torch.bfloat16, enabled=bf16):
            return rollout_world(pipe, prompts, group_size=section.unigrpo.group_size, text=answers,
                                 image=samplers.image, generator=generator, thinking=section.thinking)
    finally:
        pipe.model.train(was_training)


# ---- the in-memory loop ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RLConfig(RLSection):
    """A UniGRPO run on a pipeline in memory (`run_unigrpo`); the trainer's stage is `rl.trainer`."""

    steps: int = 50
    """RL steps (dLLM-RL configs: `total_step` 50)."""
    lr: float = 1e-5
    """Constant AdamW learning rate. dLLM-RL uses 1e-6 for 8B models."""
    weight_decay: float = 0.0
    """AdamW weight decay (dLLM-RL: 0)."""
    max_grad_norm: float = 1.0
    """Gradient clipping (dLLM-RL: 1.0)."""
    seed: int = 0
    """Seeds the prompts, the task draws, the rollouts and the masks."""
    log_path: str | None = None
    """Append one JSON line of metrics per step here; None = no file."""
    bf16: bool = False
    """Rollouts and updates under bf16 autocast (the trainer's `model.mixed_precision`)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be finite and > 0, got {self.lr}")


def _log(path: str | None, row: dict[str, Any]) -> None:
    logger.info("unigrpo step %d (%s): reward %.3f kl %.4f", row["step"], row["task"], row["reward"],
                row.get("kl_last", 0.0))
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def run_unigrpo(pipe: MMaDAPipeline, config: RLConfig) -> list[dict[str, Any]]:
    """Train `pipe.model` in place with UniGRPO for `config.steps` RL steps (no run folder, no checkpoints;
    `mmada train tiny_unigrpo` is the same step inside the trainer).

    Per step: the next prompts of a `PromptSource`, G responses each (`roll_out`), then `unigrpo_update`.
    The reference model of Eq. 5 is a frozen copy of the starting weights (when `kl_reference == "ref"`).

    Returns:
        One metrics row per step: step, task, seconds, and `unigrpo_update`'s metrics (also appended to
        `config.log_path` as JSON lines).
    """
    model = pipe.model
    samplers = RLSamplers.of(pipe, config)
    optimizer = build_optimizer(model, OptimConfig(lr=config.lr, weight_decay=config.weight_decay,
                                                   max_grad_norm=config.max_grad_norm))
    reference = None
    if config.unigrpo.kl_reference == "ref":
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    sample_gen = torch.Generator(pipe.device).manual_seed(config.seed)
    mask_gen = torch.Generator(pipe.device).manual_seed(config.seed + 1)
    prompts = iter(PromptSource(config, config.seed))
    rows: list[dict[str, Any]] = []
    for step in range(config.steps):
        start = time.perf_counter()
        batch = next(prompts)
        rollout = roll_out(pipe, batch, config, samplers, sample_gen, bf16=config.bf16)
        model.train()
        metrics = unigrpo_update(model, rollout, config.unigrpo, optimizer, mask_id=pipe.vocab.mask_id,
                                 reference=reference, generator=mask_gen, max_grad_norm=config.max_grad_norm,
                                 bf16=config.bf16)
        model.eval()
        row = {"step": step, "task": batch.task, **metrics, "seconds": time.perf_counter() - start}
        _log(config.log_path, row)
        rows.append(row)
    return rows
