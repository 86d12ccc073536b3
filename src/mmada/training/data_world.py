"""Batch sources of the tiny world (`mmada.world`): MMaDA's pretraining and mixed long-CoT SFT in miniature.

* `world_pretrain` (MMaDA stage 1): t2i on shapes scenes and handwritten digits; understanding (mmu) as
  captioning, short-answer VQA and digit recognition; arithmetic word problems as plain text (lm) and as
  short-answer chat (lm_chat). No `<think>` anywhere, so the SFT ablation isolates CoT training.
* `world_sft` (MMaDA §2.2, mixed long-CoT): arithmetic and VQA / digit questions answered with
  `<think> reasoning </think> answer` traces in the chat format, plain short answers mixed in
  (`plain_fraction`), plus t2i and captioning rows to keep those skills; `cot: false` is the no-CoT
  ablation (every answer short, no `<think>` in any target).

Thinking instruction: CoT prompts start with MMaDA's `THINKING_INSTRUCTION` (`thinking: true`, default).
SFT mixes traces and short answers for the same questions, so the prompt must say which one is wanted;
MMaDA's switch is that instruction, and it is exactly what `render_chat(..., thinking=True)` and the
pipelines' `thinking=True` put in front of the question, so a world model trained here is prompted at
evaluation the same way as the 8B model. The cost is about 40 words of prompt on CoT rows. Rows use the
inference chat template with the real `<|eot_id|>` (no `<eot_id>` quirk: these models start from scratch).

Records are split into train / validation by the world's content hash (`mmada.world.data.split_of`),
so the two splits never share a scene or a problem. Each record kind is drawn once into a fixed pool of
`pool_size` records (disjoint `pool[rank::world_size]` shares per rank); rows are drawn from the pools
with replacement by the micro-batch's own rng, so the state is the batch counter. Image codes are
encoded in batches on first use and cached, since re-encoding the same 32x32 images every step would
dominate a 2-core CPU run.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, ClassVar, Literal

import torch

from ..image_tokenizer import image_to_tensor
from ..prompting import TokenLayout, Vocab, render_chat
from ..world import digit_examples, iter_t2i, iter_text, iter_vqa
from ..world.captions import NUMBER_WORDS
from ..world.scenes import Scene, region_name
from .data_adapters import Skip, SkipCounter
from .data_tasks import (
    CAPTION_QUESTIONS,
    as_image_encoder,
    assemble,
    batch_rng,
    check_state,
    count_image_tokens,
    encode_image_ids,
    fits,
    r2i_transcript,
    text_budget,
    text_length,
    torch_generator,
)
from .tasks import training_task

logger = logging.getLogger(__name__)

Stage = Literal["pretrain", "sft"]
DEFAULT_BATCH_SIZES: Mapping[Stage, Mapping[str, int]] = {
    "pretrain": {"t2i": 8, "mmu": 8, "lm": 4, "lm_chat": 4},
    "sft": {"lm_chat": 8, "mmu": 8, "t2i": 4},
}
DEFAULT_WEIGHTS: Mapping[str, Mapping[str, float]] = {
    "t2i": {"scenes": 0.8, "digits": 0.2},
    "mmu": {"caption": 0.25, "vqa": 0.5, "digits": 0.25},
}
"""Share of each record kind among the rows of a task."""
MAX_REDRAWS = 100
"""Consecutive rows too long for their budget before giving up: `max_text_len` is then too small."""
Row = tuple[str, tuple[str, int] | None]
"""A row's text and, for tasks with an image, the pooled image it shows: (record kind, index)."""


@dataclass(frozen=True)
class WorldSpec:
    """The `data:` section of `world_pretrain` (`WorldSftSpec`: of `world_sft`)."""

    name: Literal["world_pretrain"]
    """The source (`build_source` dispatches on it)."""
    max_text_len: int
    """M: text tokens of t2i / mmu / r2i rows; lm and lm_chat rows get L = M + N + 3."""
    batch_sizes: Mapping[str, int] = field(default_factory=dict)
    """Rows per micro-batch per task (0 disables it); default `DEFAULT_BATCH_SIZES[stage]`."""
    split: Literal["train", "validation"] = "train"
    """Which side of the world's content hash to draw from."""
    resolution: int = 32
    """Image side; the world renders 32x32 (the world tokenizer gives 8x8 = 64 codes)."""
    pool_size: int = 4096
    """Records drawn per kind (scenes, VQA, arithmetic; digits: at most all of the split)."""
    cond_dropout_prob: float = 0.1
    """t2i caption dropout for classifier-free guidance."""
    weights: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """Overrides of `DEFAULT_WEIGHTS`, e.g. {"mmu": {"caption": 0, "vqa": 1, "digits": 1}}."""
    seq_len: int | None = None
    """L; default M + N + 3."""
    pad_to: Literal["longest", "max"] = "longest"
    """"longest": each task's rows are padded to the longest row of its micro-batch (M and L are caps);
    "max": to M / L, as the official loaders do. t2i captions are left-padded with hidden padding
    (`objective.padding: hide`) and RoPE is relative, so t2i rows train the same function either way;
    text rows keep their EOS padding up to the micro-batch's longest answer (LLaDA's SFT convention).
    "longest" skips computing padding (t2i rows shrink from M + 67 to ~10 + 67 tokens)."""

    def __post_init__(self) -> None:
        for key, low in (("max_text_len", 2), ("resolution", 1), ("pool_size", 1)):
            if getattr(self, key) < low:
                raise ValueError(f"`{key}` must be >= {low}, got {getattr(self, key)}")
        for task, size in self.batch_sizes.items():
            if task not in WorldSource.ROWS:
                raise ValueError(f"`batch_sizes.{task}`: unknown task; expected one of {list(WorldSource.ROWS)}")
            if size < 0:
                raise ValueError(f"`batch_sizes.{task}` must be >= 0, got {size}")
        if not 0.0 <= self.cond_dropout_prob <= 1.0:
            raise ValueError(f"`cond_dropout_prob` must lie in [0, 1], got {self.cond_dropout_prob}")
        for task, kinds in self.weights.items():
            for kind, weight in kinds.items():
                if task not in DEFAULT_WEIGHTS or kind not in DEFAULT_WEIGHTS[task] or weight < 0:
                    raise ValueError(f"`weights.{task}.{kind}`: expected a weight >= 0 of one of {DEFAULT_WEIGHTS}")

    @property
    def stage(self) -> Stage:
        return "sft" if self.name == "world_sft" else "pretrain"


@dataclass(frozen=True)
class WorldSftSpec(WorldSpec):
    """The `data:` section of `world_sft`: `WorldSpec` plus how the answers are written."""

    name: Literal["world_sft"]  # type: ignore[assignment]
    """The source (`build_source` dispatches on it)."""
    thinking: bool = True
    """Prefix CoT prompts with `THINKING_INSTRUCTION` (r2i: the official R2I instruction)."""
    cot: bool = True
    """world_sft: answer with `<think>` traces; false is the no-CoT ablation."""
    plain_fraction: float = 0.25
    """world_sft with cot: share of rows answered with the short answer only."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.plain_fraction <= 1.0:
            raise ValueError(f"`plain_fraction` must lie in [0, 1], got {self.plain_fraction}")


def describe_scene(scene: Scene) -> str:
    """'I see two objects: a red circle at the top left and a blue square in the center.' (r2i reasoning)."""
    items = []
    for obj in sorted(scene.objects, key=lambda o: o.center):  # left to right
        article, region = "an" if obj.color[0] in "aeiou" else "a", region_name(obj.center)
        items.append(f"{article} {obj.name} " + ("in the center" if region == "center" else f"at the {region}"))
    listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return f"I see {NUMBER_WORDS[len(items)]} object{'s' * (len(items) > 1)}: {listed}."


class WorldSource:
    """Endless micro-batches of the tiny world; one layout per task with a positive batch size."""

    def __init__(
        self, spec: WorldSpec, *, tokenizer: Any, vocab: Vocab, image_tokenizer: Any, seed: int, rank: int,
        world_size: int,
    ) -> None:
        self.spec, self.stage, self.tokenizer, self.vocab = spec, spec.stage, tokenizer, vocab
        self.image_tokenizer, self.encoder = image_tokenizer, as_image_encoder(image_tokenizer)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        sizes = spec.batch_sizes or DEFAULT_BATCH_SIZES[self.stage]
        self.batch_sizes = {task: size for task, size in sizes.items() if size > 0}
        if not self.batch_sizes:
            raise ValueError("`data.batch_sizes`: every task is disabled")
        if self.encoder is None and any(training_task(task).image for task in self.batch_sizes):
            raise ValueError("`data.batch_sizes`: image tasks need an image tokenizer, got None")
        # How answers are written: world_sft's settings; world_pretrain answers are short, without instructions.
        sft = spec if isinstance(spec, WorldSftSpec) else None
        self.cot = sft is not None and sft.cot
        self.thinking = sft is not None and sft.thinking
        self.plain_fraction = sft.plain_fraction if sft is not None else 0.0
        if "r2i" in self.batch_sizes and not self.cot:
            raise ValueError("`data.batch_sizes.r2i`: r2i answers are `<think>` traces; it needs world_sft with cot")
        if self.cot and self.plain_fraction > 0 and not self.thinking:
            logger.warning("thinking=false with CoT and short answers mixed: no prompt says which one is wanted")
        self.weights = {task: {**kinds, **spec.weights.get(task, {})} for task, kinds in DEFAULT_WEIGHTS.items()}
        for task, kinds in self.weights.items():
            if task in self.batch_sizes and sum(kinds.values()) <= 0:
                raise ValueError(f"`data.weights.{task}`: the weights of {sorted(kinds)} sum to 0")
        self.skips, self.batches = SkipCounter(), 0
        self._pools: dict[str, list[Any]] = {}
        self._codes: dict[str, dict[int, torch.Tensor]] = {}
        self._seq_len = spec.seq_len

    @property
    def seq_len(self) -> int:
        if self._seq_len is None:
            n = count_image_tokens(self.encoder, self.spec.resolution, self.image_tokenizer)
            self._seq_len = self.spec.max_text_len + n + 3
        return self._seq_len

    def pool(self, kind: str) -> list[Any]:
        """This rank's records of one kind: "scenes", "vqa", "text" or "digits" (world `T2IExample`, `VQAExample`,
        `TextExample`, `DigitExample`)."""
        if kind not in self._pools:
            split, seed, size = self.spec.split, self.seed, self.spec.pool_size
            draw = {"scenes": lambda: iter_t2i(split, seed), "vqa": lambda: iter_vqa(split, seed),
                    "text": lambda: iter_text(split, seed), "digits": lambda: iter(digit_examples(split))}
            records = list(islice(draw[kind](), size))
            self._pools[kind] = records[self.rank :: self.world_size]
            if not self._pools[kind]:
                raise ValueError(f"`data.pool_size` ({size}) leaves rank {self.rank} no {kind} records")
        return self._pools[kind]

    def __iter__(self) -> Iterator[dict[str, TokenLayout]]:
        while True:
            batch = {task: self._batch(task, size) for task, size in self.batch_sizes.items()}
            self.batches += 1  # before yielding: a state saved now resumes after this batch
            yield batch

    def _draw(self, kind: str, rng: random.Random) -> tuple[Any, tuple[str, int]]:
        records = self.pool(kind)
        index = rng.randrange(len(records))
        return records[index], (kind, index)

    def _chat(self, question: str, short: str, trace: str | None, rng: random.Random) -> str:
        """A chat row: the `<think>` trace (with the thinking instruction) or the short answer."""
        use_cot = trace is not None and self.cot and rng.random() >= self.plain_fraction
        answer = trace if trace is not None and use_cot else short
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return render_chat(messages, bos_token=self.tokenizer.bos_token or "", thinking=use_cot and self.thinking,
                           add_generation_prompt=False)

    def _t2i_row(self, rng: random.Random) -> Row:
        kinds = self.weights["t2i"]
        example, image = self._draw(rng.choices(list(kinds), list(kinds.values()))[0], rng)
        return example.caption, image

    def _mmu_row(self, rng: random.Random) -> Row:
        kinds = self.weights["mmu"]
        kind = rng.choices(list(kinds), list(kinds.values()))[0]
        example, image = self._draw("scenes" if kind == "caption" else kind, rng)
        if kind == "caption":  # captioning keeps a short answer in every stage
            question = rng.choice(CAPTION_QUESTIONS)
            return self._chat(question, example.caption, None, rng), image
        return self._chat(example.question, example.answer, example.cot_answer, rng), image

    def _r2i_row(self, rng: random.Random) -> Row:
        example, image = self._draw("scenes", rng)
        text = r2i_transcript(example.caption, describe_scene(example.scene), thinking=self.thinking,
                              eot_quirk=False, bos_token=self.tokenizer.bos_token)
        return text, image

    def _lm_row(self, rng: random.Random) -> Row:
        example, _ = self._draw("text", rng)
        return f"{example.question} The answer is {example.answer}.", None

    def _lm_chat_row(self, rng: random.Random) -> Row:
        example, _ = self._draw("text", rng)
        return self._chat(example.question, example.answer, example.cot_answer, rng), None

    ROWS: ClassVar[Mapping[str, Callable[[WorldSource, random.Random], Row]]] = {
        "t2i": _t2i_row, "mmu": _mmu_row, "lm": _lm_row, "lm_chat": _lm_chat_row, "r2i": _r2i_row,
    }
    """The tasks the world emits: task -> its row maker (the text and, for tasks with an image, which pooled
    image it shows)."""

    def _batch(self, task: str, size: int) -> TokenLayout:
        rng = batch_rng(self.seed, self.rank, f"world:{task}", self.batches)
        budget = text_budget(task, self.spec.max_text_len, self.seq_len)
        texts: list[list[int]] = []
        images: list[tuple[str, int]] = []
        redraws = 0
        while len(texts) < size:
            text, image = self.ROWS[task](self, rng)
            ids = self.tokenizer.encode(text)
            if not fits(ids, budget, self.vocab):
                self.skips.add(Skip("too_long", f"world {task} row of {len(ids)} tokens > {budget}: {text[:60]!r}"))
                redraws += 1
                if redraws > MAX_REDRAWS:
                    raise ValueError(f"`data.max_text_len` ({self.spec.max_text_len}) is too small for world "
                                     f"{task} rows: {MAX_REDRAWS} draws in a row did not fit")
                continue
            redraws = 0
            texts.append(ids)
            if image is not None:
                images.append(image)
        image_ids = self._image_ids(images) if images else None
        max_text_len, seq_len = self.spec.max_text_len, self.seq_len
        if self.spec.pad_to == "longest":
            longest = max(text_length(ids, self.vocab) for ids in texts)
            if training_task(task).budget == "row":
                seq_len = longest
            else:
                max_text_len = longest
        return assemble(task, texts, image_ids, vocab=self.vocab, max_text_len=max_text_len, seq_len=seq_len,
                        cond_dropout_prob=self.spec.cond_dropout_prob, generator=torch_generator(rng))

    def _image_ids(self, images: list[tuple[str, int]]) -> torch.Tensor:
        """(B, N) token ids of pooled images; those not seen before are encoded together and cached."""
        missing = sorted({(kind, index) for kind, index in images if index not in self._codes.get(kind, {})})
        if missing:
            pixels = torch.stack([image_to_tensor(self.pool(kind)[index].image, self.spec.resolution)
                                  for kind, index in missing])  # (n, 3, R, R)
            for (kind, index), ids in zip(missing, encode_image_ids(self.encoder, pixels, self.vocab)):
                self._codes.setdefault(kind, {})[index] = ids
        return torch.stack([self._codes[kind][index] for kind, index in images])

    def metrics(self) -> dict[str, Any]:
        """Batches so far and rows redrawn because they did not fit."""
        return {"batches": self.batches, "skipped": dict(self.skips.counts),
                "cached_images": sum(len(codes) for codes in self._codes.values())}

    def state_dict(self) -> dict[str, Any]:
        return {"name": f"world_{self.stage}", "seed": self.seed, "rank": self.rank, "world_size": self.world_size,
                "split": self.spec.split, "batches": self.batches, "skipped": dict(self.skips.counts)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_state(state, name=f"world_{self.stage}", seed=self.seed, rank=self.rank, world_size=self.world_size,
                    split=self.spec.split)
        self.batches = int(state["batches"])
        self.skips.counts.clear()
        self.skips.counts.update(state["skipped"])
