"""Reinforcement learning for MMaDA: UniGRPO's objective pieces and rule-based rewards (§2.3)."""

from .objective import (
    UniGRPOConfig,
    UniGRPOLoss,
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
from .rewards import REWARDS, ClipScore, ImageRewardScore, RewardMix, gsm8k_answer

__all__ = [
    "REWARDS",
    "ClipScore",
    "ImageRewardScore",
    "RewardMix",
    "UniGRPOConfig",
    "UniGRPOLoss",
    "fully_masked_noise",
    "group_advantages",
    "gsm8k_answer",
    "k3_kl",
    "keep_groups",
    "mask_ratios",
    "masked_token_logprobs",
    "sequence_mean",
    "structured_noise",
    "timesteps",
    "uniform_timesteps",
    "unigrpo_loss",
]
