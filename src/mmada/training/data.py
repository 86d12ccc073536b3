"""Training data: `build_source(spec, ...)` turns the YAML `data:` section into a `BatchSource`.

A `BatchSource` yields micro-batches `{task: TokenLayout}` (the tasks of `training.tasks.TRAINING_TASKS`) whose
rows all have length L = M + N + 3 (`mmada.training.data_tasks`), and saves / restores its data cursor
(`state_dict` / `load_state_dict`): a resumed run sees exactly the batches the uninterrupted run would have.
Every random choice of micro-batch b comes from an rng seeded by (seed, rank, slot, b), and every file
stream resumes from its cursor, so the state is a handful of integers.

Registered sources (`SOURCES`):

* `mixture`: files on disk. `tasks` maps a task slot to its rows; a slot reads one source inline
  (`source`, `urls` / `path`, ...) or a weighted `mixture` of named sub-sources. As the official stage-2.2
  script (Gen-Verse/MMaDA training/train_mmada_stage4.py), each micro-batch of a slot comes whole from
  one sub-source drawn by weight (CoT 3.5 : VQA 5.5 : clevr 0.5 : geo 0.5); a sub-source may emit another
  task (`task: lm_chat` under the lm slot, as stage 2.2's RefinedWeb 0.02 : instruct 0.98).
* `world_pretrain` / `world_sft`: the tiny procedural world (`mmada.training.data_world`).

`rank` / `world_size` shard every stream disjointly (`RecordStream`); seeds are shared by all ranks.
"""

from __future__ import annotations

import glob
import json
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Annotated, Any, Literal, Protocol, Union

import torch
from pydantic import Field

from ..image_tokenizer import image_to_tensor
from ..prompting import TokenLayout, Vocab
from ..utils.config import build
from .data_adapters import ADAPTERS, Record, Skip, SkipCounter, SourceSpec, check_dependencies
from .data_tasks import (
    CAPTION_QUESTIONS,
    TaskSpec,
    as_image_encoder,
    assemble,
    batch_rng,
    check_state,
    count_image_tokens,
    encode_image_ids,
    fits,
    record_text,
    text_budget,
    torch_generator,
)
from .data_world import WorldSftSpec, WorldSource, WorldSpec
from .tasks import TRAINING_TASKS, is_task, training_task

MAX_SKIPS_PER_BATCH = 10_000
"""A slot that cannot fill one micro-batch past this many unusable records stops with an error."""


class BatchSource(Protocol):
    """An endless, resumable stream of micro-batches."""

    def __iter__(self) -> Iterator[dict[str, TokenLayout]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


# ---------------------------------------------------------------------------------------------------
# Shard lists and streams
# ---------------------------------------------------------------------------------------------------


def brace_expand(pattern: str) -> list[str]:
    """`a{1..3}b` -> a1b a2b a3b (zero padding kept, `{000..199}`), `{x,y}` -> x y; groups multiply."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end() :]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [expanded for option in options for expanded in brace_expand(head + option + tail)]


def expand_files(patterns: Sequence[str], what: str) -> list[str]:
    """Brace-expand and glob `patterns` into a sorted, de-duplicated file list.

    Raises ValueError naming `what` (the spec key) when a pattern matches nothing or a file is missing.
    """
    files: set[str] = set()
    missing: list[str] = []
    for pattern in patterns:
        for item in brace_expand(os.path.expanduser(pattern)):
            found = sorted(glob.glob(item)) if glob.has_magic(item) else [item] * os.path.isfile(item)
            if not found:
                missing.append(item)
            files.update(found)
    if missing:
        raise ValueError(f"`{what}`: {len(missing)} pattern(s) or file(s) not found, first: {missing[0]!r}")
    return sorted(files)


class RecordStream:
    """Endless records of one sub-source for one rank; `cursor` (epoch, file, record) is its state.

    Files are reshuffled every epoch (seeded, identical on all ranks). Sharding: with at least
    `world_size` files each rank reads `files[rank::world_size]` (as the official parquet datasets);
    with fewer, every rank walks all files and keeps positions `pos % world_size == rank`. Either way the
    ranks' records are disjoint and together cover the stream.
    """

    def __init__(
        self, name: str, spec: SourceSpec, files: Sequence[str], *, seed: int, rank: int, world_size: int,
        skips: SkipCounter,
    ) -> None:
        if not files:
            raise ValueError(f"source {name!r} has no files")
        self.name, self.spec, self.seed, self.skips = name, spec, seed, skips
        self.rank, self.world_size = rank, world_size
        self.by_file = len(files) >= world_size
        self.files = list(files[rank::world_size]) if self.by_file else list(files)
        # Row permutations are seeded by a file's place in the full list, not its path: moving a dataset
        # to another folder keeps the order (and a saved cursor valid).
        self._file_ids = {path: i for i, path in enumerate(files)}
        self.cursor = {"epoch": 0, "file": 0, "record": 0}

    def _keep(self, pos: int) -> bool:
        return self.by_file or pos % self.world_size == self.rank

    def __iter__(self) -> Iterator[Record]:
        adapter, cursor = ADAPTERS[self.spec.source], self.cursor
        while True:
            fresh_epoch, found = cursor["file"] == 0 and cursor["record"] == 0, False
            order = list(self.files)
            if self.spec.shuffle:
                random.Random(f"{self.seed}:{self.name}:files:{cursor['epoch']}").shuffle(order)
            while cursor["file"] < len(order):
                path, epoch = order[cursor["file"]], cursor["epoch"]
                rows_seed = f"{self.seed}:{self.name}:{epoch}:{self._file_ids[path]}"
                rows_rng = random.Random(rows_seed) if self.spec.shuffle else None
                for item in adapter(path, self.spec, cursor["record"], self._keep, rows_rng):
                    cursor["record"] += 1  # before yielding: the cursor always points at the next entry
                    if isinstance(item, Skip):
                        self.skips.add(item)
                    elif item is not None:
                        found = True
                        yield item
                cursor["file"], cursor["record"] = cursor["file"] + 1, 0
            if fresh_epoch and not found:
                raise ValueError(f"source {self.name!r}: no readable record for rank {self.rank} in {len(order)} "
                                 "file(s); see the warnings above")
            cursor["epoch"], cursor["file"] = cursor["epoch"] + 1, 0

    def state_dict(self) -> dict[str, int]:
        return dict(self.cursor)

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.cursor = {key: int(state[key]) for key in ("epoch", "file", "record")}


@dataclass(frozen=True)
class MixtureSpec:
    """The `data:` section of the `mixture` source."""

    name: Literal["mixture"]
    """The source (`build_source` dispatches on it)."""
    max_text_len: int
    """M: text tokens of t2i / mmu rows (official `max_seq_length`: 128 in stage 1.1, 512 from 1.3)."""
    tasks: Mapping[str, Any]
    """Task slot -> TaskSpec keys plus one inline source or a `mixture` of named sources."""
    resolution: int = 256
    """Image side in pixels (official 256 in stages 1.1-1.2, 512 after)."""
    seq_len: int | None = None
    """L; default M + N + 3 with N from the image tokenizer at `resolution`."""

    def __post_init__(self) -> None:
        for name in ("max_text_len", "resolution"):
            if getattr(self, name) < 2:
                raise ValueError(f"`{name}` must be >= 2, got {getattr(self, name)}")
        if not self.tasks:
            raise ValueError("`tasks` is empty; give at least one of " + ", ".join(TRAINING_TASKS))
        for name, slot in self.tasks.items():  # checked with the rest of the config, before any weights load
            _parse_slot(name, slot, f"data.tasks.{name}")


@dataclass
class _Slot:
    name: str
    spec: TaskSpec
    sources: dict[str, SourceSpec]
    streams: dict[str, RecordStream]
    questions: tuple[str, ...]

    def task(self, sub: str) -> str:
        return self.sources[sub].task or self.name


def _parse_slot(name: str, mapping: Any, where: str) -> tuple[TaskSpec, dict[str, SourceSpec]]:
    if not is_task(name):
        raise ValueError(f"`{where}`: unknown task slot {name!r}; expected one of {list(TRAINING_TASKS)}")
    if not isinstance(mapping, Mapping):
        raise ValueError(f"`{where}` must be a mapping, got {type(mapping).__name__}")
    task_keys = {f.name for f in fields(TaskSpec)}
    rest = {k: v for k, v in mapping.items() if k not in task_keys}
    if "mixture" in rest:
        extra = sorted(set(rest) - {"mixture"})
        if extra:
            raise ValueError(f"`{where}.{extra[0]}`: with a `mixture`, source keys go under each of its entries")
        if not isinstance(rest["mixture"], Mapping) or not rest["mixture"]:
            raise ValueError(f"`{where}.mixture` must map sub-source names to source specs")
        sources = {str(k): build(SourceSpec, v, f"{where}.mixture.{k}") for k, v in rest["mixture"].items()}
    elif "source" not in rest:
        raise ValueError(f"`{where}.source` is required (or a `mixture` of sources); one of {sorted(ADAPTERS)}")
    else:
        sources = {name: build(SourceSpec, rest, where)}
    spec = build(TaskSpec, {k: v for k, v in mapping.items() if k in task_keys}, where)
    tasks = {s.task or name for s in sources.values()}
    for key in sorted(set(mapping) & task_keys - {"batch_size"}):
        if not any(key in TRAINING_TASKS[t].options for t in tasks):
            raise ValueError(f"`{where}.{key}` is not used by task(s) {sorted(tasks)}")
    return spec, sources


def _load_questions(path: str | None, where: str) -> tuple[str, ...]:
    if path is None:
        return CAPTION_QUESTIONS
    try:
        with open(path, encoding="utf-8") as f:
            questions = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"`{where}.questions_file`: cannot read {path!r}: {err}") from err
    if not isinstance(questions, list) or not questions or not all(isinstance(q, str) for q in questions):
        raise ValueError(f"`{where}.questions_file` must hold a non-empty json list of strings")
    return tuple(questions)


class MixtureSource:
    """Micro-batches from files on disk: one layout per task slot, sub-sources drawn by weight."""

    def __init__(
        self, spec: MixtureSpec, *, tokenizer: Any, vocab: Vocab, image_tokenizer: Any, seed: int, rank: int,
        world_size: int,
    ) -> None:
        self.spec, self.tokenizer, self.vocab, self.image_tokenizer = spec, tokenizer, vocab, image_tokenizer
        self.encoder = as_image_encoder(image_tokenizer)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.skips, self.picks, self.batches = SkipCounter(), Counter[str](), 0
        self.slots: list[_Slot] = []
        emitted: dict[str, str] = {}
        for name, mapping in spec.tasks.items():
            where = f"data.tasks.{name}"
            task_spec, sources = _parse_slot(name, mapping, where)
            streams = {}
            for sub, source in sources.items():
                key = f"{where}.mixture.{sub}" if len(sources) > 1 or sub != name else where
                task = source.task or name
                if task in emitted and emitted[task] != name:
                    raise ValueError(f"`{key}`: task {task!r} is already produced by slot {emitted[task]!r}")
                if training_task(task).image and self.encoder is None:
                    raise ValueError(f"`{key}`: task {task!r} needs an image tokenizer, got None")
                emitted[task] = name
                check_dependencies(source)
                files = expand_files(source.patterns, f"{key}.{'urls' if source.source == 'webdataset' else 'path'}")
                streams[sub] = RecordStream(f"{name}/{sub}", source, files, seed=seed, rank=rank,
                                            world_size=world_size, skips=self.skips)
            questions = _load_questions(task_spec.questions_file, where)
            self.slots.append(_Slot(name, task_spec, sources, streams, questions))
        self._seq_len = spec.seq_len
        self._iters: dict[str, Iterator[Record]] = {}

    @property
    def seq_len(self) -> int:
        """L, the length of every row."""
        if self._seq_len is None:
            n = count_image_tokens(self.encoder, self.spec.resolution, self.image_tokenizer)
            self._seq_len = self.spec.max_text_len + n + 3
        return self._seq_len

    def __iter__(self) -> Iterator[dict[str, TokenLayout]]:
        while True:
            batch = dict(self._slot_batch(slot) for slot in self.slots)
            self.batches += 1  # before yielding: a state saved now resumes after this batch
            yield batch

    def _record(self, slot: _Slot, sub: str) -> Record:
        key = f"{slot.name}/{sub}"
        if key not in self._iters:
            self._iters[key] = iter(slot.streams[sub])
        return next(self._iters[key])

    def _slot_batch(self, slot: _Slot) -> tuple[str, TokenLayout]:
        rng = batch_rng(self.seed, self.rank, slot.name, self.batches)
        names = list(slot.sources)
        sub = names[0] if len(names) == 1 else rng.choices(names, [slot.sources[n].weight for n in names])[0]
        self.picks[f"{slot.name}/{sub}"] += 1
        task, source = slot.task(sub), slot.sources[sub]
        entry = training_task(task)
        skip_long = slot.spec.skip_long and "skip_long" in entry.options
        budget = text_budget(task, self.spec.max_text_len, self.seq_len)
        texts: list[list[int]] = []
        pixels: list[torch.Tensor] = []
        skipped = 0
        while len(texts) < slot.spec.batch_size:
            record = self._record(slot, sub)
            text = record_text(task, record, slot.spec, rng, slot.questions, self.tokenizer.bos_token)
            if isinstance(text, str) and entry.image and record.image is None:
                text = Skip("missing_image", f"{record.origin}: a {task} row needs an image")
            ids = self.tokenizer.encode(text) if isinstance(text, str) else []
            if isinstance(text, str) and skip_long and not fits(ids, budget, self.vocab):
                text = Skip("too_long", f"{record.origin}: {len(ids)} text tokens do not fit in {budget}")
            if isinstance(text, Skip):
                self.skips.add(text)
                skipped += 1
                if skipped > MAX_SKIPS_PER_BATCH:
                    raise ValueError(f"source {slot.name}/{sub}: {skipped} records unusable for one {task} batch; "
                                     f"skipped so far: {dict(self.skips.counts)}")
                continue
            texts.append(ids)
            if entry.image:
                assert record.image is not None  # rows of records without an image were skipped above
                pixels.append(image_to_tensor(record.image, self.spec.resolution, mode=source.resolved_image_mode))
        image_ids = encode_image_ids(self.encoder, torch.stack(pixels), self.vocab) if pixels else None
        layout = assemble(task, texts, image_ids, vocab=self.vocab, max_text_len=self.spec.max_text_len,
                          seq_len=self.seq_len, cond_dropout_prob=slot.spec.cond_dropout_prob,
                          generator=torch_generator(rng))
        return task, layout

    def metrics(self) -> dict[str, Any]:
        """Batches so far, skipped records by reason (and where the first of each was), micro-batches per
        sub-source."""
        return {"batches": self.batches, "skipped": dict(self.skips.counts), "first_skipped": dict(self.skips.first),
                "picks": dict(self.picks)}

    def state_dict(self) -> dict[str, Any]:
        streams = {f"{slot.name}/{sub}": s.state_dict() for slot in self.slots for sub, s in slot.streams.items()}
        return {"name": "mixture", "seed": self.seed, "rank": self.rank, "world_size": self.world_size,
                **self.metrics(), "streams": streams}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_state(state, name="mixture", seed=self.seed, rank=self.rank, world_size=self.world_size)
        streams = {f"{slot.name}/{sub}": s for slot in self.slots for sub, s in slot.streams.items()}
        if set(state["streams"]) != set(streams):
            raise ValueError(f"data state has streams {sorted(state['streams'])}, this source {sorted(streams)}")
        for key, stream in streams.items():
            stream.load_state_dict(state["streams"][key])
        self.batches = int(state["batches"])
        self.skips.counts.clear()
        self.skips.counts.update(state["skipped"])
        self.skips.first = dict(state.get("first_skipped", {}))  # absent from states saved before it existed
        self.picks = Counter(state["picks"])
        self._iters.clear()  # reopen every stream at its restored cursor


DataSpec = Annotated[Union[MixtureSpec, WorldSpec, WorldSftSpec], Field(discriminator="name")]  # noqa: UP007
"""The `data:` section of a training config; its `name` picks the spec class (and the source)."""

SOURCES: Mapping[str, Callable[..., BatchSource]] = {
    "mixture": MixtureSource,
    "world_pretrain": WorldSource,
    "world_sft": WorldSource,
}
"""`data.name` -> builder(spec, tokenizer=, vocab=, image_tokenizer=, seed=, rank=, world_size=)."""


def build_source(
    spec: DataSpec | Mapping[str, Any] | None, *, tokenizer: Any, vocab: Vocab, image_tokenizer: Any, seed: int,
    rank: int = 0, world_size: int = 1,
) -> BatchSource:
    """The batch source described by the `data:` section `spec`.

    Args:
        spec: a `DataSpec` (`TrainConfig.data`), or its plain mapping `{"name": one of SOURCES, ...}`.
        tokenizer: the text tokenizer (`TextTokenizer`); vocab: its `Vocab`.
        image_tokenizer: a `MagvitV2`, or any callable (B, 3, H, W) pixels in [-1, 1] -> (B, N) codes; None
            for text-only sources.
        seed: seeds every random choice; rank / world_size: this process's shard of every stream.

    Raises:
        ValueError: a bad spec; the message names the key (`data.tasks.t2i.batch_size`, ...).
    """
    if spec is None:
        raise ValueError(f"the config has no `data` section; give `data.name`, one of {sorted(SOURCES)}")
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise ValueError(f"`data.name` is required; one of {sorted(SOURCES)}")
        spec = build(DataSpec, spec, "data")  # type: ignore[arg-type]
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"`rank` ({rank}) must lie in [0, world_size) with world_size ({world_size}) >= 1")
    return SOURCES[spec.name](spec, tokenizer=tokenizer, vocab=vocab, image_tokenizer=image_tokenizer, seed=seed,
                                 rank=rank, world_size=world_size)
