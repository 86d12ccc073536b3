"""Typed token batches (`TokenLayout`) and their collation: concatenation, left and right padding.

A `TokenLayout` is what every builder in `mmada.prompting.layout` returns: the ids, the masks, the labels
and a `LayoutSpans` record of where the text, prompt, answer and image tokens sit in every row, so the
forward process, the losses and the samplers read positions instead of recomputing offsets such as the
official `-(num_vq_tokens + 1):-1` slices.

Padding conventions (MMaDA inherits them from LLaDA):

* Generation prompts are **left**-padded with the tokenizer's pad id (eos for LLaDA): the sampler
  appends masks on the right, so every row's prompt must end at the same column. `collate_generation`
  checks this invariant (`check_left_padded`); pads get attention 0, count as prompt, have no label.
* Training rows are **right**-padded with eos, and that padding is part of the answer: LLaDA's SFT recipe
  trains the model to emit eos runs (Gen-Verse/MMaDA training/prompting_utils.py pads lm / mmu rows with
  eos and keeps them as labels). `collate_training` does this; `pad_layouts(..., pad_is_answer=False)`
  gives conventional ignored padding instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .vocab import Vocab

IGNORE_INDEX = -100
"""Label of positions without a target: torch `cross_entropy`'s default, the official `ignore_id`."""

Task = Literal["t2i", "t2i_gen", "mmu", "mmu_gen", "lm", "lm_chat", "text_gen", "r2i"]
"""Layout kinds: which builder of `mmada.prompting.layout` made a `TokenLayout` (`*_gen`: generation prompts).
Each training task (`mmada.training.tasks.TRAINING_TASKS`) names the kind its rows are built as."""


@dataclass(frozen=True, eq=False)
class Span:
    """Per-row half-open index range `[start, stop)` of a batch."""

    start: Tensor
    """(B,) int64, first position."""
    stop: Tensor
    """(B,) int64, one past the last position; `start == stop` is an empty span."""

    def __post_init__(self) -> None:
        if self.start.shape != self.stop.shape or self.start.dim() != 1:
            raise ValueError(f"span start {tuple(self.start.shape)} and stop {tuple(self.stop.shape)} must be (B,)")
        if bool((self.start > self.stop).any()) or bool((self.start < 0).any()):
            raise ValueError("span start must satisfy 0 <= start <= stop")

    @classmethod
    def fixed(cls, start: int, stop: int, batch_size: int = 1) -> Span:
        """The same `[start, stop)` in every row."""
        return cls(
            torch.full((batch_size,), start, dtype=torch.long), torch.full((batch_size,), stop, dtype=torch.long)
        )

    @property
    def lengths(self) -> Tensor:
        """(B,) int64, number of positions per row."""
        return self.stop - self.start

    def mask(self, seq_len: int) -> Tensor:
        """(B, seq_len) bool, True inside the span."""
        pos = torch.arange(seq_len, device=self.start.device)  # (L,)
        return (pos >= self.start[:, None]) & (pos < self.stop[:, None])  # (B, L)

    def as_slice(self) -> slice:
        """A Python slice when every row shares the range (fixed-length layouts); ValueError otherwise."""
        if bool((self.start != self.start[0]).any()) or bool((self.stop != self.stop[0]).any()):
            raise ValueError("this span differs across rows; use `mask(seq_len)` instead of a slice")
        return slice(int(self.start[0]), int(self.stop[0]))

    def shift(self, offset: int) -> Span:
        return Span(self.start + offset, self.stop + offset)

    def to(self, device: torch.device | str) -> Span:
        return Span(self.start.to(device), self.stop.to(device))


@dataclass(frozen=True, eq=False)
class LayoutSpans:
    """Where each part of every row sits. Empty parts are empty spans."""

    text: Span
    """Tokenized text as placed: bos through its eos (eos padding excluded)."""
    prompt: Span
    """Conditioning tokens (left padding excluded): t2i task token..eos; chat text through the last
    `<|end_header_id|>`; the whole row for generation prompts."""
    answer: Span
    """Text the model predicts: after the prompt to the end of the text part, eos padding included."""
    image: Span
    """Image tokens, without `<|soi|>` / `<|eoi|>`."""

    def map(self, fn: Callable[[Span], Span]) -> LayoutSpans:
        return LayoutSpans(fn(self.text), fn(self.prompt), fn(self.answer), fn(self.image))


@dataclass(frozen=True, eq=False)
class TokenLayout:
    """A batch of rows of one task: ids, masks, optional labels and spans. B = batch, L = length."""

    task: Task
    """Which builder made the rows."""
    input_ids: Tensor
    """(B, L) int64."""
    attention_mask: Tensor
    """(B, L) bool; False on padding the model should not attend to (t2i `[iPAD]`, generation left pads)."""
    prompt_mask: Tensor
    """(B, L) bool; True where the forward process never masks (prompt, task / image delimiters,
    padding), False on the answer text and on the image tokens a t2i row generates."""
    spans: LayoutSpans
    """Index ranges of text / prompt / answer / image per row."""
    labels: Tensor | None = None
    """(B, L) int64 targets, IGNORE_INDEX where there is none; None for generation prompts."""

    def __post_init__(self) -> None:
        ids = self.input_ids
        if ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(f"input_ids must be (B, L) int64, got {tuple(ids.shape)} {ids.dtype}")
        for name in ("attention_mask", "prompt_mask"):
            mask = getattr(self, name)
            if mask.shape != ids.shape or mask.dtype != torch.bool:
                raise ValueError(f"{name} must be (B, L) bool like input_ids {tuple(ids.shape)}, got {mask.dtype}")
        if self.labels is not None and (self.labels.shape != ids.shape or self.labels.dtype != torch.long):
            raise ValueError(f"labels must be (B, L) int64 like input_ids {tuple(ids.shape)}")
        for part in ("text", "prompt", "answer", "image"):
            span: Span = getattr(self.spans, part)
            if span.start.shape != (ids.shape[0],) or bool((span.stop > ids.shape[1]).any()):
                raise ValueError(f"span `{part}` must be (B,) = ({ids.shape[0]},) with stop <= L = {ids.shape[1]}")

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    def to(self, device: torch.device | str) -> TokenLayout:
        return TokenLayout(
            self.task,
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.prompt_mask.to(device),
            self.spans.map(lambda s: s.to(device)),
            None if self.labels is None else self.labels.to(device),
        )

    @staticmethod
    def cat(layouts: Sequence[TokenLayout]) -> TokenLayout:
        """Stack layouts of one task and one length along the batch (see `pad_layouts` for others)."""
        if not layouts:
            raise ValueError("cannot concatenate an empty list of layouts")
        first = layouts[0]
        for other in layouts[1:]:
            if other.task != first.task:
                raise ValueError(f"cannot mix tasks {first.task!r} and {other.task!r}; keep separate sub-batches")
            if other.seq_len != first.seq_len:
                raise ValueError(f"lengths differ ({first.seq_len} vs {other.seq_len}); pad them with pad_layouts")
            if (other.labels is None) != (first.labels is None):
                raise ValueError("cannot concatenate layouts with and without labels")

        def cat_span(part: str) -> Span:
            parts = [getattr(lay.spans, part) for lay in layouts]
            return Span(torch.cat([p.start for p in parts]), torch.cat([p.stop for p in parts]))

        labels = [lay.labels for lay in layouts if lay.labels is not None]
        return TokenLayout(
            first.task,
            torch.cat([lay.input_ids for lay in layouts]),
            torch.cat([lay.attention_mask for lay in layouts]),
            torch.cat([lay.prompt_mask for lay in layouts]),
            LayoutSpans(cat_span("text"), cat_span("prompt"), cat_span("answer"), cat_span("image")),
            torch.cat(labels) if labels else None,
        )


def _pad_one(
    layout: TokenLayout, n_pad: int, side: Literal["left", "right"], pad_id: int, pad_is_answer: bool
) -> TokenLayout:
    if n_pad == 0:
        return layout
    ids = layout.input_ids

    def block(value: int | bool, dtype: torch.dtype) -> Tensor:
        return torch.full((ids.shape[0], n_pad), value, dtype=dtype, device=ids.device)  # (B, n_pad)

    answer_pad = side == "right" and pad_is_answer

    def join(value: Tensor, pad: Tensor) -> Tensor:
        return torch.cat([pad, value] if side == "left" else [value, pad], dim=1)

    labels = layout.labels
    if labels is not None:
        labels = join(labels, block(pad_id if answer_pad else IGNORE_INDEX, torch.long))
    spans = layout.spans.map(lambda s: s.shift(n_pad)) if side == "left" else layout.spans
    if answer_pad:
        # A non-empty answer that reached the old end grows over the new eos padding.
        answer = spans.answer
        grow = (answer.stop == ids.shape[1]) & (answer.stop > answer.start)
        spans = LayoutSpans(spans.text, spans.prompt, Span(answer.start, answer.stop + grow * n_pad), spans.image)
    return TokenLayout(
        layout.task,
        join(ids, block(pad_id, torch.long)),
        join(layout.attention_mask, block(answer_pad, torch.bool)),
        join(layout.prompt_mask, block(not answer_pad, torch.bool)),
        spans,
        labels,
    )


def pad_layouts(
    layouts: Sequence[TokenLayout],
    *,
    side: Literal["left", "right"],
    pad_id: int,
    length: int | None = None,
    pad_is_answer: bool = False,
) -> TokenLayout:
    """Pad every layout to `length` (default: the longest) and concatenate them.

    Left pads (and right pads with `pad_is_answer=False`) get attention 0, prompt_mask True and label
    IGNORE_INDEX; left padding shifts the spans. Right pads with `pad_is_answer=True` are answer
    tokens: attention 1, prompt_mask False, label `pad_id`, and they extend the answer span.
    """
    if not layouts:
        raise ValueError("cannot collate an empty list of layouts")
    longest = max(lay.seq_len for lay in layouts)
    target = longest if length is None else length
    if target < longest:
        raise ValueError(f"`length` ({target}) is shorter than the longest row ({longest})")
    return TokenLayout.cat([_pad_one(lay, target - lay.seq_len, side, pad_id, pad_is_answer) for lay in layouts])


def check_left_padded(attention_mask: Tensor) -> None:
    """Raise ValueError unless every row of `attention_mask` (B, L) is 0…0 1…1 (padding only on the left)."""
    mask = attention_mask.bool()
    bad = (mask[:, :-1] & ~mask[:, 1:]).any(dim=1)  # (B,) a 1 followed by a 0
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(f"generation prompts must be left-padded; rows {rows} have padding after a token")


def collate_generation(layouts: Sequence[TokenLayout], *, vocab: Vocab) -> TokenLayout:
    """Left-pad generation prompts with `vocab.pad_id` to a common length and check the invariant."""
    batch = pad_layouts(layouts, side="left", pad_id=vocab.pad_id)
    check_left_padded(batch.attention_mask)
    return batch


def collate_training(layouts: Sequence[TokenLayout], *, vocab: Vocab, length: int | None = None) -> TokenLayout:
    """Right-pad training rows with `vocab.eos_id` as trained answer tokens (LLaDA convention)."""
    return pad_layouts(layouts, side="right", pad_id=vocab.eos_id, length=length, pad_is_answer=True)
