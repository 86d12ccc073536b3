"""mmada: multimodal large diffusion language models (MMaDA, arXiv 2505.15809).

Public API (kept stable):
    load_model(path_or_id, *, dtype=torch.float32, device="cpu") -> MMaDAModel
    save_model(model, directory)
    load_image_tokenizer(path_or_id, *, device="cpu") -> MagvitV2 with .encode(pixels) / .decode(codes)
    ModelConfig, MMaDAModel
"""

from .checkpoint import load_model, save_model
from .image_tokenizer import load_image_tokenizer
from .model import MMaDAModel, ModelConfig
from .utils.files import CheckpointError

__version__ = "0.1.0"

__all__ = ["CheckpointError", "MMaDAModel", "ModelConfig", "load_image_tokenizer", "load_model", "save_model"]
