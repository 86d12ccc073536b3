"""AdamW with the official weight-decay groups, and the learning-rate schedules.

Parameter groups follow Gen-Verse/MMaDA training/train_mmada*.py: two AdamW groups, weight decay on
the matrices and none on the parameters whose *name* contains a no-decay pattern. The official
patterns are `["bias", "layer_norm.weight", "mlm_ln.weight", "embeddings.weight"]`, written for other
module names: on LLaDA's names (`attn_norm`, `ff_norm`, `ln_f`, `wte`) only "bias" could match and the
model has no biases, so the official runs in fact decayed everything. We apply the intended rule to
our names (MMADA.md §2.3): no decay on biases, norms (`attn_norm`, `mlp_norm`, `norm`) and the
embedding (`embed`); the output head is a matrix and is decayed.

Schedules (Gen-Verse/MMaDA models/lr_schedulers.py): a linear warmup from 0, then a half-cosine
(or a linear ramp) from the peak down to `min_lr_scale` x peak at `max_steps`, or a constant. As in the
official code (and transformers), step 0 runs at learning rate 0 when there is a warmup.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from .config import OptimConfig, ScheduleConfig


def param_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]], weight_decay: float, no_decay: Iterable[str]
) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed matrices, and parameters whose name contains a `no_decay` pattern.

    Args:
        named_parameters: `model.named_parameters()`; frozen parameters (requires_grad False) are left out.
        weight_decay: decay of the first group.
        no_decay: name substrings, e.g. ("bias", "norm", "embed").
    Returns:
        `[{"params", "weight_decay", "names"}, ...]`; empty groups are dropped. `names` is for humans and
        tests (AdamW keeps and ignores unknown group keys).
    """
    patterns = tuple(no_decay)
    decay: list[tuple[str, nn.Parameter]] = []
    keep: list[tuple[str, nn.Parameter]] = []
    for name, p in named_parameters:
        if p.requires_grad:
            (keep if any(pat in name for pat in patterns) else decay).append((name, p))
    groups = [(decay, weight_decay), (keep, 0.0)]
    return [{"params": [p for _, p in g], "weight_decay": wd, "names": [n for n, _ in g]} for g, wd in groups if g]


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `model`'s trainable parameters with the no-decay groups (see `param_groups`)."""
    groups = param_groups(model.named_parameters(), config.weight_decay, config.no_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)


def lr_scale(step: int, *, kind: str, warmup_steps: int, max_steps: int, min_lr_scale: float) -> float:
    """Learning-rate multiplier at optimizer step `step` (0-based).

    warmup: step / warmup_steps for step < warmup_steps; then with progress p in [0, 1] over
    [warmup_steps, max_steps]: cosine min + (1 - min) (1 + cos(pi p)) / 2, linear min + (1 - min)(1 - p),
    constant 1. Past `max_steps` the schedule stays at its end value.
    """
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    if kind == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif kind == "linear":
        decay = 1.0 - progress
    else:
        raise ValueError(f"schedule `kind` must be 'cosine', 'linear' or 'constant', got {kind!r}")
    return min_lr_scale + (1.0 - min_lr_scale) * decay


def build_scheduler(optimizer: torch.optim.Optimizer, config: ScheduleConfig) -> LambdaLR:
    """A `LambdaLR` of `lr_scale`, stepped once per optimizer step; its state is plain data (JSON)."""
    fn = functools.partial(lr_scale, kind=config.kind, warmup_steps=config.warmup_steps,
                           max_steps=config.max_steps, min_lr_scale=config.min_lr_scale)
    return LambdaLR(optimizer, fn)
