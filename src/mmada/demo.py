"""`mmada demo`: every MMaDA capability on the built-in model, each checked by the tiny world's judges.

Reasoning with and without thinking, a multi-turn chat, understanding a generated scene and a real
handwritten digit, compositional text-to-image (PNG + a GIF of the denoising), text infilling and image
inpainting; then a small scored summary. Everything it makes goes into one output folder.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .pipelines import MMaDAPipeline
from .sampling import Overrides, TextSampling, last_step
from .world import iter_digits, iter_text, iter_vqa, render_scene, sample_prompt, scene_for_prompt
from .world.judges import score_arithmetic, score_digit, score_format, score_t2i, vqa_exact_match

logger = logging.getLogger(__name__)
T2I_PROMPTS = ("a red circle", "two blue squares", "a green triangle to the left of a yellow circle")
DIGIT = 3
DIGIT_PROMPT = f"a handwritten digit {DIGIT}"
SHORT_ANSWER = Overrides(TextSampling, gen_length=32, steps=16, block_length=32)
"""Questions about images: one block of 32 tokens, over the model's other text defaults."""


@dataclass
class DemoReport:
    """What the demo showed and how the judges scored it."""

    out_dir: Path
    lines: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)

    def show(self, title: str, body: str, verdict: float | None = None, key: str | None = None) -> None:
        mark = "" if verdict is None else ("  [judge: correct]" if verdict else "  [judge: wrong]")
        self.lines.append(f"== {title}{mark}\n{body.rstrip()}\n")
        if verdict is not None and key is not None:
            self.scores[key] = float(verdict)


def _save_gif(pipe: MMaDAPipeline, steps: list[Any], path: Path) -> None:
    frames = [pipe.decode_images(s.tokens[:1])[0].resize((128, 128), Image.Resampling.NEAREST) for s in steps]
    frames[0].save(path, save_all=True, append_images=[*frames[1:], frames[-1], frames[-1]], duration=250, loop=0)


def _reasoning(pipe: MMaDAPipeline, report: DemoReport) -> None:
    example = next(iter_text("validation", seed=3, steps=(2,)))
    for thinking in (False, True):
        result = pipe.generate(example.question, thinking=thinking)
        verdict = score_arithmetic(result.text, int(example.answer))
        body = f"Q: {example.question}\nA: {result.text}\n(expected {example.answer})"
        if thinking:
            body += f"\nformat <think>…</think>: {'ok' if score_format(result.text) else 'missing'}"
        report.show(
            f"reasoning, thinking={'on' if thinking else 'off'}",
            body,
            verdict,
            f"arithmetic ({'thinking' if thinking else 'direct'})",
        )


def _chat(pipe: MMaDAPipeline, report: DemoReport) -> None:
    first = next(iter_text("validation", seed=5, steps=(1,)))
    messages = [{"role": "user", "content": first.question}]
    reply = pipe.chat(messages).text
    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "what is 7 + 5?"}]
    second = pipe.chat(messages).text
    body = f"user: {first.question}\nmmada: {reply}\nuser: what is 7 + 5?\nmmada: {second}"
    report.show("multi-turn chat", body, score_arithmetic(second, 12), "chat (second turn)")


def _ask_about(pipe: MMaDAPipeline, report: DemoReport, example: Any, file: str, title: str, key: str) -> None:
    """Save `example.image`, ask `example.question` about it and judge the answer against `example.answer`."""
    Image.fromarray(example.image).resize((128, 128), Image.Resampling.NEAREST).save(report.out_dir / file)
    answer = pipe.understand(example.image, example.question, sampling=SHORT_ANSWER.apply(pipe.settings.text)).answer
    report.show(f"{title} ({file})", f"Q: {example.question}\nA: {answer}\n(expected {example.answer})",
                vqa_exact_match(answer, example.answer), key)


def _understanding(pipe: MMaDAPipeline, report: DemoReport) -> None:
    _ask_about(pipe, report, next(iter_vqa("validation", seed=2)), "scene.png", "understanding a scene",
               "scene question")
    _ask_about(pipe, report, next(iter_digits("validation", seed=1)), "digit.png",
               "reading a real handwritten digit", "digit recognition")


def _save_tile(image: Image.Image, path: Path, shown: list[Image.Image]) -> None:
    """Save a 128x128 nearest-neighbour enlargement of a 32x32 image and keep it for the strip."""
    shown.append(image.resize((128, 128), Image.Resampling.NEAREST))
    shown[-1].save(path)


def _text_to_image(pipe: MMaDAPipeline, report: DemoReport, generator: torch.Generator) -> None:
    shown: list[Image.Image] = []
    for i, prompt in enumerate(T2I_PROMPTS):
        steps = list(pipe.iter_text_to_image(prompt, generator=generator))
        image = pipe.decode_images(steps[-1].tokens)[0]
        _save_tile(image, report.out_dir / f"t2i_{i}.png", shown)
        if i == 0:
            _save_gif(pipe, steps, report.out_dir / "t2i_0_denoising.gif")
        verdict = score_t2i(np.asarray(image), prompt)
        reasons = "" if verdict else f"\njudge: {'; '.join(verdict.reasons)}"
        report.show(
            f"text-to-image (t2i_{i}.png)", f"prompt: {prompt}{reasons}", float(bool(verdict)), f"t2i: {prompt}"
        )
    image = pipe.text_to_image(DIGIT_PROMPT, generator=generator)[0]
    _save_tile(image, report.out_dir / "t2i_digit.png", shown)
    digit_score = score_digit(np.asarray(image), DIGIT)
    report.show("text-to-image of a digit (t2i_digit.png)", f"prompt: {DIGIT_PROMPT}", digit_score, "digit t2i")
    strip = Image.new("RGB", (128 * len(shown) + 8 * (len(shown) - 1), 128), "white")
    for i, tile in enumerate(shown):
        strip.paste(tile, (136 * i, 0))
    strip.save(report.out_dir / "t2i.png")  # every prompt, left to right: T2I_PROMPTS then DIGIT_PROMPT


def _editing(pipe: MMaDAPipeline, report: DemoReport, generator: torch.Generator) -> None:
    text = "Tom has 4 apples and buys 3 more. Now Tom has [BLANK] apples."
    filled = pipe.infill(text, blank_length=2)
    report.show("text infilling", f"{text}\n-> {filled}", score_arithmetic(filled.split("has")[-1], 7), "infilling")
    prompt = sample_prompt(random.Random(4), "position")
    scene = scene_for_prompt(prompt, random.Random(4))
    image = render_scene(scene)
    left_half = (0, 0, 16, 32)  # repaint the left half of the 32x32 scene under the same caption
    last = last_step(pipe.iter_inpaint(image, left_half, prompt.caption, generator=generator))
    edited = pipe.decode_images(last.tokens)[0]
    pair = Image.new("RGB", (256, 128))
    pair.paste(Image.fromarray(image).resize((128, 128), Image.Resampling.NEAREST), (0, 0))
    pair.paste(edited.resize((128, 128), Image.Resampling.NEAREST), (128, 0))
    pair.save(report.out_dir / "inpaint.png")
    verdict = float(bool(score_t2i(np.asarray(edited), prompt)))
    report.show(
        "image inpainting (inpaint.png: before | after)",
        f"repainted the left half under: {prompt.caption}",
        verdict,
        "inpainting",
    )


def run_demo(
    pipe: MMaDAPipeline, out_dir: Path, *, seed: int = 0, log: Callable[[str], None] | None = None
) -> DemoReport:
    """Run every part, passing each result to `log` as it comes (the CLI prints them); returns the report,
    also written to out_dir/report.txt and report.json."""
    log = log or logger.info
    out_dir.mkdir(parents=True, exist_ok=True)
    report = DemoReport(out_dir)
    generator = torch.Generator(pipe.device).manual_seed(seed)
    start = time.perf_counter()
    for part in (_reasoning, _chat, _understanding):
        before = len(report.lines)
        part(pipe, report)
        for line in report.lines[before:]:
            log(line)
    for seeded_part in (_text_to_image, _editing):
        before = len(report.lines)
        seeded_part(pipe, report, generator)
        for line in report.lines[before:]:
            log(line)
    total = sum(report.scores.values()) / max(len(report.scores), 1)
    summary = [f"{'correct' if v else 'wrong':>7}  {k}" for k, v in report.scores.items()]
    summary.append(
        f"score: {sum(report.scores.values()):.0f}/{len(report.scores)} ({100 * total:.0f}%), "
        f"{time.perf_counter() - start:.0f} s"
    )
    report.lines.append("== summary\n" + "\n".join(summary) + "\n")
    log(report.lines[-1])
    (out_dir / "report.txt").write_text("\n".join(report.lines), encoding="utf-8")
    (out_dir / "report.json").write_text(json.dumps(report.scores, indent=2), encoding="utf-8")
    return report
