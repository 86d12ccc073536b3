"""Default training hooks: previews (answers and images written into the run folder) and evaluation on
the tiny world's suite, both through `MMaDAPipeline` and the world's judges."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import train_state
from ..model import MMaDAModel
from ..sampling import Overrides, TextSampling
from .config import LogConfig, Tokenizers

EvalHook = Callable[[MMaDAModel, int], Mapping[str, float]]
"""(model, step) -> metrics, logged as `eval/<name>`; called on every process (a sharded model needs all)."""
PreviewHook = Callable[[MMaDAModel, int, Path], None]
"""(model, step, run_dir): write samples under run_dir/previews/; called on every process."""


class PipelineHooks:
    """The default preview and evaluation hooks, both through `MMaDAPipeline`; sampling uses its own fixed
    generators, so they never move the training RNG.

    `preview` answers `log.preview_prompts` and draws `log.preview_captions` (with an image tokenizer) into
    run_dir/previews/step-N.txt and step-N-<i>.png. `evaluate` scores the tiny world's evaluation suite with
    the world's judges (`evaluation.world`; `log.eval_limit` examples per group), as `<task>/<group>`.
    """

    def __init__(self, tokenizers: Tokenizers, log: LogConfig, write: bool = True) -> None:
        self.tokenizers, self.log, self.write = tokenizers, log, write
        n = log.sample_gen_length
        self.text = Overrides(TextSampling, gen_length=n, steps=n, block_length=n)  # previews: one block
        self.greedy = Overrides(TextSampling, gen_length=n, steps=n, block_length=n, temperature=0.0)  # evaluation

    def _pipeline(self, model: MMaDAModel) -> Any:
        from ..pipelines import MMaDAPipeline, PipelineSettings

        tk = self.tokenizers
        return MMaDAPipeline(
            model,
            tk.text,
            tk.vocab,
            tk.image,
            PipelineSettings(max_text_len=self.log.preview_max_text_len),
        )

    def preview(self, model: MMaDAModel, step: int, run_dir: Path) -> None:
        pipe = self._pipeline(model)
        gen = torch.Generator(pipe.device).manual_seed(0)
        text = self.text.apply(pipe.settings.text)
        answers = [
            f"Q: {q}\nA: {pipe.generate(q, generator=gen, sampling=text).text}\n" for q in self.log.preview_prompts
        ]
        captions = list(self.log.preview_captions) if self.tokenizers.image is not None else []
        images = pipe.text_to_image(captions, generator=gen) if captions else []
        if self.write:
            folder, name = run_dir / "previews", train_state.checkpoint_name(step)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}.txt").write_text("\n".join(answers), encoding="utf-8")
            for i, image in enumerate(images):
                image.save(folder / f"{name}-{i}.png")

    def evaluate(self, model: MMaDAModel, step: int) -> dict[str, float]:
        from ..evaluation.world import WorldEvalConfig, evaluate_world

        config = WorldEvalConfig(tasks=self.log.eval_tasks, limit=self.log.eval_limit, text=self.greedy,
                                 short=self.greedy)
        results = evaluate_world(self._pipeline(model), config)
        return {f"{task}/{group}": score for task, groups in results.items() for group, score in groups.items()}
