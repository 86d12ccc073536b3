"""Zero-shot infilling, inpainting and extrapolation (MMaDA §5.5), composed from the two loops.

A masked diffusion model predicts any masked position from all the others, so editing needs no
new sampler, only a different starting sequence:

- text infilling: mask the spans to rewrite inside a given text and run the text block loop
  (`sampling.text.iter_denoise_blocks`) over them, as one block or in blocks left to right;
- image inpainting: mask the image codes inside a region of a t2i layout and run the MaskGIT loop
  (`sampling.image.iter_sample_t2i`), which keeps every given code;
- image extrapolation: place an image's code grid inside a larger grid, mask the new rows and
  columns, and inpaint them.

The official repository releases no inference code for these (Gen-Verse/MMaDA issue #18); the
paper only reports that they work zero-shot.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from mmada.sampling.common import SampleStep
from mmada.sampling.denoisers import Denoiser
from mmada.sampling.image import iter_sample_t2i
from mmada.sampling.text import Remasking, check_policy, iter_denoise_blocks, last_step


def iter_infill_text(
    model: Denoiser,
    input_ids: Tensor,
    *,
    steps: int,
    block_length: int | None = None,
    temperature: float = 0.0,
    remasking: Remasking = "low_confidence",
    threshold: float | None = None,
    cfg_scale: float = 0.0,
    mask_id: int,
    attention_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[SampleStep]:
    """Fill every `mask_id` position of `input_ids`; all other tokens are context and stay.

    The masked region runs from the first to the last masked column of the batch. It is decoded
    as one block (`block_length` None) or in blocks of `block_length` from its left end; each
    block gets steps / num_blocks steps and commits its own masked positions.

    Args:
        input_ids: (B, L) int64 text with masked spans (left-padded when rows differ).
        steps: total steps, a multiple of the number of blocks.
        Other arguments: as in `sampling.text.iter_sample_text` (`cfg_scale` masks the context).
    """
    check_policy(temperature, remasking, cfg_scale, threshold)
    masked_cols = (input_ids == mask_id).any(dim=0).nonzero()
    if masked_cols.numel() == 0:
        return iter(())
    start, stop = int(masked_cols[0, 0]), int(masked_cols[-1, 0]) + 1
    length = stop - start if block_length is None else block_length
    blocks = [slice(s, min(s + length, stop)) for s in range(start, stop, length)]
    if steps < 1 or steps % len(blocks):
        raise ValueError(f"`steps` ({steps}) must be a positive multiple of the number of blocks "
                         f"({len(blocks)} blocks of `block_length` {length} over the masked region)")
    return iter_denoise_blocks(
        model, input_ids, attention_mask, blocks=blocks, steps_per_block=steps // len(blocks),
        mask_id=mask_id, temperature=temperature, remasking=remasking, threshold=threshold,
        cfg_scale=cfg_scale, generator=generator,
    )


@torch.inference_mode()
def infill_text(
    model: Denoiser,
    input_ids: Tensor,
    *,
    steps: int,
    block_length: int | None = None,
    temperature: float = 0.0,
    remasking: Remasking = "low_confidence",
    threshold: float | None = None,
    cfg_scale: float = 0.0,
    mask_id: int,
    attention_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """`iter_infill_text` run to the end: (B, L) int64 with the masks filled (a copy of
    `input_ids` when nothing is masked)."""
    if not bool((input_ids == mask_id).any()):
        return input_ids.clone()
    steps_iter = iter_infill_text(
        model, input_ids, steps=steps, block_length=block_length, temperature=temperature,
        remasking=remasking, threshold=threshold, cfg_scale=cfg_scale, mask_id=mask_id,
        attention_mask=attention_mask, generator=generator,
    )
    return last_step(steps_iter).tokens


def iter_inpaint_image(
    model: Denoiser, input_ids: Tensor, attention_mask: Tensor | None, region: Tensor, **t2i: Any
) -> Iterator[SampleStep]:
    """Regenerate the image codes inside `region`, under the prompt of the t2i layout.

    Args:
        input_ids: (B, L) t2i layout whose N image positions hold image tokens.
        attention_mask: (B, L) padding mask or None.
        region: (B, N) bool, True = regenerate, in raster order (row-major over the code grid).
        **t2i: the keyword arguments of `sampling.image.iter_sample_t2i`
            (num_image_tokens, codebook_size, image_offset, mask_id, timesteps, ...).
    """
    length, num_image = input_ids.shape[1], t2i["num_image_tokens"]
    if region.shape != (input_ids.shape[0], num_image):
        raise ValueError(f"`region` must be ({input_ids.shape[0]}, {num_image}), got {tuple(region.shape)}")
    image = slice(length - num_image - 1, length - 1)
    tokens = input_ids.clone()
    tokens[:, image] = tokens[:, image].masked_fill(region.bool(), t2i["mask_id"])
    return iter_sample_t2i(model, tokens, attention_mask, **t2i)


@torch.inference_mode()
def inpaint_image(
    model: Denoiser, input_ids: Tensor, attention_mask: Tensor | None, region: Tensor, **t2i: Any
) -> Tensor:
    """`iter_inpaint_image` run to the end: (B, N) codes, equal to the input outside `region`."""
    return last_step(iter_inpaint_image(model, input_ids, attention_mask, region, **t2i)).tokens


def extend_grid(
    input_ids: Tensor,
    attention_mask: Tensor | None,
    *,
    grid: tuple[int, int],
    pad: tuple[int, int, int, int],
    mask_id: int,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Enlarge the image of a t2i layout by masked rows and columns around its code grid.

    Args:
        input_ids: (B, L) t2i layout with N = h * w image tokens in raster order.
        attention_mask: (B, L) padding mask or None.
        grid: (h, w) of the current image.
        pad: new (top, bottom, left, right) rows / columns.

    Returns:
        ids (B, L') and mask of the new layout (text part and `<|eoi|>` unchanged), and the
        region (B, N') bool that is new, where N' = (h + top + bottom) * (w + left + right).
    """
    (h, w), (top, bottom, left, right) = grid, pad
    if min(h, w) < 1 or min(pad) < 0:
        raise ValueError(f"`grid` {grid} must be positive and `pad` {pad} non-negative")
    batch, length = input_ids.shape
    head = length - h * w - 1  # text part + <|soi|>
    old = input_ids[:, head : length - 1].view(batch, h, w)
    new = old.new_full((batch, h + top + bottom, w + left + right), mask_id)
    new[:, top : top + h, left : left + w] = old
    region = torch.ones_like(new, dtype=torch.bool)
    region[:, top : top + h, left : left + w] = False
    ids = torch.cat([input_ids[:, :head], new.flatten(1), input_ids[:, length - 1 :]], dim=1)  # (B, L')
    if attention_mask is not None:
        ones = attention_mask.new_ones(batch, new[0].numel())
        attention_mask = torch.cat([attention_mask[:, :head], ones, attention_mask[:, length - 1 :]], dim=1)
    return ids, attention_mask, region.flatten(1)


def iter_extrapolate_image(
    model: Denoiser,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    *,
    grid: tuple[int, int],
    pad: tuple[int, int, int, int],
    **t2i: Any,
) -> Iterator[SampleStep]:
    """Extend an image by `pad` = (top, bottom, left, right) rows / columns of new codes.

    `input_ids` holds the image's h * w codes (`grid` = (h, w)); the sampler runs on the enlarged
    layout, so `num_image_tokens` is derived and must not be passed. The unconditional input, if
    any, only contributes its text part, so the original `uncond_input_ids` still fits.
    """
    if "num_image_tokens" in t2i:
        raise ValueError("`num_image_tokens` is derived from `grid` and `pad`; do not pass it")
    ids, mask, _ = extend_grid(input_ids, attention_mask, grid=grid, pad=pad, mask_id=t2i["mask_id"])
    height, width = grid[0] + pad[0] + pad[1], grid[1] + pad[2] + pad[3]
    return iter_sample_t2i(model, ids, mask, num_image_tokens=height * width, **t2i)


@torch.inference_mode()
def extrapolate_image(model: Denoiser, input_ids: Tensor, attention_mask: Tensor | None, **kwargs: Any) -> Tensor:
    """`iter_extrapolate_image` run to the end: (B, N') codes of the enlarged grid, raster order."""
    return last_step(iter_extrapolate_image(model, input_ids, attention_mask, **kwargs)).tokens

