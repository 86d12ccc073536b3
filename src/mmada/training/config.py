"""Training configuration: typed, frozen, documented sections; YAML files and `key=value` only override.

One `TrainConfig` describes a run:

    model       ModelSection       what to train (a preset or a checkpoint), tokenizers, precision
    optim       OptimConfig        AdamW and gradient clipping
    schedule    ScheduleConfig     warmup, then cosine / linear / constant
    batch       BatchConfig        gradient accumulation
    objective   ObjectiveConfig    the masked-diffusion loss (`training.objectives`)
    log         LogConfig          run folder, metrics sinks, preview / evaluation cadence
    checkpoint  CheckpointConfig   checkpoint cadence and retention
    data        DataSpec           the batch source (sources, rows per task), for `training.data.build_source`
    seed, device

The defaults are the settings every official MMaDA-8B stage shares (MMADA.md §2.3; Gen-Verse/MMaDA
configs/mmada_pretraining_stage*.yaml): AdamW betas (0.9, 0.999), weight decay 0.01, eps 1e-8, cosine
schedule with 5000 warmup steps, gradient clipping at 1.0, bf16 autocast, seed 10086, and the
numbers of stage 1.1 (lr 1e-4, coefficients 1.0 / 0.1 / 1.0). A stage is a YAML file that overrides
some of them (`mmada/configs/train/`, also reachable by name: `mmada train tiny_pretrain`), and the command
line overrides the file:

    load_config(["stage1_2"], ["optim.lr=3e-5", "batch.grad_accum=8"])

Loading is `mmada.utils.config`'s: values are converted from the field types (YAML's "1e-4" string
becomes a float), unknown keys are refused with the list of valid ones, and invalid values are refused
naming the key (`optim.lr`, `data.batch_sizes.t2i`), all before any weights load.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from ..model.config import ModelConfig
from ..prompting.vocab import MASK_TOKEN
from ..utils.config import build, merge, read_yaml, set_override, to_dict
from ..utils.device import resolve_dtype
from .data import DataSpec
from .objectives import ObjectiveConfig

PRESETS = ("tiny", "mmada_8b")
"""`model.init` values that build a randomly initialised model from a `ModelConfig` preset."""


def _positive(value: float, name: str, *, allow_zero: bool = False) -> None:
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"`{name}` must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@dataclass(frozen=True)
class ModelSection:
    """What to train and in which precision."""

    init: str = "tiny"
    """A preset (`tiny`, `mmada_8b`: random initialisation), a checkpoint folder or hub id in the release
    format, or a run folder of this trainer (its latest checkpoint's model)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """`ModelConfig` fields replaced in a preset (e.g. `vocab_size` to fit the tokenizer); presets only."""
    init_std: float = 0.02
    """Standard deviation of the random initialisation of a preset (`MMaDAModel.reset_parameters`)."""
    tokenizer: str | None = None
    """Text tokenizer folder (tokenizer.json); None = the `init` checkpoint folder."""
    image_tokenizer: str | None = None
    """MAGVIT-v2 folder or hub id (frozen; used by the data source and image previews); None = none."""
    dtype: str = "float32"
    """Storage dtype of the trained weights and optimizer state (float32 master weights, as the official
    runs under accelerate's bf16 mixed precision)."""
    mixed_precision: Literal["auto", "bf16", "none"] = "auto"
    """bf16 autocast of the forward pass: "auto" = on where the device supports it, never on CPU."""
    gradient_checkpointing: bool = False
    """Recompute each block in the backward pass (the official stages turn it on)."""
    fsdp: bool = True
    """Multi-process runs: shard parameters, gradients and optimizer state over the ranks (FSDP2, ZeRO-3);
    False replicates them (data parallel)."""
    lora_rank: int = 0
    """LoRA fine-tuning: adapters of this rank on `lora_targets`, base weights frozen; 0 trains every weight.
    Checkpoints hold the merged release weights plus the adapters (for resume)."""
    lora_alpha: float = 32.0
    """LoRA scaling numerator: updates are scaled by lora_alpha / lora_rank."""
    lora_dropout: float = 0.0
    """Dropout on the adapter input."""
    lora_targets: tuple[str, ...] = ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.gate", "mlp.up", "mlp.down")
    """Linear layers (name suffixes) that get adapters."""

    def __post_init__(self) -> None:
        if not self.init:
            raise ValueError("`init` must name a preset, a checkpoint or a run folder")
        if self.overrides and self.init not in PRESETS:
            raise ValueError(f"`overrides` only apply to a preset ({', '.join(PRESETS)}); a checkpoint's "
                             f"config.json fixes its architecture (init is {self.init!r})")
        valid = {f.name for f in fields(ModelConfig)} - {"extra"}
        unknown = sorted(set(self.overrides) - valid)
        if unknown:
            raise ValueError(f"`overrides` has unknown ModelConfig field {unknown[0]!r}; "
                             f"valid: {', '.join(sorted(valid))}")
        _positive(self.init_std, "init_std")
        if self.lora_rank < 0:
            raise ValueError(f"`lora_rank` must be >= 0, got {self.lora_rank}")
        _positive(self.lora_alpha, "lora_alpha")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"`lora_dropout` must be in [0, 1), got {self.lora_dropout}")
        try:
            resolve_dtype(self.dtype)
        except ValueError as err:
            raise ValueError(f"`dtype`: {err}") from None
        if self.mixed_precision not in ("auto", "bf16", "none"):
            raise ValueError(f"`mixed_precision` must be 'auto', 'bf16' or 'none', got {self.mixed_precision!r}")

    def model_config(self) -> ModelConfig:
        """The preset's `ModelConfig` with `overrides` applied (presets only)."""
        if self.init not in PRESETS:
            raise ValueError(f"`init` {self.init!r} is not a preset ({', '.join(PRESETS)})")
        return dataclasses.replace(getattr(ModelConfig, self.init)(), **self.overrides)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with the official no-decay rule, and gradient clipping."""

    lr: float = 1e-4
    """Peak learning rate (stage 1.1: 1e-4; later stages 5e-5)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (beta1, beta2)."""
    weight_decay: float = 0.01
    """Decoupled weight decay of the matrices (none on biases, norms and embeddings)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping (the norm is still logged)."""
    no_decay: tuple[str, ...] = ("bias", "norm", "embed")
    """Parameters whose name contains one of these get no weight decay (see `optim.param_groups`)."""
    nonfinite_patience: int = 3
    """Stop the run with an error after this many consecutive optimizer steps with a non-finite (NaN/inf)
    loss or gradient norm (their updates are skipped); weights that became non-finite are never checkpointed,
    so the last good checkpoint stays the latest. 0 = never stop (train to the end whatever the loss)."""

    def __post_init__(self) -> None:
        _positive(self.lr, "lr")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"`betas` must be two numbers in [0, 1), got {self.betas}")
        _positive(self.weight_decay, "weight_decay", allow_zero=True)
        _positive(self.eps, "eps")
        _positive(self.max_grad_norm, "max_grad_norm", allow_zero=True)
        _positive(self.nonfinite_patience, "nonfinite_patience", allow_zero=True)


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule, as a multiple of `optim.lr` per optimizer step."""

    kind: Literal["cosine", "linear", "constant"] = "cosine"
    """Shape after the warmup: half-cosine or linear decay to `min_lr_scale`, or constant."""
    warmup_steps: int = 5000
    """Linear warmup from 0 to the peak over this many optimizer steps."""
    max_steps: int = 500_000
    """Optimizer steps of the run; the decay ends here (stage 1.1: 500K; 1.2 and later: 1M)."""
    min_lr_scale: float = 0.0
    """Final learning rate as a fraction of the peak (stages 1.2 and later: 0.1)."""

    def __post_init__(self) -> None:
        if self.kind not in ("cosine", "linear", "constant"):
            raise ValueError(f"`kind` must be 'cosine', 'linear' or 'constant', got {self.kind!r}")
        _positive(self.max_steps, "max_steps")
        _positive(self.warmup_steps, "warmup_steps", allow_zero=True)
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"`warmup_steps` ({self.warmup_steps}) must be <= `max_steps` ({self.max_steps})")
        if not 0 <= self.min_lr_scale <= 1:
            raise ValueError(f"`min_lr_scale` must be in [0, 1], got {self.min_lr_scale}")


@dataclass(frozen=True)
class BatchConfig:
    """How many micro-batches one optimizer step sees. The rows per task of a micro-batch are set next to
    each task's source, in the data section (`data.tasks.<task>.batch_size`; stage 1.1: t2i 7, lm 2, mmu 6)."""

    grad_accum: int = 2
    """Micro-batches accumulated per optimizer step (stages 1.1-1.2: 2; 1.3 and later: 4)."""

    def __post_init__(self) -> None:
        _positive(self.grad_accum, "grad_accum")


@dataclass(frozen=True)
class LogConfig:
    """Where the run lives and what it reports."""

    run_dir: str = "runs/mmada"
    """Run folder: checkpoints, metrics.jsonl, config.yaml, previews/ (`mmada train --out` sets it)."""
    log_every: int = 50
    """Optimizer steps between metric records (metrics.jsonl is always written)."""
    progress: bool = False
    """Show a tqdm bar with the loss and tokens/s (the CLI turns it on)."""
    tensorboard: bool = False
    """Also write TensorBoard events to run_dir/tensorboard (needs the `tensorboard` package)."""
    wandb: bool = False
    """Also log to Weights & Biases (needs `wandb`; never required)."""
    wandb_project: str = "mmada"
    """W&B project name."""
    preview_every: int = 0
    """Optimizer steps between previews (text answers and images in run_dir/previews/); 0 = never."""
    preview_prompts: tuple[str, ...] = ("What is 12 + 30?",)
    """Questions the default preview answers."""
    preview_captions: tuple[str, ...] = ("a red circle",)
    """Captions the default preview draws (when an image tokenizer is configured)."""
    preview_max_text_len: int = 64
    """Text part of the preview's t2i prompts (`max_text_len`)."""
    sample_gen_length: int = 64
    """Tokens the default preview and evaluation generate per answer (one block, one token per step)."""
    eval_every: int = 0
    """Optimizer steps between evaluations (default: the tiny world's suite and judges); 0 = never."""
    eval_tasks: tuple[str, ...] = ("arithmetic", "vqa", "t2i", "digit_t2i", "digit_recognition")
    """Tasks of the default evaluation (`evaluation.world.TASKS`)."""
    eval_limit: int = 4
    """Examples per group of the default evaluation (a quick signal; `mmada eval world` runs the full suite)."""

    def __post_init__(self) -> None:
        if not self.run_dir:
            raise ValueError("`run_dir` must be a folder path")
        _positive(self.log_every, "log_every")
        for name in ("preview_every", "eval_every"):
            _positive(getattr(self, name), name, allow_zero=True)
        _positive(self.preview_max_text_len, "preview_max_text_len")
        _positive(self.sample_gen_length, "sample_gen_length")
        _positive(self.eval_limit, "eval_limit")


@dataclass(frozen=True)
class CheckpointConfig:
    """When checkpoints are written and how many are kept."""

    every: int = 10_000
    """Optimizer steps between checkpoints (a final one and one on SIGTERM/SIGINT are always written);
    0 = only those."""
    keep_last: int = 3
    """Complete checkpoints kept; older ones are deleted after a newer one is committed."""

    def __post_init__(self) -> None:
        _positive(self.every, "every", allow_zero=True)
        _positive(self.keep_last, "keep_last")


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run."""

    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    data: DataSpec | None = None
    """The batch source (`training.data.build_source`): `name` picks its spec class (`mixture`: `MixtureSpec`,
    `world_pretrain` / `world_sft`: `WorldSpec` / `WorldSftSpec`), whose keys are checked on loading."""
    seed: int = 10086
    """Seeds the model initialisation (entry point), the masking generator and the data order."""
    device: str = "auto"
    """cpu, cuda, mps, or auto (the best available); a multi-process run uses its local device."""

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), the inverse of `config_from_dict`."""
        return to_dict(self)


# ---- loading ----------------------------------------------------------------------------------------
def load_config(paths: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults <- each YAML file in order (nested sections, deep-merged) <- `key.sub=value` overrides."""
    raw: dict[str, Any] = {}
    for path in paths:
        merge(raw, read_yaml(resolve_config_path(path)))
    for item in overrides:
        set_override(raw, item, TrainConfig)
    return config_from_dict(raw)


PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"


def resolve_config_path(path: str | Path) -> Path:
    """A YAML path as given, or the name of a config shipped with mmada ("tiny_pretrain", "stage1_1.yaml")."""
    path = Path(path)
    if path.exists() or len(path.parts) > 1:
        return path
    packaged = PACKAGED_CONFIGS / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if packaged.is_file():
        return packaged
    names = ", ".join(sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
    raise ValueError(f"config file {path} not found (shipped configs: {names})")


def config_from_dict(raw: Mapping[str, Any]) -> TrainConfig:
    """Build a `TrainConfig` from nested mappings, converting values to the field types."""
    return build(TrainConfig, raw)


# ---- from a config to objects ------------------------------------------------------------------------
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class Tokenizers:
    """What `model.tokenizer` / `model.image_tokenizer` resolve to; all None when none is configured."""

    text: Any = None
    """`TextTokenizer`."""
    vocab: Any = None
    """`Vocab` of the tokenizer and the model."""
    image: Any = None
    """`MagvitV2`, frozen."""
    files: tuple[Path, ...] = ()
    """The text tokenizer's files, copied beside each checkpoint's weights."""


def resolve_init(init: str) -> str:
    """A run folder of this trainer becomes its latest checkpoint's `model/`; anything else is unchanged."""
    from ..checkpoint.train_state import find_latest

    latest = find_latest(init) if Path(init).is_dir() else None
    return str(latest / "model") if latest is not None else init


def build_model(section: ModelSection, device: Any) -> Any:
    """The `MMaDAModel` to train, in train mode: a preset initialised at random (from the global RNG, which
    the entry point seeds), or a checkpoint in the release format."""
    import torch

    from ..checkpoint.hf import load_model
    from ..model.transformer import MMaDAModel

    dtype = resolve_dtype(section.dtype)
    if section.init in PRESETS:
        config = section.model_config()
        if section.tokenizer:
            from ..prompting import TextTokenizer

            config = with_special_ids(config, TextTokenizer.from_pretrained(resolve_asset(section.tokenizer, "text")),
                                      keep=section.overrides)
        with torch.device(device):
            model = MMaDAModel(config)
        model.reset_parameters(section.init_std)
        model = model.to(dtype)
    else:
        model = load_model(resolve_init(section.init), dtype=dtype, device=device)
    model.gradient_checkpointing = section.gradient_checkpointing
    if section.lora_rank > 0:
        from ..model.lora import LoRAConfig, apply_lora

        apply_lora(model, LoRAConfig(rank=section.lora_rank, alpha=section.lora_alpha,
                                     dropout=section.lora_dropout, targets=tuple(section.lora_targets)))
    return model.train()


SPECIAL_IDS = ("mask_token_id", "eos_token_id", "pad_token_id")
"""`ModelConfig` fields a preset takes from its text tokenizer (configs need not repeat vocabulary ids)."""


def with_special_ids(config: ModelConfig, tokenizer: Any, keep: Mapping[str, Any] = {}) -> ModelConfig:
    """`config` with the [MASK], EOS and padding ids of `tokenizer` (those named in `keep` stay as given)."""
    mask = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.token_to_id(MASK_TOKEN)
    ids = {"mask_token_id": mask, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id}
    return dataclasses.replace(config, **{k: v for k, v in ids.items() if v is not None and k not in keep})


WORLD_ASSET = "world"
"""`model.tokenizer: world` / `model.image_tokenizer: world` name the tiny world's committed tokenizers."""


def resolve_asset(value: str, kind: str = "image") -> Path:
    """A tokenizer folder from a config value: a path, or `world` for the tiny world's committed ones."""
    if value != WORLD_ASSET:
        return Path(value)
    from ..world.tokenizers import world_image_tokenizer_dir, world_text_tokenizer_dir

    return world_text_tokenizer_dir() if kind == "text" else world_image_tokenizer_dir()


def load_tokenizers(section: ModelSection, model: Any, device: Any) -> Tokenizers:
    """The text tokenizer (`tokenizer`, else the `init` checkpoint's), its `Vocab`, and the image tokenizer."""
    from ..image_tokenizer import load_image_tokenizer
    from ..prompting import TextTokenizer, vocab_for

    folder = resolve_asset(section.tokenizer, "text") if section.tokenizer else (
        None if section.init in PRESETS else resolve_init(section.init))
    if folder is None:
        return Tokenizers()
    text = TextTokenizer.from_pretrained(folder)
    image = (load_image_tokenizer(resolve_asset(section.image_tokenizer), device=device)
             if section.image_tokenizer else None)
    files = tuple(Path(folder) / n for n in TOKENIZER_FILES if (Path(folder) / n).is_file())
    return Tokenizers(text, vocab_for(text, model), image, files)
