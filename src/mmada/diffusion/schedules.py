"""Mask-ratio schedules gamma(r): the fraction of image tokens still masked at progress r in [0, 1].

MaskGIT (Chang et al., 2022, Sec. 3.2) decodes an image in T steps; after step t the number of
tokens left masked is floor(N * gamma((t + 1) / T)). Training draws the masking rate of an image as
gamma(u) with u ~ U(0, 1) (MMaDA §2.1, the t2i objective), so training and sampling read the same
functions from here.

The four schedules reproduce `get_mask_schedule` of the official code numerically
(Gen-Verse/MMaDA models/sampling.py, itself adapted from lucidrains/muse-maskgit-pytorch),
including its float32 arithmetic: `cosine(torch.tensor(1.0))` is cos(float32(pi / 2)) = -4.37e-8,
slightly *below* zero, which the MaskGIT loop turns into floor(N * gamma) = -1 and then clamps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

Schedule = Callable[[Tensor], Tensor]
"""Maps progress r (any shape, values in [0, 1]) to the mask ratio gamma(r), same shape."""

MIN_MASK_RATIO = 1e-6  # official clamp floor of the linear, pow and sigmoid schedules


def _as_tensor(r: Tensor | float) -> Tensor:
    # A python float becomes a float32 0-d tensor, exactly what the official sampler passes
    # (`noise_schedule(torch.tensor(ratio))`, models/modeling_mmada.py t2i_generate).
    return torch.as_tensor(r, dtype=r.dtype if isinstance(r, Tensor) else torch.float32)


def cosine(r: Tensor | float) -> Tensor:
    """gamma(r) = cos(pi r / 2): few tokens are revealed early, many late (MaskGIT's default)."""
    return torch.cos(_as_tensor(r) * math.pi * 0.5)


def linear(r: Tensor | float) -> Tensor:
    """gamma(r) = 1 - r, clamped to [1e-6, 1]."""
    return (1 - _as_tensor(r)).clamp(min=MIN_MASK_RATIO, max=1.0)


def power(r: Tensor | float, exponent: float) -> Tensor:
    """gamma(r) = 1 - r**exponent, clamped to [1e-6, 1] (official "pow<exponent>", e.g. "pow2")."""
    return (1.0 - _as_tensor(r) ** exponent).clamp(min=MIN_MASK_RATIO, max=1.0)


def sigmoid(
    r: Tensor | float, start: float = -3, end: float = 3, tau: float = 1.0, clip_min: float = MIN_MASK_RATIO
) -> Tensor:
    """A sigmoid ramp between `start` and `end`, rescaled so that gamma(0) = 1 and gamma(1) = 0.

    gamma(r) = (s(end / tau) - s((r (end - start) + start) / tau)) / (s(end / tau) - s(start / tau)),
    with s the logistic function, clipped to [clip_min, 1]. The endpoint values are float32 tensors,
    as in the official code.
    """
    r = _as_tensor(r)
    v_start = torch.sigmoid(torch.tensor(start / tau))
    v_end = torch.sigmoid(torch.tensor(end / tau))
    out = torch.sigmoid((r * (end - start) + start) / tau)
    return torch.clip((v_end - out) / (v_end - v_start), clip_min, 1.0)


def get_schedule(name: str, **kwargs: float) -> Schedule:
    """Look a schedule up by name.

    Args:
        name: "cosine", "linear", "sigmoid" (kwargs: start, end, tau, clip_min) or "pow"
            (kwarg: exponent). The official spelling "pow<exponent>" ("pow2", "pow0.5") also works.
        **kwargs: schedule parameters; a schedule without parameters refuses any.

    Returns:
        A function r -> gamma(r) on tensors.
    """
    if name in ("cosine", "linear"):
        if kwargs:
            raise ValueError(f"schedule {name!r} takes no parameters, got {sorted(kwargs)}")
        return cosine if name == "cosine" else linear
    if name == "sigmoid":
        unknown = set(kwargs) - {"start", "end", "tau", "clip_min"}
        if unknown:
            raise ValueError(f"schedule 'sigmoid' got unknown parameters {sorted(unknown)}")
        return partial(sigmoid, **kwargs)
    if name.startswith("pow"):
        return partial(power, exponent=_pow_exponent(name, kwargs))
    raise ValueError(f"unknown schedule {name!r}; choose 'cosine', 'linear', 'sigmoid', 'pow' or 'pow<k>'")


def _pow_exponent(name: str, kwargs: dict[str, float]) -> float:
    suffix = name.removeprefix("pow")
    if set(kwargs) - {"exponent"}:
        raise ValueError(f"schedule 'pow' got unknown parameters {sorted(set(kwargs) - {'exponent'})}")
    if suffix and "exponent" in kwargs:
        raise ValueError(f"schedule {name!r} already names its exponent; do not also pass `exponent`")
    if not suffix:
        if "exponent" not in kwargs:
            raise ValueError("schedule 'pow' needs `exponent` (or use the name 'pow<k>', e.g. 'pow2')")
        return float(kwargs["exponent"])
    try:
        return float(suffix)
    except ValueError:
        raise ValueError(f"cannot read an exponent from schedule name {name!r}") from None
