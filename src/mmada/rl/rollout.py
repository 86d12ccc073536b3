"""UniGRPO rollouts: G responses per prompt sampled from π_old, decoded and rewarded (MMaDA §2.3).

For a query q the policy samples G responses o_1..o_G (paper §2.3.2; dLLM-RL `num_response_per_task`,
sample/llada_rl_rollout.py) and a rule-based reward scores each one (`rewards`, Eq. 6). A `Rollout`
holds the whole sequences (prompt + response) that the update loop (`rl.loop`) noises and scores:

    text:  [pad..] <bos> chat prompt <|end_header_id|>\\n  o_1 .. o_k <|eot_id|>  <eos> <eos> ..
                        never masked                      `response` (maskable)   post-EOS: neither
    vqa:   [pad..] <|mmu|> <|soi|> image <|eoi|> chat prompt  o_1 .. <|eot_id|>  <eos> ..
    t2i:   [iPAD..] <|t2i|> caption <|soi|>  img_1 .. img_N  <|eoi|>
                                              `response`

The text response runs up to and including the first EOS / `<|eot_id|>`; the EOS padding after it is
context, not a decision, and is excluded from the loss as dLLM-RL excludes post-EOS padding
(train/rl_llada.py). Blocks that early stopping left masked are filled with EOS, the padding the
sampler would have produced. Images are judged by the tiny world's compositional parser
(`rewards.t2i_compositional`); their rollout sequence is the t2i layout with the sampled codes placed
in the image span (`sampling.place_image`), so training sees the conditional prompt only (guidance is
a sampling-time device).

Prompts come from the world's training-split generators (`world.data.iter_text` / `iter_vqa` /
`iter_t2i`), never from the held-out evaluation suite.
"""

from __future__ import annotations

import functools
import itertools
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor

from ..pipelines import MMaDAPipeline
from ..prompting import TokenLayout, build_mmu_gen_batch, build_text_gen_batch, encode_chat
from ..sampling import ImageSampling, TextSampling, place_image, sample_t2i, sample_text
from ..world.data import iter_t2i, iter_text, iter_vqa
from .rewards import correctness_arithmetic, correctness_gsm8k, correctness_vqa, format_reward, t2i_compositional

RLTask = Literal["arithmetic", "vqa", "t2i", "gsm8k"]
RL_TASKS: tuple[RLTask, ...] = get_args(RLTask)
TextReward = Callable[[str, Any], tuple[float, float]]
"""(completion, reference) -> (reward, correct in [0, 1])."""
ARITHMETIC_STEPS = (1, 2, 3)  # RL prompts: 1-3 step problems (4-step ones stay an evaluation stretch)


@dataclass(frozen=True)
class Rollout:
    """G sampled responses per prompt, as whole sequences, with their rewards. R = rows, L = length."""

    task: RLTask
    """"arithmetic", "vqa", "t2i" or "gsm8k"."""
    input_ids: Tensor
    """(R, L) int64 prompt + response (t2i: the layout with the sampled image tokens)."""
    attention_mask: Tensor | None
    """(R, L) bool, False on left padding; None when nothing is padded."""
    response: Tensor
    """(R, L) bool, the positions the policy generated and the loss may mask (never the prompt)."""
    rewards: Tensor
    """(R,) float32."""
    correct: Tensor | None
    """(R,) float32 in [0, 1] (the task's correctness), or None."""
    group_size: int
    """G: rows r*G .. r*G + G - 1 answer the same prompt."""
    texts: list[str]
    """(R,) decoded responses (t2i: empty), for logging."""
    prompts: list[str]
    """(R,) the prompt of each row (repeated G times), for logging."""

    def __post_init__(self) -> None:
        rows, length = self.input_ids.shape if self.input_ids.dim() == 2 else (-1, -1)
        if rows < 1 or self.input_ids.dtype != torch.long:
            raise ValueError(f"input_ids must be (R, L) int64, got {tuple(self.input_ids.shape)} "
                             f"{self.input_ids.dtype}")
        for name in ("attention_mask", "response"):
            mask = getattr(self, name)
            if mask is not None and (mask.shape != (rows, length) or mask.dtype != torch.bool):
                raise ValueError(f"{name} must be ({rows}, {length}) bool, got {tuple(mask.shape)} {mask.dtype}")
        for name in ("rewards", "correct"):
            values = getattr(self, name)
            if values is not None and values.shape != (rows,):
                raise ValueError(f"{name} must have shape ({rows},), got {tuple(values.shape)}")
        if self.group_size < 2 or rows % self.group_size:
            raise ValueError(f"group_size ({self.group_size}) must be >= 2 and divide the {rows} rows")
        if len(self.texts) != rows or len(self.prompts) != rows:
            raise ValueError(f"texts ({len(self.texts)}) and prompts ({len(self.prompts)}) need one entry per "
                             f"row ({rows})")

    @property
    def num_groups(self) -> int:
        return self.input_ids.shape[0] // self.group_size


@dataclass(frozen=True)
class WorldPrompts:
    """Training prompts of one task: what to ask, and what the reward compares against."""

    task: RLTask
    prompts: list[str]
    """Questions (arithmetic, VQA) or captions (t2i)."""
    references: list[Any]
    """int answers (arithmetic), short answers (VQA) or `captions.Prompt` specs (t2i)."""
    images: list[np.ndarray] | None = None
    """VQA only: (32, 32, 3) uint8 scenes the questions are about."""


# ---- rewards -----------------------------------------------------------------------------------------
def arithmetic_reward(completion: str, answer: Any) -> tuple[float, float]:
    """Eq. 6 for text reasoning: correctness (2.0) + format (0.5); correct = the answer is right."""
    correctness = correctness_arithmetic(completion, answer)
    return correctness + format_reward(completion), float(correctness > 0)


def vqa_reward(completion: str, answer: Any) -> tuple[float, float]:
    """Eq. 6 for multimodal reasoning: correctness (2.0) + format (0.5); correct = exact match."""
    correctness = correctness_vqa(completion, answer)
    return correctness + format_reward(completion), float(correctness > 0)


def gsm8k_reward(completion: str, solution: Any) -> tuple[float, float]:
    """Eq. 6 on GSM8K (the paper's text RL data): correctness (2.0, `rewards.correctness_gsm8k` against the
    reference's `#### answer`) + format (0.5)."""
    correctness = correctness_gsm8k(completion, solution)
    return correctness + format_reward(completion), float(correctness > 0)


# ---- prompts -----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def read_gsm8k(path: str) -> tuple[tuple[str, str], ...]:
    """(question, solution) pairs of a GSM8K-format jsonl (`{"question": ..., "answer": "... #### 72"}`)."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"GSM8K file {path!r} does not exist (rl.files.gsm8k: a local GSM8K-format jsonl)")
    pairs = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pairs.append((str(row["question"]), str(row["answer"])))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: not a GSM8K row with 'question' and 'answer' ({error})") from None
    if not pairs:
        raise ValueError(f"GSM8K file {path!r} holds no rows")
    return tuple(pairs)


def _gsm8k_prompts(count: int, seed: int, source: str | None) -> WorldPrompts:
    if source is None:
        raise ValueError("the gsm8k RL task reads a local file: set rl.files.gsm8k to a GSM8K-format jsonl")
    rows = random.Random(seed).choices(read_gsm8k(source), k=count)
    return WorldPrompts("gsm8k", [q for q, _ in rows], [a for _, a in rows])


def _arithmetic_prompts(count: int, seed: int, source: str | None = None) -> WorldPrompts:
    text = list(itertools.islice(iter_text("train", seed, ARITHMETIC_STEPS), count))
    return WorldPrompts("arithmetic", [e.question for e in text], [int(e.answer) for e in text])


def _vqa_prompts(count: int, seed: int, source: str | None = None) -> WorldPrompts:
    vqa = list(itertools.islice(iter_vqa("train", seed), count))
    return WorldPrompts("vqa", [e.question for e in vqa], [e.answer for e in vqa], [e.image for e in vqa])


def _t2i_prompts(count: int, seed: int, source: str | None = None) -> WorldPrompts:
    t2i = list(itertools.islice(iter_t2i("train", seed), count))
    return WorldPrompts("t2i", [e.caption for e in t2i], [e.spec for e in t2i])


def world_prompts(task: RLTask, count: int, rng: random.Random, source: str | None = None) -> WorldPrompts:
    """`count` training prompts of `task`, drawn with `rng` (one seed per call).

    Arithmetic: 1-3 step word problems (`world.arithmetic.sample_problem` via `iter_text`); VQA: shapes
    questions (`world.vqa.sample_vqa` via `iter_vqa`); t2i: compositional captions of every GenEval
    category (`iter_t2i`). The iterators keep only content that hashes into the train split, so no RL
    prompt is ever an evaluation prompt. gsm8k: questions drawn with replacement from `source`, a local
    GSM8K-format jsonl (its train split: the paper's text RL data, §2.3.2).
    """
    if task not in RL_TASK_TABLE:
        raise ValueError(f"task must be one of {RL_TASKS}, got {task!r}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    return RL_TASK_TABLE[task].prompts(count, rng.randrange(2**31), source)


# ---- text and VQA ------------------------------------------------------------------------------------
def _check_group(prompts: Sequence[Any], group_size: int, temperature: float) -> None:
    if not prompts:
        raise ValueError("need at least one prompt")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (a group needs a baseline), got {group_size}")
    if temperature <= 0:
        raise ValueError(f"temperature ({temperature}) must be > 0 with group_size {group_size}: greedy decoding "
                         "gives G identical responses, hence zero advantages")


def _repeat(items: Sequence[Any], group_size: int) -> list[Any]:
    """[a, b] -> [a, a, .., b, b, ..]: G consecutive rows per prompt."""
    return [item for item in items for _ in range(group_size)]


def response_mask(generated: Tensor, stop_ids: Sequence[int]) -> Tensor:
    """Which generated positions are the response: up to and including the first stop token.

    Args:
        generated: (R, G) int64 generated ids (prompt excluded).
        stop_ids: EOS / `<|eot_id|>` ids.
    Returns:
        (R, G) bool; a row without a stop token is all True.
    """
    is_stop = torch.isin(generated, torch.tensor(list(stop_ids), device=generated.device))  # (R, G)
    before = is_stop.long().cumsum(dim=1) - is_stop.long()  # stops strictly before each position
    return before == 0


def _text_rollout(
    pipe: MMaDAPipeline, task: RLTask, layout: TokenLayout, prompts: list[str], references: list[Any],
    settings: TextSampling, group_size: int, generator: torch.Generator | None, reward: TextReward,
) -> Rollout:
    """Sample the (already repeated) prompt `layout`, cut the responses at EOS, decode and reward."""
    layout = layout.to(pipe.device)
    padded = None if bool(layout.attention_mask.all()) else layout.attention_mask
    tokens = sample_text(pipe.model, layout.input_ids, settings, mask_id=pipe.vocab.mask_id, attention_mask=padded,
                         stop_token_ids=pipe._stop_ids(), generator=generator)
    tokens = tokens.clone()  # (R, P+G); a clone outside inference mode, so autograd may save it
    start = layout.seq_len
    generated = tokens[:, start:]
    keep = response_mask(generated, pipe._stop_ids())  # (R, G)
    tokens[:, start:] = torch.where(~keep & (generated == pipe.vocab.mask_id), pipe.vocab.eos_id, generated)
    response = torch.zeros_like(tokens, dtype=torch.bool)
    response[:, start:] = keep
    texts = [pipe.decode_answer(row).text for row in tokens[:, start:]]
    scored = [reward(text, ref) for text, ref in zip(texts, references)]
    attention = None if padded is None else torch.cat([padded, padded.new_ones(generated.shape)], dim=1)
    return Rollout(task, tokens, attention, response, torch.tensor([r for r, _ in scored], dtype=torch.float32),
                   torch.tensor([c for _, c in scored], dtype=torch.float32), group_size, texts, prompts)


def rollout_text(
    pipe: MMaDAPipeline,
    questions: Sequence[str],
    references: Sequence[Any],
    *,
    group_size: int,
    settings: TextSampling,
    generator: torch.Generator | None = None,
    thinking: bool = False,
    reward: TextReward = arithmetic_reward,
    task: RLTask = "arithmetic",
) -> Rollout:
    """G responses to each question through the chat template, in one left-padded batch.

    Args:
        questions: Q user prompts; `references`: Q answers handed to `reward`.
        group_size: G >= 2 responses per question (rows q*G .. q*G + G - 1).
        settings: the sampler's settings; temperature must be > 0 (diverse groups).
        thinking: prefix MMaDA's `<think>` instruction (the pipeline's `thinking` flag).
        reward: (completion text, reference) -> (reward, correct).
        task: the rollout's task name (arithmetic or gsm8k).
    Returns:
        A `Rollout` of R = Q * G rows.
    """
    _check_group(questions, group_size, settings.temperature)
    if len(references) != len(questions):
        raise ValueError(f"got {len(questions)} questions but {len(references)} references")
    ids = [encode_chat(pipe.tokenizer, [{"role": "user", "content": q}], thinking=thinking) for q in questions]
    layout = build_text_gen_batch(_repeat(ids, group_size), vocab=pipe.vocab)
    return _text_rollout(pipe, task, layout, _repeat(questions, group_size), _repeat(references, group_size),
                         settings, group_size, generator, reward)


def rollout_vqa(
    pipe: MMaDAPipeline,
    images: Sequence[Any],
    questions: Sequence[str],
    answers: Sequence[Any],
    *,
    group_size: int,
    settings: TextSampling,
    generator: torch.Generator | None = None,
    thinking: bool = False,
    reward: TextReward = vqa_reward,
) -> Rollout:
    """G answers to each question about its image: the understanding layout of `understand_batch`.

    Args: as `rollout_text`, plus `images` (Q images: paths, PIL, arrays or codes; `pipe.encode_image`).
    """
    _check_group(questions, group_size, settings.temperature)
    if not len(images) == len(questions) == len(answers):
        raise ValueError(f"got {len(images)} images, {len(questions)} questions and {len(answers)} answers")
    codes = torch.cat([pipe.encode_image(image) for image in images])  # (Q, N)
    prompts = [encode_chat(pipe.tokenizer, [{"role": "user", "content": q}], thinking=thinking) for q in questions]
    layout = build_mmu_gen_batch(pipe.vocab.image_ids(codes).repeat_interleave(group_size, dim=0),
                                 _repeat(prompts, group_size), vocab=pipe.vocab)
    return _text_rollout(pipe, "vqa", layout, _repeat(questions, group_size), _repeat(answers, group_size),
                         settings, group_size, generator, reward)


# ---- images ------------------------------------------------------------------------------------------
def rollout_t2i(
    pipe: MMaDAPipeline,
    captions: Sequence[str],
    specs: Sequence[Any],
    *,
    group_size: int,
    settings: ImageSampling,
    generator: torch.Generator | None = None,
) -> Rollout:
    """G images per caption (MaskGIT with the null prompt for guidance), judged against `specs`.

    Args:
        captions: Q captions; `specs`: their `captions.Prompt` (or caption text) for the judge.
        settings: the image sampler's; temperature must be > 0 (diverse groups).
    Returns:
        A `Rollout` whose rows are the t2i layouts holding the sampled codes; response = image span.
    """
    _check_group(captions, group_size, settings.temperature)
    if len(specs) != len(captions):
        raise ValueError(f"got {len(captions)} captions but {len(specs)} specs")
    layout, uncond = pipe._t2i_layouts(_repeat(captions, group_size), settings)
    codes = sample_t2i(pipe.model, layout, settings, pipe.vocab, uncond=uncond, generator=generator)
    codes = codes.clone()  # (R, N); not an inference tensor
    rows = place_image(layout, pipe.vocab.image_ids(codes))
    images = [np.asarray(image.convert("RGB")) for image in pipe.decode_images(codes)]
    rewards = torch.tensor([t2i_compositional(im, spec) for im, spec in zip(images, _repeat(specs, group_size))],
                           dtype=torch.float32)
    response = torch.zeros_like(rows.input_ids, dtype=torch.bool)
    response[:, rows.spans.image.as_slice()] = True
    padded = None if bool(rows.attention_mask.all()) else rows.attention_mask
    return Rollout("t2i", rows.input_ids, padded, response, rewards, rewards.clone(), group_size,
                   [""] * len(images), _repeat(captions, group_size))


def rollout_world(
    pipe: MMaDAPipeline,
    prompts: WorldPrompts,
    *,
    group_size: int,
    text: TextSampling,
    image: ImageSampling,
    generator: torch.Generator | None = None,
    thinking: bool = False,
) -> Rollout:
    """The rollout of `world_prompts`' task, rewarded by its Eq. 6 reward (images: the scene judge)."""
    return RL_TASK_TABLE[prompts.task].rollout(pipe, prompts, group_size, text, image, generator, thinking)


# ---- the task table ----------------------------------------------------------------------------------
WorldRollout = Callable[
    [MMaDAPipeline, WorldPrompts, int, TextSampling, ImageSampling, torch.Generator | None, bool], Rollout]


def _roll_arithmetic(pipe: MMaDAPipeline, p: WorldPrompts, group_size: int, text: TextSampling,
                     image: ImageSampling, generator: torch.Generator | None, thinking: bool) -> Rollout:
    return rollout_text(pipe, p.prompts, p.references, group_size=group_size, settings=text, generator=generator,
                        thinking=thinking)


def _roll_gsm8k(pipe: MMaDAPipeline, p: WorldPrompts, group_size: int, text: TextSampling,
                image: ImageSampling, generator: torch.Generator | None, thinking: bool) -> Rollout:
    return rollout_text(pipe, p.prompts, p.references, group_size=group_size, settings=text, generator=generator,
                        thinking=thinking, reward=gsm8k_reward, task="gsm8k")


def _roll_vqa(pipe: MMaDAPipeline, p: WorldPrompts, group_size: int, text: TextSampling,
              image: ImageSampling, generator: torch.Generator | None, thinking: bool) -> Rollout:
    return rollout_vqa(pipe, p.images or [], p.prompts, p.references, group_size=group_size, settings=text,
                       generator=generator, thinking=thinking)


def _roll_t2i(pipe: MMaDAPipeline, p: WorldPrompts, group_size: int, text: TextSampling,
              image: ImageSampling, generator: torch.Generator | None, thinking: bool) -> Rollout:
    return rollout_t2i(pipe, p.prompts, p.references, group_size=group_size, settings=image, generator=generator)


@dataclass(frozen=True)
class RLTaskEntry:
    """How one RL task draws its training prompts and rolls them out."""

    prompts: Callable[[int, int, str | None], WorldPrompts]
    """(count, seed, source file or None) -> training prompts."""
    rollout: WorldRollout
    """(pipe, prompts, G, text settings, image settings, generator, thinking) -> rewarded `Rollout`."""


RL_TASK_TABLE: Mapping[str, RLTaskEntry] = MappingProxyType({
    "arithmetic": RLTaskEntry(_arithmetic_prompts, _roll_arithmetic),
    "vqa": RLTaskEntry(_vqa_prompts, _roll_vqa),
    "t2i": RLTaskEntry(_t2i_prompts, _roll_t2i),
    "gsm8k": RLTaskEntry(_gsm8k_prompts, _roll_gsm8k),
})
"""RL task -> its prompts and rollout; the one place that says what each task is."""
