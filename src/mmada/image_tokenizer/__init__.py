"""MAGVIT-v2 image tokenizer: images <-> discrete codes for MMaDA (arXiv 2505.15809 §2.1)."""

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
from mmada.image_tokenizer.magvit2 import EncodedImage, ImageTokenizer, MagvitV2
from mmada.image_tokenizer.transforms import image_to_tensor, load_image, tensor_to_image

__all__ = [
    "CoderConfig",
    "EncodedImage",
    "ImageTokenizer",
    "LFQConfig",
    "LFQOutput",
    "LookupFreeQuantizer",
    "MagvitConfig",
    "MagvitV2",
    "bits_to_indices",
    "codes_to_indices",
    "image_to_tensor",
    "indices_to_bits",
    "indices_to_codes",
    "lfq_commitment_loss",
    "lfq_entropy_terms",
    "load_image",
    "load_image_tokenizer",
    "save_image_tokenizer",
    "tensor_to_image",
]
