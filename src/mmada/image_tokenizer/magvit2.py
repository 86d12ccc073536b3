"""MAGVIT-v2 image tokenizer (Show-o / MMaDA `showlab/magvitv2`): pixels <-> discrete codes.

A VQGAN-style convolutional encoder maps (B, 3, H, W) pixels in [-1, 1] to a (B, C, H/f, W/f) latent
(f = 2**(levels - 1) = 16 for the real model), the look-up-free quantizer turns each cell into one of
2**C codes, and the decoder maps ±1 code grids back to pixels. MMaDA's transformer sees the codes in
raster (row-major) order.

Submodule names reproduce the official state-dict keys exactly (`encoder.down.{i}.block.{j}.norm1`,
`decoder.up.{i}.upsample.conv`, `quantize.embedding`, ...), so official checkpoints load without a
key map. Architecture: Gen-Verse/MMaDA models/modeling_magvitv2.py and models/common_modules.py.
Simplification: no timestep embedding (`temb` is always None there) and no conv shortcut variant.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmada.image_tokenizer.config import NUM_GROUPS, CoderConfig, MagvitConfig
from mmada.image_tokenizer.lfq import LookupFreeQuantizer

# Official `Normalize`: GroupNorm(32 groups, eps 1e-6, affine) (Gen-Verse/MMaDA models/common_modules.py).
GROUP_NORM_EPS = 1e-6


def _swish(x: Tensor) -> Tensor:
    # Spelled x * sigmoid(x) like the official `nonlinearity`: the fused F.silu kernel rounds
    # differently and moves decoded pixels by ~6e-6, which would break bit-exact parity.
    return x * torch.sigmoid(x)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(NUM_GROUPS, channels, eps=GROUP_NORM_EPS, affine=True)


def _conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1)


class ResnetBlock(nn.Module):
    """norm1, swish, conv3x3, norm2, swish, dropout, conv3x3, plus a 1x1 `nin_shortcut` on the skip
    when the channel count changes."""

    def __init__(self, c_in: int, c_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _norm(c_in)
        self.conv1 = _conv3x3(c_in, c_out)
        self.norm2 = _norm(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv3x3(c_out, c_out)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, kernel_size=1) if c_in != c_out else None

    def forward(self, x: Tensor) -> Tensor:
        """(B, c_in, H, W) -> (B, c_out, H, W)."""
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions with 1x1-conv projections and a residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        normed = self.norm(x)
        q = self.q(normed).reshape(b, c, h * w).transpose(1, 2)  # (B, HW, C)
        k = self.k(normed).reshape(b, c, h * w)  # (B, C, HW)
        v = self.v(normed).reshape(b, c, h * w)  # (B, C, HW)
        # Scale after the product, as the official code does, so float32 results match it bit for bit.
        weights = F.softmax(torch.bmm(q, k) * (c**-0.5), dim=2)  # (B, HW_q, HW_k)
        out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Zero-pad right and bottom by 1, then a stride-2 3x3 conv: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        # Asymmetric padding: torch convs only pad symmetrically.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv3x3(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: `block` ResnetBlocks and, when attention is on, one `attn` after each."""

    def __init__(self, c_in: int, c_out: int, num_blocks: int, with_attn: bool, dropout: float) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(c_in if j == 0 else c_out, c_out, dropout) for j in range(num_blocks))
        self.attn = nn.ModuleList(AttnBlock(c_out) for _ in range(num_blocks)) if with_attn else nn.ModuleList()

    def run_blocks(self, h: Tensor) -> Tensor:
        for j, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[j](h)
        return h


class _DownLevel(_Level):
    """Encoder level; `downsample` is None on the last (deepest) level, which has no key for it."""

    def __init__(self, c_in: int, c_out: int, num_blocks: int, with_attn: bool, dropout: float, last: bool) -> None:
        super().__init__(c_in, c_out, num_blocks, with_attn, dropout)
        self.downsample = None if last else Downsample(c_out)


class _UpLevel(_Level):
    """Decoder level; `upsample` is None on level 0 (full resolution)."""

    def __init__(self, c_in: int, c_out: int, num_blocks: int, with_attn: bool, dropout: float, first: bool) -> None:
        super().__init__(c_in, c_out, num_blocks, with_attn, dropout)
        self.upsample = None if first else Upsample(c_out)


class _Mid(nn.Module):
    """block_1, attn_1, block_2 at the lowest resolution."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """(B, in_ch, H, W) pixels -> (B, z_channels, H/f, W/f) pre-quantizer latent (incl. `quant_conv`)."""

    def __init__(self, cfg: CoderConfig, in_channels: int, z_channels: int) -> None:
        super().__init__()
        self.conv_in = _conv3x3(in_channels, cfg.ch)
        self.down = nn.ModuleList()
        c_in, res = cfg.ch, cfg.resolution
        for i, (mult, blocks) in enumerate(zip(cfg.ch_mult, cfg.num_res_blocks)):
            # The official code tests `curr_res in attn_resolutions` once per block; it is constant per level.
            last = i == cfg.num_levels - 1
            self.down.append(_DownLevel(c_in, cfg.ch * mult, blocks, res in cfg.attn_resolutions, cfg.dropout, last))
            c_in = cfg.ch * mult
            res = res if last else res // 2
        self.mid = _Mid(c_in, cfg.dropout)
        self.norm_out = _norm(c_in)
        self.conv_out = _conv3x3(c_in, z_channels)
        self.quant_conv = nn.Conv2d(z_channels, z_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in cast(Iterable[_DownLevel], self.down):  # a ModuleList is untyped
            h = level.run_blocks(h)
            if level.downsample is not None:
                h = level.downsample(h)
        h = self.mid(h)
        h = self.conv_out(_swish(self.norm_out(h)))
        return self.quant_conv(h)


class Decoder(nn.Module):
    """(B, z_channels, h, w) codes -> (B, out_ch, h*f, w*f) pixels (not clamped)."""

    def __init__(self, cfg: CoderConfig, out_channels: int, z_channels: int) -> None:
        super().__init__()
        c_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (cfg.num_levels - 1)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, kernel_size=1)
        self.conv_in = _conv3x3(z_channels, c_in)
        self.mid = _Mid(c_in, cfg.dropout)
        levels: list[_UpLevel] = []
        # Built deepest first (channel flow), stored shallowest first so `up.{i}` is level i as officially.
        for i in reversed(range(cfg.num_levels)):
            c_out = cfg.ch * cfg.ch_mult[i]
            attn = res in cfg.attn_resolutions
            levels.insert(0, _UpLevel(c_in, c_out, cfg.num_res_blocks[i], attn, cfg.dropout, first=i == 0))
            c_in = c_out
            res = res if i == 0 else res * 2
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(c_in)
        self.conv_out = _conv3x3(c_in, out_channels)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(self.post_quant_conv(z)))
        for level in reversed(cast(Sequence[_UpLevel], self.up)):  # a ModuleList is untyped
            h = level.run_blocks(h)
            if level.upsample is not None:
                h = level.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


@dataclass(frozen=True)
class EncodedImage:
    """Named result of `MagvitV2.encode_with_quantized`."""

    codes: Tensor
    """(B, h*w) int64 codes in raster order."""
    quantized: Tensor
    """(B, C, h, w) ±1 code grid (what `decode` feeds the decoder)."""
    grid: tuple[int, int]
    """(h, w) latent grid; pass it as `shape` to `decode` for non-square images."""


class MagvitV2(nn.Module):
    """MAGVIT-v2 tokenizer: `encode` pixels to codes, `decode` codes to pixels.

    Submodules `encoder`, `decoder`, `quantize` carry the official checkpoint names.
    """

    def __init__(self, config: MagvitConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.encoder, config.in_channels, config.z_channels)
        self.decoder = Decoder(config.decoder, config.out_channels, config.z_channels)
        self.quantize = LookupFreeQuantizer(config.quantizer)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    def num_tokens(self, resolution: int | tuple[int, int] | None = None) -> int:
        """Codes per image of side `resolution` (or (H, W)); None uses `config.image_size`.

        512 -> 1024 and 256 -> 256 for the official model.
        """
        return grid_tokens(self.config.image_size if resolution is None else resolution, self.downsample_factor)

    @torch.no_grad()
    def encode(self, pixels: Tensor) -> Tensor:
        """(B, 3, H, W) float pixels in [-1, 1] -> (B, H/f * W/f) int64 codes, raster order.

        Pixels are moved to the tokenizer's device and dtype.
        """
        return self.encode_with_quantized(pixels).codes

    @torch.no_grad()
    def encode_with_quantized(self, pixels: Tensor) -> EncodedImage:
        """Like `encode`, also returning the (B, C, h, w) ±1 grid and its (h, w) shape."""
        latent = self.encoder(self._prepare_pixels(pixels))  # (B, C, h, w)
        quantized = self.quantize.quantize(latent)
        codes = self.quantize.get_indices(quantized)  # (B, h, w)
        return EncodedImage(codes=codes.flatten(1), quantized=quantized, grid=(codes.shape[1], codes.shape[2]))

    @torch.no_grad()
    def decode(self, codes: Tensor, shape: tuple[int, int] | None = None) -> Tensor:
        """(B, N) int64 codes in raster order -> (B, 3, h*f, w*f) pixels, roughly in [-1, 1] (not clamped).

        Args:
            codes: (B, N) integer codes; every value must be in [0, codebook_size).
            shape: (h, w) latent grid; None means square, h = w = sqrt(N).

        Raises:
            ValueError: a code out of range (the message names it) or a grid that does not fit N.
        """
        param = self.decoder.conv_in.weight
        z_q = self.quantize.get_codebook_entry(codes.to(param.device), shape=shape)
        return self.decode_quantized(z_q.to(param.dtype))

    def decode_quantized(self, quantized: Tensor) -> Tensor:
        """(B, C, h, w) code grid -> (B, 3, h*f, w*f) pixels (keeps autograd, for training use)."""
        if quantized.dim() != 4 or quantized.shape[1] != self.config.z_channels:
            raise ValueError(
                f"`quantized` must be (B, {self.config.z_channels}, h, w), got shape {tuple(quantized.shape)}"
            )
        return self.decoder(quantized)

    def _prepare_pixels(self, pixels: Tensor) -> Tensor:
        if not isinstance(pixels, Tensor) or pixels.dim() != 4:
            shape = tuple(pixels.shape) if isinstance(pixels, Tensor) else type(pixels).__name__
            raise ValueError(f"`pixels` must be a (B, C, H, W) tensor, got {shape}")
        if pixels.shape[1] != self.config.in_channels:
            raise ValueError(
                f"`pixels` must have {self.config.in_channels} channels (RGB), got {pixels.shape[1]} "
                f"(shape {tuple(pixels.shape)}); convert grayscale/RGBA images with mmada.image_tokenizer.load_image"
            )
        if not pixels.dtype.is_floating_point:
            raise ValueError(f"`pixels` must be floating point in [-1, 1], got dtype {pixels.dtype}")
        self._check_spatial(pixels.shape[2], pixels.shape[3])
        param = self.encoder.conv_in.weight
        return pixels.to(device=param.device, dtype=param.dtype)

    def _check_spatial(self, h: int, w: int) -> None:
        check_spatial(h, w, self.downsample_factor)


def check_spatial(h: int, w: int, factor: int) -> None:
    """Refuse image sides that the tokenizer's downsampling `factor` does not divide."""
    if h < factor or w < factor or h % factor or w % factor:
        raise ValueError(f"image height and width ({h}x{w}) must be positive multiples of {factor}")


def grid_tokens(size: int | tuple[int, int], factor: int) -> int:
    """Codes per image of side `size` (or (H, W)) for a tokenizer that downsamples by `factor`."""
    h, w = (size, size) if isinstance(size, int) else size
    check_spatial(h, w, factor)
    return (h // factor) * (w // factor)
