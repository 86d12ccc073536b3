"""Training objectives: a batch of layouts in, a `LossOutput` out.

`MaskedDiffusionObjective` is MMaDA's unified objective (§2.1-2.2): every task is masked-token
prediction; the per-task noising and normalisation follow the official stages (MMADA.md §2.1), and
the total is the coefficient-weighted sum `t2i_coeff * L_t2i + lm_coeff * L_lm + mmu_coeff * L_mmu`.
Pretraining (stages 1.x) and mixed long-CoT SFT (2.x) are the same objective with different data and
coefficients: in SFT the prompt is simply not maskable (`prompt_mask`), for text and understanding
alike, so the `<think>…</think>` answer is what the model learns.

A batch is a mapping task name -> `TokenLayout`. Each task's entry in `training.tasks.TRAINING_TASKS`
gives its forward process and loss (`loss`), its coefficient (`coeff`) and its text normalisation
(`normalize`); r2i is weighed by `t2i_coeff`. Rows of the same length are run in one forward pass, as the
official code concatenates t2i | lm | mmu rows; the logits are computed only at the positions a loss reads.

Official quirks reproduced by default (each can be turned off in `ObjectiveConfig`):
* `padding="soft"`: the released models were trained with padding visible to attention (a float
  0/1 mask added as a bias); "hide" masks padding out properly.
* `t2i_include_delimiters=True`: the t2i mean also covers the visible `<|soi|>`/`<|eoi|>` positions.
* EOS padding of text rows is part of the answer and a target (LLaDA convention; Gen-Verse/MMaDA #61).

Two answer-loss options for models trained from scratch, chosen per task (defaults: the official loss).
A one-word answer padded with EOS to the micro-batch's longest row, and noised by LLaDA's t ~ U(0, 1),
gets almost no gradient: the padding dominates the loss and its divisor, and the word is hidden in only
half of the rows, with a 1/t weight that spikes when t is small (measured in docs/results.md):
* `answer_padding: {task: mode}`: "train" (official) keeps the EOS padding after the first EOS as targets
  and in the divisor; "target" keeps them as targets (the model learns that an answer ends and what
  follows it: the sampler fills every generated position) but divides by the real answer length only;
  "ignore" drops them from the loss and the divisor (they stay masked in the input). Measured: "ignore"
  leaves the tail untrained, and the sampler then commits EOS right after the answer starts.
* `whole_answer_max_tokens: {task: n}`: in rows whose answer (without padding) has at most n tokens,
  every real answer token is masked and weighs 1 (no 1/t), while the padding keeps the row's t ~ U(0, 1),
  so the word is learned next to every amount of visible padding, as the sampler shows it; longer answers
  (CoT traces) keep LLaDA's rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import Tensor

from ..diffusion.losses import LossOutput, Normalize, diffusion_text_loss, image_token_loss
from ..diffusion.masking import TEXT_EPS, MaskedBatch, mask_image, mask_text
from ..model.transformer import MMaDAModel
from ..prompting import TokenLayout
from .tasks import TRAINING_TASKS, training_task

AnswerPadding = Literal["train", "target", "ignore"]
ANSWER_PADDING = ("train", "target", "ignore")


class Objective(Protocol):
    def __call__(
        self, model: MMaDAModel, batch: Mapping[str, TokenLayout], generator: torch.Generator | None = None
    ) -> LossOutput: ...


@dataclass(frozen=True)
class ObjectiveConfig:
    """Coefficients and normalisation of the unified objective (defaults: stage 1.1 of the 8B run)."""

    t2i_coeff: float = 1.0
    """Weight of the image-generation losses (t2i and r2i rows)."""
    lm_coeff: float = 0.1
    """Weight of the text loss (lm and lm_chat rows)."""
    mmu_coeff: float = 1.0
    """Weight of the understanding loss."""
    lm_normalize: Normalize = "tokens"
    """Pretraining text: "tokens" = sum / (B * L) (stages 1.1/1.2), "answer_length" per row (2.2)."""
    chat_normalize: Normalize = "answer_length"
    """lm_chat, mmu and r2i text: per-row answer length, EOS padding included (stage 1.3+)."""
    eps: float = TEXT_EPS
    """Minimum text masking probability: p_mask = (1 - eps) t + eps."""
    t2i_schedule: str = "cosine"
    """Image mask-ratio schedule (shared with the sampler)."""
    min_masking_rate: float = 0.0
    """Lower clip of the image mask ratio."""
    t2i_include_delimiters: bool = True
    """Official quirk: `<|soi|>` and `<|eoi|>` enter the t2i mean as (visible) targets."""
    padding: Literal["soft", "hide"] = "soft"
    """Official quirk "soft": padding visible to attention during training; "hide" masks it."""
    answer_padding: dict[str, AnswerPadding] = field(default_factory=dict)
    """Per text task: "train" (official: EOS padding is a target and in the divisor), "target" (a target, not in
    the divisor) or "ignore" (neither)."""
    whole_answer_max_tokens: dict[str, int] = field(default_factory=dict)
    """Per text task: answers of at most this many tokens (padding excluded) are always masked, weight 1; 0 = off."""

    def __post_init__(self) -> None:
        for name in ("t2i_coeff", "lm_coeff", "mmu_coeff"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}")
        if self.padding not in ("soft", "hide"):
            raise ValueError(f"`padding` must be 'soft' or 'hide', got {self.padding!r}")
        answer_tasks = [task for task, entry in TRAINING_TASKS.items() if entry.answer_options]
        for name, valid in (("answer_padding", lambda v: v in ANSWER_PADDING),
                            ("whole_answer_max_tokens", lambda v: isinstance(v, int) and v >= 0)):
            for task, value in getattr(self, name).items():
                if task not in answer_tasks:
                    raise ValueError(f"`{name}.{task}`: not a text task; expected one of {answer_tasks}")
                if not valid(value):
                    expected = "'train', 'target' or 'ignore'" if name == "answer_padding" else "an integer >= 0"
                    raise ValueError(f"`{name}.{task}` must be {expected}, got {value!r}")

    def coefficient(self, task: str) -> float:
        """The weight of `task`'s loss in the total: the coefficient its table entry names."""
        return getattr(self, training_task(task).coeff)

    def normalization(self, task: str) -> Normalize:
        """How `task`'s text loss is normalised: the field its table entry names."""
        field_name = training_task(task).normalize
        if field_name is None:
            raise ValueError(f"task {task!r} has no text loss")
        return getattr(self, field_name)

    def ignores_padding(self, task: str) -> bool:
        """The EOS padding after the first EOS is not a target."""
        return self.answer_padding.get(task, "train") == "ignore"

    def divides_by_real_length(self, task: str) -> bool:
        """The divisor counts the answer through its first EOS, not the padding after it."""
        return self.answer_padding.get(task, "train") != "train"


@dataclass(frozen=True)
class NoisedTask:
    """One task's rows after the forward process."""

    task: str
    layout: TokenLayout
    """The clean rows (targets are `layout.input_ids`)."""
    masked: MaskedBatch
    """The noised inputs and each row's masking probability."""
    loss_positions: Tensor
    """(B, L) bool: where this task's loss reads logits (masked tokens, plus the t2i delimiters quirk)."""


class MaskedDiffusionObjective:
    """MMaDA's unified masked-token objective over a mixed batch."""

    def __init__(self, config: ObjectiveConfig | None = None) -> None:
        self.config = config or ObjectiveConfig()

    def noise(self, task: str, layout: TokenLayout, mask_id: int, generator: torch.Generator | None) -> NoisedTask:
        """Apply the task's forward process to a layout."""
        cfg, ids = self.config, layout.input_ids
        if training_task(task).loss == "image":
            image = layout.spans.image.mask(layout.seq_len)
            masked = mask_image(ids, image, mask_id=mask_id, schedule=cfg.t2i_schedule,
                                min_ratio=cfg.min_masking_rate, generator=generator)
            positions = masked.is_masked
            if cfg.t2i_include_delimiters:
                rows = torch.arange(layout.batch_size, device=ids.device)
                positions = positions.clone()
                positions[rows, layout.spans.image.start - 1] = True  # <|soi|>
                positions[rows, layout.spans.image.stop] = True  # <|eoi|>
            return NoisedTask(task, layout, masked, positions)
        # the response (~prompt_mask); for r2i the <think> text and the image, masked jointly by the text rule
        masked = mask_text(ids, ~layout.prompt_mask, mask_id=mask_id, eps=cfg.eps, generator=generator)
        if limit := cfg.whole_answer_max_tokens.get(task, 0):
            masked = _mask_short_answers(masked, layout, limit, mask_id)
        positions = masked.is_masked
        if cfg.ignores_padding(task):
            positions = positions & layout.spans.text.mask(layout.seq_len)
        return NoisedTask(task, layout, masked, positions)

    def __call__(
        self, model: MMaDAModel, batch: Mapping[str, TokenLayout], generator: torch.Generator | None = None
    ) -> LossOutput:
        if not batch:
            raise ValueError("empty batch: no task has rows")
        mask_id = model.config.mask_token_id
        device = next(model.parameters()).device
        return self.loss(model, [self.noise(task, lay.to(device), mask_id, generator) for task, lay in batch.items()])

    def loss(self, model: MMaDAModel, noised: list[NoisedTask]) -> LossOutput:
        """The weighted loss of already-noised tasks (one forward pass per sequence length)."""
        losses: dict[str, Tensor] = {}
        num_tokens = 0
        for group in _by_length(noised):
            logits = self._forward(model, group)  # (N, V) over the group's loss positions, row-major
            start = 0
            for item in group:
                n = int(item.loss_positions.sum())
                losses[item.task] = self._task_loss(item, logits[start : start + n])
                start += n
                num_tokens += n
        total = sum(self.config.coefficient(task) * loss for task, loss in losses.items())
        return LossOutput(total=total, per_task=losses, num_tokens=num_tokens)  # type: ignore[arg-type]

    def _forward(self, model: MMaDAModel, group: list[NoisedTask]) -> Tensor:
        ids = torch.cat([item.masked.noisy for item in group])
        mask = torch.cat([item.layout.attention_mask for item in group])
        positions = torch.cat([item.loss_positions for item in group])
        return model(ids, mask, positions=positions, padding=self.config.padding)

    def _task_loss(self, item: NoisedTask, logits: Tensor) -> Tensor:
        layout, masked, pos = item.layout, item.masked, item.loss_positions
        targets = layout.input_ids[pos]  # the clean tokens
        if training_task(item.task).loss == "image":
            return image_token_loss(logits, targets)
        rows = pos.nonzero()[:, 0]
        p = masked.p_mask.expand_as(pos)[pos]
        real = self.config.divides_by_real_length(item.task)
        answer_lengths = answer_text_lengths(layout) if real else (~layout.prompt_mask).sum(dim=1)
        return diffusion_text_loss(logits, targets, p, rows, batch_size=layout.batch_size,
                                   normalize=self.config.normalization(item.task),
                                   seq_len=layout.seq_len, answer_lengths=answer_lengths,
                                   tokens_exclude_padding=real)


def _mask_short_answers(masked: MaskedBatch, layout: TokenLayout, limit: int, mask_id: int) -> MaskedBatch:
    """Rows whose answer has at most `limit` real tokens: every real answer token hidden, p = 1 (weight 1)."""
    short = (answer_text_lengths(layout) <= limit)[:, None]  # (B, 1)
    real = ~layout.prompt_mask & layout.spans.text.mask(layout.seq_len)  # (B, L)
    hidden = masked.is_masked | (short & real)
    p_mask = torch.where(short, torch.ones_like(masked.p_mask), masked.p_mask)
    return MaskedBatch(torch.where(hidden, mask_id, layout.input_ids), hidden, p_mask)


def answer_text_lengths(layout: TokenLayout) -> Tensor:
    """(B,) answer tokens of each row through its first EOS, without the EOS padding after it."""
    return (layout.spans.text.stop - layout.spans.answer.start).clamp(min=0)


def _by_length(items: list[NoisedTask]) -> list[list[NoisedTask]]:
    """Group tasks whose rows share a length, so each group is one forward pass."""
    groups: dict[int, list[NoisedTask]] = {}
    for item in items:
        groups.setdefault(item.layout.seq_len, []).append(item)
    return list(groups.values())
