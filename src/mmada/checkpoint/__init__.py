"""Checkpoint I/O in the official formats (safetensors only)."""

from .hf import load_model, save_model

__all__ = ["load_model", "save_model"]
