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

import torch
from torch import Tensor

from mmada.prompting import LayoutSpans, Span, TokenLayout, Vocab
from mmada.sampling.common import SampleStep, check_length
from mmada.sampling.config import ImageSampling, InfillSampling
from mmada.sampling.denoisers import Denoiser
from mmada.sampling.image import iter_sample_t2i
from mmada.sampling.text import iter_denoise_blocks, last_step


def iter_infill_text(
    model: Denoiser,
    input_ids: Tensor,
    settings: InfillSampling,
    *,
    mask_id: int,
    attention_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[SampleStep]:
    """Fill every `mask_id` position of `input_ids`; all other tokens are context and stay.

    The masked region runs from the first to the last masked column of the batch. It is decoded
    as one block (`settings.block_length` None) or in blocks of `block_length` from its left end;
    each block gets steps / num_blocks steps and commits its own masked positions.

    Args:
        input_ids: (B, L) int64 text with masked spans (left-padded when rows differ).
        settings: steps (a multiple of the number of blocks), block_length and the per-step policy
            (temperature, remasking, threshold, cfg_scale: the guidance pass masks the context).
        Other arguments: as in `sampling.text.iter_sample_text`.
    """
    check_length(model, input_ids.shape[1], "the text to infill")
    masked_cols = (input_ids == mask_id).any(dim=0).nonzero()
    if masked_cols.numel() == 0:
        return iter(())
    most = int((input_ids == mask_id).sum(dim=1).max())
    if settings.steps > most:
        raise ValueError(f"`steps` ({settings.steps}) must be <= the {most} masked tokens to fill: every step "
                         "commits at least one")
    start, stop = int(masked_cols[0, 0]), int(masked_cols[-1, 0]) + 1
    length = stop - start if settings.block_length is None else settings.block_length
    blocks = [slice(s, min(s + length, stop)) for s in range(start, stop, length)]
    if settings.steps % len(blocks):
        raise ValueError(f"`steps` ({settings.steps}) must be a positive multiple of the number of blocks "
                         f"({len(blocks)} blocks of `block_length` {length} over the masked region)")
    return iter_denoise_blocks(model, input_ids, attention_mask, settings, blocks=blocks,
                               steps_per_block=settings.steps // len(blocks), mask_id=mask_id, generator=generator)


@torch.inference_mode()
def infill_text(
    model: Denoiser,
    input_ids: Tensor,
    settings: InfillSampling,
    *,
    mask_id: int,
    attention_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """`iter_infill_text` run to the end: (B, L) int64 with the masks filled (a copy of
    `input_ids` when nothing is masked)."""
    if not bool((input_ids == mask_id).any()):
        return input_ids.clone()
    steps = iter_infill_text(model, input_ids, settings, mask_id=mask_id, attention_mask=attention_mask,
                             generator=generator)
    return last_step(steps).tokens


def place_image(layout: TokenLayout, image_ids: Tensor) -> TokenLayout:
    """`layout` with `image_ids` (B, N) int64 token ids (codes + image offset, or mask ids) written into its
    image span, e.g. the codes of an image to edit into a t2i generation layout."""
    image = layout.spans.image.as_slice()
    if image_ids.shape != (layout.batch_size, image.stop - image.start):
        raise ValueError(f"`image_ids` must be ({layout.batch_size}, {image.stop - image.start}) like the "
                         f"layout's image span, got {tuple(image_ids.shape)}")
    ids = layout.input_ids.clone()
    ids[:, image] = image_ids.to(ids.device)
    return TokenLayout(layout.task, ids, layout.attention_mask, layout.prompt_mask, layout.spans, layout.labels)


def iter_inpaint_image(
    model: Denoiser,
    layout: TokenLayout,
    region: Tensor,
    settings: ImageSampling,
    vocab: Vocab,
    *,
    uncond: TokenLayout | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[SampleStep]:
    """Regenerate the image codes inside `region`, under the prompt of the t2i layout.

    Args:
        layout: (B, L) t2i layout whose N image positions hold image tokens (`place_image`).
        region: (B, N) bool, True = regenerate, in raster order (row-major over the code grid).
        Other arguments: as in `sampling.image.iter_sample_t2i`.
    """
    image = layout.spans.image.as_slice()
    num_image = image.stop - image.start
    if region.shape != (layout.batch_size, num_image):
        raise ValueError(f"`region` must be ({layout.batch_size}, {num_image}), got {tuple(region.shape)}")
    empty = (~region.bool().any(dim=1)).nonzero()
    if empty.numel():
        raise ValueError(f"`region` row {int(empty[0, 0])} covers none of the {num_image} image tokens: "
                         "nothing to repaint")
    masked = layout.input_ids[:, image].masked_fill(region.bool().to(layout.input_ids.device), vocab.mask_id)
    return iter_sample_t2i(model, place_image(layout, masked), settings, vocab, uncond=uncond, generator=generator)


@torch.inference_mode()
def inpaint_image(
    model: Denoiser,
    layout: TokenLayout,
    region: Tensor,
    settings: ImageSampling,
    vocab: Vocab,
    *,
    uncond: TokenLayout | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """`iter_inpaint_image` run to the end: (B, N) codes, equal to the input outside `region`."""
    steps = iter_inpaint_image(model, layout, region, settings, vocab, uncond=uncond, generator=generator)
    return last_step(steps).tokens


def extend_grid(
    layout: TokenLayout, *, grid: tuple[int, int], pad: tuple[int, int, int, int], mask_id: int
) -> tuple[TokenLayout, Tensor]:
    """Enlarge the image of a t2i layout by masked rows and columns around its code grid.

    Args:
        layout: (B, L) t2i layout with N = h * w image tokens in raster order in its image span.
        grid: (h, w) of the current image.
        pad: new (top, bottom, left, right) rows / columns.

    Returns:
        The new layout (B, L') (text part and `<|eoi|>` unchanged, spans moved), and the region
        (B, N') bool that is new, where N' = (h + top + bottom) * (w + left + right).
    """
    (h, w), (top, bottom, left, right) = grid, pad
    if min(h, w) < 1 or min(pad) < 0:
        raise ValueError(f"`grid` {grid} must be positive and `pad` {pad} non-negative")
    image = layout.spans.image.as_slice()
    if image.stop - image.start != h * w:
        raise ValueError(f"`grid` {grid} must cover the layout's {image.stop - image.start} image tokens")
    batch = layout.batch_size
    old = layout.input_ids[:, image].view(batch, h, w)
    new = old.new_full((batch, h + top + bottom, w + left + right), mask_id)
    new[:, top : top + h, left : left + w] = old
    region = torch.ones_like(new, dtype=torch.bool)
    region[:, top : top + h, left : left + w] = False
    return _splice_image(layout, image, new.flatten(1)), region.flatten(1)


def _splice_image(layout: TokenLayout, image: slice, new_image: Tensor) -> TokenLayout:
    """`layout` with its image span replaced by `new_image` (B, N') ids; later positions move by N' - N."""
    n_new = new_image.shape[1]
    shift = n_new - (image.stop - image.start)

    def splice(row: Tensor, fill: Tensor) -> Tensor:
        return torch.cat([row[:, : image.start], fill, row[:, image.stop :]], dim=1)

    def move(span: Span) -> Span:
        return span.shift(shift) if bool((span.start >= image.stop).all()) else span

    ones = layout.attention_mask.new_ones(layout.batch_size, n_new)
    spans = layout.spans.map(move)
    spans = LayoutSpans(spans.text, spans.prompt, spans.answer, Span.fixed(image.start, image.start + n_new,
                                                                           layout.batch_size))
    labels = None if layout.labels is None else splice(layout.labels, new_image)
    return TokenLayout(layout.task, splice(layout.input_ids, new_image), splice(layout.attention_mask, ones),
                       splice(layout.prompt_mask, ~ones), spans, labels)


def iter_extrapolate_image(
    model: Denoiser,
    layout: TokenLayout,
    settings: ImageSampling,
    vocab: Vocab,
    *,
    grid: tuple[int, int],
    pad: tuple[int, int, int, int],
    uncond: TokenLayout | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[SampleStep]:
    """Extend an image by `pad` = (top, bottom, left, right) rows / columns of new codes.

    `layout`'s image span holds the image's h * w codes (`grid` = (h, w)); the sampler runs on the
    enlarged layout (`extend_grid`). The unconditional layout, if any, only contributes its text
    part, so the original null prompt still fits.
    """
    extended, _ = extend_grid(layout, grid=grid, pad=pad, mask_id=vocab.mask_id)
    return iter_sample_t2i(model, extended, settings, vocab, uncond=uncond, generator=generator)


@torch.inference_mode()
def extrapolate_image(
    model: Denoiser,
    layout: TokenLayout,
    settings: ImageSampling,
    vocab: Vocab,
    *,
    grid: tuple[int, int],
    pad: tuple[int, int, int, int],
    uncond: TokenLayout | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """`iter_extrapolate_image` run to the end: (B, N') codes of the enlarged grid, raster order."""
    steps = iter_extrapolate_image(model, layout, settings, vocab, grid=grid, pad=pad, uncond=uncond,
                                   generator=generator)
    return last_step(steps).tokens
