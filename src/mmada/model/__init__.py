"""The transformer: `ModelConfig` and `MMaDAModel` (tokens -> logits)."""

from .config import ModelConfig
from .transformer import MMaDAModel

__all__ = ["MMaDAModel", "ModelConfig"]
