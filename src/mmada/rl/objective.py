"""UniGRPO's pure building blocks: timestep schedule, structured noising, masked log-probs, the loss.

MMaDA (arXiv 2505.15809) §2.3 adapts GRPO to a masked diffusion model (MMADA.md §4.2):

* token log-likelihoods exist only at masked positions, so each response is *structurally noised*:
  only response tokens are masked, with a ratio p = t / T that changes every inner iteration, and
  the question is never masked (§2.3.1);
* Algorithm 1 spaces the μ inner timesteps uniformly from a random start t_1 up to T (`timesteps`);
  fully random timesteps are the Fig. 4 ablation;
* the sequence log-likelihood is the *mean* of the per-token log-probs over the masked tokens (Eq. 4,
  `sequence_mean`);
* the objective is the clipped PPO surrogate with a group-normalised advantage, averaged per row over
  its masked tokens and then over rows, minus β·KL (Eq. 5, `unigrpo_loss`; advantages App. Eq. 15).

Where the paper leaves a choice open, Gen-Verse/dLLM-RL (its `random_masking` method, which the MMaDA
README names as the UniGRPO implementation) decides: population-std z-scores and accuracy filtering
(reward/rl_reward.py), the k3 KL against the start-of-step policy and ε = 0.2, β = 0.01
(train/rl_llada.py, configs/rl_llada.yaml). Rollouts and rewards live elsewhere; every function here
is a pure function of tensors (the model is an argument), and every random draw takes a `generator`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

import torch
from torch import Tensor

from ..diffusion.masking import MaskedBatch

TimestepKind = Literal["uniform", "random"]
KLReference = Literal["ref", "old"]
Estimator = Literal["partial", "fully_masked"]

_ZERO_STD = 1e-6  # a group whose reward std is below this has no signal (all advantages 0)


# ---- timesteps (Algorithm 1) ------------------------------------------------------------------------
def uniform_timesteps(t1: int, mu: int, total: int) -> list[int]:
    """Algorithm 1's schedule from a given start: t_n = ⌊(n−1)/(μ−1)·(T − t_1) + t_1⌋, n = 1..μ.

    Computed in integers, so the floor is exact. Example: ``uniform_timesteps(100, 5, 1000) ==
    [100, 325, 550, 775, 1000]`` (the paper's prose example "300, 500, 700, 900" does not follow its
    own formula, MMADA.md §4.2; we follow the formula). μ = 1 gives ``[t1]``.
    """
    if mu < 1:
        raise ValueError(f"mu must be >= 1, got {mu}")
    if not 0 <= t1 <= total:
        raise ValueError(f"t1 must be in [0, total={total}], got {t1}")
    if mu == 1:
        return [t1]
    return [t1 + (n - 1) * (total - t1) // (mu - 1) for n in range(1, mu + 1)]


def _draw_timestep(total: int, generator: torch.Generator | None) -> int:
    """⌊r·T⌋ with r ~ U[0, 1) (float64, so r·T < T always floors below T)."""
    return math.floor(float(torch.rand((), generator=generator, dtype=torch.float64)) * total)


def timesteps(
    mu: int, *, total: int = 1000, kind: TimestepKind = "uniform", generator: torch.Generator | None = None
) -> list[int]:
    """The μ diffusion timesteps of one batch of rollouts (iteration n masks with ratio t_n / T).

    "uniform" is Algorithm 1: t_1 = ⌊r·T⌋, r ~ U[0, 1), then `uniform_timesteps`. "random" draws μ
    independent ⌊r·T⌋ (the Fig. 4 ablation, noisier rewards). Turn them into ratios with `mask_ratios`.
    """
    if total < 1:
        raise ValueError(f"total must be >= 1, got {total}")
    if kind == "uniform":
        return uniform_timesteps(_draw_timestep(total, generator), mu, total)
    if kind == "random":
        if mu < 1:
            raise ValueError(f"mu must be >= 1, got {mu}")
        return [_draw_timestep(total, generator) for _ in range(mu)]
    raise ValueError(f"kind must be 'uniform' or 'random', got {kind!r}")


def mask_ratios(steps: list[int], total: int = 1000) -> list[float]:
    """Mask ratios t / T, clamped into [1/T, 1].

    t_1 = ⌊r·T⌋ is 0 with probability 1/T; a ratio of 0 would mask nothing, so it is raised to 1/T
    (`structured_noise` also masks at least one response token per row).
    """
    return [min(max(t, 1), total) / total for t in steps]


# ---- structured noising (§2.3.1) --------------------------------------------------------------------
def _check_response(ids: Tensor, response: Tensor) -> None:
    if ids.dim() != 2 or tuple(response.shape) != tuple(ids.shape) or response.dtype != torch.bool:
        raise ValueError(f"response must be a bool mask of ids' shape {tuple(ids.shape)}, got "
                         f"{tuple(response.shape)} {response.dtype}")


def structured_noise(
    ids: Tensor, response: Tensor, ratio: Tensor, *, mask_id: int, generator: torch.Generator | None = None
) -> MaskedBatch:
    """Mask each response token i.i.d. with its row's ratio; never the prompt (UniGRPO, §2.3.1).

    Unlike `diffusion.masking.mask_text` the ratio is used as is (no (1 − ε)t + ε remap) and every
    row with a response gets at least one masked token: when the draw masks none, the response
    position with the smallest uniform draw is masked (the one that came closest to being masked),
    so the loss never sees an empty row.

    Args:
        ids: (B, L) int64 prompt + response tokens.
        response: (B, L) bool, the positions that may be masked (the response).
        ratio: (B,) float in [0, 1], each row's mask probability (see `mask_ratios`).
    Returns:
        `MaskedBatch(noisy (B, L), is_masked (B, L) bool, p_mask (B, 1) float32 = ratio)`.
    """
    _check_response(ids, response)
    if ratio.shape != (ids.shape[0],) or not bool(((ratio >= 0) & (ratio <= 1)).all()):
        raise ValueError(f"ratio must be a ({ids.shape[0]},) tensor in [0, 1], got {tuple(ratio.shape)} "
                         f"{ratio.tolist() if ratio.numel() <= 8 else ''}")
    u = torch.rand(ids.shape, generator=generator, device=ids.device)  # (B, L)
    masked = response & (u < ratio[:, None].to(u))
    empty = response.any(dim=1) & ~masked.any(dim=1)  # (B,) rows with a response but nothing drawn
    closest = u.masked_fill(~response, math.inf).argmin(dim=1, keepdim=True)  # (B, 1)
    masked = masked | torch.zeros_like(masked).scatter(1, closest, empty[:, None])
    return MaskedBatch(ids.masked_fill(masked, mask_id), masked, ratio[:, None].float())


def fully_masked_noise(ids: Tensor, response: Tensor, *, mask_id: int) -> MaskedBatch:
    """d1 / diffu-GRPO's one-step estimator: every response token masked (arXiv 2504.12216).

    d1 also masks the prompt at random (p ≈ 0.15) as a regulariser; UniGRPO keeps the prompt clean,
    and so does this function. Returns `MaskedBatch` with p_mask = 1.
    """
    _check_response(ids, response)
    ones = torch.ones(ids.shape[0], 1, device=ids.device)
    return MaskedBatch(ids.masked_fill(response, mask_id), response.clone(), ones)


# ---- log-likelihoods (Eqs. 3-4) ---------------------------------------------------------------------
class PositionDenoiser(Protocol):
    """`MMaDAModel.forward`: a (B, L) bool `positions` gives (N, V) logits at its True entries, row-major."""

    def __call__(self, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                 positions: Tensor | None = None) -> Tensor: ...


def masked_token_logprobs(
    model: PositionDenoiser, noised: Tensor, masked: Tensor, targets: Tensor, attention_mask: Tensor | None = None
) -> Tensor:
    """log π(o_k | q, õ) at the masked positions k (Eq. 3), logits computed only there.

    Args:
        noised: (B, L) int64 inputs with mask ids at `masked`.
        masked: (B, L) bool.
        targets: (B, L) int64 clean tokens.
    Returns:
        (N,) float32 log-probs, N = masked.sum(), in row-major order of `masked`.
    """
    if tuple(targets.shape) != tuple(noised.shape) or tuple(masked.shape) != tuple(noised.shape):
        raise ValueError(f"noised {tuple(noised.shape)}, masked {tuple(masked.shape)} and targets "
                         f"{tuple(targets.shape)} must have the same shape")
    logits = model(noised, attention_mask, positions=masked)  # (N, V)
    # float32 log-softmax: ratios exp(new - old) amplify bf16 rounding of the logits.
    logp = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
    return logp.gather(-1, targets[masked][:, None]).squeeze(-1)  # (N,)


def _check_rows(masked: Tensor) -> None:
    empty = (~masked.any(dim=1)).nonzero()
    if empty.numel():
        raise ValueError(f"row {int(empty[0, 0])} has no masked token (UniGRPO needs |M_i| >= 1)")


def sequence_mean(values: Tensor, masked: Tensor) -> Tensor:
    """Per-row mean of per-token values over that row's masked tokens (Eq. 4's sequence estimate).

    Args:
        values: (N,) per-token values in row-major order of `masked`.
        masked: (B, L) bool with at least one True per row.
    Returns:
        (B,) means (differentiable in `values`).
    """
    if masked.dim() != 2 or masked.dtype != torch.bool:
        raise ValueError(f"masked must be a (B, L) bool tensor, got {tuple(masked.shape)} {masked.dtype}")
    if values.shape != (int(masked.sum()),):
        raise ValueError(f"values must have shape ({int(masked.sum())},) = masked.sum(), got {tuple(values.shape)}")
    _check_rows(masked)
    rows = masked.nonzero()[:, 0]  # (N,) row of each token, row-major
    sums = values.new_zeros(masked.shape[0]).index_add(0, rows, values)  # (B,)
    return sums / masked.sum(dim=1).to(values.dtype)


# ---- advantages (App. Eq. 15) -----------------------------------------------------------------------
def _groups(rewards: Tensor, group_size: int) -> Tensor:
    """(B,) -> (B / G, G) float: consecutive groups of G responses to one prompt."""
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (a single response has no baseline), got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be a (B,) tensor with B divisible by group_size {group_size}, "
                         f"got {tuple(rewards.shape)}")
    return rewards.float().view(-1, group_size)


def group_advantages(rewards: Tensor, group_size: int, *, eps: float = _ZERO_STD) -> Tensor:
    """Â_i = (r_i − mean_group) / std_group with the population std (dLLM-RL reward/rl_reward.py).

    A group whose std is below `eps` (all rewards equal) gets advantage 0 instead of 0/0. Example:
    rewards [2, 0, 0, 2, 1, 1, 1, 1], G = 4 -> [1, −1, −1, 1, 0, 0, 0, 0].

    Args:
        rewards: (B,) float, consecutive groups of `group_size` responses per prompt.
    Returns:
        (B,) float32 advantages.
    """
    r = _groups(rewards, group_size)  # (B/G, G)
    std = r.std(dim=1, unbiased=False, keepdim=True)  # (B/G, 1)
    centred = r - r.mean(dim=1, keepdim=True)
    return torch.where(std < eps, torch.zeros_like(r), centred / std.clamp(min=eps)).flatten()


def keep_groups(
    rewards: Tensor,
    correct: Tensor | None,
    group_size: int,
    *,
    min_accuracy: float = 0.0,
    max_accuracy: float = 1.0,
    eps: float = _ZERO_STD,
) -> Tensor:
    """Which responses to train on: drop whole groups with no reward spread or off-band accuracy.

    A zero-variance group has zero advantages (no signal); dLLM-RL also drops groups whose accuracy
    is outside [0.2, 0.8] for text ([0.05, 0.95] multimodal) as too easy or too hard.

    Args:
        rewards: (B,) float.
        correct: (B,) in [0, 1] (correctness per response), or None to skip the accuracy filter.
    Returns:
        (B,) bool, the same value for every response of a group.
    """
    r = _groups(rewards, group_size)
    keep = r.std(dim=1, unbiased=False) >= eps  # (B/G,)
    if correct is not None:
        if correct.shape != rewards.shape:
            raise ValueError(f"correct must have rewards' shape {tuple(rewards.shape)}, got {tuple(correct.shape)}")
        accuracy = correct.float().view(-1, group_size).mean(dim=1)  # (B/G,)
        keep &= (accuracy >= min_accuracy) & (accuracy <= max_accuracy)
    return keep.repeat_interleave(group_size)


# ---- the loss (Eq. 5) -------------------------------------------------------------------------------
def k3_kl(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(π ‖ π_ref) per token: e^d − d − 1, d = log π_ref − log π.

    Non-negative and exactly 0 where the two agree (http://joschu.net/blog/kl-approx.html).
    """
    d = logp_ref - logp
    return torch.exp(d) - d - 1


class UniGRPOLoss(NamedTuple):
    """`loss`: scalar to minimise; `stats`: ratio_mean, clip_fraction, kl, surrogate (Python floats)."""

    loss: Tensor
    stats: dict[str, float]


def unigrpo_loss(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    masked: Tensor,
    *,
    clip_eps: float,
    beta: float,
    logp_ref: Tensor | None = None,
) -> UniGRPOLoss:
    """−[(1/G) Σ_i (1/|M_i|) Σ_{k∈M_i} min(ρ_ik Â_i, clip(ρ_ik, 1−ε, 1+ε) Â_i) − β·KL] (Eq. 5).

    ρ_ik = exp(log π_θ − log π_old) under the same mask. The KL is the per-row mean of `k3_kl`
    against `logp_ref` (the frozen reference of Eq. 5), or against `logp_old` when None (dLLM-RL's
    choice, train/rl_llada.py; it sums the k3 terms per row where we average, like the surrogate),
    averaged over rows. Only `logp_new` receives gradients.

    Args:
        logp_new, logp_old, logp_ref: (N,) per-token log-probs, row-major order of `masked`.
        advantages: (B,) one advantage per response.
        masked: (B, L) bool, at least one True per row.
    """
    n = int(masked.sum())
    for name, t in (("logp_new", logp_new), ("logp_old", logp_old), ("logp_ref", logp_ref)):
        if t is not None and t.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) = masked.sum(), got {tuple(t.shape)}")
    if advantages.shape != (masked.shape[0],):
        raise ValueError(f"advantages must have shape ({masked.shape[0]},), got {tuple(advantages.shape)}")
    if not 0 < clip_eps < 1 or not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"need 0 < clip_eps < 1 and finite beta >= 0, got clip_eps={clip_eps}, beta={beta}")
    _check_rows(masked)
    old = logp_old.detach()
    ratio = torch.exp(logp_new - old)  # (N,)
    adv = advantages.detach().to(ratio.dtype)[masked.nonzero()[:, 0]]  # (N,) Â_i on each of row i's tokens
    unclipped, clipped = ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv
    surrogate = sequence_mean(torch.minimum(unclipped, clipped), masked).mean()
    reference = old if logp_ref is None else logp_ref.detach()
    kl = sequence_mean(k3_kl(logp_new, reference), masked).mean()
    stats = {
        "ratio_mean": float(ratio.detach().mean()),
        "clip_fraction": float((clipped < unclipped).float().mean()),
        "kl": float(kl.detach()),
        "surrogate": float(surrogate.detach()),
    }
    return UniGRPOLoss(-(surrogate - beta * kl), stats)


# ---- config -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UniGRPOConfig:
    """UniGRPO's knobs (MMADA.md §4). The paper gives no numbers for G, μ, ε or β; dLLM-RL's do."""

    group_size: int = 8
    """G, responses per prompt (dLLM-RL configs/rl_llada.yaml `num_response_per_task`; 16 for MMaDA-V)."""
    inner_steps: int = 4
    """μ, gradient iterations per rollout batch, each with its own timestep (paper: value not given;
    4 is our choice. dLLM-RL makes one pass over `mask_times_per_sample` masked copies instead)."""
    clip_eps: float = 0.2
    """ε of the clipped ratio (dLLM-RL train/rl_llada.py)."""
    beta: float = 0.01
    """β, the KL coefficient (dLLM-RL configs/rl_llada.yaml)."""
    kl_reference: KLReference = "ref"
    """"ref": KL against the frozen SFT model (paper Eq. 5); "old": against the start-of-step policy
    (dLLM-RL, which keeps no reference model)."""
    timesteps: TimestepKind = "uniform"
    """"uniform": Algorithm 1's spaced timesteps; "random": independent draws (Fig. 4 ablation)."""
    estimator: Estimator = "partial"
    """"partial": UniGRPO's structured noise at ratio t/T; "fully_masked": d1's one-step estimator."""
    total_timesteps: int = 1000
    """T, the number of diffusion timesteps (Algorithm 1); mask ratio = t / T."""
    min_accuracy: float = 0.0
    """Drop groups whose accuracy is below this (tiny-world default keeps all; dLLM-RL text: 0.2)."""
    max_accuracy: float = 1.0
    """Drop groups whose accuracy is above this (tiny-world default keeps all; dLLM-RL text: 0.8)."""

    def __post_init__(self) -> None:
        for name in ("group_size", "inner_steps", "total_timesteps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (a group needs a baseline), got {self.group_size}")
        if self.inner_steps < 1:
            raise ValueError(f"inner_steps must be >= 1, got {self.inner_steps}")
        if self.total_timesteps < 1:
            raise ValueError(f"total_timesteps must be >= 1, got {self.total_timesteps}")
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"clip_eps must be in (0, 1), got {self.clip_eps}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta must be finite and >= 0, got {self.beta}")
        if not 0 <= self.min_accuracy <= self.max_accuracy <= 1:
            raise ValueError(f"need 0 <= min_accuracy <= max_accuracy <= 1, got min_accuracy={self.min_accuracy}, "
                             f"max_accuracy={self.max_accuracy}")
        for name, allowed in (("kl_reference", ("ref", "old")), ("timesteps", ("uniform", "random")),
                              ("estimator", ("partial", "fully_masked"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
