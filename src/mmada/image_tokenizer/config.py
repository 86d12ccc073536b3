"""Typed architecture configs for the MAGVIT-v2 image tokenizer (MMaDA §2.1 "Data Tokenization").

The official `MAGVITv2.__init__` takes no arguments and its `config.json` holds only the class
name, so the real architecture lives in constructor defaults (Gen-Verse/MMaDA
models/modeling_magvitv2.py, `VQGANEncoder`, `VQGANDecoder`, `LFQuantizer`). `MagvitConfig.official()`
spells those numbers out; `from_arch_json` / `to_arch_json` read and write the `tiny_arch.json`
format of the reference fixtures (one dict per constructor: `encoder`, `decoder`, `quantizer`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# GroupNorm(32, ...) in every ResnetBlock/AttnBlock (Gen-Verse/MMaDA models/common_modules.py `Normalize`).
NUM_GROUPS = 32


def _positive_int_tuple(name: str, values: tuple[int, ...]) -> None:
    if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
        raise ValueError(f"`{name}` must be a non-empty sequence of positive ints, got {values!r}")


@dataclass(frozen=True)
class CoderConfig:
    """Numbers of one convolutional stack (the encoder or the decoder) of MAGVIT-v2."""

    ch: int
    """Base channel count; level i uses `ch * ch_mult[i]` channels."""
    ch_mult: tuple[int, ...]
    """Channel multiplier per resolution level; `len(ch_mult) - 1` is the number of 2x resamplings."""
    num_res_blocks: tuple[int, ...]
    """ResnetBlocks per level (same length as `ch_mult`)."""
    attn_resolutions: tuple[int, ...] = (5,)
    """Feature-map sides (counted from `resolution`) that get an AttnBlock after each ResnetBlock.
    The official value (5,) is never reached, so no level has attention; only `mid` does."""
    resolution: int = 256
    """Nominal input side. Only used to decide where `attn_resolutions` apply, exactly as the
    official constructors do; the module itself accepts any side divisible by the downsampling factor."""
    dropout: float = 0.0
    """Dropout inside ResnetBlocks (training only; 0.0 in every official config)."""

    def __post_init__(self) -> None:
        # Accept lists (e.g. from json) but store tuples, so configs stay hashable and immutable.
        for name in ("ch_mult", "num_res_blocks", "attn_resolutions"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise ValueError(f"`{name}` must be a sequence of ints, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if not isinstance(self.ch, int) or self.ch < 1:
            raise ValueError(f"`ch` must be a positive int, got {self.ch!r}")
        _positive_int_tuple("ch_mult", self.ch_mult)
        _positive_int_tuple("num_res_blocks", self.num_res_blocks)
        if len(self.num_res_blocks) != len(self.ch_mult):
            raise ValueError(
                f"`num_res_blocks` ({len(self.num_res_blocks)} levels) must have one entry per "
                f"`ch_mult` level ({len(self.ch_mult)})"
            )
        for mult in self.ch_mult:
            if (self.ch * mult) % NUM_GROUPS:
                raise ValueError(
                    f"`ch` * `ch_mult` = {self.ch} * {mult} must be divisible by {NUM_GROUPS} (GroupNorm groups)"
                )
        if any(not isinstance(r, int) or r < 1 for r in self.attn_resolutions):
            raise ValueError(f"`attn_resolutions` must hold positive ints, got {self.attn_resolutions!r}")
        if not isinstance(self.resolution, int) or self.resolution < 1:
            raise ValueError(f"`resolution` must be a positive int, got {self.resolution!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {self.dropout!r}")

    @property
    def num_levels(self) -> int:
        return len(self.ch_mult)


@dataclass(frozen=True)
class LFQConfig:
    """Look-up-free quantizer (MAGVIT-v2, arXiv 2310.05737 §3.1) as configured by `LFQuantizer`."""

    codebook_dim: int = 13
    """Bits per code = latent channels; the codebook has 2**codebook_dim entries (13 -> 8192)."""
    beta: float = 0.25
    """Weight of the second commitment term, mean((q - sg(z))**2)."""
    entropy_multiplier: float = 0.1
    """Scale of the entropy loss (per-sample entropy minus codebook entropy)."""
    commit_loss_multiplier: float = 0.1
    """Scale of the whole commitment loss."""

    def __post_init__(self) -> None:
        # 2**30 codes would already need an 8 GiB embedding buffer; int64 indices need < 63 bits.
        if not isinstance(self.codebook_dim, int) or not 1 <= self.codebook_dim <= 30:
            raise ValueError(f"`codebook_dim` must be an int in [1, 30], got {self.codebook_dim!r}")
        for name in ("beta", "entropy_multiplier", "commit_loss_multiplier"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"`{name}` must be a finite non-negative number, got {value!r}")

    @property
    def codebook_size(self) -> int:
        return 2**self.codebook_dim


@dataclass(frozen=True)
class MagvitConfig:
    """The whole MAGVIT-v2 tokenizer: encoder, LFQ, decoder.

    The latent has `quantizer.codebook_dim` channels (`z_channels` in the official code).
    """

    encoder: CoderConfig
    """Encoder stack (levels run from full resolution down)."""
    decoder: CoderConfig
    """Decoder stack (`ch_mult[i]` is the width at level i; levels run from the deepest up to 0)."""
    quantizer: LFQConfig = field(default_factory=LFQConfig)
    """Look-up-free quantizer settings."""
    image_size: int = 512
    """Default image side for this tokenizer (512 for MMaDA-8B; stage-1 training used 256)."""
    in_channels: int = 3
    """Channels of the input pixels."""
    out_channels: int = 3
    """Channels of the decoded pixels."""

    def __post_init__(self) -> None:
        if self.encoder.num_levels != self.decoder.num_levels:
            raise ValueError(
                f"`encoder.ch_mult` and `decoder.ch_mult` must have the same number of levels "
                f"(the down- and upsampling factors must agree), got {self.encoder.num_levels} "
                f"and {self.decoder.num_levels}"
            )
        for name in ("in_channels", "out_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be positive, got {getattr(self, name)!r}")
        if self.image_size < 1 or self.image_size % self.downsample_factor:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be a positive multiple of the downsampling "
                f"factor {self.downsample_factor}"
            )

    @property
    def z_channels(self) -> int:
        """Latent channels, equal to the number of LFQ bits."""
        return self.quantizer.codebook_dim

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent cell along each side (16 for the official model)."""
        return 2 ** (self.encoder.num_levels - 1)

    @classmethod
    def official(cls) -> MagvitConfig:
        """showlab/magvitv2 as loaded by MMaDA: f = 16, 13 bits, 8192 codes.

        Numbers: constructor defaults of `VQGANEncoder`, `VQGANDecoder`, `LFQuantizer`
        (Gen-Verse/MMaDA models/modeling_magvitv2.py).
        """
        return cls(
            encoder=CoderConfig(ch=128, ch_mult=(1, 2, 2, 4, 4), num_res_blocks=(4, 3, 4, 3, 4)),
            decoder=CoderConfig(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=(4, 4, 3, 4, 3)),
            quantizer=LFQConfig(codebook_dim=13),
        )

    @classmethod
    def from_arch_json(cls, arch: dict[str, Any]) -> MagvitConfig:
        """Build from the `tiny_arch.json` layout: {"encoder": {...}, "decoder": {...}, "quantizer": {...},
        "image_size": int}, each inner dict holding the official constructor arguments.

        Raises:
            ValueError: a section or key is missing, or a value is invalid (the message names it).
        """
        for section in ("encoder", "decoder", "quantizer"):
            if not isinstance(arch.get(section), dict):
                raise ValueError(f"architecture json needs a {section!r} object")
        quant = arch["quantizer"]
        try:
            quantizer = LFQConfig(
                codebook_dim=_require(quant, "codebook_dim", "quantizer"),
                beta=quant.get("beta", 0.25),
                entropy_multiplier=quant.get("entropy_multiplier", 0.1),
                commit_loss_multiplier=quant.get("commit_loss_multiplier", 0.1),
            )
        except TypeError as err:
            raise ValueError(f"architecture json: `quantizer` has a value of the wrong type: {err}") from err
        dim, entries = quantizer.codebook_dim, quant.get("num_codebook_entry", -1)
        # The official LFQuantizer ignores num_codebook_entry; accept only values that agree with it.
        if entries not in (-1, quantizer.codebook_size):
            raise ValueError(
                f"`quantizer.num_codebook_entry` ({entries}) must be -1 or 2**codebook_dim ({quantizer.codebook_size})"
            )
        coders = {}
        channels = {}
        for section in ("encoder", "decoder"):
            coders[section], channels[section] = _coder_from_json(arch[section], section, dim)
        if channels["encoder"] != channels["decoder"]:
            raise ValueError(f"`encoder` and `decoder` in/out channels disagree: {channels}")
        in_ch, out_ch = channels["encoder"]
        image_size = arch.get("image_size", coders["encoder"].resolution)
        return cls(coders["encoder"], coders["decoder"], quantizer, image_size, in_ch, out_ch)

    def to_arch_json(self) -> dict[str, Any]:
        """The inverse of `from_arch_json` (json-serialisable dict)."""
        return {
            "encoder": self._coder_json(self.encoder),
            "decoder": self._coder_json(self.decoder),
            "quantizer": {
                "num_codebook_entry": -1,
                "codebook_dim": self.quantizer.codebook_dim,
                "beta": self.quantizer.beta,
                "entropy_multiplier": self.quantizer.entropy_multiplier,
                "commit_loss_multiplier": self.quantizer.commit_loss_multiplier,
            },
            "image_size": self.image_size,
        }

    def _coder_json(self, coder: CoderConfig) -> dict[str, Any]:
        return {
            "ch": coder.ch,
            "ch_mult": list(coder.ch_mult),
            "num_res_blocks": list(coder.num_res_blocks),
            "attn_resolutions": list(coder.attn_resolutions),
            "dropout": coder.dropout,
            "in_ch": self.in_channels,
            "out_ch": self.out_channels,
            "resolution": coder.resolution,
            "z_channels": self.z_channels,
            "double_z": False,
        }


def _require(section: dict[str, Any], key: str, where: str) -> Any:
    if key not in section:
        raise ValueError(f"architecture json: `{where}.{key}` is missing")
    return section[key]


def _coder_from_json(section: dict[str, Any], where: str, codebook_dim: int) -> tuple[CoderConfig, tuple[int, int]]:
    """One `encoder`/`decoder` dict -> (CoderConfig, (in_ch, out_ch))."""
    z_channels = section.get("z_channels", codebook_dim)
    if z_channels != codebook_dim:
        raise ValueError(
            f"`{where}.z_channels` ({z_channels}) must equal `quantizer.codebook_dim` ({codebook_dim}): "
            "LFQ quantizes each latent channel to one bit"
        )
    if section.get("double_z", False):
        # double_z doubles conv_out, but the official quant_conv expects z_channels inputs: it cannot run.
        raise ValueError(f"`{where}.double_z` must be false (MAGVIT-v2 has no Gaussian posterior)")
    try:
        coder = CoderConfig(
            ch=_require(section, "ch", where),
            ch_mult=_require(section, "ch_mult", where),
            num_res_blocks=_require(section, "num_res_blocks", where),
            attn_resolutions=section.get("attn_resolutions", (5,)),
            resolution=section.get("resolution", 256),
            dropout=float(section.get("dropout", 0.0)),
        )
    except TypeError as err:
        raise ValueError(f"architecture json: `{where}` has a value of the wrong type: {err}") from err
    except ValueError as err:
        raise ValueError(f"architecture json `{where}`: {err}") from err
    return coder, (int(section.get("in_ch", 3)), int(section.get("out_ch", 3)))
