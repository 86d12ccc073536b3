"""Look-up-free quantization (LFQ), MAGVIT-v2 (arXiv 2310.05737 §3.1), as used by MMaDA's tokenizer.

Each latent channel is quantized independently to one bit: q_c = +1 if z_c > 0 else -1, so a
C-channel latent cell is one of 2**C codes and no codebook search is needed. The integer index of a
code reads its bits MSB-first: channel 0 is the most significant bit,

    index = sum_c [z_c > 0] * 2**(C - 1 - c),

and the "codebook" is the table of all ±1 vectors in that order (row k = bits of k mapped to ±1).
Both tables are kept as buffers named like the official `LFQuantizer` (`embedding`, `power_vals`) so
checkpoints load unchanged.

Training losses follow the official code (Gen-Verse/MMaDA models/modeling_magvitv2.py
`LFQuantizer.forward`), which simplifies the paper's entropy term: see `lfq_entropy_terms`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmada.image_tokenizer.config import LFQConfig


@dataclass(frozen=True)
class LFQOutput:
    """Named result of `LookupFreeQuantizer.forward`."""

    quantized: Tensor
    """(B, C, H, W) straight-through codes: value ±1, gradient of identity w.r.t. the input."""
    indices: Tensor
    """(B, H, W) int64 code index per latent cell (the official code returns (B, 1, H, W))."""
    quantizer_loss: Tensor
    """() commitment loss, already scaled by `commit_loss_multiplier`."""
    entropy_loss: Tensor
    """() (per-sample entropy - codebook entropy), already scaled by `entropy_multiplier`."""
    per_sample_entropy: Tensor
    """() unscaled mean per-bit entropy of each cell's soft assignment (minimised)."""
    codebook_entropy: Tensor
    """() unscaled mean per-bit entropy of the batch-averaged assignment (maximised)."""


def bit_weights(codebook_dim: int, device: torch.device | None = None) -> Tensor:
    """(C,) int64 place values 2**(C-1), ..., 2, 1: channel 0 is the most significant bit."""
    return 2 ** torch.arange(codebook_dim - 1, -1, -1, dtype=torch.long, device=device)


def bits_to_indices(bits: Tensor) -> Tensor:
    """(..., C) bool/int bits, MSB first -> (...) int64 indices."""
    weights = bit_weights(bits.shape[-1], bits.device)
    return (bits.long() * weights).sum(-1)


def indices_to_bits(indices: Tensor, codebook_dim: int) -> Tensor:
    """(...) int64 indices -> (..., C) bool bits, MSB first."""
    shifts = torch.arange(codebook_dim - 1, -1, -1, dtype=torch.long, device=indices.device)
    return ((indices.long().unsqueeze(-1) >> shifts) & 1).bool()


def indices_to_codes(indices: Tensor, codebook_dim: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(...) int64 indices -> (..., C) ±1 code vectors."""
    return indices_to_bits(indices, codebook_dim).to(dtype) * 2 - 1


def codes_to_indices(codes: Tensor) -> Tensor:
    """(..., C) real vectors -> (...) int64 index of their sign pattern (z > 0 is bit 1, z <= 0 is bit 0)."""
    return bits_to_indices(codes > 0)


def check_indices(indices: Tensor, codebook_size: int) -> None:
    """Raise ValueError unless `indices` is an integer tensor with every value in [0, codebook_size)."""
    if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
        raise ValueError(f"image codes must be an integer tensor, got dtype {indices.dtype}")
    if indices.numel() == 0:
        return
    low, high = int(indices.min()), int(indices.max())
    if low < 0 or high >= codebook_size:
        bad = low if low < 0 else high
        raise ValueError(f"image code {bad} is outside the codebook range [0, {codebook_size})")


def lfq_entropy_terms(z_flat: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample and codebook entropy of the soft bit assignments, as the official LFQuantizer.

    Each bit gets a 2-way softmax over logits (-(z - 1)**2, -(z + 1)**2), i.e. the negative squared
    distance to the codes +1 and -1 (equivalently p(+1) = sigmoid(4 z)).

    Official simplification of MAGVIT-v2's E[H(q(z))] - H(E[q(z)]) over 2**C codes: both entropies
    are of the per-bit (factorised) distributions and are *averaged* over the C bits, and the
    codebook term uses each bit's batch-marginal, not the joint code distribution.

    Args:
        z_flat: (N, C) latents, one row per latent cell.

    Returns:
        (per_sample_entropy, codebook_entropy), both () in nats per bit.
    """
    logits = torch.stack([-(z_flat - 1).pow(2), -(z_flat + 1).pow(2)], dim=-1)  # (N, C, 2)
    log_probs = logits - logits.logsumexp(dim=-1, keepdim=True)
    probs = F.softmax(logits, dim=-1)
    per_sample = -(probs * log_probs).sum(-1).mean()
    mean_probs = probs.mean(0)  # (C, 2)
    mean_probs = mean_probs / mean_probs.sum(-1, keepdim=True)
    # xlogy gives 0 * log 0 = 0 for a bit that never fires, where the plain product would be NaN.
    codebook = -torch.special.xlogy(mean_probs, mean_probs).sum(-1).mean()
    return per_sample, codebook


def lfq_commitment_loss(z_flat: Tensor, quantized_st: Tensor, beta: float) -> Tensor:
    """Official LFQ commitment loss: mean((sg(q) - z)**2) + beta * mean((q_st - sg(z))**2).

    `quantized_st` must be the straight-through tensor z + sg(q - z): the official code feeds it to
    the beta term, whose gradient then reaches the encoder through the identity path and partly
    cancels the first term (net encoder gradient 2 (1 - beta) (z - q) / n). Kept for parity.

    Args:
        z_flat: (N, C) latents.
        quantized_st: (N, C) straight-through codes.
        beta: weight of the second term.

    Returns:
        () unscaled commitment loss.
    """
    return torch.mean((quantized_st.detach() - z_flat) ** 2) + beta * torch.mean((quantized_st - z_flat.detach()) ** 2)


class LookupFreeQuantizer(nn.Module):
    """Sign quantizer over C channels with 2**C implicit codes (MSB-first bit order).

    Buffers (names as in the official checkpoint):
        embedding: (2**C, C) float, row k = bits of k as ±1.
        power_vals: (C,) int64 place values, MSB first.
    """

    embedding: Tensor  # the buffers, declared for the type checker
    power_vals: Tensor

    def __init__(self, config: LFQConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else LFQConfig()
        dim = self.config.codebook_dim
        self.register_buffer("embedding", indices_to_codes(torch.arange(2**dim), dim))
        self.register_buffer("power_vals", bit_weights(dim))

    @property
    def codebook_dim(self) -> int:
        return self.config.codebook_dim

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def get_indices(self, z: Tensor) -> Tensor:
        """(B, C, H, W) latents or codes -> (B, H, W) int64 indices (row-major cells)."""
        self._check_latent(z)
        return ((z > 0).long() * self.power_vals.view(1, -1, 1, 1)).sum(1)

    def quantize(self, z: Tensor) -> Tensor:
        """(B, C, H, W) latents -> (B, C, H, W) straight-through ±1 codes, without the losses.

        Computed as z + sg(q - z) like the official code; in floating point this can be 1 ulp
        away from ±1 for some z, and keeping the same expression keeps outputs bit-identical.
        """
        self._check_latent(z)
        hard = torch.where(z > 0, 1.0, -1.0).to(z.dtype)
        return z + (hard - z).detach()

    def forward(self, z: Tensor) -> LFQOutput:
        """Quantize and compute the MAGVIT-v2 auxiliary losses.

        Args:
            z: (B, C, H, W) encoder output (after `quant_conv`).

        Returns:
            LFQOutput with (B, C, H, W) codes, (B, H, W) indices and scalar losses.
        """
        z_q = self.quantize(z)
        # (B*H*W, C): one row per latent cell, the layout the official losses average over.
        z_flat = z.permute(0, 2, 3, 1).reshape(-1, self.codebook_dim)
        z_q_flat = z_q.permute(0, 2, 3, 1).reshape(-1, self.codebook_dim)
        per_sample, codebook = lfq_entropy_terms(z_flat)
        commit = lfq_commitment_loss(z_flat, z_q_flat, self.config.beta)
        return LFQOutput(
            quantized=z_q,
            indices=self.get_indices(z_q),
            quantizer_loss=commit * self.config.commit_loss_multiplier,
            entropy_loss=(per_sample - codebook) * self.config.entropy_multiplier,
            per_sample_entropy=per_sample,
            codebook_entropy=codebook,
        )

    def get_codebook_entry(self, indices: Tensor, shape: tuple[int, int] | None = None) -> Tensor:
        """Look codes up and lay them out as a latent grid.

        Args:
            indices: (B, N) int64 codes in raster order.
            shape: (h, w) of the grid; None means square, h = w = sqrt(N).

        Returns:
            (B, C, h, w) ±1 codes in the dtype of the `embedding` buffer.

        Raises:
            ValueError: indices not 2-D or not integer, a code outside [0, codebook_size), or a grid
                that does not hold exactly N cells.
        """
        if indices.dim() != 2:
            raise ValueError(f"`indices` must be (B, N), got shape {tuple(indices.shape)}")
        check_indices(indices, self.codebook_size)
        batch, n = indices.shape
        h, w = grid_shape(n, shape)
        z_q = F.embedding(indices, self.embedding)  # (B, N, C)
        return z_q.view(batch, h, w, self.codebook_dim).permute(0, 3, 1, 2).contiguous()

    def _check_latent(self, z: Tensor) -> None:
        if z.dim() != 4 or z.shape[1] != self.codebook_dim:
            raise ValueError(f"latent must be (B, {self.codebook_dim}, H, W), got shape {tuple(z.shape)}")


def grid_shape(num_tokens: int, shape: tuple[int, int] | None) -> tuple[int, int]:
    """Resolve the (h, w) latent grid for `num_tokens` codes; None means a square grid."""
    if shape is None:
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(f"{num_tokens} codes do not form a square grid; pass `shape=(h, w)`")
        return side, side
    if len(shape) != 2 or any(int(s) < 1 for s in shape):
        raise ValueError(f"`shape` must be (h, w) with positive sides, got {shape!r}")
    h, w = int(shape[0]), int(shape[1])
    if h * w != num_tokens:
        raise ValueError(f"`shape` {shape!r} holds {h * w} cells but {num_tokens} codes were given")
    return h, w
