"""Look-up-free quantizer: official parity (fixture `vq_quantize`), bit order, round trips, losses."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from mmada.image_tokenizer import (
    LFQConfig,
    LookupFreeQuantizer,
    bits_to_indices,
    codes_to_indices,
    indices_to_bits,
    indices_to_codes,
    lfq_commitment_loss,
    lfq_entropy_terms,
)


@pytest.fixture(scope="module")
def expected(reference_dir):
    return load_file(reference_dir / "magvitv2_tiny" / "expected_vq.safetensors")


@pytest.fixture(scope="module")
def tiny_lfq() -> LookupFreeQuantizer:
    # The tiny fixture quantizer: 7 bits, official multipliers (tiny_arch.json "quantizer").
    return LookupFreeQuantizer(LFQConfig(codebook_dim=7, beta=0.25, entropy_multiplier=0.1, commit_loss_multiplier=0.1))


def test_vq_quantize_matches_official(tiny_lfq, expected):
    out = tiny_lfq(expected["vq_quantize.hidden"])
    assert torch.equal(out.quantized, expected["vq_quantize.z"])
    assert torch.equal(out.indices.unsqueeze(1), expected["vq_quantize.indices"])
    torch.testing.assert_close(
        out.quantizer_loss.reshape(1), expected["vq_quantize.quantizer_loss"], rtol=1e-5, atol=1e-7
    )
    torch.testing.assert_close(out.entropy_loss.reshape(1), expected["vq_quantize.entropy_loss"], rtol=1e-5, atol=1e-7)
    # The named parts add up to the official scaled loss.
    torch.testing.assert_close(out.entropy_loss, (out.per_sample_entropy - out.codebook_entropy) * 0.1)


def test_get_codebook_entry_matches_official(tiny_lfq, expected):
    z_q = tiny_lfq.get_codebook_entry(expected["vq_get_codebook_entry.indices"])
    assert torch.equal(z_q, expected["vq_get_codebook_entry.z_q"])


def test_buffers_match_the_official_tables(reference_dir, tiny_lfq):
    weights = load_file(reference_dir / "magvitv2_tiny" / "pytorch_model.safetensors")
    assert torch.equal(tiny_lfq.embedding, weights["quantize.embedding"])
    assert torch.equal(tiny_lfq.power_vals, weights["quantize.power_vals"])


def test_bit_order_is_msb_first_channel_zero():
    # Index 1 sets only the last channel; 2**(C-1) sets only channel 0.
    assert indices_to_bits(torch.tensor(1), 4).tolist() == [False, False, False, True]
    assert indices_to_bits(torch.tensor(8), 4).tolist() == [True, False, False, False]
    assert indices_to_codes(torch.tensor(5), 4).tolist() == [-1.0, 1.0, -1.0, 1.0]
    assert bits_to_indices(torch.tensor([1, 0, 1, 1])).item() == 11


@settings(max_examples=60, deadline=None)
@given(
    dim=st.integers(min_value=1, max_value=16),
    data=st.data(),
)
def test_index_code_round_trip(dim, data):
    values = data.draw(st.lists(st.integers(0, 2**dim - 1), min_size=1, max_size=64))
    indices = torch.tensor(values, dtype=torch.long)
    codes = indices_to_codes(indices, dim)
    assert codes.shape == (len(values), dim)
    assert set(codes.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(codes_to_indices(codes), indices)
    assert torch.equal(bits_to_indices(indices_to_bits(indices, dim)), indices)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_quantizer_round_trip_through_grid(data):
    lfq = LookupFreeQuantizer(LFQConfig(codebook_dim=5))
    h, w = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    values = data.draw(st.lists(st.integers(0, 31), min_size=2 * h * w, max_size=2 * h * w))
    indices = torch.tensor(values).view(2, h * w)
    grid = lfq.get_codebook_entry(indices, shape=(h, w))  # (2, 5, h, w)
    assert torch.equal(lfq.get_indices(grid).flatten(1), indices)
    assert torch.equal(lfq.quantize(grid), grid)  # ±1 codes are fixed points


def test_embedding_rows_are_the_codes_of_their_index():
    lfq = LookupFreeQuantizer(LFQConfig(codebook_dim=6))
    assert torch.equal(lfq.embedding, indices_to_codes(torch.arange(64), 6))
    assert torch.equal(lfq.power_vals, torch.tensor([32, 16, 8, 4, 2, 1]))


def test_quantize_is_straight_through():
    lfq = LookupFreeQuantizer(LFQConfig(codebook_dim=3))
    z = torch.tensor([0.3, -0.2, 0.0, 2.0, -5.0, 1e-4]).view(1, 3, 1, 2).requires_grad_(True)
    q = lfq.quantize(z)
    # z = 0 maps to -1 (bit 0): the official test is z > 0.
    assert q.detach().view(-1).tolist() == [1.0, -1.0, -1.0, 1.0, -1.0, 1.0]
    (q * torch.arange(6.0).view(1, 3, 1, 2)).sum().backward()
    assert torch.equal(z.grad, torch.arange(6.0).view(1, 3, 1, 2))


def test_entropy_terms_limits():
    zeros = torch.zeros(10, 4)
    per_sample, codebook = lfq_entropy_terms(zeros)
    torch.testing.assert_close(per_sample, torch.tensor(math.log(2)))
    torch.testing.assert_close(codebook, torch.tensor(math.log(2)))
    # Confident and balanced: each cell is certain, the batch uses both signs equally.
    balanced = torch.tensor([[5.0, -5.0], [-5.0, 5.0]])
    per_sample, codebook = lfq_entropy_terms(balanced)
    assert per_sample < 1e-6
    torch.testing.assert_close(codebook, torch.tensor(math.log(2)))
    # Collapse: every cell on the same code; both entropies vanish (no NaN from 0 * log 0).
    per_sample, codebook = lfq_entropy_terms(torch.full((8, 3), 20.0))
    assert torch.isfinite(codebook) and codebook < 1e-6 and per_sample < 1e-6


def test_entropy_matches_two_way_softmax_definition():
    z = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    p_plus = torch.sigmoid(4 * z)  # softmax over (-(z-1)^2, -(z+1)^2)
    p = torch.stack([p_plus, 1 - p_plus], -1)
    per_sample = -(p * p.log()).sum(-1).mean()
    mean_p = p.mean(0)
    codebook = -(mean_p * mean_p.log()).sum(-1).mean()
    got = lfq_entropy_terms(z)
    torch.testing.assert_close(got[0], per_sample, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], codebook, rtol=1e-5, atol=1e-6)


def test_commitment_loss_value():
    z = torch.tensor([[0.5, -0.25]])
    q = torch.tensor([[1.0, -1.0]])
    expected = (1 + 0.25) * ((0.5**2 + 0.75**2) / 2)
    torch.testing.assert_close(lfq_commitment_loss(z, q, beta=0.25), torch.tensor(expected))


def test_get_codebook_entry_rejects_bad_codes():
    lfq = LookupFreeQuantizer(LFQConfig(codebook_dim=4))
    with pytest.raises(ValueError, match="16 is outside the codebook range"):
        lfq.get_codebook_entry(torch.tensor([[0, 16, 3, 2]]))
    with pytest.raises(ValueError, match="-1 is outside"):
        lfq.get_codebook_entry(torch.tensor([[0, -1, 3, 2]]))
    with pytest.raises(ValueError, match="integer"):
        lfq.get_codebook_entry(torch.tensor([[0.0, 1.0, 3.0, 2.0]]))
    with pytest.raises(ValueError, match="square"):
        lfq.get_codebook_entry(torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match="holds 6 cells"):
        lfq.get_codebook_entry(torch.tensor([[0, 1, 2, 3]]), shape=(2, 3))
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        lfq.get_codebook_entry(torch.tensor([0, 1, 2, 3]))


def test_latent_shape_is_checked():
    lfq = LookupFreeQuantizer(LFQConfig(codebook_dim=4))
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        lfq(torch.zeros(1, 3, 2, 2))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"codebook_dim": 0}, "codebook_dim"),
        ({"beta": -1.0}, "beta"),
        ({"entropy_multiplier": -0.1}, "entropy_multiplier"),
    ],
)
def test_lfq_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LFQConfig(**kwargs)
