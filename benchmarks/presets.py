"""Sampling presets on the built-in model: world-evaluation accuracy against speed, one row per preset.

Scores `mmada-tiny` on the tiny world's text tasks (arithmetic, VQA, digit recognition) with the
recipe's evaluation settings (`recipe.stage_eval_config`: greedy, the model's own text defaults for
arithmetic, 32 tokens in one block for short answers), once per preset of `sampling.PRESETS` applied
over them. The table gives the overall accuracy per task, the seconds of the whole run, generated tokens
per second (answer positions: gen_length per row, early-stopped blocks included) and model calls
(NFE, each a batch of up to 32 prompts). `--variant` adds rows of other text settings.

`--image` scores the image presets instead (`sampling.IMAGE_PRESETS`): text-to-image (compositional
judge) and digit text-to-image, averaged over `--seeds` seeds, with images per second.

    python benchmarks/presets.py [--limit 12] [--threads 1] [--plot docs/presets.png]
    python benchmarks/presets.py --image [--limit 25] [--seeds 2]

`--plot` also draws accuracy against tokens/s, one line per task through the presets (needs matplotlib:
`pip install 'mmada[plots]'`).

The built-in model is tiny and only partly trained: read the accuracies as a check that a preset does
not break the answers, and the seconds as ratios on this machine.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
import yaml

import mmada.pipelines
from mmada.evaluation.world import evaluate_world
from mmada.pipelines import MMaDAPipeline
from mmada.recipe import stage_eval_config
from mmada.sampling import IMAGE_PRESETS, PRESETS, ImageSampling, Overrides, SampleStep, TextSampling

TASKS = ("arithmetic", "vqa", "digit_recognition")
IMAGE_TASKS = ("t2i", "digit_t2i")


class Counter:
    """Wraps the pipeline's text sampler: counts model calls (one `SampleStep` each) and answer tokens."""

    def __init__(self) -> None:
        self.real = mmada.pipelines.iter_sample_text
        self.calls = self.tokens = 0

    def __call__(self, model: Any, input_ids: torch.Tensor, settings: TextSampling,
                 **kwargs: Any) -> Iterator[SampleStep]:
        for step in self.real(model, input_ids, settings, **kwargs):
            self.calls += 1
            yield step
        self.tokens += step.tokens.shape[0] * (step.tokens.shape[1] - input_ids.shape[1])


def with_values(base: Overrides[TextSampling], values: dict[str, Any]) -> Overrides[TextSampling]:
    return Overrides(TextSampling, **{**base.values, **values})


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    """'NAME:FIELD=VALUE,...' -> (NAME, {FIELD: VALUE}) over the exact preset, values read as YAML scalars."""
    name, _, pairs = spec.partition(":")
    values = dict(PRESETS["exact"])
    for pair in filter(None, pairs.split(",")):
        key, _, value = pair.partition("=")
        values[key] = yaml.safe_load(value)
    return name, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=12, help="examples per group (default: 12)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default: 1)")
    parser.add_argument("--model", default="mmada-tiny", help="checkpoint (default: the built-in mmada-tiny)")
    parser.add_argument("--plot", default=None, help="also write accuracy vs tokens/s as a PNG here")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:FIELD=VALUE,...",
                        help="also score these settings (over exact), e.g. 'delayed:cache=delayed,cache_keep=all'")
    parser.add_argument("--image", action="store_true", help="score the image presets on the t2i tasks instead")
    parser.add_argument("--seeds", type=int, default=2, help="--image: image-sampling seeds to average (default: 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = MMaDAPipeline.from_pretrained(args.model)
    if args.image:
        image_presets(pipe, args.limit, args.seeds)
        return
    base = replace(stage_eval_config(per_group=50, limit=args.limit, thinking=False), tasks=TASKS)
    rows = []
    variants = {name: dict(values) for name, values in PRESETS.items()} | dict(map(parse_variant, args.variant))
    for preset, values in variants.items():
        config = replace(base, text=with_values(base.text, values), short=with_values(base.short, values))
        counter = Counter()
        mmada.pipelines.iter_sample_text = counter  # type: ignore[assignment]
        start = time.perf_counter()
        try:
            results = evaluate_world(pipe, config)
        finally:
            mmada.pipelines.iter_sample_text = counter.real  # type: ignore[assignment]
        seconds = time.perf_counter() - start
        rows.append((preset, results, seconds, counter))
    print(f"mmada-tiny world evaluation, --limit {args.limit} per group, {args.threads} thread(s)\n")
    print("| preset | " + " | ".join(TASKS) + " | seconds | tokens/s | NFE | speed-up |")
    print("|---|" + "---|" * (len(TASKS) + 4))
    exact_seconds = rows[0][2]
    for preset, results, seconds, counter in rows:
        scores = " | ".join(f"{100 * results[task]['overall']:.1f}%" for task in TASKS)
        print(f"| {preset} | {scores} | {seconds:.1f} | {counter.tokens / seconds:.0f} | {counter.calls} | "
              f"{exact_seconds / seconds:.2f}x |")
    if args.plot:
        plot(rows, args.plot)


def image_presets(pipe: MMaDAPipeline, limit: int, seeds: int) -> None:
    """One row per image preset: judged t2i scores (mean over seeds) and images per second."""
    base = replace(stage_eval_config(per_group=50, limit=limit, thinking=False), tasks=IMAGE_TASKS)
    print(f"mmada-tiny world evaluation, image presets, --limit {limit} per group, {seeds} seed(s), "
          f"{torch.get_num_threads()} thread(s)\n")
    print("| preset | " + " | ".join(IMAGE_TASKS) + " | images | seconds | images/s | speed-up |")
    print("|---|" + "---|" * (len(IMAGE_TASKS) + 4))
    exact_seconds = None
    for name, values in IMAGE_PRESETS.items():
        scores = {task: 0.0 for task in IMAGE_TASKS}
        images = [0]
        real = mmada.pipelines.iter_sample_t2i

        def counting(model: Any, layout: Any, *a: Any, _real: Any = real, _n: list[int] = images,
                     **kw: Any) -> Iterator[SampleStep]:
            _n[0] += layout.batch_size
            return _real(model, layout, *a, **kw)

        mmada.pipelines.iter_sample_t2i = counting  # type: ignore[assignment]
        start = time.perf_counter()
        try:
            for seed in range(seeds):
                results = evaluate_world(pipe, replace(base, image=Overrides(ImageSampling, **values), seed=seed))
                for task in IMAGE_TASKS:
                    scores[task] += results[task]["overall"] / seeds
        finally:
            mmada.pipelines.iter_sample_t2i = real  # type: ignore[assignment]
        seconds = time.perf_counter() - start
        exact_seconds = exact_seconds or seconds
        cells = " | ".join(f"{100 * scores[task]:.1f}%" for task in IMAGE_TASKS)
        print(f"| {name} | {cells} | {images[0]} | {seconds:.1f} | {images[0] / seconds:.2f} | "
              f"{exact_seconds / seconds:.2f}x |", flush=True)


def plot(rows: list[tuple[str, Any, float, Counter]], path: str) -> None:
    """Accuracy (%) against generated tokens/s, one line per task through the presets, each point labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speeds = [counter.tokens / seconds for _, _, seconds, counter in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for task in TASKS:
        accuracy = [100 * results[task]["overall"] for _, results, _, _ in rows]
        ax.plot(speeds, accuracy, marker="o", label=task)
        for (preset, *_), x, y in zip(rows, speeds, accuracy):
            ax.annotate(preset, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens / s (log)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("MMaDA-tiny: sampling presets, accuracy vs speed")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
