"""One device/dtype policy for the whole package.

This is the only module that names accelerator back-ends ("cuda", "mps"). Everything else asks
`default_device()`, `resolve_dtype()` or `math_dtype()`.
"""

from __future__ import annotations

import random

import numpy as np
import torch

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def default_device() -> torch.device:
    """The best available device: cuda > mps > cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` or "auto" picks `default_device()`; anything else must name a usable device."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a valid torch device (try 'cpu', 'cuda', 'mps')") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available on this machine")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} was requested but MPS is not available on this machine")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """Accepts a torch dtype or a name such as "bf16", "float32"; `None` means float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            raise ValueError(f"dtype {dtype} is not a floating-point compute dtype")
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; choose one of {sorted(set(_DTYPES))}")
    return _DTYPES[key]


def math_dtype(device: torch.device | str) -> torch.dtype:
    """float64 for sensitive math (Gumbel noise, confidences) where supported; MPS has no float64."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch. Called once, by entry points only, never by library code."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
