"""The task table (`mmada.training.tasks`): it covers every task the data sources emit and the objective
weighs, and each entry is built, noised and weighed by the code that reads it."""

from __future__ import annotations

import random
import typing
from dataclasses import fields
from pathlib import Path

import pytest
import torch

import mmada
from mmada.prompting import Task as LayoutKind
from mmada.prompting import TextTokenizer, TokenLayout, Vocab
from mmada.training.data_adapters import Record, SourceSpec
from mmada.training.data_tasks import TaskSpec, assemble, record_text
from mmada.training.data_world import DEFAULT_BATCH_SIZES, WorldSource
from mmada.training.objectives import MaskedDiffusionObjective, ObjectiveConfig
from mmada.training.tasks import TRAINING_TASKS, TaskName, training_task

M, N = 48, 4  # text tokens and image tokens of the test rows


@pytest.fixture(scope="module")
def tokenizer(reference_dir: Path) -> TextTokenizer:
    return TextTokenizer.from_pretrained(reference_dir / "mmada_a")


@pytest.fixture(scope="module")
def vocab(tokenizer: TextTokenizer) -> Vocab:
    return Vocab.from_tokenizer(tokenizer, vocab_size=512, codebook_size=128, reserved=None)


@pytest.fixture(scope="module")
def batch(tokenizer: TextTokenizer, vocab: Vocab) -> dict[str, TokenLayout]:
    """Two rows of every task in the table, each made from one record that has every field."""
    record = Record("test:0", caption="A red box on the grass. It is small.", question="What is it?",
                    answer="a red box", extras={"shortcaption": "a box"})
    codes = torch.randint(0, vocab.codebook_size, (2, N), generator=torch.Generator().manual_seed(0))
    layouts = {}
    for task, entry in TRAINING_TASKS.items():
        text = record_text(task, record, TaskSpec(batch_size=2), random.Random(0), ("Describe it.",), None)
        assert isinstance(text, str), f"{task}: {text}"
        ids = tokenizer.encode(text)
        layouts[task] = assemble(task, [ids, ids], vocab.image_ids(codes) if entry.image else None, vocab=vocab,
                                 max_text_len=M, seq_len=M + N + 3, cond_dropout_prob=0.0,
                                 generator=torch.Generator().manual_seed(0))
    return layouts


def test_the_table_lists_every_task_name_once():
    assert typing.get_args(TaskName) == tuple(TRAINING_TASKS)
    assert typing.get_type_hints(SourceSpec)["task"] == TaskName | None  # the mixture's `task:` key
    with pytest.raises(ValueError, match="unknown task 'x2y'; expected one of"):
        training_task("x2y")


def test_the_world_emits_only_table_tasks():
    assert set(WorldSource.ROWS) <= set(TRAINING_TASKS)
    for sizes in DEFAULT_BATCH_SIZES.values():
        assert set(sizes) <= set(WorldSource.ROWS)


@pytest.mark.parametrize("task", list(TRAINING_TASKS))
def test_each_entry_names_real_layouts_options_and_objective_fields(task):
    entry = TRAINING_TASKS[task]
    assert entry.layout in typing.get_args(LayoutKind)
    assert entry.options <= {f.name for f in fields(TaskSpec)} - {"batch_size"}
    objective_fields = {f.name for f in fields(ObjectiveConfig)}
    assert entry.coeff in objective_fields
    assert (entry.normalize is None) == (entry.loss == "image")
    assert entry.normalize is None or entry.normalize in objective_fields


def test_the_data_builds_every_task_with_its_layout(batch):
    for task, entry in TRAINING_TASKS.items():
        layout = batch[task]
        assert layout.task == entry.layout
        assert bool((layout.spans.image.lengths == N).all()) == entry.image
        assert bool((layout.spans.image.lengths == 0).all()) == (not entry.image)


def test_the_objective_weighs_every_task_by_its_table_coefficient(batch, reference_dir):
    model = mmada.load_model(reference_dir / "mmada_a")
    config = ObjectiveConfig(t2i_coeff=2.0, lm_coeff=0.5, mmu_coeff=3.0)
    # r2i is weighed as image generation: explicitly t2i_coeff (no released script trains it)
    assert {task: config.coefficient(task) for task in TRAINING_TASKS} == {
        "t2i": 2.0, "mmu": 3.0, "lm": 0.5, "lm_chat": 0.5, "r2i": 2.0}
    with torch.no_grad():
        out = MaskedDiffusionObjective(config)(model, batch, torch.Generator().manual_seed(0))
    assert set(out.per_task) == set(TRAINING_TASKS)
    assert all(bool(torch.isfinite(loss)) for loss in out.per_task.values())
    expected = sum(config.coefficient(task) * loss for task, loss in out.per_task.items())
    torch.testing.assert_close(out.total, expected)
