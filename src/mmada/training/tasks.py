"""The training tasks: one table that the data sources, the objective and the trainer all read.

A task names a kind of training row. Each entry of `TRAINING_TASKS` says how its rows are made (the
prompting builder, how a record becomes the text, whether an image is encoded, which `TaskSpec` options
apply) and how they are learned (the forward process and loss, the `ObjectiveConfig` coefficient and
normalisation). Code elsewhere asks the entry (`task.image`, `task.loss == "image"`), never the name.

To add a task: add its name to `TaskName` and its entry here, then give it a data source: a `text` kind
that `data_tasks.record_text` knows and a `layout` that `data_tasks.assemble` builds (a new layout is a
builder in `prompting/layout.py` plus its kind in `prompting.collate.Task`), and a row maker in
`data_world.WorldSource.ROWS` if the tiny world should emit it. The objective and the trainer need no
edit (unless the task gets a weight of its own: a new `ObjectiveConfig` coefficient named in `coeff`).
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeGuard

from ..prompting import Task as LayoutKind

TaskName = Literal["t2i", "mmu", "lm", "lm_chat", "r2i"]
"""The tasks a training batch may hold: the keys of a micro-batch `{task: TokenLayout}`."""


@dataclass(frozen=True)
class TrainingTask:
    """What training needs to know about one task: how its rows are made and how they are learned."""

    layout: LayoutKind
    """The prompting builder that makes its rows (`TokenLayout.task`), dispatched in `data_tasks.assemble`."""
    text: Literal["caption", "document", "chat", "reasoning_caption"]
    """How a record becomes the row's text (`data_tasks.record_text`): a cleaned t2i caption; a window of a
    document; a chat transcript (rendered messages, a question and answer, or a bare caption answering a
    captioning question where the task reads `caption_prompt`); the official r2i transcript."""
    image: bool
    """Its rows carry an image: the source needs an image tokenizer and records with an image."""
    budget: Literal["text", "row"]
    """What a row's text may fill: the M text tokens beside the image, or the whole row of L tokens."""
    options: frozenset[str]
    """The `TaskSpec` options its rows read besides `batch_size`; a slot setting any other is refused as a
    likely typo. `eot_quirk` and `skip_long` act only where listed here."""
    loss: Literal["image", "text"]
    """Forward process and loss. "image": MaskGIT mask ratio over the image tokens, mean cross-entropy;
    "text": LLaDA's rule over the response (`~prompt_mask`, for r2i its image too), 1/p-weighted."""
    coeff: Literal["t2i_coeff", "lm_coeff", "mmu_coeff"]
    """The `ObjectiveConfig` field weighing its loss in the total."""
    normalize: Literal["lm_normalize", "chat_normalize"] | None
    """The `ObjectiveConfig` field normalising a text loss; None for the image loss."""
    answer_options: bool
    """`ObjectiveConfig.answer_padding` / `whole_answer_max_tokens` may name it (answers that are text only)."""


TRAINING_TASKS: Mapping[TaskName, TrainingTask] = types.MappingProxyType({
    # caption -> image tokens (MaskGIT)
    "t2i": TrainingTask(
        layout="t2i", text="caption", image=True, budget="text",
        options=frozenset({"cond_dropout_prob", "short_caption_prob", "skip_long"}),
        loss="image", coeff="t2i_coeff", normalize=None, answer_options=False,
    ),
    # image + question -> text answer (understanding)
    "mmu": TrainingTask(
        layout="mmu", text="chat", image=True, budget="text",
        options=frozenset({"caption_prompt", "questions_file", "eot_quirk", "thinking", "skip_long"}),
        loss="text", coeff="mmu_coeff", normalize="chat_normalize", answer_options=True,
    ),
    # a plain document, every token maskable
    "lm": TrainingTask(
        layout="lm", text="document", image=False, budget="row",
        options=frozenset({"max_chars", "remove_newlines"}),
        loss="text", coeff="lm_coeff", normalize="lm_normalize", answer_options=True,
    ),
    # question -> answer, text only (instructions, CoT traces)
    "lm_chat": TrainingTask(
        layout="lm_chat", text="chat", image=False, budget="row",
        options=frozenset({"thinking", "skip_long"}),
        loss="text", coeff="lm_coeff", normalize="chat_normalize", answer_options=True,
    ),
    # short prompt -> `<think>` detailed description + image tokens, masked jointly (reasoning to image).
    # No released MMaDA script trains r2i (MMADA.md), so there is no official coefficient: its rows end by
    # generating an image, so it is weighed as image generation (`t2i_coeff`). Its answer holds image tokens,
    # so the answer options, which count text, do not apply.
    "r2i": TrainingTask(
        layout="r2i", text="reasoning_caption", image=True, budget="text",
        options=frozenset({"eot_quirk", "thinking", "skip_long"}),
        loss="text", coeff="t2i_coeff", normalize="chat_normalize", answer_options=False,
    ),
})
"""Every training task, in the order the trainer logs them."""


def is_task(name: str) -> TypeGuard[TaskName]:
    """Whether `name` is a training task (a key of `TRAINING_TASKS`)."""
    return name in TRAINING_TASKS


def training_task(name: str) -> TrainingTask:
    """The table entry of `name`; ValueError naming the known tasks otherwise."""
    if not is_task(name):
        raise ValueError(f"unknown task {name!r}; expected one of {list(TRAINING_TASKS)}")
    return TRAINING_TASKS[name]
