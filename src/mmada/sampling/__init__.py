"""Reverse process: sampling text, image codes and edits from a `Denoiser`.

- `text`: the semi-autoregressive block loop (LLaDA / MMaDA §3.1): text and understanding (MMU).
- `image`: the MaskGIT loop (MMaDA §3.2): text-to-image codes.
- `inpaint`: text infilling, image inpainting and extrapolation, composed from the two loops.
- `denoisers`: the `Denoiser` protocol and `ClassifierFreeGuidance`.
- `common`: Gumbel noise, confidences, commit selection, `SampleStep`.
- `config`: the settings each sampler takes (`TextSampling`, `ImageSampling`, `InfillSampling`) and the
  named presets (`PRESETS` for text, `IMAGE_PRESETS` for images, `apply_preset`).

Every sampler has an iterator form (`iter_*`, yielding one `SampleStep` per model call) and a
plain form returning the final tokens. Samplers never import the model class.
"""

from mmada.sampling.common import SampleStep
from mmada.sampling.config import (
    IMAGE_PRESETS,
    PRESETS,
    ImageSampling,
    InfillSampling,
    Overrides,
    TextSampling,
    apply_preset,
)
from mmada.sampling.denoisers import ClassifierFreeGuidance, Denoiser, guide
from mmada.sampling.image import iter_sample_t2i, sample_t2i
from mmada.sampling.inpaint import (
    extend_grid,
    extrapolate_image,
    infill_text,
    inpaint_image,
    iter_extrapolate_image,
    iter_infill_text,
    iter_inpaint_image,
    place_image,
)
from mmada.sampling.text import iter_denoise_blocks, iter_sample_text, last_step, sample_text

__all__ = [
    "IMAGE_PRESETS",
    "PRESETS",
    "ClassifierFreeGuidance",
    "Denoiser",
    "ImageSampling",
    "InfillSampling",
    "Overrides",
    "SampleStep",
    "TextSampling",
    "apply_preset",
    "extend_grid",
    "extrapolate_image",
    "guide",
    "infill_text",
    "inpaint_image",
    "iter_denoise_blocks",
    "iter_extrapolate_image",
    "iter_infill_text",
    "iter_inpaint_image",
    "iter_sample_t2i",
    "iter_sample_text",
    "last_step",
    "place_image",
    "sample_t2i",
    "sample_text",
]
