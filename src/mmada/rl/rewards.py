"""UniGRPO's rule-based rewards (MMaDA §2.3.2, Eq. 6): pure scorers, a registry and per-task mixes.

A reward is ``(completion, example) -> float``: pure, and 0.0 on malformed output instead of raising
(STYLE.md §5 item 14). The correctness and format rules reuse the judges that evaluation uses
(`mmada.world.judges`), so "the RL reward went up" and "the benchmark went up" measure the same thing.

The paper's weights live in the reward functions themselves (the constants below, their one place):
correctness +2.0, format +0.5 for text and multimodal reasoning, 0.1 × CLIP and 0.1 × ImageReward for
images. `RewardMix` then sums rewards with weight 1.0 by default; its weights are for re-weighting
experiments, not a second copy of the paper's numbers. dLLM-RL, by contrast, uses binary correctness
only (MMADA.md §4.3).

CLIP and ImageReward are optional heavy scorers: the adapters load local weights only (never
download) and import their packages on construction, failing with a one-line error that names the
missing package.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

import torch

from ..prompting.chat import final_answer
from ..world.judges import score_arithmetic, score_format, t2i_reward, vqa_exact_match

CORRECTNESS_REWARD = 2.0  # §2.3.2: a correct final answer earns +2.0
FORMAT_REWARD = 0.5  # §2.3.2: a response in the `<think> … </think> answer` format earns +0.5
CLIP_SCALE = 0.1  # §2.3.2: 0.1 × CLIP(image, text) for captions and T2I
IMAGE_REWARD_SCALE = 0.1  # §2.3.2: 0.1 × ImageReward(image, prompt) for T2I

Reward = Callable[[Any, Any], float]


# ---- text and VQA ------------------------------------------------------------------------------------
def correctness_arithmetic(completion: Any, answer: Any) -> float:
    """2.0 when the final number (after `</think>`) equals `answer`, else 0.0.

    Example: ``correctness_arithmetic("<think> 5 + 3 = 8 </think> 8", 8) == 2.0``.
    """
    return CORRECTNESS_REWARD * score_arithmetic(completion, answer)


def correctness_vqa(completion: Any, answer: Any) -> float:
    """2.0 on a normalised exact match of the final answer (``"Three." ~ "3"``), else 0.0."""
    return CORRECTNESS_REWARD * vqa_exact_match(completion, answer)


def format_reward(completion: Any, example: Any = None) -> float:
    """0.5 for exactly one non-empty `<think>…</think>` block *at the start*, then a non-empty answer.

    `example` is ignored (uniform reward signature). Example: ``format_reward("<think> 2+2=4 </think>
    4") == 0.5``; ``format_reward("4")`` and ``format_reward("so <think> x </think> 4")`` are 0.0.
    """
    return FORMAT_REWARD * score_format(completion)


# ---- GSM8K -------------------------------------------------------------------------------------------
_GSM8K_FINAL = re.compile(r"####\s*(.+)")
_BOXED = "\\boxed{"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _last_boxed(text: str) -> str | None:
    """Contents of the last `\\boxed{...}`, braces balanced; None when there is none or it is unclosed."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, begin = 1, start + len(_BOXED)
    for i in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i]
    return None


def _clean(answer: str) -> str | None:
    """Strip whitespace, `$`, thousands commas and a trailing period; None when nothing is left."""
    cleaned = answer.strip().replace("$", "").replace(",", "").strip().rstrip(".").strip()
    return cleaned or None


def gsm8k_answer(text: Any) -> str | None:
    """The final answer of GSM8K-style text, or None.

    In order: the text after the last `####` (reference solutions), the last `\\boxed{}` anywhere
    (the dLLM-RL prompt asks for it), else the last number of the final answer (after `</think>`).
    Example: ``gsm8k_answer("... = <<48+24=72>>72 clips.\\n#### 72") == "72"``;
    ``gsm8k_answer("so \\\\boxed{1,200}") == "1200"``; ``gsm8k_answer("It is $18.") == "18"``.
    """
    if not isinstance(text, str):
        return None
    finals = _GSM8K_FINAL.findall(text)
    if finals:
        return _clean(finals[-1])
    boxed = _last_boxed(text)
    if boxed is not None:
        return _clean(boxed)
    numbers = _NUMBER.findall(final_answer(text))
    return _clean(numbers[-1]) if numbers else None


def _same_answer(a: str, b: str) -> bool:
    """Numeric equality when both parse as finite numbers ("72" == "72.00"), else string equality."""
    try:
        x, y = float(a), float(b)
    except ValueError:
        return a == b
    return math.isfinite(x) and math.isfinite(y) and abs(x - y) < 1e-6


def correctness_gsm8k(completion: Any, reference_solution: Any) -> float:
    """2.0 when the completion's answer equals the reference's `#### answer`, else 0.0.

    `reference_solution` is GSM8K's `answer` field (or a bare answer such as "72").
    """
    predicted, expected = gsm8k_answer(completion), gsm8k_answer(reference_solution)
    if predicted is None or expected is None:
        return 0.0
    return CORRECTNESS_REWARD if _same_answer(predicted, expected) else 0.0


# ---- images ------------------------------------------------------------------------------------------
def t2i_compositional(image: Any, prompt: Any) -> float:
    """1.0 when the tiny world's scene parser finds exactly what the prompt asks (`judges.t2i_reward`).

    `prompt` is a `captions.Prompt` or caption text; a malformed image scores 0.0.
    """
    return t2i_reward(image, prompt)


def _require(module: str, package: str) -> ModuleType:
    """Import an optional dependency, or fail with one line naming what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"this reward needs the optional package {package!r} (pip install {package})") from err


def _existing(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found at {path} (local weights only; nothing is downloaded)")
    return path


class ClipScore:
    """0.1 × max(100 · cos(image, text), 0) with a local Hugging Face CLIP checkpoint (§2.3.2).

    100 · cos is the usual CLIPScore scale (torchmetrics); needs the `transformers` package and a
    directory saved by `CLIPModel.save_pretrained`. Call as ``score(image, text)`` with a PIL image
    or an (H, W, 3) uint8 array.
    """

    def __init__(self, weights: str | Path, device: str = "cpu") -> None:
        transformers = _require("transformers", "transformers")
        path = _existing(weights, "CLIP weights")
        self.device = device
        self.model = transformers.CLIPModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.processor = transformers.CLIPProcessor.from_pretrained(path, local_files_only=True)

    def __call__(self, image: Any, text: Any) -> float:
        if not isinstance(text, str) or image is None:
            return 0.0
        inputs = self.processor(text=[text], images=[image], return_tensors="pt", padding=True, truncation=True)
        with torch.inference_mode():
            out = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        cosine = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).item()
        return CLIP_SCALE * max(100.0 * cosine, 0.0)


class ImageRewardScore:
    """0.1 × ImageReward(prompt, image) with a local checkpoint (THUDM ImageReward, §2.3.2).

    Needs the `image-reward` package (module `ImageReward`), the checkpoint file and its
    `med_config.json` (which the package would otherwise download).
    """

    def __init__(self, weights: str | Path, med_config: str | Path, device: str = "cpu") -> None:
        image_reward = _require("ImageReward", "image-reward")
        checkpoint = _existing(weights, "ImageReward checkpoint")
        config = _existing(med_config, "ImageReward med_config.json")
        self.model = image_reward.load(str(checkpoint), device=device, med_config=str(config))

    def __call__(self, image: Any, prompt: Any) -> float:
        if not isinstance(prompt, str) or image is None:
            return 0.0
        return IMAGE_REWARD_SCALE * float(self.model.score(prompt, image))


# ---- registry and mixes ------------------------------------------------------------------------------
REWARDS: Mapping[str, Reward] = MappingProxyType({
    "correctness_arithmetic": correctness_arithmetic,
    "correctness_vqa": correctness_vqa,
    "correctness_gsm8k": correctness_gsm8k,
    "format": format_reward,
    "t2i_compositional": t2i_compositional,
})
"""Name -> reward. The model-backed CLIP / ImageReward scorers need weights, so callers add them."""

DEFAULT_MIXES: Mapping[str, tuple[tuple[str, float], ...]] = MappingProxyType({
    "text": (("correctness_arithmetic", 1.0), ("format", 1.0)),
    "gsm8k": (("correctness_gsm8k", 1.0), ("format", 1.0)),
    "vqa": (("correctness_vqa", 1.0), ("format", 1.0)),
    "t2i": (("t2i_compositional", 1.0),),
})
"""Eq. 6 per task: correctness (2.0) + format (0.5) for text and VQA; the compositional judge for t2i."""


@dataclass(frozen=True)
class RewardMix:
    """Per-task weighted sums of registered rewards: R(o) = Σ_j w_j · reward_j(o, example)."""

    mixes: Mapping[str, tuple[tuple[str, float], ...]] = field(default_factory=lambda: DEFAULT_MIXES)
    """task -> ((reward name, weight), ...)."""
    rewards: Mapping[str, Reward] = field(default_factory=lambda: REWARDS)
    """The registry the names refer to (extend it with e.g. a `ClipScore` instance)."""

    def __post_init__(self) -> None:
        for task, terms in self.mixes.items():
            if not terms:
                raise ValueError(f"mixes[{task!r}] has no reward")
            for name, weight in terms:
                if name not in self.rewards:
                    raise ValueError(f"mixes[{task!r}] names unknown reward {name!r}; known: {sorted(self.rewards)}")
                if not math.isfinite(weight):
                    raise ValueError(f"mixes[{task!r}] weight of {name!r} must be finite, got {weight}")

    def score(self, task: str, completion: Any, example: Any) -> float:
        """The task's weighted reward sum for one completion (a string or an image)."""
        if task not in self.mixes:
            raise ValueError(f"no reward mix for task {task!r}; known: {sorted(self.mixes)}")
        return sum(weight * self.rewards[name](completion, example) for name, weight in self.mixes[task])
