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
from .rollout import RL_TASKS, RLTask, Rollout, rollout_world, world_prompts

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
) -> dict[str, float]:
    """μ UniGRPO gradient steps on one rollout batch (see the module docstring).

    Args:
        model: the policy (`MMaDAModel`), in train mode for the call.
        rollout: R = Q * G rows with rewards; `rollout.group_size` must equal `config.group_size`.
        mask_id: the [MASK] id the responses are noised with (`Vocab.mask_id`).
        reference: the frozen π_ref, required when `config.kl_reference == "ref"`.
        generator: draws the timesteps and the masks.
        max_grad_norm: clip the global gradient norm to this (0 = no clipping, the norm is still logged).
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
    noised = inner_noise(ids, response, config, mask_id=mask_id, generator=generator)
    logp_old = _frozen_logprobs(model, noised, ids, attention)  # before any update
    logp_ref = (_frozen_logprobs(reference, noised, ids, attention) if config.kl_reference == "ref"
                and reference is not None else [None] * len(noised))
    params = [p for p in model.parameters() if p.requires_grad]
    for n, (batch, old, ref) in enumerate(zip(noised, logp_old, logp_ref)):
        logp_new = masked_token_logprobs(model, batch.noisy, batch.is_masked, ids, attention)  # (N,)
        out = unigrpo_loss(logp_new, old, advantages, batch.is_masked, clip_eps=config.clip_eps, beta=config.beta,
                           logp_ref=ref)
        out.loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stats = out.stats | {"loss": float(out.loss.detach()), "grad_norm": float(norm)}
        for suffix in (["first"] if n == 0 else []) + (["last"] if n == len(noised) - 1 else []):
            metrics |= {f"{k}_{suffix}": v for k, v in stats.items()}
    return metrics | {"skipped": 0.0}


# ---- the loop --------------------------------------------------------------------------------------
def _default_text() -> Overrides[TextSampling]:
    return Overrides(TextSampling, temperature=RL_TEMPERATURE)


@dataclass(frozen=True)
class RLConfig:
    """A UniGRPO run on the tiny world (`run_unigrpo`)."""

    tasks: dict[str, float] = field(default_factory=lambda: {"arithmetic": 1.0})
    """Task mixture: each RL step rolls out one task, drawn with these weights (keys: rollout.RL_TASKS)."""
    prompts_per_step: int = 4
    """Q prompts per RL step, each answered G = unigrpo.group_size times (dLLM-RL: 32 tasks x 8)."""
    steps: int = 50
    """RL steps (dLLM-RL configs: `total_step` 50)."""
    text: Overrides[TextSampling] = field(default_factory=_default_text)
    """Rollout text-sampler overrides over the pipeline's defaults (temperature 0.8 as dLLM-RL)."""
    image: Overrides[ImageSampling] = field(default_factory=lambda: Overrides(ImageSampling))
    """Rollout image-sampler overrides over the pipeline's defaults."""
    preset: str | None = None
    """A sampler preset ("fast", ...) applied under the overrides, e.g. for faster rollouts."""
    thinking: bool = False
    """Prefix text and VQA prompts with MMaDA's `<think>` instruction."""
    unigrpo: UniGRPOConfig = field(default_factory=UniGRPOConfig)
    """G, μ, ε, β, the KL reference, the timestep schedule and the group filter."""
    lr: float = 1e-5
    """Constant AdamW learning rate. dLLM-RL uses 1e-6 for 8B models; the tiny model needs more to move
    within a few dozen steps (our choice, not a published value)."""
    weight_decay: float = 0.0
    """AdamW weight decay (dLLM-RL: 0)."""
    max_grad_norm: float = 1.0
    """Gradient clipping (dLLM-RL: 1.0)."""
    seed: int = 0
    """Seeds the prompts, the task draws, the rollouts and the masks."""
    log_path: str | None = None
    """Append one JSON line of metrics per step here; None = no file."""

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
        for name in ("prompts_per_step", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be finite and > 0, got {self.lr}")
        for name, kind in (("text", TextSampling), ("image", ImageSampling)):
            value = getattr(self, name)
            if not isinstance(value, Overrides) or value.kind is not kind:
                raise ValueError(f"`{name}` must be Overrides({kind.__name__}, ...), got {value!r}")


def _log(path: str | None, row: dict[str, Any]) -> None:
    logger.info("unigrpo step %d (%s): reward %.3f kl %.4f", row["step"], row["task"], row["reward"],
                row.get("kl_last", 0.0))
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def run_unigrpo(pipe: MMaDAPipeline, config: RLConfig) -> list[dict[str, Any]]:
    """Train `pipe.model` in place with UniGRPO for `config.steps` RL steps.

    Per step: draw a task, sample `prompts_per_step` training prompts (seeded), roll out G responses
    each in eval mode, then `unigrpo_update` in train mode. The reference model of Eq. 5 is a frozen
    copy of the starting weights (only when `kl_reference == "ref"`).

    Returns:
        One metrics row per step: step, task, seconds, and `unigrpo_update`'s metrics (also appended to
        `config.log_path` as JSON lines).
    """
    model = pipe.model
    text = config.text.apply(pipe.text_settings(preset=config.preset))
    image = config.image.apply(pipe.image_settings(preset=config.preset))
    optimizer = build_optimizer(model, OptimConfig(lr=config.lr, weight_decay=config.weight_decay,
                                                   max_grad_norm=config.max_grad_norm))
    reference = None
    if config.unigrpo.kl_reference == "ref":
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    rng = random.Random(config.seed)
    sample_gen = torch.Generator(pipe.device).manual_seed(config.seed)
    mask_gen = torch.Generator(pipe.device).manual_seed(config.seed + 1)
    names, weights = list(config.tasks), list(config.tasks.values())
    rows: list[dict[str, Any]] = []
    for step in range(config.steps):
        start = time.perf_counter()
        task = rng.choices(names, weights)[0]
        prompts = world_prompts(cast(RLTask, task), config.prompts_per_step, rng)
        model.eval()
        rollout = rollout_world(pipe, prompts, group_size=config.unigrpo.group_size, text=text, image=image,
                                generator=sample_gen, thinking=config.thinking)
        model.train()
        metrics = unigrpo_update(model, rollout, config.unigrpo, optimizer, mask_id=pipe.vocab.mask_id,
                                 reference=reference, generator=mask_gen, max_grad_norm=config.max_grad_norm)
        model.eval()
        row = {"step": step, "task": task, **metrics, "seconds": time.perf_counter() - start}
        _log(config.log_path, row)
        rows.append(row)
    return rows
