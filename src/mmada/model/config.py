"""`ModelConfig`: the transformer's hyper-parameters, read from and written to the official config.json.

The official `MMadaConfig` is a `PretrainedConfig` that carries every field of LLaDA's OLMo-derived
`ModelConfig` (see `../shared/fixtures/mmada_reference/README.md`, "config.json keys"). We type
the fields that change the computation, refuse the values this implementation does not support
(naming the key and the value), and keep every other key verbatim in `extra`, so that
`ModelConfig.from_dict(d).to_dict() == d` for the official files.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

# Keys whose value must be exactly this for the LLaDA "llama" block we implement. Anything else
# would silently compute something different, so we refuse it. Missing keys take these values.
_REQUIRED_VALUES: dict[str, Any] = {
    "block_type": "llama",
    "layer_norm_type": "rms",
    "activation_type": "silu",
    "rope": True,
    "alibi": False,
    "include_bias": False,
    "include_qkv_bias": False,
    "bias_for_layer_norm": False,
    "attention_layer_norm": False,
    "layer_norm_with_affine": True,
    "scale_logits": False,
    "input_emb_norm": False,
    "block_group_size": 1,
}
# `model_type` values of the official configs: MMaDA's `MMadaConfig` and LLaDA's (same block and key names).
MODEL_TYPES = ("mmada", "llada")
# Keys that may be absent/None/False but nothing else (OLMo leftovers).
_FALSY_ONLY = ("multi_query_attention",)
# Dropouts only matter in training; the released models use 0 and so do we.
_ZERO_ONLY = ("embedding_dropout", "attention_dropout", "residual_dropout")


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of the MMaDA (LLaDA-style) transformer.

    Field names are the official config.json keys, so the file maps onto the dataclass directly.
    """

    d_model: int = 4096
    """Hidden size."""
    n_heads: int = 32
    """Query heads; head_dim = d_model / n_heads."""
    n_kv_heads: int | None = None
    """Key/value heads (grouped-query attention when smaller than n_heads); None means n_heads."""
    n_layers: int = 32
    """Transformer blocks."""
    mlp_hidden_size: int | None = 12288
    """SwiGLU inner size; None means mlp_ratio * d_model."""
    mlp_ratio: int = 4
    """Used only when mlp_hidden_size is None."""
    vocab_size: int = 134656
    """Rows of the embedding and of the output head (text tokens + image codes + unused rows)."""
    embedding_size: int | None = 134656
    """Official alias of vocab_size after resizing; must equal vocab_size (or be None)."""
    rope_theta: float = 500000.0
    """RoPE base frequency."""
    rope_full_precision: bool = True
    """Apply RoPE in float32 whatever the compute dtype (the released models do)."""
    rms_norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    max_sequence_length: int = 4096
    """Longest sequence the model takes: every input (prompt + generation, t2i / mmu layouts, infill
    text) is refused above it, before any computation (RoPE has no learned table, but nothing longer
    was trained)."""
    weight_tying: bool = False
    """Tie the output head to the embedding (MMaDA: False, a separate head)."""
    mask_token_id: int = 126336
    """The [MASK] id `<|mdm_mask|>`."""
    eos_token_id: int | None = 126081
    pad_token_id: int | None = 126081
    llm_vocab_size: int | None = 126464
    """LLaDA's own rows before the image codes were appended (informational)."""
    codebook_size: int | None = 8192
    """Number of image codes (informational here; the vocabulary object uses it)."""
    num_vq_tokens: int | None = 256
    """Image tokens per image in the training yaml (informational)."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Every other config.json key, kept verbatim so the file survives a round trip."""

    def __post_init__(self) -> None:
        positive = ("d_model", "n_heads", "n_layers", "vocab_size", "max_sequence_length", "mlp_ratio")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"config `{name}` must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"config `d_model` ({self.d_model}) must be divisible by `n_heads` ({self.n_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim = d_model / n_heads = {self.head_dim} must be even for RoPE")
        kv = self.kv_heads
        if kv <= 0 or self.n_heads % kv:
            raise ValueError(f"config `n_kv_heads` ({self.n_kv_heads}) must divide `n_heads` ({self.n_heads})")
        if self.mlp_hidden_size is not None and self.mlp_hidden_size <= 0:
            raise ValueError(f"config `mlp_hidden_size` must be positive, got {self.mlp_hidden_size}")
        if self.embedding_size is not None and self.embedding_size != self.vocab_size:
            raise ValueError(
                f"config `embedding_size` ({self.embedding_size}) differs from `vocab_size` ({self.vocab_size}); "
                "MMaDA checkpoints have them equal and this implementation requires it"
            )
        for name in ("mask_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is None and name != "mask_token_id":
                continue
            if not _is_int(value) or not 0 <= value < self.vocab_size:
                raise ValueError(f"config `{name}` ({value!r}) is outside the vocabulary [0, {self.vocab_size})")
        for name in ("llm_vocab_size", "codebook_size", "num_vq_tokens"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value <= 0):
                raise ValueError(f"config `{name}` must be a positive integer or null, got {value!r}")
        for name in ("rope_theta", "rms_norm_eps"):
            value = getattr(self, name)
            # NaN compares false with everything, so `value <= 0` alone would let it through.
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"config `{name}` must be a finite number > 0, got {value!r}")
        _check_supported(self.extra)

    # ---- derived values -------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def hidden_size(self) -> int:
        """SwiGLU inner width."""
        return self.mlp_hidden_size if self.mlp_hidden_size is not None else self.mlp_ratio * self.d_model

    def num_parameters(self) -> int:
        d, h, kv = self.d_model, self.hidden_size, self.kv_heads * self.head_dim
        per_block = 2 * d + d * d * 2 + 2 * d * kv + 3 * d * h
        head = 0 if self.weight_tying else self.vocab_size * d
        return self.vocab_size * d + self.n_layers * per_block + d + head

    # ---- presets --------------------------------------------------------------------------------
    @classmethod
    def mmada_8b(cls) -> ModelConfig:
        """MMaDA-8B (LLaDA-8B-Instruct backbone, 134656-row vocabulary), as the released config.json."""
        return cls()

    @classmethod
    def tiny(cls, **overrides: Any) -> ModelConfig:
        """A 2-layer test model: d_model 32, 64 text ids + 16 image codes (80 rows)."""
        base: dict[str, Any] = dict(
            d_model=32,
            n_heads=4,
            n_kv_heads=2,
            n_layers=2,
            mlp_hidden_size=64,
            vocab_size=80,
            embedding_size=80,
            max_sequence_length=512,
            mask_token_id=63,
            eos_token_id=61,
            pad_token_id=61,
            llm_vocab_size=64,
            codebook_size=16,
            num_vq_tokens=16,
        )
        base.update(overrides)
        return cls(**base)

    # ---- config.json ----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from an official config.json dict; unknown keys are kept in `extra`."""
        if not isinstance(data, dict):
            raise ValueError(f"a model config must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The official config.json dict: typed fields plus every kept key, sorted like transformers."""
        out = asdict(self)
        extra = out.pop("extra")
        out.update(extra)
        out.setdefault("model_type", "mmada")
        out.setdefault("architectures", ["MMadaModelLM"])
        for key, value in _REQUIRED_VALUES.items():
            out.setdefault(key, value)
        out.setdefault("tie_word_embeddings", self.weight_tying)
        return dict(sorted(out.items()))

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> ModelConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise ValueError(f"{path} not found: a checkpoint folder needs a config.json") from err
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err

    def to_json(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    def replace(self, **changes: Any) -> ModelConfig:
        return replace(self, **changes)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_supported(extra: dict[str, Any]) -> None:
    model_type = extra.get("model_type", "mmada")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"config `model_type` = {model_type!r} is not supported: this implementation loads "
                         f"{' / '.join(map(repr, MODEL_TYPES))} checkpoints (the LLaDA/MMaDA architecture)")
    for key, required in _REQUIRED_VALUES.items():
        if key in extra and extra[key] != required:
            raise ValueError(
                f"config `{key}` = {extra[key]!r} is not supported: this implementation covers the "
                f"LLaDA/MMaDA architecture, which needs `{key}` = {required!r}"
            )
    for key in _FALSY_ONLY:
        if extra.get(key):
            raise ValueError(f"config `{key}` = {extra[key]!r} is not supported; use n_kv_heads instead")
    for key in _ZERO_ONLY:
        if extra.get(key, 0.0) not in (0, 0.0, None):
            raise ValueError(f"config `{key}` = {extra[key]!r} is not supported (dropout must be 0)")
    if extra.get("tie_word_embeddings") not in (None, False, True):
        raise ValueError(f"config `tie_word_embeddings` = {extra['tie_word_embeddings']!r} must be a boolean")
