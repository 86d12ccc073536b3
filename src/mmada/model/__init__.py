"""The transformer: `ModelConfig` and `MMaDAModel` (tokens -> logits)."""

from .cache import KVCache
from .config import ModelConfig
from .transformer import MMaDAModel

__all__ = ["KVCache", "MMaDAModel", "ModelConfig"]
