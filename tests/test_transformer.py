"""The transformer against the official logits (mmada_a fixture) and against its own contracts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import mmada
from mmada.model import MMaDAModel, ModelConfig

ATOL = 2e-4  # fixture README "Tolerances": float32 spellings differ by up to ~1e-4


@pytest.fixture(scope="module")
def model(reference_dir):
    return mmada.load_model(reference_dir / "mmada_a")


@pytest.fixture(scope="module")
def forward_cases(reference_dir):
    return load_file(reference_dir / "mmada_a" / "expected_forward.safetensors")


@torch.no_grad()
def test_plain_forward_matches_official(model, forward_cases):
    logits = model(forward_cases["fwd_plain.input_ids"])
    assert logits.shape == (2, 45, 512) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, forward_cases["fwd_plain.logits"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_hidden_states_match_official(model, forward_cases):
    hidden = torch.stack(model.hidden_states(forward_cases["fwd_hidden.input_ids"]))
    torch.testing.assert_close(hidden, forward_cases["fwd_hidden.hidden_states"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_padding_mask_matches_official_boolean_bias_at_real_positions(model, forward_cases):
    mask = forward_cases["fwd_attention_bias.attention_mask"].bool()
    assert not mask.all(), "the fixture row should be padded"
    logits = model(forward_cases["fwd_attention_bias.input_ids"], mask)
    torch.testing.assert_close(logits[mask], forward_cases["fwd_attention_bias.logits"][mask], atol=ATOL, rtol=0)


@torch.no_grad()
def test_attention_mask_never_turns_causal(model, forward_cases):
    """The official `attention_mask=` argument silently makes attention causal; ours must not."""
    ids, mask = (
        forward_cases["fwd_attention_mask_arg.input_ids"],
        forward_cases["fwd_attention_mask_arg.attention_mask"],
    )
    ours = model(ids, mask)
    causal = forward_cases["fwd_attention_mask_arg.logits"]
    real = mask.bool()
    assert (ours[real] - causal[real]).abs().max() > 1.0
    torch.testing.assert_close(ours[real], forward_cases["fwd_attention_bias.logits"][real], atol=ATOL, rtol=0)


@torch.no_grad()
def test_bf16_forward_agrees_with_official_bf16(reference_dir, forward_cases):
    model = mmada.load_model(reference_dir / "mmada_a", dtype=torch.bfloat16)
    logits = model(forward_cases["fwd_plain_bf16.input_ids"])
    expected = forward_cases["fwd_plain_bf16.logits"]
    assert logits.dtype == torch.bfloat16
    assert (logits.argmax(-1) == expected.argmax(-1)).float().mean() > 0.99
    torch.testing.assert_close(logits.float(), expected.float(), atol=0.6, rtol=0)


@torch.no_grad()
def test_padded_row_equals_the_row_alone(model, forward_cases):
    """Left padding with a mask changes nothing at real positions once positions are re-based."""
    ids = forward_cases["fwd_plain.input_ids"][:1, :30]
    alone = model(ids)
    pad = torch.full((1, 7), 301)
    padded = torch.cat([pad, ids], dim=1)
    mask = torch.cat([torch.zeros(1, 7, dtype=torch.bool), torch.ones(1, 30, dtype=torch.bool)], dim=1)
    # RoPE is relative: shifting every real token by 7 positions leaves their attention unchanged.
    torch.testing.assert_close(model(padded, mask)[:, 7:], alone, atol=1e-4, rtol=0)


@torch.no_grad()
def test_logits_at_positions(model, forward_cases):
    ids = forward_cases["fwd_plain.input_ids"]
    full = model(ids)
    torch.testing.assert_close(model(ids, positions=slice(33, 45)), full[:, 33:45], atol=1e-5, rtol=0)
    chosen = ids == 315
    torch.testing.assert_close(model(ids, positions=chosen), full[chosen], atol=1e-5, rtol=0)
    index = torch.tensor([[0, 5, 44], [3, 3, 10]])
    torch.testing.assert_close(model(ids, positions=index), full.gather(1, index[..., None].expand(-1, -1, 512)))


def _naive_forward(model: MMaDAModel, ids: torch.Tensor) -> torch.Tensor:
    """Plain-matmul reference written from the equations (fixture README "Forward pass")."""
    cfg = model.config
    H, Hkv, D = cfg.n_heads, cfg.kv_heads, cfg.head_dim
    B, L = ids.shape

    def rms(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.rms_norm_eps) * w

    inv = cfg.rope_theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = torch.arange(L, dtype=torch.float64)[:, None] * inv
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    def rope(t):
        a, b = t[..., : D // 2], t[..., D // 2 :]
        return t * cos + torch.cat([-b, a], -1) * sin

    x = model.embed.weight.double()[ids]
    for blk in model.blocks:
        h = rms(x, blk.attn_norm.weight.double())
        q = (h @ blk.attn.q.weight.double().T).view(B, L, H, D).transpose(1, 2)
        k = (h @ blk.attn.k.weight.double().T).view(B, L, Hkv, D).transpose(1, 2)
        v = (h @ blk.attn.v.weight.double().T).view(B, L, Hkv, D).transpose(1, 2)
        k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
        att = torch.softmax(rope(q) @ rope(k).transpose(-1, -2) / math.sqrt(D), -1)
        x = x + ((att @ v).transpose(1, 2).reshape(B, L, H * D)) @ blk.attn.out.weight.double().T
        h = rms(x, blk.mlp_norm.weight.double())
        gate, up = h @ blk.mlp.gate.weight.double().T, h @ blk.mlp.up.weight.double().T
        x = x + (F.silu(gate) * up) @ blk.mlp.down.weight.double().T
    return rms(x, model.norm.weight.double()) @ model.head.weight.double().T


@torch.no_grad()
def test_grouped_query_attention_matches_naive_reference():
    torch.manual_seed(0)
    model = MMaDAModel(ModelConfig.tiny(n_heads=4, n_kv_heads=2))
    model.reset_parameters(std=0.3)
    ids = torch.randint(0, 80, (2, 11))
    torch.testing.assert_close(model(ids).double(), _naive_forward(model, ids), atol=1e-4, rtol=0)


def test_tied_head_uses_the_embedding():
    model = MMaDAModel(ModelConfig.tiny(weight_tying=True))
    assert model.head is None
    ids = torch.randint(0, 80, (1, 5))
    with torch.no_grad():
        h = model.hidden_states(ids)[-1]
        torch.testing.assert_close(model(ids), h @ model.embed.weight.T)


@pytest.mark.parametrize(
    ("ids", "mask", "message"),
    [
        (torch.tensor([[1, 2, 512]]), None, "token id 512"),
        (torch.tensor([[1, -1, 3]]), None, "token id -1"),
        (torch.tensor([1, 2, 3]), None, "(batch, length)"),
        (torch.tensor([[1.0, 2.0]]), None, "integer tensor"),
        (torch.tensor([[1, 2, 3]]), torch.ones(1, 4), "attention_mask shape"),
        (torch.tensor([[1, 2], [3, 4]]), torch.tensor([[1, 1], [0, 0]]), "row 1 has no real token"),
    ],
)
def test_bad_inputs_are_refused(model, ids, mask, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        model(ids, mask)
