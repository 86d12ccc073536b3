"""LoRA: low-rank adapters for fine-tuning MMaDA-8B on a single GPU.

LoRA (Hu et al., arXiv 2106.09685) freezes a linear layer's weight W (out, in) and learns a low-rank
update, y = x Wᵀ + (α / r) · x Aᵀ Bᵀ with A (r, in) and B (out, r). B starts at zero, so training
starts exactly from the pretrained model. Only A and B are trained: for rank 16 on every attention
and MLP projection of MMaDA-8B that is ~42M parameters (0.5%), so bf16 base weights (16 GB) plus
fp32 adapters, their gradients and AdamW state fit on one 80 GB GPU with room for activations.

After training, `merge_lora` folds W + (α / r) B A back into plain `nn.Linear` layers, so
`mmada.save_model` writes an ordinary release checkpoint with the official tensor names and any
MMaDA loader (ours or the official `MMadaModelLM`) reads it. Adapter-only checkpoints (a few MB of
safetensors) are written by `save_adapter` and read by `load_adapter`.

Why our own ~150 lines of code instead of `peft`: peft wraps Hugging Face `transformers` models
(`PreTrainedModel`, `PeftConfig` registries, its own save format) while `MMaDAModel` is a plain
`nn.Module` that does not depend on transformers at all; pulling in both for one layer type would be
a heavy dependency for very little code. `LoRALinear` subclasses `nn.Linear` and keeps the frozen
weight under its own name, so a LoRA model still loads base weights with the plain `MMaDAModel` keys.

Not implemented (not needed for MMaDA SFT): LoRA on the embedding or 4-bit base weights (QLoRA).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

logger = logging.getLogger(__name__)

DEFAULT_TARGETS = ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.gate", "mlp.up", "mlp.down")
# Adapter parameters are kept in float32 even when the base model is bf16: they are small, and fp32
# keeps their AdamW updates (often ~1e-4 relative) from being rounded away.
ADAPTER_DTYPE = torch.float32
_METADATA_KEY = "lora_config"


@dataclass(frozen=True)
class LoRAConfig:
    """Which linear layers get adapters, and their size."""

    rank: int = 16
    """r, the inner dimension of the update B A."""
    alpha: float = 32.0
    """The update is scaled by alpha / rank (so changing the rank keeps the update's scale)."""
    dropout: float = 0.0
    """Dropout on the adapter's input only (training); the frozen path sees the clean input."""
    targets: tuple[str, ...] = DEFAULT_TARGETS
    """Module name suffixes relative to a block ("attn.q" matches blocks.{i}.attn.q); "head" also works."""

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise ValueError(f"LoRA `rank` must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA `alpha` must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA `dropout` must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.targets, str) or not self.targets:
            raise ValueError(f"LoRA `targets` must be a non-empty tuple of module names, got {self.targets!r}")
        object.__setattr__(self, "targets", tuple(self.targets))  # lists from YAML/JSON become tuples

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nn.Linear):
    """A frozen `nn.Linear` plus a trainable low-rank update.

    `weight` (and `bias`) are the base layer's own parameters (shared, not copied), frozen.
    `lora_A`: (r, in_features), kaiming-uniform; `lora_B`: (out_features, r), zeros; both fp32.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        # Build on the meta device: the real weight and bias are the base layer's, attached below.
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        device = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=device, dtype=ADAPTER_DTYPE))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=device, dtype=ADAPTER_DTYPE))
        # The init of the LoRA paper / peft: A like a default nn.Linear, B zero, so B A = 0 at start.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in_features) -> (..., out_features)."""
        y = F.linear(x, self.weight, self.bias)
        h = self.lora_dropout(x).to(self.lora_A.dtype)
        update = F.linear(F.linear(h, self.lora_A), self.lora_B) * self.scaling  # (..., out), fp32
        return y + update.to(y.dtype)

    def delta_weight(self) -> Tensor:
        """(α / r) · B A, (out_features, in_features) in fp32."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain `nn.Linear` with W + (α / r) B A, in the base weight's dtype and device."""
        weight = self.weight
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        # Add in fp32, round once: a bf16 W + small delta added in bf16 would lose the delta's low bits.
        merged = (weight.detach().to(ADAPTER_DTYPE) + self.delta_weight().detach()).to(weight.dtype)
        linear.weight = nn.Parameter(merged, requires_grad=False)
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach().clone(), requires_grad=False)
        return linear

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}"


# ---- applying, merging ----------------------------------------------------------------------------
def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply_lora(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """Replace every `nn.Linear` named by `config.targets` with a `LoRALinear`, in place, and freeze
    every other parameter.

    Apply it after moving and casting the base model (e.g. to bf16 on the GPU): a later
    `model.to(torch.bfloat16)` would cast the fp32 adapters too.

    Returns:
        `model` itself; `num_trainable_parameters(model)` then counts only the adapters.
    Raises:
        ValueError: naming a target that matches no `nn.Linear` (a typo such as "attn.q_proj", or a
            module that is not linear such as "attn"), or when the model already has adapters.
    """
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("the model already has LoRA adapters; merge_lora() them before applying new ones")
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    chosen: dict[str, nn.Linear] = {}
    for target in config.targets:
        hits = {name: m for name, m in linears.items() if _matches(name, target)}
        if not hits:
            suffixes = sorted({name.split(".", 2)[-1] if name.startswith("blocks.") else name for name in linears})
            raise ValueError(
                f"LoRA target {target!r} matches no nn.Linear in the model; valid targets: {', '.join(suffixes)}"
            )
        chosen.update(hits)
    for p in model.parameters():
        p.requires_grad_(False)
    for name, linear in chosen.items():
        _set_submodule(model, name, LoRALinear(linear, config.rank, config.alpha, config.dropout))
    logger.info(
        "LoRA rank %d on %d layers: %d trainable parameters", config.rank, len(chosen), num_trainable_parameters(model)
    )
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and restore plain `nn.Linear` layers, in place.

    The result has exactly the original module names and parameters, so `mmada.save_model` writes
    an official checkpoint. Parameters come back trainable (requires_grad=True), as in a fresh model.
    """
    lora_layers = [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    if not lora_layers:
        raise ValueError("the model has no LoRA adapters to merge")
    with torch.no_grad():
        for name, layer in lora_layers:
            _set_submodule(model, name, layer.merged())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def num_trainable_parameters(model: nn.Module) -> int:
    """Number of scalars with requires_grad (what the optimizer will update)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def lora_config_of(model: nn.Module) -> LoRAConfig | None:
    """The `LoRAConfig` a model's adapters were built with (None without adapters)."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    if not layers:
        return None
    first = layers[0][1]
    targets = tuple(sorted({".".join(name.split(".")[-2:]) for name, _ in layers}))
    dropout = first.lora_dropout.p if isinstance(first.lora_dropout, nn.Dropout) else 0.0
    return LoRAConfig(rank=first.rank, alpha=first.alpha, dropout=dropout, targets=targets)


def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's weights with every adapter folded in (W + (α / r) B A), without changing the model.

    Keys are the plain `MMaDAModel` names (no `lora_A`/`lora_B`), so `mmada.save_model` can write a
    release checkpoint of a model that is still training with adapters.
    """
    state = {k: v for k, v in model.state_dict().items() if not k.endswith((".lora_A", ".lora_B"))}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            weight = module.weight.detach()
            state[f"{name}.weight"] = (weight.to(ADAPTER_DTYPE) + module.delta_weight().detach()).to(weight.dtype)
    return state


# ---- adapter-only checkpoints -------------------------------------------------------------------
def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter tensors only: `{"blocks.0.attn.q.lora_A": (r, in), "...lora_B": (out, r), ...}`."""
    state = {k: v for k, v in model.state_dict().items() if k.endswith((".lora_A", ".lora_B"))}
    if not state:
        raise ValueError("the model has no LoRA adapters (call apply_lora first)")
    return state


def load_lora_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy adapter tensors into a model that already has matching adapters (strict: same names and
    shapes; values are cast to the adapters' dtype and device)."""
    own = lora_state_dict(model)
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise ValueError(f"adapter tensor {unexpected[0]!r} has no LoRA layer in the model (check LoRA targets)")
    missing = sorted(set(own) - set(state))
    if missing:
        raise ValueError(f"adapter tensor {missing[0]!r} is missing ({len(missing)} missing in all)")
    for name, value in state.items():
        if value.shape != own[name].shape:
            raise ValueError(
                f"adapter tensor {name!r} has shape {list(value.shape)}, the model expects {list(own[name].shape)} "
                "(a different LoRA rank?)"
            )
    with torch.no_grad():
        for name, value in state.items():
            own[name].copy_(value)  # state_dict() values alias the parameters


def save_adapter(model: nn.Module, config: LoRAConfig, path: str | os.PathLike[str]) -> Path:
    """Write the adapters to one safetensors file, with `config` in its metadata (a few MB)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in lora_state_dict(model).items()}
    save_file(tensors, str(out), metadata={_METADATA_KEY: json.dumps(asdict(config))})
    return out


def load_adapter(model: nn.Module, path: str | os.PathLike[str]) -> LoRAConfig:
    """Apply the adapters saved by `save_adapter` to a base model (or refresh existing ones).

    Returns the `LoRAConfig` stored in the file.
    """
    with safe_open(str(path), framework="pt", device="cpu") as f:
        raw = (f.metadata() or {}).get(_METADATA_KEY)
        if raw is None:
            raise ValueError(f"{path} has no {_METADATA_KEY!r} metadata: not written by save_adapter")
        state = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open is not a mapping
    fields = json.loads(raw)
    config = LoRAConfig(**{**fields, "targets": tuple(fields.get("targets", DEFAULT_TARGETS))})
    if not any(isinstance(m, LoRALinear) for m in model.modules()):
        apply_lora(model, config)
    load_lora_state_dict(model, state)
    return config
