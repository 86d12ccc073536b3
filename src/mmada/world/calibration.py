"""How far to trust the judges: accuracy of the parser, t2i judge and digit judge, measured.

`judge_report()` renders seeded scenes, optionally degrades them the way a lossy image tokenizer
would (Gaussian blur plus colour noise), and measures:

- parser exactness: same (shape, colour) multiset and every centre within 1.5 px of the truth;
- t2i acceptance of the true caption, clean and degraded;
- t2i rejection of captions made false by one edit (colour, count, shape, or the opposite relation);
- digit judge accuracy on the held-out real digits.

The tests assert thresholds on it; `python -c "from mmada.world.calibration import judge_report;
print(judge_report())"` prints the numbers.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from mmada.world.captions import CATEGORIES, Prompt, evaluate_prompt, sample_prompt, scene_for_prompt
from mmada.world.parser import ParsedObject, parse_scene
from mmada.world.scenes import COLORS, SHAPES, Scene, render_scene, sample_scene

_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def degrade(image: np.ndarray, rng: np.random.Generator, blur: float = 0.7, noise: float = 8.0) -> np.ndarray:
    """(H, W, 3) uint8 -> the same after a PIL Gaussian blur of radius `blur` and N(0, noise) per channel."""
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(blur)), dtype=np.float64)
    return np.clip(np.rint(blurred + rng.normal(0.0, noise, image.shape)), 0, 255).astype(np.uint8)


def parsed_exactly(scene: Scene, parsed: Sequence[ParsedObject] | None, tolerance: float = 1.5) -> bool:
    """Whether the parser found exactly the scene's objects, each centre within `tolerance` px."""
    if parsed is None or len(parsed) != len(scene.objects):
        return False
    unmatched = list(parsed)
    for obj in scene.objects:
        hit = next(
            (
                p
                for p in unmatched
                if p.name == obj.name and max(abs(a - b) for a, b in zip(p.center, obj.center)) <= tolerance
            ),
            None,
        )
        if hit is None:
            return False
        unmatched.remove(hit)
    return True


def mismatched_prompts(prompt: Prompt, rng: random.Random) -> dict[str, Prompt]:
    """One edited prompt per kind: 'color', 'count', 'shape' of the first group, and 'position'.

    An edit is not always false for a given scene (a recoloured group may exist too): callers keep
    the ones that `evaluate_prompt` rejects on the ground-truth objects.
    """
    first = prompt.objects[0]
    edits = {
        "color": dataclasses.replace(first, color=rng.choice([c for c in COLORS if c != first.color])),
        "count": dataclasses.replace(first, count=first.count + 1 if first.count < 4 else 3),
        "shape": dataclasses.replace(first, shape=rng.choice([s for s in SHAPES if s != first.shape])),
    }
    prompts = {kind: dataclasses.replace(prompt, objects=(group, *prompt.objects[1:])) for kind, group in edits.items()}
    if prompt.relation is not None:
        prompts["position"] = dataclasses.replace(prompt, relation=_OPPOSITE[prompt.relation])
    return prompts


@dataclass(frozen=True)
class JudgeReport:
    """Measured judge accuracies (fractions in [0, 1])."""

    parser_clean: float
    """Scenes parsed exactly from clean renders."""
    parser_degraded: float
    """Scenes parsed exactly after `degrade`."""
    t2i_accept_clean: float
    """True captions accepted on clean renders."""
    t2i_accept_degraded: float
    """True captions accepted after `degrade`."""
    t2i_reject: dict[str, float]
    """False (edited) captions rejected on clean renders, per edit kind and 'all'."""
    num_mismatches: int
    """Number of false captions behind `t2i_reject['all']`."""
    digit_accuracy: float | None
    """Digit judge accuracy on the held-out digits; None when not measured."""


def judge_report(
    num_scenes: int = 1000, num_prompts: int = 600, seed: int = 0, blur: float = 0.7, noise: float = 8.0,
    digits: bool = True,
) -> JudgeReport:  # fmt: skip
    """Measure the judges on seeded data (~3 s for the defaults, plus digit judge training if uncached).

    Args:
        num_scenes: random scenes (1-4 objects) for the parser.
        num_prompts: t2i prompts, categories in turn.
        seed: selects scenes, prompts, edits and noise.
        blur, noise: the degradation (PIL blur radius, noise std in 0..255 units).
        digits: also measure the digit judge (needs scikit-learn).
    """
    noise_rng = np.random.default_rng(seed)
    clean = degraded = 0
    for i in range(num_scenes):
        scene = sample_scene(random.Random(f"calibration:{seed}:{i}"))
        image = render_scene(scene)
        clean += parsed_exactly(scene, parse_scene(image))
        degraded += parsed_exactly(scene, parse_scene(degrade(image, noise_rng, blur, noise)))
    rng = random.Random(f"calibration:{seed}")
    accepted = accepted_degraded = 0
    tried, rejected = Counter[str](), Counter[str]()
    for i in range(num_prompts):
        prompt = sample_prompt(rng, CATEGORIES[i % len(CATEGORIES)])
        scene = scene_for_prompt(prompt, rng)
        image = render_scene(scene)
        parsed = parse_scene(image)
        accepted += bool(evaluate_prompt(parsed or (), prompt))
        accepted_degraded += bool(evaluate_prompt(parse_scene(degrade(image, noise_rng, blur, noise)) or (), prompt))
        for kind, wrong in mismatched_prompts(prompt, rng).items():
            if not evaluate_prompt(scene.objects, wrong):  # a genuinely false caption
                tried[kind] += 1
                rejected[kind] += not evaluate_prompt(parsed or (), wrong)
    tried["all"], rejected["all"] = sum(tried.values()), sum(rejected.values())
    digit_accuracy = None
    if digits:
        from mmada.world.digits import digit_accuracy as measure
        from mmada.world.digits import load_digit_classifier

        digit_accuracy = measure(load_digit_classifier())
    return JudgeReport(
        parser_clean=clean / max(num_scenes, 1),
        parser_degraded=degraded / max(num_scenes, 1),
        t2i_accept_clean=accepted / max(num_prompts, 1),
        t2i_accept_degraded=accepted_degraded / max(num_prompts, 1),
        t2i_reject={kind: rejected[kind] / count for kind, count in tried.items() if count},
        num_mismatches=tried["all"],
        digit_accuracy=digit_accuracy,
    )
