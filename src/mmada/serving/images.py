"""Untrusted images in, PNGs out: size checks before decoding, and the masks of inpainting requests.

An image reaches the server as base64 (a `data:` URL in a chat message) or as a multipart file. Its
encoded size is checked first, then its width x height as read from the header (`Image.open` is
lazy), and only then are its pixels decoded, so a small file that would decode to gigabytes (a "PNG
bomb") is refused without being decoded. Nothing from a request is used as a file path, and nothing
is fetched from a URL.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

import numpy as np
from PIL import Image

from .errors import ApiError

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
"""Input formats decoded (PIL's other plugins, some rarely exercised, are not offered to clients)."""
DATA_URL = re.compile(r"data:image/[\w.+-]+;base64,", re.ASCII)


def decode_base64(text: str, *, max_bytes: int, param: str) -> bytes:
    """The bytes of a `data:image/...;base64,` URL or of bare base64, at most `max_bytes` of them."""
    if text.startswith(("http://", "https://", "file:", "ftp:")):
        raise ApiError(400, f"`{param}`: remote image URLs are not fetched; send the image as a data: URL or "
                       "base64", param=param, code="invalid_image_url")
    match = DATA_URL.match(text)
    if text.startswith("data:") and not match:
        raise ApiError(400, f"`{param}`: a data URL must look like data:image/png;base64,<data>", param=param,
                       code="invalid_image_url")
    payload = text[match.end():] if match else text
    if len(payload) * 3 // 4 > max_bytes + 3:  # before decoding anything
        raise ApiError(400, f"`{param}`: the image is larger than {max_bytes} bytes", param=param,
                       code="image_too_large")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"`{param}`: not valid base64", param=param, code="invalid_base64") from None


def open_image(raw: bytes, *, max_bytes: int, max_pixels: int, param: str) -> Image.Image:
    """Decode encoded image bytes, refusing large or unreadable ones (the message names `param`).

    Returns the first frame, decoded, in its own mode (RGBA kept for masks).
    """
    if len(raw) > max_bytes:
        raise ApiError(400, f"`{param}`: the image is {len(raw)} bytes, more than the limit of {max_bytes}",
                       param=param, code="image_too_large")
    too_large = ApiError(400, f"`{param}`: the image has more pixels than the limit of {max_pixels}", param=param,
                         code="image_too_large")
    try:
        with warnings.catch_warnings():  # PIL's own bomb check warns (or raises) on open; ours follows
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=FORMATS)  # reads the header only
    except Image.DecompressionBombError:
        raise too_large from None
    except (OSError, SyntaxError, ValueError):
        raise ApiError(400, f"`{param}`: not a readable image ({', '.join(FORMATS)})", param=param,
                       code="invalid_image") from None
    width, height = image.size
    if width < 1 or height < 1 or width * height > max_pixels:
        raise ApiError(400, f"`{param}`: the image is {width}x{height} pixels, more than the limit of "
                       f"{max_pixels} pixels", param=param, code="image_too_large")
    try:
        image.load()
    except Image.DecompressionBombError:
        raise too_large from None
    except (OSError, SyntaxError, ValueError):
        raise ApiError(400, f"`{param}`: the image data is corrupt or truncated", param=param,
                       code="invalid_image") from None
    return image


def center_square(image: Image.Image) -> Image.Image:
    """The largest centred square of `image`: the crop the pipeline's resize-then-crop also takes."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def repaint_region(image: Image.Image, mask: Image.Image | None, *, param: str) -> np.ndarray:
    """OpenAI's edit mask as a bool array over `image` (True = repaint): where the mask (or, without one,
    the image itself) is transparent. Both are cropped to the centred square the model sees."""
    source = mask if mask is not None else image
    if mask is not None and mask.size != image.size:
        raise ApiError(400, f"`mask` is {mask.size[0]}x{mask.size[1]} but `image` is {image.size[0]}x"
                       f"{image.size[1]}; they must match", param="mask", code="invalid_mask")
    if "A" not in source.getbands() and source.mode not in ("P", "LA", "PA"):
        raise ApiError(400, f"`{param}` has no alpha channel; transparent pixels mark the region to repaint",
                       param=param, code="invalid_mask")
    alpha = np.asarray(center_square(source.convert("RGBA")).getchannel("A"))
    region = alpha < 128  # (H, W) bool
    if not region.any():
        raise ApiError(400, f"`{param}` has no transparent pixels; transparent pixels mark the region to repaint",
                       param=param, code="invalid_mask")
    return region


def to_png(image: Image.Image) -> str:
    """An image as base64 PNG text."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
