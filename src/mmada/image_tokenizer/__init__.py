"""Image tokenizers: images <-> discrete codes for MMaDA (arXiv 2505.15809 §2.1).

`MagvitV2` is MMaDA's; `PatchCodebook` is a symbolic table of exact patches (the tiny world's), with the
same `codebook_size` / `num_tokens` / `encode` / `decode` interface.
"""

from mmada.image_tokenizer.config import CoderConfig, LFQConfig, MagvitConfig
from mmada.image_tokenizer.lfq import (
    LFQOutput,
    LookupFreeQuantizer,
    bits_to_indices,
    codes_to_indices,
    indices_to_bits,
    indices_to_codes,
    lfq_commitment_loss,
    lfq_entropy_terms,
)
from mmada.image_tokenizer.loading import load_image_tokenizer, save_image_tokenizer
from mmada.image_tokenizer.magvit2 import EncodedImage, MagvitV2
from mmada.image_tokenizer.patch_codebook import (
    PatchCodebook,
    PatchCodebookConfig,
    build_patch_codebook,
    save_patch_codebook,
)
from mmada.image_tokenizer.transforms import image_to_tensor, load_image, region_to_grid, tensor_to_image

ImageTokenizer = MagvitV2 | PatchCodebook
"""Either tokenizer: the role name used by the rest of the package."""

__all__ = [
    "CoderConfig",
    "EncodedImage",
    "ImageTokenizer",
    "LFQConfig",
    "LFQOutput",
    "LookupFreeQuantizer",
    "MagvitConfig",
    "MagvitV2",
    "PatchCodebook",
    "PatchCodebookConfig",
    "bits_to_indices",
    "build_patch_codebook",
    "codes_to_indices",
    "image_to_tensor",
    "indices_to_bits",
    "indices_to_codes",
    "lfq_commitment_loss",
    "lfq_entropy_terms",
    "load_image",
    "load_image_tokenizer",
    "region_to_grid",
    "save_image_tokenizer",
    "save_patch_codebook",
    "tensor_to_image",
]
