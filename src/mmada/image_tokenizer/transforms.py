"""Image preprocessing for the tokenizer: the one place that turns files into pixels and back.

`image_to_tensor` reproduces the official torchvision pipelines without torchvision
(Gen-Verse/MMaDA training/utils.py):

* `mode="crop"` = `image_transform`: `Resize(R, BICUBIC)` of the short side (long side
  `int(R * long / short)`), `CenterCrop(R)` with offsets `int(round((size - R) / 2))` (Python's
  round-half-to-even, as torchvision), `ToTensor`, `Normalize(0.5, 0.5)`.
* `mode="squash"` = `image_transform_squash`: `Resize((R, R), BICUBIC)` without cropping (used for
  documents, diagrams and charts in understanding data).

`load_image` makes every input RGB. Where the official scripts only call `.convert("RGB")`, we
differ on purpose in two places: transparent pixels are composited on white (PIL would keep the
hidden colour, often black), and 16-bit grayscale is rescaled to 8 bits (PIL clips it at 255).
"""

from __future__ import annotations

import io
import os
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image | np.ndarray
"""Anything `load_image` accepts."""

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WHITE = (255, 255, 255, 255)


def load_image(source: ImageSource, *, exif_transpose: bool = False) -> Image.Image:
    """Open anything image-like as an 8-bit RGB PIL image.

    Args:
        source: a path, encoded image bytes, a PIL image, or a uint8/uint16/bool/float array of shape
            (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (floats must lie in [0, 1]).
        exif_transpose: apply the EXIF orientation tag. Off by default because the official
            training pipeline does not, so tokens match the released model's training data.

    Raises:
        ValueError: the file or bytes are not a readable image (the message names the file), or the
            array has an unsupported shape, dtype or value range.
        FileNotFoundError: the path does not exist.
    """
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = _array_to_pil(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        image = _open(io.BytesIO(bytes(source)), f"<{len(source)} bytes>")
    elif isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"image file {os.fspath(source)!r} does not exist")
        image = _open(source, repr(os.fspath(source)))
    else:
        raise ValueError(f"`source` must be a path, bytes, PIL image or numpy array, got {type(source).__name__}")
    if exif_transpose:
        image = ImageOps.exif_transpose(image)
    return _to_rgb(image)


def _open(fp: str | os.PathLike[str] | io.BytesIO, name: str) -> Image.Image:
    try:
        with Image.open(fp) as image:
            image.load()  # decode now, so truncated or corrupt data fails here and not later
            return image.copy()
    except Image.DecompressionBombError as err:
        raise ValueError(f"{name} is too large to decode safely: {err}") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        # PIL reports corrupt headers as SyntaxError in some plugins and truncation as OSError.
        raise ValueError(f"{name} is not a readable image: {err}") from err


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image.copy()
    if image.mode in _SIXTEEN_BIT_MODES:
        # 16-bit range [0, 65535] -> [0, 255] with rounding; PIL's own convert clips at 255 instead.
        # Mode "I" (32-bit int) is read as 16-bit: that is how PNG/TIFF 16-bit gray images open.
        values = np.asarray(image).astype(np.int64).clip(0, 65535)
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    # L, 1, P (opaque), CMYK, YCbCr, LAB, HSV, F: PIL's conversions are the standard ones.
    return image.convert("RGB")


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    if array.dtype == np.uint8:
        data = array
    elif array.dtype == np.uint16:
        data = ((array.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    elif array.dtype == np.bool_:
        data = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise ValueError("float image arrays must hold finite values in [0, 1]")
        data = np.round(array * 255.0).astype(np.uint8)
    else:
        raise ValueError(f"image array dtype {array.dtype} is not supported (use uint8, uint16, bool or float)")
    # uint8 (H, W) / (H, W, 3) / (H, W, 4) open as L / RGB / RGBA.
    return Image.fromarray(np.ascontiguousarray(data))


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
    """Bicubic resize so the short side is `size`, as torchvision `Resize(size)` on a PIL image."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)  # torchvision truncates, it does not round
    new_size = (size, new_long) if width <= height else (new_long, size)
    if new_size == image.size:
        return image
    return image.resize(new_size, Image.Resampling.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Central size x size crop with torchvision's offsets (round half to even). Needs both sides >= size."""
    width, height = image.size
    if width < size or height < size:
        raise ValueError(f"cannot crop {size}x{size} from a {width}x{height} image")
    top = round((height - size) / 2.0)
    left = round((width - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


def image_to_tensor(image: ImageSource, resolution: int, *, mode: Literal["crop", "squash"] = "crop") -> torch.Tensor:
    """Preprocess one image for `MagvitV2.encode`.

    Args:
        image: anything `load_image` accepts (non-RGB PIL images are converted the same way).
        resolution: output side R (a multiple of the tokenizer's factor 16 for encoding).
        mode: "crop" (short side to R, then center crop) or "squash" (resize to R x R).

    Returns:
        (3, R, R) float32 in [-1, 1].
    """
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
        raise ValueError(f"`resolution` must be a positive int, got {resolution!r}")
    if mode not in ("crop", "squash"):
        raise ValueError(f"`mode` must be 'crop' or 'squash', got {mode!r}")
    rgb = image if isinstance(image, Image.Image) and image.mode == "RGB" else load_image(image)
    if mode == "crop":
        rgb = center_crop(resize_short_side(rgb, resolution), resolution)
    elif rgb.size != (resolution, resolution):
        rgb = rgb.resize((resolution, resolution), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)  # (3, R, R)
    # Same float32 op order as ToTensor (/255) then Normalize(0.5, 0.5), for bit-identical inputs.
    return pixels.to(torch.float32).div(255).sub(0.5).div(0.5)


def tensor_to_image(pixels: torch.Tensor) -> Image.Image | list[Image.Image]:
    """Decoder output -> 8-bit RGB image(s).

    Args:
        pixels: (3, H, W) or (B, 3, H, W) floats in [-1, 1]; values outside are clamped.

    Returns:
        One PIL image for a 3-D input, a list of B images for a 4-D input.

    Note: the official scripts truncate with `astype(np.uint8)`; we round to nearest, so that
    `tensor_to_image(image_to_tensor(img))` gives back the same 8-bit values.
    """
    if pixels.dim() not in (3, 4) or pixels.shape[-3] != 3:
        raise ValueError(f"`pixels` must be (3, H, W) or (B, 3, H, W), got shape {tuple(pixels.shape)}")
    if not torch.isfinite(pixels).all():
        raise ValueError("`pixels` contains NaN or infinite values")
    batch = pixels.unsqueeze(0) if pixels.dim() == 3 else pixels
    scaled = ((batch.detach().float() + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0
    arrays = scaled.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
    images = [Image.fromarray(a) for a in arrays]
    return images[0] if pixels.dim() == 3 else images


def region_to_grid(region: object, side: int, resolution: int) -> torch.Tensor:
    """A repaint region as a (side, side) bool grid over the image codes (True = repaint).

    `region`: a pixel box (left, top, right, bottom) of the `resolution` x `resolution` image (a
    code is inside when its cell centre is), a PIL mask at any size (> 127 = inside), or a 2-D bool
    array / tensor (resized by area when it is not side x side).
    """
    if isinstance(region, tuple | list) and len(region) == 4 and all(isinstance(v, int | float) for v in region):
        left, top, right, bottom = (float(v) for v in region)
        if not (0 <= left < right <= resolution and 0 <= top < bottom <= resolution):
            raise ValueError(f"region box {tuple(region)} must lie inside the {resolution}x{resolution} image")
        cell = resolution / side
        centres = (torch.arange(side) + 0.5) * cell
        rows = (centres >= top) & (centres < bottom)
        cols = (centres >= left) & (centres < right)
        grid = rows[:, None] & cols[None, :]
        if not bool(grid.any()):
            raise ValueError(f"region box {tuple(region)} covers no image token: the {resolution}x{resolution} image "
                             f"is a {side}x{side} token grid of {cell:g}-pixel cells, and a token is repainted "
                             "when its cell centre is inside the box")
        return grid
    if isinstance(region, Image.Image):
        region = np.asarray(region.convert("L").resize((side, side), Image.Resampling.BOX)) > 127
    grid = region.bool() if isinstance(region, torch.Tensor) else torch.as_tensor(np.asarray(region)).bool()
    if grid.shape != (side, side):
        if grid.dim() != 2:
            raise ValueError(f"region must be 2-D (a mask), got shape {tuple(grid.shape)}")
        grid = torch.nn.functional.interpolate(grid[None, None].float(), size=(side, side), mode="area")[0, 0] > 0.5
    if not bool(grid.any()):
        raise ValueError(f"region is empty on the {side}x{side} token grid: nothing to repaint")
    return grid
