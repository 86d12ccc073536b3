"""mmada: multimodal large diffusion language models (MMaDA, arXiv 2505.15809).

Public API (kept stable):
    load_model(path_or_id, *, dtype=torch.float32, device="cpu") -> MMaDAModel
    save_model(model, directory)
    load_image_tokenizer(path_or_id, *, device="cpu") -> MagvitV2 with .encode(pixels) / .decode(codes)
    ModelConfig, MMaDAModel
    MMaDAPipeline.from_pretrained(path_or_id) -> generate / chat / understand / text_to_image / infill /
        inpaint / extrapolate (and their iter_* and *_batch forms)
    TextSampling, ImageSampling, InfillSampling: the sampler settings (`mmada.sampling.config`)
"""

from .checkpoint import load_model, save_model
from .image_tokenizer import load_image_tokenizer
from .model import MMaDAModel, ModelConfig
from .pipelines import MMaDAPipeline, PipelineSettings
from .sampling import ImageSampling, InfillSampling, TextSampling
from .utils.files import CheckpointError

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ImageSampling",
    "InfillSampling",
    "MMaDAModel",
    "MMaDAPipeline",
    "ModelConfig",
    "PipelineSettings",
    "TextSampling",
    "load_image_tokenizer",
    "load_model",
    "save_model",
]
