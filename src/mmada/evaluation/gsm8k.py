"""GSM8K (Cobbe et al. 2021) from a local jsonl: zero- or few-shot, with or without thinking.

The data is any GSM8K-format jsonl (`{"question": ..., "answer": "... #### 72"}`; the real test set is
at `../shared/data/gsm8k/test.jsonl` in this project's tests and docs). Nothing is downloaded.

Prompt: `template` with `{question}` (default: the bare question, as the paper's lm-eval runs), after
`shots` worked examples taken from the start of `fewshot_path` (default: `train.jsonl` beside the data
file), each rendered as "Question: ...\\nAnswer: <reference solution>" — so the model sees the `#### N`
convention. The whole prompt is one user turn of the chat template; `thinking` adds MMaDA's thinking
instruction.

Scoring is the RL reward's (`mmada.rl.rewards`): the answer is the text after the last `####`, else
the last `\\boxed{}`, else the last number after `</think>`; compared numerically with the reference's
`####` answer. So a GSM8K reward that went up and a GSM8K score that went up measure the same thing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from ..pipelines import MMaDAPipeline
from ..prompting.chat import encode_chat
from ..rl.rewards import correctness_gsm8k, gsm8k_answer
from ..rl.rollout import read_gsm8k
from ..sampling import Overrides, TextSampling
from ..sampling.common import model_max_length
from ..world.judges import score_format
from .records import Meter, Run, batches, call_generator, check_run_settings, data_record, metered

_T = TypeVar("_T")
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gsm8kConfig:
    """What to evaluate and how to prompt and sample."""

    path: Path
    """A GSM8K-format jsonl (`question`, `answer` with a final `#### N`)."""
    limit: int | None = None
    """Keep the first `limit` items (None: all)."""
    shots: int = 0
    """Worked examples before the question (the paper's lm-eval GSM8K is few-shot; the tiny model's
    512-token context holds none)."""
    fewshot_path: Path | None = None
    """Where the worked examples come from (default: `train.jsonl` beside `path`)."""
    template: str = "{question}"
    """The question's prompt; must contain `{question}` (e.g. "{question}\\nPut the final answer in \\\\boxed{{}}.")."""
    thinking: bool = False
    """Ask in MMaDA's thinking mode (`<think>` reasoning, then the answer)."""
    batch_size: int = 8
    """Questions per sampler call (exact-mode answers do not depend on it: tested)."""
    seed: int = 0
    """Seeds one generator per batch (only used when sampling at temperature > 0)."""
    text: Overrides[TextSampling] = field(default_factory=lambda: Overrides(TextSampling))
    """Sampler overrides applied over the pipeline's text defaults."""

    def __post_init__(self) -> None:
        check_run_settings(self.limit, self.batch_size, "text", self.text, TextSampling)
        if self.shots < 0:
            raise ValueError(f"`shots` must be >= 0, got {self.shots}")
        if "{question}" not in self.template:
            raise ValueError(f"`template` must contain '{{question}}', got {self.template!r}")


def fewshot_prefix(examples: Sequence[tuple[str, str]]) -> str:
    """Worked examples as "Question: q\\nAnswer: solution" blocks, each followed by a blank line."""
    return "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in examples)


def build_prompt(question: str, template: str, prefix: str) -> str:
    """The user turn: worked examples, then the templated question (after "Question:" when there are shots)."""
    body = template.format(question=question)
    return f"{prefix}Question: {body}\nAnswer:" if prefix else body


def _fewshot_examples(config: Gsm8kConfig) -> list[tuple[str, str]]:
    if config.shots == 0:
        return []
    source = config.fewshot_path or config.path.with_name("train.jsonl")
    examples = list(read_gsm8k(str(source)))
    if len(examples) < config.shots:
        raise ValueError(f"{source} holds {len(examples)} examples, fewer than shots={config.shots}")
    return examples[: config.shots]


def evaluate_gsm8k(pipe: MMaDAPipeline, config: Gsm8kConfig, *, progress: bool = False) -> Run:
    """Answer every question; score accuracy, the share with an extractable answer, the share skipped
    because the prompt leaves no room for `gen_length` tokens in the model's context (counted wrong, never
    truncated), and (thinking) the share in the `<think>…</think> answer` format."""
    items = list(read_gsm8k(str(config.path)))[: config.limit]
    prefix = fewshot_prefix(_fewshot_examples(config))
    settings = config.text.apply(pipe.settings.text)
    prompts = [build_prompt(q, config.template, prefix) for q, _ in items]
    room = _room(pipe, settings.gen_length)
    lengths = [len(encode_chat(pipe.tokenizer, [{"role": "user", "content": p}], thinking=config.thinking))
               for p in prompts]
    todo = [i for i, length in enumerate(lengths) if length <= room]
    too_long = f" tokens + gen_length {settings.gen_length} exceeds the model's context"
    outputs = {i: _item(i, *items[i], "", skipped=f"prompt of {lengths[i]}{too_long}")
               for i in sorted(set(range(len(items))) - set(todo))}
    if outputs:
        logger.warning("gsm8k: %d of %d prompts leave no room for %d tokens in the context; scored as wrong",
                       len(outputs), len(items), settings.gen_length)
    meter = Meter()
    calls = tqdm(batches(todo, config.batch_size), desc="gsm8k", unit="batch", disable=not progress, leave=False)
    with metered(pipe.model, meter):
        for index, batch in enumerate(calls):
            generator = call_generator(pipe.device, config.seed, index)
            results = pipe.generate_batch([prompts[i] for i in batch], thinking=config.thinking, sampling=settings,
                                          generator=generator)
            meter.add_text([r.tokens for r in results], pipe.vocab.mask_id)
            outputs.update({i: _item(i, *items[i], result.text) for i, result in zip(batch, results)})
    ordered = [outputs[i] for i in range(len(items))]
    return Run("gsm8k", {"gsm8k": _scores(ordered, config.thinking)}, ordered,
               {"data": data_record(config.path, len(items)), "limit": config.limit, "shots": config.shots,
                "fewshot_path": None if not config.shots else str(config.fewshot_path or
                                                                   config.path.with_name("train.jsonl")),
                "template": config.template, "thinking": config.thinking, "text": settings}, meter)


def _room(pipe: MMaDAPipeline, gen_length: int) -> int:
    """The longest prompt that leaves `gen_length` positions in the model's context (no limit: unbounded)."""
    limit = model_max_length(pipe.model)
    return (1 << 62) if limit is None else limit - gen_length


def _item(index: int, question: str, solution: str, output: str, skipped: str | None = None) -> dict[str, Any]:
    return {"index": index, "question": question, "reference": gsm8k_answer(solution), "output": output,
            "extracted": gsm8k_answer(output), "correct": correctness_gsm8k(output, solution) > 0,
            "think_format": bool(score_format(output)), "skipped": skipped}


def _scores(outputs: Sequence[dict[str, Any]], thinking: bool) -> dict[str, float]:
    count = max(len(outputs), 1)
    scores = {"accuracy": sum(o["correct"] for o in outputs) / count,
              "answered": sum(o["extracted"] is not None for o in outputs) / count,
              "skipped": sum(o["skipped"] is not None for o in outputs) / count}
    if thinking:
        scores["think format"] = sum(o["think_format"] for o in outputs) / count
    return scores
