"""LoRA: adapters start as a no-op, only they train, merging is exact and saves a release checkpoint."""

from __future__ import annotations

import pytest
import torch

import mmada
from mmada.model.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    load_adapter,
    load_lora_state_dict,
    lora_state_dict,
    merge_lora,
    num_trainable_parameters,
    save_adapter,
)

CONFIG = LoRAConfig(rank=4, alpha=8.0)


def _model(seed: int = 0) -> mmada.MMaDAModel:
    torch.manual_seed(seed)
    model = mmada.MMaDAModel(mmada.ModelConfig.tiny())
    model.reset_parameters()
    return model.eval()


def _ids() -> torch.Tensor:
    return torch.randint(0, 80, (2, 12), generator=torch.Generator().manual_seed(1))


def _perturb_adapters(model: torch.nn.Module, seed: int = 2) -> None:
    """Random non-zero A and B (a fresh adapter has B = 0 and would make every check trivial)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def test_fresh_adapters_are_a_no_op_and_only_they_train():
    model, ids = _model(), _ids()
    before = model(ids)
    apply_lora(model, CONFIG)
    torch.testing.assert_close(model(ids), before, rtol=0, atol=0)  # B = 0
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.endswith((".lora_A", ".lora_B")) for name in trainable)
    # A (r, in) + B (out, r) for each of the 7 targets (in, out) of every block
    cfg, r = model.config, CONFIG.rank
    d, h, kv = cfg.d_model, cfg.hidden_size, cfg.kv_heads * cfg.head_dim
    shapes = [(d, d), (d, kv), (d, kv), (d, d), (d, h), (d, h), (h, d)]  # q k v out gate up down
    assert num_trainable_parameters(model) == cfg.n_layers * sum(r * (i + o) for i, o in shapes)
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 2 * 7


def test_training_step_updates_adapters_only():
    model = apply_lora(_model(), LoRAConfig(rank=4, alpha=8.0, dropout=0.1)).train()
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(_ids()).logsumexp(-1).mean().backward()
    optimizer.step()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in frozen.items())
    assert model.blocks[0].attn.q.lora_B.abs().sum() > 0  # B left zero


def test_merged_model_matches_the_lora_model_and_saves_as_a_release(tmp_path):
    model, ids = apply_lora(_model(), CONFIG), _ids()
    _perturb_adapters(model)
    with torch.no_grad():
        lora_logits = model(ids)
    base_logits = _model()(ids)
    assert (lora_logits - base_logits).abs().max() > 1e-2  # the adapters matter

    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert list(model.state_dict()) == list(_model().state_dict())  # the official names again
    with torch.no_grad():
        torch.testing.assert_close(model(ids), lora_logits, rtol=0, atol=1e-5)

    mmada.save_model(model, tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(mmada.load_model(tmp_path / "merged")(ids), lora_logits, rtol=0, atol=1e-5)


def test_bf16_base_keeps_fp32_adapters_and_merges_in_fp32():
    model = apply_lora(_model().to(torch.bfloat16), CONFIG)
    layer = model.blocks[0].mlp.up
    assert layer.weight.dtype == torch.bfloat16 and layer.lora_A.dtype == torch.float32
    _perturb_adapters(model)
    expected = (layer.weight.float() + layer.scaling * layer.lora_B @ layer.lora_A).to(torch.bfloat16)
    assert model(_ids()).dtype == torch.bfloat16
    merge_lora(model)
    assert torch.equal(model.blocks[0].mlp.up.weight, expected)


def test_adapter_checkpoint_round_trip(tmp_path):
    model, ids = apply_lora(_model(), LoRAConfig(rank=2, alpha=4.0, targets=("attn.q", "attn.v", "head"))), _ids()
    _perturb_adapters(model)
    path = save_adapter(model, LoRAConfig(rank=2, alpha=4.0, targets=("attn.q", "attn.v", "head")), tmp_path / "a.st")
    assert path.stat().st_size < 20_000  # adapters only, not the base weights

    base = _model()  # the same base weights, no adapters yet
    config = load_adapter(base, path)
    assert config == LoRAConfig(rank=2, alpha=4.0, targets=("attn.q", "attn.v", "head"))
    with torch.no_grad():
        torch.testing.assert_close(base(ids), model(ids), rtol=0, atol=0)

    state = lora_state_dict(model)
    other = apply_lora(_model(), config)
    load_lora_state_dict(other, state)
    assert all(torch.equal(lora_state_dict(other)[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="missing"):
        load_lora_state_dict(other, dict(list(state.items())[1:]))
    with pytest.raises(ValueError, match="no LoRA layer"):
        load_lora_state_dict(other, {**state, "blocks.0.mlp.up.lora_A": torch.zeros(2, 32)})
    with pytest.raises(ValueError, match="different LoRA rank"):
        load_lora_state_dict(apply_lora(_model(), LoRAConfig(rank=3, targets=config.targets)), state)


def test_bad_targets_and_configs_are_refused_by_name():
    with pytest.raises(ValueError, match=r"'attn\.q_proj'.*valid targets: attn\.k"):
        apply_lora(_model(), LoRAConfig(targets=("attn.q", "attn.q_proj")))
    with pytest.raises(ValueError, match="'attn' matches no nn.Linear"):  # a module, but not a linear one
        apply_lora(_model(), LoRAConfig(targets=("attn",)))
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(apply_lora(_model(), CONFIG), CONFIG)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        merge_lora(_model())
    for bad in ({"rank": 0}, {"alpha": 0.0}, {"dropout": 1.0}, {"targets": ()}, {"targets": "attn.q"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            LoRAConfig(**bad)
