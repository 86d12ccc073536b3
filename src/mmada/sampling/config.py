"""Sampler settings: typed, frozen, documented, validated once (STYLE §5.3).

Each sampler takes one of these objects instead of a dozen keyword arguments:

- `TextSampling`: text and multimodal understanding (`sampling.text.iter_sample_text`);
- `ImageSampling`: text-to-image, inpainting and extrapolation (`sampling.image.iter_sample_t2i`);
- `InfillSampling`: text infilling (`sampling.inpaint.iter_infill_text`).

A setting is checked here, on construction, and names itself in the error; checks that need the
tensors (shapes, padding, the image positions) stay with the samplers. The pipeline's defaults are
`TextSampling()` / `ImageSampling()` (or a checkpoint's `mmada_pipeline.json`), the CLI's sampler
flags are generated from these fields and their docstrings, and `Overrides` carries a partial set of
fields to apply over such defaults (evaluation configs).

`PRESETS` names speed/quality trade-offs of text sampling (`exact`, `fast`, `fastest`), each the
`TextSampling` fields it sets; `apply_preset` puts one over a pipeline's defaults, before a call's keywords.

To add a sampler setting: add the field (with its docstring and check) here, and read it in the
sampler that uses it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Any, Generic, Literal, TypeVar

from mmada.diffusion.schedules import get_schedule

Remasking = Literal["low_confidence", "random"]
REMASKING: tuple[Remasking, ...] = ("low_confidence", "random")
TemperatureSchedule = Literal["compounding", "linear"]
TEMPERATURE_SCHEDULES: tuple[TemperatureSchedule, ...] = ("compounding", "linear")
CacheMode = Literal["none", "prefix", "dual", "delayed"]
CACHE_MODES: tuple[CacheMode, ...] = ("none", "prefix", "dual", "delayed")
ImageCache = Literal["none", "prompt", "settled"]
IMAGE_CACHES: tuple[ImageCache, ...] = ("none", "prompt", "settled")
CacheKeep = Literal["none", "prompt", "finished", "all"]
CACHE_KEEPS: tuple[CacheKeep, ...] = ("none", "prompt", "finished", "all")


@dataclass(frozen=True, kw_only=True)
class CommitRule:
    """How many of a step's proposals the text block loop commits (shared by `TextSampling` and
    `InfillSampling`; `sampling.commit` implements each rule).

    With none of `threshold`, `factor`, `entropy_bound` set, every step commits a fixed quota from
    the linear transfer schedule (the official samplers). Setting one of them makes the count
    adaptive: a block then runs until it has no mask left, at least one token per step, and the
    `steps` setting no longer bounds the model calls. `early_commit` works with any of them.
    """

    threshold: float | None = None
    """Adaptive: commit every proposal whose probability reaches this (Fast-dLLM §3.3), e.g. 0.9."""
    factor: float | None = None
    """Adaptive: commit the n most confident proposals, n the largest with (n + 1)(1 - p_n) < factor
    (Fast-dLLM's factor rule, p_n the n-th highest probability), e.g. 1.0."""
    entropy_bound: float | None = None
    """Adaptive: commit the lowest-entropy proposals while their summed entropy minus the largest one
    stays <= this many nats (EB-sampler, arXiv 2505.24857), e.g. 0.1."""
    early_commit: float | None = None
    """Commit all of a block's remaining proposals at once when their mean top-1 minus top-2 logit
    margin reaches this (Prophet, arXiv 2508.19982, applied per block), e.g. 5.0; None = never."""

    def _check_commit(self) -> None:
        rules = [name for name in ("threshold", "factor", "entropy_bound") if getattr(self, name) is not None]
        if len(rules) > 1:
            raise ValueError(f"choose one adaptive commit rule, got {' and '.join(rules)}")
        if self.threshold is not None and not (math.isfinite(self.threshold) and 0 < self.threshold <= 1):
            raise ValueError(f"`threshold` ({self.threshold}) must be in (0, 1]")
        for name in ("factor", "entropy_bound", "early_commit"):
            value = getattr(self, name)
            if value is not None:
                _finite_non_negative(**{name: value})
                if value == 0 and name != "entropy_bound":
                    raise ValueError(f"`{name}` must be > 0")

    @property
    def adaptive(self) -> bool:
        """True when the number of commits per step follows the model's confidence (no fixed quota)."""
        return self.threshold is not None or self.factor is not None or self.entropy_bound is not None


@dataclass(frozen=True)
class TextSampling(CommitRule):
    """Text / understanding sampler settings (`sampling.text.iter_sample_text`).

    Defaults: the official demo's (Gen-Verse/MMaDA app.py; MMADA.md §3).
    """

    gen_length: int = 512
    """Tokens to generate (a multiple of block_length)."""
    steps: int = 256
    """Denoising steps over the whole generation (a multiple of the number of blocks)."""
    block_length: int = 128
    """Semi-autoregressive block size."""
    temperature: float = 1.0
    """0 = greedy; > 0 = float64 Gumbel-max sampling."""
    remasking: Remasking = "low_confidence"
    """"low_confidence" or "random"."""
    cfg_scale: float = 0.0
    """Unsupervised classifier-free guidance weight (prompt fully masked for the unconditional pass)."""
    early_stop: bool = True
    """Stop after a block that ends in EOS/EOT in every row (official `mmu_generate_fast`)."""
    cache: CacheMode = "none"
    """Key/value cache (Fast-dLLM): "none" = exact; "prefix" reuses the keys/values before the block;
    "dual" also those after it; "delayed" also those of the block's finished tokens, each re-encoded once,
    one step after its commit (dKV-Cache). Approximate unless refreshed every step; needs a model with
    `new_cache()`."""
    cache_refresh: int = 0
    """With a cache: refresh it every this many steps within a block (1 = every step, which with
    cache_keep "none" is exact); 0 = only at the start of each block (always done)."""
    cache_drift: float | None = None
    """With a cache: also refresh once the keys of the still-masked positions have drifted by this much
    since the last refresh (summed relative L2 change of the last layer's keys per step; a drift test
    in the spirit of dKV-Cache / Elastic-Cache), e.g. 0.5; 0 = after any change; None = no test."""
    cache_keep: CacheKeep = "none"
    """With a cache, what a refresh keeps instead of re-encoding: "none" (the whole sequence is
    re-encoded), "prompt" (the prompt, e.g. an understanding image, is encoded once per call) or
    "finished" (also every finished block, like an autoregressive cache) or "all" (also the masked
    suffix: a refresh re-encodes the current block only)."""

    def __post_init__(self) -> None:
        _at_least_one(gen_length=self.gen_length, block_length=self.block_length, steps=self.steps)
        if self.cache not in CACHE_MODES:
            raise ValueError(f"`cache` ({self.cache!r}) must be one of {CACHE_MODES}")
        _check_refresh(self.cache, self.cache_refresh)
        if self.cache_drift is not None:
            _finite_non_negative(cache_drift=self.cache_drift)
            if self.cache == "none":
                raise ValueError(f"`cache_drift` ({self.cache_drift}) has no effect with cache='none'")
        if self.cache_keep not in CACHE_KEEPS:
            raise ValueError(f"`cache_keep` ({self.cache_keep!r}) must be one of {CACHE_KEEPS}")
        if self.cache == "none" and self.cache_keep != "none":
            raise ValueError(f"`cache_keep` ({self.cache_keep!r}) has no effect with cache='none'")
        if self.steps > self.gen_length:
            raise ValueError(f"`steps` ({self.steps}) must be <= `gen_length` ({self.gen_length}): each step "
                             "unmasks at least one token, extra steps would only repeat the model call")
        if self.gen_length % self.block_length:
            raise ValueError(f"`gen_length` ({self.gen_length}) must be divisible by `block_length` "
                             f"({self.block_length})")
        num_blocks = self.gen_length // self.block_length
        if self.steps % num_blocks:
            raise ValueError(f"`steps` ({self.steps}) must be divisible by the number of blocks "
                             f"({num_blocks} = gen_length / block_length)")
        _check_policy(self.temperature, self.remasking, self.cfg_scale)
        self._check_commit()


@dataclass(frozen=True)
class InfillSampling(CommitRule):
    """Text infilling settings (`sampling.inpaint.iter_infill_text`): the block loop over masked spans."""

    steps: int
    """Total denoising steps, a multiple of the number of blocks over the masked region."""
    block_length: int | None = None
    """Decode the masked region in blocks of this size from its left end; None = one block."""
    temperature: float = 0.0
    """0 = greedy; > 0 = float64 Gumbel-max sampling."""
    remasking: Remasking = "low_confidence"
    """"low_confidence" or "random"."""
    cfg_scale: float = 0.0
    """Classifier-free guidance weight; the unconditional pass masks the whole context."""

    def __post_init__(self) -> None:
        _at_least_one(steps=self.steps)
        if self.block_length is not None:
            _at_least_one(block_length=self.block_length)
        _check_policy(self.temperature, self.remasking, self.cfg_scale)
        self._check_commit()


@dataclass(frozen=True)
class ImageSampling:
    """Text-to-image sampler settings (`sampling.image.iter_sample_t2i`), also used to inpaint and extrapolate.

    Defaults: the official demo's (15 steps, guidance 3.5, cosine schedule).
    """

    timesteps: int = 15
    """MaskGIT steps (the paper evaluates with 50)."""
    guidance_scale: float = 3.5
    """MUSE-form guidance weight w: (1 + w) cond - w uncond."""
    temperature: float = 1.0
    """Initial temperature of the confidence noise."""
    schedule: str = "cosine"
    """Mask-ratio schedule: cosine, linear, sigmoid, pow."""
    temperature_schedule: TemperatureSchedule = "compounding"
    """"compounding" (official: tau is multiplied by (1 - r) every step) or "linear"."""
    cache: ImageCache = "none"
    """Key/value cache across MaskGIT steps: "none" = exact; "prompt" encodes the text prefix once and
    recomputes the image positions every step; "settled" also keeps the keys/values of the codes
    already kept, each re-encoded once, one step after it was kept (ML-Cache / dKV-Cache). Needs a
    model with `new_cache()`."""
    cache_reuse: float = 0.0
    """With cache "settled": the share of undecided codes whose last logits are reused instead of
    recomputed, those with the highest max logit (ML-Cache, Lumina-DiMOO), in [0, 1); 0 = none."""
    cache_refresh: int = 0
    """With a cache: re-encode the whole sequence every this many steps (0 = never; 1 = every step,
    the uncached logits, though the codes are drawn from another random stream than "none")."""

    def __post_init__(self) -> None:
        _at_least_one(timesteps=self.timesteps)
        _finite_non_negative(guidance_scale=self.guidance_scale, temperature=self.temperature)
        if self.temperature_schedule not in TEMPERATURE_SCHEDULES:
            raise ValueError(f"`temperature_schedule` ({self.temperature_schedule!r}) must be 'compounding' "
                             "or 'linear'")
        get_schedule(self.schedule)  # an unknown name raises, naming the schedule
        if self.cache not in IMAGE_CACHES:
            raise ValueError(f"`cache` ({self.cache!r}) must be one of {IMAGE_CACHES}")
        _check_refresh(self.cache, self.cache_refresh)
        _finite_non_negative(cache_reuse=self.cache_reuse)
        if self.cache_reuse >= 1 or (self.cache_reuse and self.cache != "settled"):
            raise ValueError(f"`cache_reuse` ({self.cache_reuse}) must be in [0, 1) and needs cache='settled'")


SettingsT = TypeVar("SettingsT", TextSampling, ImageSampling, InfillSampling)

_EXACT_TEXT = {"cache": "none", "cache_refresh": 0, "cache_keep": "none", "threshold": None, "factor": None,
               "entropy_bound": None, "early_commit": None}

PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    # The official outputs: no cache, the fixed commit schedule (what the defaults already are).
    "exact": MappingProxyType(_EXACT_TEXT),
    # The official commit schedule over a delayed KV cache that keeps finished blocks: approximate.
    "fast": MappingProxyType({**_EXACT_TEXT, "cache": "delayed", "cache_keep": "finished"}),
    # The delayed cache keeping everything but the block across refreshes, plus Fast-dLLM's parallel commit
    # of every token with confidence >= 0.9.
    "fastest": MappingProxyType({**_EXACT_TEXT, "cache": "delayed", "cache_keep": "all", "threshold": 0.9}),
})
"""Named text-sampling presets: name -> the `TextSampling` fields it sets (the others keep the pipeline's
defaults). `exact` reproduces the official samplers token for token; `fast` and `fastest` trade exactness
for speed (docs/benchmarks.md)."""

IMAGE_PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "exact": MappingProxyType({"cache": "none", "cache_reuse": 0.0, "cache_refresh": 0}),
    # Text prefix encoded once; each step re-encodes the undecided codes and those kept one step before.
    "fast": MappingProxyType({"cache": "settled", "cache_reuse": 0.0, "cache_refresh": 0}),
    # ... and reuses the logits of the 90 % surest undecided codes (ML-Cache's cache_ratio 0.9, Lumina-DiMOO
    # inference/inference_t2i.py), with an exact forward every 8 steps (theirs: every 5 after a 30 % warm-up).
    "fastest": MappingProxyType({"cache": "settled", "cache_reuse": 0.9, "cache_refresh": 8}),
})
"""The same preset names for `ImageSampling` (text-to-image, inpainting, extrapolation)."""


def apply_preset(base: SettingsT, preset: str | None) -> SettingsT:
    """`base` with the fields of the named preset for its kind (`PRESETS` for text, `IMAGE_PRESETS` for
    images; None: `base` unchanged); an unknown name is refused."""
    if preset is None:
        return base
    table = IMAGE_PRESETS if isinstance(base, ImageSampling) else PRESETS
    if preset not in table or isinstance(base, InfillSampling):
        raise ValueError(f"unknown sampling preset {preset!r}; choose from {', '.join(table)}")
    return replace(base, **table[preset])


class Overrides(Generic[SettingsT]):
    """Some fields of a settings class, applied over defaults known only later (a pipeline's).

    Example: ``Overrides(TextSampling, temperature=0.0).apply(pipe.settings.text)``. Field names are
    checked now; values when applied (they may only be valid together with the defaults).
    """

    def __init__(self, kind: type[SettingsT], /, **values: Any) -> None:
        self.kind: type[SettingsT] = kind
        self.values = dict(values)
        check_names(kind, values)

    def apply(self, base: SettingsT) -> SettingsT:
        if not isinstance(base, self.kind):
            raise TypeError(f"overrides of {self.kind.__name__} cannot apply to {type(base).__name__}")
        return replace(base, **self.values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Overrides) and (self.kind, self.values) == (other.kind, other.values)

    def __hash__(self) -> int:
        return hash((self.kind, tuple(sorted(self.values.items()))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        return f"Overrides({self.kind.__name__}{', ' if args else ''}{args})"


def check_names(
    kind: type, values: Mapping[str, Any], supported: frozenset[str] | None = None, where: str = "this call"
) -> None:
    """Refuse keys that are not fields of `kind`, or fields that `where` does not support (naming both)."""
    names = {f.name for f in fields(kind)}
    for key in sorted(values):
        if key not in names:
            raise ValueError(f"unknown sampler setting {key!r}; valid settings: {sorted(names)}")
        if supported is not None and key not in supported:
            raise ValueError(f"sampler setting {key!r} is not supported by {where}; it supports {sorted(supported)}")


def _check_refresh(cache: str, refresh: int) -> None:
    if isinstance(refresh, bool) or not isinstance(refresh, int) or refresh < 0:
        raise ValueError(f"`cache_refresh` ({refresh!r}) must be an integer >= 0 (0 = no refresh beyond the "
                         "cache's own)")
    if cache == "none" and refresh:
        raise ValueError(f"`cache_refresh` ({refresh}) has no effect with cache='none'; choose a cache, or leave "
                         "it at 0")


def _at_least_one(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"`{name}` must be an integer, got {value!r}")
        if value < 1:
            raise ValueError(f"`{name}` ({value}) must be >= 1")


def _finite_non_negative(**values: float) -> None:
    """NaN compares false with everything, so `value < 0` alone lets it through (and inf would turn the
    Gumbel noise or the guided logits into NaN): a real, finite number >= 0 is required."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"`{name}` must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"`{name}` ({value}) must be a finite number >= 0")


def _check_policy(temperature: float, remasking: str, cfg_scale: float) -> None:
    """The per-step options shared by text sampling and infilling."""
    _finite_non_negative(temperature=temperature, cfg_scale=cfg_scale)
    if remasking not in REMASKING:
        raise ValueError(f"`remasking` ({remasking!r}) must be one of {REMASKING}")
