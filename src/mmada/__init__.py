"""mmada: multimodal large diffusion language models (MMaDA, arXiv 2505.15809)."""

__version__ = "0.1.0"
