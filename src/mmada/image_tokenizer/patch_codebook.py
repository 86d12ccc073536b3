"""A patch-codebook image tokenizer: each p x p patch becomes the id of the nearest patch in a fixed table.

MMaDA tokenizes images with MAGVIT-v2 (§2.1), whose convolutional encoder writes each patch's
neighbourhood into its code. That is what real photographs need, and what a small model trained from
scratch on a flat-colour world cannot afford: the world's learned codes gave plain black background
376 different ids and named a solid patch's colour only 79.5% of the time (docs/results.md). This
tokenizer is the symbolic alternative behind the same interface (`codebook_size`, `num_tokens`,
`encode`, `decode`): the codebook is a table of K exact RGB patches, a code *is* its patch, so one
patch content always gets one id, whatever surrounds it.

* `encode`: every non-overlapping p x p patch -> the index of the nearest table patch (squared error
  over its 3 p^2 values; ties go to the lower index, i.e. the more frequent patch). Patches that are in
  the table come back exactly; others (users' photographs) get their closest world patch.
* `decode`: index -> its table patch, tiled back in raster order. Exact: decode(encode(x)) == x for
  images made of table patches.
* `build_patch_codebook`: the K most frequent patches of a set of images (ties broken by content),
  so code 0 is the commonest patch. Deterministic, no training.

Files (safetensors only): `config.json` {"_class_name": "PatchCodebook", "patch_size": p,
"image_size": s} and `model.safetensors` with one uint8 tensor `codebook` (K, 3, p, p).
"""

from __future__ import annotations

import collections
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from mmada.image_tokenizer.magvit2 import check_spatial, grid_tokens

CLASS_NAME = "PatchCodebook"
WEIGHT_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class PatchCodebookConfig:
    patch_size: int
    """p: side of a patch in pixels (the downsampling factor: an s x s image gives (s/p)^2 codes)."""
    image_size: int
    """Default image side (what `num_tokens()` assumes)."""

    def __post_init__(self) -> None:
        if self.patch_size < 1 or self.image_size < self.patch_size or self.image_size % self.patch_size:
            raise ValueError(f"`image_size` ({self.image_size}) must be a positive multiple of `patch_size` "
                             f"({self.patch_size})")


def uint8_to_unit(values: Tensor) -> Tensor:
    """uint8 pixel values -> float32 in [-1, 1], the same op order as `image_to_tensor`."""
    return values.to(torch.float32).div(255).sub(0.5).div(0.5)


class PatchCodebook(nn.Module):
    """Images <-> codes through a fixed table of K patches (see the module docstring)."""

    def __init__(self, codebook: Tensor, config: PatchCodebookConfig) -> None:
        """`codebook`: (K, 3, p, p) uint8 patches, K >= 1."""
        super().__init__()
        p = config.patch_size
        if codebook.dtype != torch.uint8 or codebook.dim() != 4 or tuple(codebook.shape[1:]) != (3, p, p):
            raise ValueError(f"`codebook` must be (K, 3, {p}, {p}) uint8, got {tuple(codebook.shape)} {codebook.dtype}")
        if codebook.shape[0] < 1:
            raise ValueError("`codebook` must hold at least one patch")
        self.config = config
        self.patches = codebook.clone()
        # float copy in [-1, 1] as a (frozen) parameter: device/dtype moves follow the module like MagvitV2's
        self.table = nn.Parameter(uint8_to_unit(codebook).flatten(1), requires_grad=False)  # (K, 3 p^2)

    @property
    def codebook_size(self) -> int:
        return self.table.shape[0]

    @property
    def downsample_factor(self) -> int:
        return self.config.patch_size

    def num_tokens(self, resolution: int | tuple[int, int] | None = None) -> int:
        """Codes per image of side `resolution` (or (H, W)); None uses `config.image_size`."""
        return grid_tokens(self.config.image_size if resolution is None else resolution, self.downsample_factor)

    @torch.no_grad()
    def encode(self, pixels: Tensor) -> Tensor:
        """(B, 3, H, W) float pixels in [-1, 1] -> (B, H/p * W/p) int64 codes, raster order."""
        if not isinstance(pixels, Tensor) or pixels.dim() != 4 or pixels.shape[1] != 3:
            shape = tuple(pixels.shape) if isinstance(pixels, Tensor) else type(pixels).__name__
            raise ValueError(f"`pixels` must be a (B, 3, H, W) tensor, got {shape}")
        if not pixels.dtype.is_floating_point:
            raise ValueError(f"`pixels` must be floating point in [-1, 1], got dtype {pixels.dtype}")
        self._check_spatial(pixels.shape[2], pixels.shape[3])
        if not bool(torch.isfinite(pixels).all()):
            raise ValueError("`pixels` contain NaN or infinite values")
        patches = self._to_patches(pixels.to(self.table.device, torch.float64))  # (B, N, 3 p^2)
        table = self.table.double()
        # squared distance less the per-patch constant |x|^2, in float64 so that exact matches always win
        distances = (table * table).sum(1) - 2 * patches @ table.T  # (B, N, K)
        return distances.argmin(-1)  # the first minimum: ties go to the more frequent patch

    @torch.no_grad()
    def decode(self, codes: Tensor, shape: tuple[int, int] | None = None) -> Tensor:
        """(B, N) codes -> (B, 3, h*p, w*p) pixels in [-1, 1]; `shape` is the (h, w) grid (default square)."""
        if codes.dim() != 2 or codes.is_floating_point():
            raise ValueError(f"`codes` must be (B, N) integers, got {tuple(codes.shape)} {codes.dtype}")
        batch, n = codes.shape
        h, w = shape if shape is not None else (round(n**0.5),) * 2
        if h * w != n:
            raise ValueError(f"a grid of {h}x{w} does not hold {n} codes; pass `shape=(h, w)`")
        if n and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            bad = int(codes.min()) if int(codes.min()) < 0 else int(codes.max())
            raise ValueError(f"code {bad} is out of range [0, {self.codebook_size})")
        p = self.config.patch_size
        patches = self.table[codes.to(self.table.device)]  # (B, N, 3 p^2)
        grid = patches.view(batch, h, w, 3, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, 3, h, p, w, p)
        return grid.reshape(batch, 3, h * p, w * p)

    def _to_patches(self, pixels: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, N, 3 p^2) in raster order, each patch flattened as (3, p, p)."""
        b, c, height, width = pixels.shape
        p = self.config.patch_size
        grid = pixels.reshape(b, c, height // p, p, width // p, p).permute(0, 2, 4, 1, 3, 5)
        return grid.reshape(b, (height // p) * (width // p), c * p * p)

    def _check_spatial(self, h: int, w: int) -> None:
        check_spatial(h, w, self.downsample_factor)


def image_patches(images: np.ndarray, patch_size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 images -> (N * h * w, 3, p, p) patches, each image's in raster order (as `encode`)."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"`images` must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    n, height, width, _ = images.shape
    p = patch_size
    if height % p or width % p:
        raise ValueError(f"image sides ({height}x{width}) must be multiples of the patch size {p}")
    grid = images.reshape(n, height // p, p, width // p, p, 3).transpose(0, 1, 3, 5, 2, 4)  # (n, h, w, 3, p, p)
    return np.ascontiguousarray(grid).reshape(-1, 3, p, p)


def count_patches(images: np.ndarray, patch_size: int) -> collections.Counter[bytes]:
    """How often each exact p x p patch occurs in (N, H, W, 3) uint8 images (keys: (3, p, p) bytes)."""
    flat = image_patches(images, patch_size).reshape(-1, 3 * patch_size * patch_size)
    unique, counts = np.unique(flat, axis=0, return_counts=True)
    return collections.Counter({row.tobytes(): int(count) for row, count in zip(unique, counts)})


def build_patch_codebook(
    images: np.ndarray, *, patch_size: int, size: int, image_size: int | None = None
) -> PatchCodebook:
    """The `size` most frequent patches of `images` ((N, H, W, 3) uint8), most frequent first.

    Ties in frequency are broken by the patch bytes, so the same images always give the same table.
    """
    if size < 1:
        raise ValueError(f"`size` must be >= 1, got {size}")
    counts = count_patches(images, patch_size)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:size]
    table = np.stack([np.frombuffer(key, dtype=np.uint8) for key, _ in ranked]).reshape(-1, 3, patch_size, patch_size)
    config = PatchCodebookConfig(patch_size=patch_size, image_size=image_size or images.shape[1])
    return PatchCodebook(torch.from_numpy(table.copy()), config)


def save_patch_codebook(tokenizer: PatchCodebook, folder: str | os.PathLike[str]) -> Path:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": CLASS_NAME, "patch_size": tokenizer.config.patch_size,
              "image_size": tokenizer.config.image_size}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_file({"codebook": tokenizer.patches.contiguous()}, out / WEIGHT_FILE, metadata={"format": "pt"})
    return out


def load_patch_codebook(folder: Path, config: dict, device: torch.device) -> PatchCodebook:
    """Read a folder written by `save_patch_codebook`; `config` is its parsed config.json."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from mmada.utils.files import CheckpointError

    path = folder / WEIGHT_FILE
    try:
        settings = PatchCodebookConfig(patch_size=int(config["patch_size"]), image_size=int(config["image_size"]))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{folder / CONFIG_FILE}: a PatchCodebook needs integer `patch_size` and "
                              f"`image_size` (image_size a multiple of patch_size): {err}") from err
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {WEIGHT_FILE} (the PatchCodebook's table)")
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    if set(state) != {"codebook"}:
        raise CheckpointError(f"{path} must hold exactly one tensor `codebook`, got {sorted(state)}")
    try:
        tokenizer = PatchCodebook(state["codebook"], settings)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from err
    return tokenizer.to(device).eval()
