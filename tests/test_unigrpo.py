"""UniGRPO's pure pieces (MMaDA §2.3, Algorithm 1) on hand-computed values."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from mmada.model import MMaDAModel, ModelConfig
from mmada.rl import objective
from mmada.rl.objective import (
    UniGRPOConfig,
    fully_masked_noise,
    group_advantages,
    k3_kl,
    keep_groups,
    mask_ratios,
    masked_token_logprobs,
    sequence_mean,
    structured_noise,
    timesteps,
    uniform_timesteps,
    unigrpo_loss,
)

MASK_ID = 63


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- timesteps -----------------------------------------------------------------------------------------
def test_uniform_timesteps_by_hand():
    # t_n = floor((n-1)/(mu-1) * (T - t1) + t1): (n-1) * 900 / 4 = 0, 225, 450, 675, 900.
    assert uniform_timesteps(100, 5, 1000) == [100, 325, 550, 775, 1000]
    # floors: (n-1) * 997 / 2 = 0, 498.5, 997 -> 3, 501, 1000.
    assert uniform_timesteps(3, 3, 1000) == [3, 501, 1000]
    assert uniform_timesteps(7, 1, 1000) == [7]


def test_timesteps_uniform_uses_a_drawn_start(monkeypatch):
    monkeypatch.setattr(objective, "_draw_timestep", lambda total, generator: 100)
    assert timesteps(5, total=1000, kind="uniform") == [100, 325, 550, 775, 1000]


def test_timesteps_seeded_start_is_floor_r_T():
    r = float(torch.rand((), generator=_gen(3), dtype=torch.float64))
    steps = timesteps(4, total=1000, kind="uniform", generator=_gen(3))
    assert steps == uniform_timesteps(math.floor(r * 1000), 4, 1000)
    assert steps == timesteps(4, total=1000, kind="uniform", generator=_gen(3))  # deterministic


def test_random_timesteps_differ_from_the_uniform_schedule():
    uniform = timesteps(6, kind="uniform", generator=_gen(1))
    random = timesteps(6, kind="random", generator=_gen(1))
    assert len(random) == 6 and all(0 <= t < 1000 for t in random)
    assert uniform == sorted(uniform) and uniform[-1] == 1000
    assert random != uniform


def test_timesteps_refuse_bad_kind_and_mu():
    with pytest.raises(ValueError, match="kind"):
        timesteps(3, kind="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mu"):
        uniform_timesteps(0, 0, 1000)


def test_mask_ratios_clamp_into_1_over_T_and_1():
    assert mask_ratios([0, 250, 1000], total=1000) == [0.001, 0.25, 1.0]


# ---- structured noise ------------------------------------------------------------------------------------
def _batch(B: int = 4, P: int = 3, R: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(B * (P + R)).view(B, P + R) % 50
    response = torch.zeros(B, P + R, dtype=torch.bool)
    response[:, P:] = True
    return ids, response


def test_structured_noise_never_masks_the_prompt_and_masks_each_row():
    ids, response = _batch()
    ratio = torch.tensor([0.0, 0.001, 0.5, 1.0])
    for seed in range(20):
        out = structured_noise(ids, response, ratio, mask_id=MASK_ID, generator=_gen(seed))
        assert not out.is_masked[~response].any()
        assert torch.equal(out.noisy[~response], ids[~response])
        assert out.is_masked.sum(dim=1).min() >= 1  # even the ratio-0 row
        assert torch.equal(out.noisy[out.is_masked], torch.full((int(out.is_masked.sum()),), MASK_ID))
        assert torch.equal(out.noisy[response & ~out.is_masked], ids[response & ~out.is_masked])
        assert out.is_masked[3, 3:].all()  # ratio 1 masks the whole response
    assert torch.equal(out.p_mask, ratio[:, None])


def test_structured_noise_rescue_masks_the_smallest_draw():
    ids, response = _batch(B=1)
    out = structured_noise(ids, response, torch.tensor([0.0]), mask_id=MASK_ID, generator=_gen(5))
    u = torch.rand(ids.shape, generator=_gen(5))
    expected = int(u.masked_fill(~response, 2.0).argmin())
    assert out.is_masked.nonzero()[:, 1].tolist() == [expected]


def test_structured_noise_rate_matches_ratio():
    B, R = 2000, 20
    ids = torch.zeros(B, R + 2, dtype=torch.long)
    response = torch.ones(B, R + 2, dtype=torch.bool)
    response[:, :2] = False
    out = structured_noise(ids, response, torch.full((B,), 0.3), mask_id=MASK_ID, generator=_gen(0))
    rate = out.is_masked[:, 2:].float().mean().item()
    assert abs(rate - 0.3) < 0.01  # std of the mean ~ sqrt(.21 / 40000) = 0.0023


def test_structured_noise_refuses_bad_ratio():
    ids, response = _batch(B=2)
    with pytest.raises(ValueError, match="ratio"):
        structured_noise(ids, response, torch.tensor([0.5, 1.5]), mask_id=MASK_ID)
    with pytest.raises(ValueError, match="ratio"):
        structured_noise(ids, response, torch.tensor([0.5]), mask_id=MASK_ID)


def test_fully_masked_noise_masks_every_response_token():
    ids, response = _batch()
    out = fully_masked_noise(ids, response, mask_id=MASK_ID)
    assert torch.equal(out.is_masked, response)
    assert (out.noisy[response] == MASK_ID).all() and torch.equal(out.noisy[~response], ids[~response])


# ---- log-likelihoods -------------------------------------------------------------------------------------
def test_masked_token_logprobs_match_the_full_forward():
    torch.manual_seed(0)
    model = MMaDAModel(ModelConfig.tiny()).eval()
    ids, response = _batch(B=3, P=4, R=6)
    noised = structured_noise(ids, response, torch.tensor([0.3, 0.6, 0.9]), mask_id=MASK_ID, generator=_gen(2))
    got = masked_token_logprobs(model, noised.noisy, noised.is_masked, ids)
    full = torch.log_softmax(model(noised.noisy).float(), dim=-1)  # (B, L, V)
    b, pos = noised.is_masked.nonzero(as_tuple=True)
    expected = full[b, pos, ids[b, pos]]
    assert got.dtype == torch.float32 and got.shape == (int(noised.is_masked.sum()),)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_sequence_mean_by_hand():
    masked = torch.tensor([[False, True, True, False], [True, False, False, False], [False, True, True, True]])
    values = torch.tensor([1.0, 3.0, 5.0, 2.0, 4.0, 6.0])  # rows: [1, 3], [5], [2, 4, 6]
    torch.testing.assert_close(sequence_mean(values, masked), torch.tensor([2.0, 5.0, 4.0]))


def test_sequence_mean_refuses_an_empty_row():
    masked = torch.tensor([[True, False], [False, False]])
    with pytest.raises(ValueError, match="row 1"):
        sequence_mean(torch.tensor([1.0]), masked)


# ---- advantages ------------------------------------------------------------------------------------------
def test_group_advantages_by_hand():
    rewards = torch.tensor([2.0, 0.0, 0.0, 2.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, 4)
    assert adv.tolist() == [1.0, -1.0, -1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    # [0, 0, 0, 2.5]: mean 0.625, population std sqrt(3 * 0.625^2 + 1.875^2) / 2 = 1.0825...
    std = math.sqrt((3 * 0.625**2 + 1.875**2) / 4)
    expected = [-0.625 / std] * 3 + [1.875 / std]
    torch.testing.assert_close(group_advantages(torch.tensor([0.0, 0.0, 0.0, 2.5]), 4), torch.tensor(expected))


def test_group_advantages_refuse_ragged_groups():
    with pytest.raises(ValueError, match="divisible"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(6), 1)


def test_keep_groups_drops_zero_variance_and_off_band_accuracy():
    rewards = torch.tensor([2.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 0.0, 0.0])
    assert keep_groups(rewards, None, 4).tolist() == [True] * 4 + [False] * 4 + [True] * 4
    correct = rewards / 2  # accuracies 0.25, 0.5, 0.5
    keep = keep_groups(rewards, correct, 4, min_accuracy=0.3, max_accuracy=0.8)
    assert keep.tolist() == [False] * 8 + [True] * 4
    keep = keep_groups(rewards, correct, 4, min_accuracy=0.2, max_accuracy=0.4)
    assert keep.tolist() == [True] * 4 + [False] * 8


# ---- the loss --------------------------------------------------------------------------------------------
def test_k3_is_zero_at_equality_and_by_hand():
    logp = torch.tensor([-1.0, -2.5, -0.1])
    assert torch.equal(k3_kl(logp, logp), torch.zeros(3))
    # d = ref - logp = log 2: e^d - d - 1 = 2 - log 2 - 1 = 1 - log 2.
    value = k3_kl(torch.tensor([0.0]), torch.tensor([math.log(2.0)]))
    torch.testing.assert_close(value, torch.tensor([1 - math.log(2.0)]))
    assert (k3_kl(torch.randn(100, generator=_gen(0)), torch.randn(100, generator=_gen(1))) >= 0).all()


MASKED = torch.tensor([[True, True, False], [False, True, False], [True, True, True]])  # |M| = 2, 1, 3


def test_loss_on_policy_is_minus_mean_advantage():
    logp = torch.tensor([-1.0, -2.0, -0.5, -3.0, -0.2, -1.5])
    adv = torch.tensor([1.0, -2.0, 4.0])
    out = unigrpo_loss(logp.clone().requires_grad_(), logp, adv, MASKED, clip_eps=0.2, beta=0.5)
    assert out.stats == {"ratio_mean": 1.0, "clip_fraction": 0.0, "kl": 0.0, "surrogate": 1.0}
    assert out.loss.item() == -1.0  # -(1 - 2 + 4) / 3


def test_loss_clipping_by_hand():
    masked = torch.tensor([[True], [True]])
    old = torch.tensor([-1.0, -1.0])
    new = old + math.log(1.5)  # rho = 1.5
    out = unigrpo_loss(new, old, torch.tensor([1.0, -1.0]), masked, clip_eps=0.2, beta=0.0)
    # A = +1: min(1.5, 1.2) = 1.2 (clipped); A = -1: min(-1.5, -1.2) = -1.5 (not clipped).
    assert out.stats["surrogate"] == pytest.approx((1.2 - 1.5) / 2)
    assert out.stats["clip_fraction"] == 0.5
    assert out.stats["ratio_mean"] == pytest.approx(1.5)
    assert out.loss.item() == pytest.approx(0.15)


def test_loss_kl_against_old_or_reference():
    masked = torch.tensor([[True, True], [True, False]])
    new = torch.tensor([0.0, 0.0, 0.0])
    ref = torch.tensor([math.log(2.0), 0.0, math.log(2.0)])
    adv = torch.zeros(2)
    # per-row k3 means: row 0 (1 - log 2 + 0) / 2, row 1: 1 - log 2; mean over rows 0.75 (1 - log 2).
    out = unigrpo_loss(new, new, adv, masked, clip_eps=0.2, beta=0.1, logp_ref=ref)
    assert out.stats["kl"] == pytest.approx(0.75 * (1 - math.log(2.0)))
    assert out.loss.item() == pytest.approx(0.1 * 0.75 * (1 - math.log(2.0)))
    assert unigrpo_loss(new, new, adv, masked, clip_eps=0.2, beta=0.1).stats["kl"] == 0.0


def test_loss_gradient_flows_to_logp_new_only():
    new = torch.tensor([-1.0, -2.0, -0.5, -3.0, -0.2, -1.5], requires_grad=True)
    old = (new.detach() + 0.1).requires_grad_()
    ref = (new.detach() - 0.1).requires_grad_()
    adv = torch.tensor([1.0, -2.0, 4.0], requires_grad=True)
    out = unigrpo_loss(new, old, adv, MASKED, clip_eps=0.2, beta=0.01, logp_ref=ref)
    out.loss.backward()
    assert new.grad is not None and new.grad.abs().sum() > 0
    assert old.grad is None and ref.grad is None and adv.grad is None


def test_loss_refuses_a_row_without_masked_tokens():
    masked = torch.tensor([[True, False], [False, False]])
    logp = torch.tensor([-1.0])
    with pytest.raises(ValueError, match="row 1"):
        unigrpo_loss(logp, logp, torch.ones(2), masked, clip_eps=0.2, beta=0.0)


def test_loss_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="logp_old"):
        unigrpo_loss(torch.zeros(6), torch.zeros(5), torch.ones(3), MASKED, clip_eps=0.2, beta=0.0)
    with pytest.raises(ValueError, match="advantages"):
        unigrpo_loss(torch.zeros(6), torch.zeros(6), torch.ones(2), MASKED, clip_eps=0.2, beta=0.0)


# ---- config ----------------------------------------------------------------------------------------------
def test_config_defaults():
    config = UniGRPOConfig()
    assert (config.group_size, config.inner_steps, config.clip_eps, config.beta) == (8, 4, 0.2, 0.01)
    assert (config.kl_reference, config.timesteps, config.estimator, config.total_timesteps) == (
        "ref", "uniform", "partial", 1000)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.beta = 0.0  # type: ignore[misc]


@pytest.mark.parametrize(("field", "value"), [
    ("group_size", 1), ("group_size", True), ("inner_steps", 0), ("clip_eps", 0.0), ("clip_eps", 1.0),
    ("beta", -0.1), ("beta", math.inf), ("beta", math.nan), ("total_timesteps", 0),
    ("min_accuracy", 0.9), ("max_accuracy", 1.5), ("kl_reference", "sft"), ("timesteps", "cosine"),
    ("estimator", "full"),
])
def test_config_refuses_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        UniGRPOConfig(**{field: value, **({"max_accuracy": 0.8} if field == "min_accuracy" else {})})
