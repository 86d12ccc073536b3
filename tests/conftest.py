"""Shared test fixtures: where the official reference fixtures live, and the deterministic mock denoiser
with its small vocabulary (import them with `from conftest import ...`; tests/ is on sys.path)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmada.prompting import LayoutSpans, Span, TokenLayout, Vocab

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE = SHARED / "fixtures" / "mmada_reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.fail(f"reference fixtures not found at {REFERENCE}")
    return REFERENCE


# ---- the mock denoiser and its vocabulary ------------------------------------------------------------

MASK = 39
VOCAB = 40


class MockDenoiser:
    """Deterministic denoiser: logits = sum of the visible tokens' rows + a relative-position row
    + the own token's row.

    Like a RoPE model with a key padding mask, the logits depend only on the visible tokens and on
    positions counted from the first visible one, so a left-padded row gets exactly the logits it
    gets alone. Table entries are multiples of 1/64, so float64 sums are exact in any order.
    Records every call (ids, mask, positions).
    """

    def __init__(self, vocab: int = VOCAB, mask_id: int = MASK, *, seed: int = 0, max_len: int = 256,
                 predict_mask: bool = False, sharpness: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.token = torch.randint(-64, 65, (vocab, vocab), generator=g).double() * sharpness / 64
        self.position = torch.randint(-256, 257, (max_len, vocab), generator=g).double() * sharpness / 64
        if not predict_mask:
            self.position[:, mask_id] = -1e4
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None, object]] = []

    def __call__(self, input_ids, attention_mask=None, *, positions=None):
        self.calls.append((input_ids.clone(), attention_mask, positions))
        visible = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        rows = self.token[input_ids]  # (B, L, V)
        context = (rows * visible[..., None]).sum(dim=1, keepdim=True)  # (B, 1, V)
        first = visible.long().argmax(dim=1, keepdim=True)  # (B, 1)
        relative = (torch.arange(input_ids.shape[1]) - first).clamp(min=0)  # (B, L)
        logits = context + self.position[relative] + rows  # (B, L, V)
        if positions is None:
            return logits
        return logits[:, positions] if isinstance(positions, slice) else logits[positions]


PAD, T2I, BOS, EOS, SOI, EOI = 18, 19, 0, 1, 20, 21
OFFSET, K = 22, 16  # image tokens 22..37
MOCK_VOCAB = Vocab(
    mask_id=MASK, bos_id=BOS, eos_id=EOS, pad_id=EOS, eot_id=2, start_header_id=3, end_header_id=4, soi_id=SOI,
    eoi_id=EOI, sov_id=10, eov_id=11, t2i_id=T2I, mmu_id=12, t2v_id=13, v2v_id=14, lvg_id=15, ipad_id=PAD, r2i_id=16,
    text_vocab_size=OFFSET, image_offset=OFFSET, codebook_size=K, vocab_size=VOCAB,
)
"""The ids the mock t2i rows use; the other special ids are unused small numbers."""


def t2i_layout(input_ids: torch.Tensor, attention_mask: torch.Tensor, num_image_tokens: int) -> TokenLayout:
    """A t2i generation `TokenLayout` around raw rows `... <|soi|> img_1..img_N <|eoi|>` (fixtures, mock rows)."""
    batch, length = input_ids.shape
    image = Span.fixed(length - num_image_tokens - 1, length - 1, batch)
    text = Span.fixed(0, length - num_image_tokens - 2, batch)
    end = Span.fixed(length, length, batch)
    return TokenLayout("t2i_gen", input_ids.long(), attention_mask.bool(), ~image.mask(length), LayoutSpans(
        text, text, end, image))
