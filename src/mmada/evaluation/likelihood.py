"""How likely a continuation is under a masked diffusion model: LLaDA's Monte-Carlo bound.

A masked diffusion model has no exact log-likelihood. LLaDA (arXiv 2502.09992, §2.4) scores a
continuation r of n tokens after a prompt p with the lower bound

    log p(r | p) >= E_{l ~ U{1..n}} E_{M ⊂ r, |M| = l} [ (n / l) Σ_{i ∈ M} log p_θ(r_i | p, r with M masked) ]

(l positions of the continuation masked, chosen uniformly; the prompt never masked), estimated by
Monte-Carlo samples: 128 in its likelihood benchmarks. Its harness (ML-GSAI/LLaDA eval_llada.py,
`_forward_process` / `get_log_likelihood`) lowers the variance by stratifying l: one uniform start,
then counts evenly spaced around 1..n. We stratify over all samples at once rather than per mini-batch,
and draw every random choice before the first model call, so the mini-batch size changes memory only,
never the estimate. `greedy_reproduces` is the harness's `is_greedy`: LLaDA's `suffix_greedy_prediction`
decodes the fully masked continuation greedily, one most-confident token per step; here that is our own
infilling sampler with as many steps as tokens.

Every random draw uses the given CPU `generator` (the same numbers on any device); with a guidance
weight the unconditional pass masks the prompt (`sampling.denoisers.mask_positions`), as LLaDA's
`get_logits` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..diffusion.masking import random_subsets
from ..rl.objective import masked_token_logprobs
from ..sampling import InfillSampling
from ..sampling.denoisers import ClassifierFreeGuidance, Denoiser, mask_positions
from ..sampling.inpaint import infill_text


def stratified_mask_counts(num_samples: int, length: int, *, generator: torch.Generator | None = None) -> Tensor:
    """How many of `length` tokens each sample masks: low-discrepancy draws of l ~ U{1..length}.

    One uniform start, then `num_samples` counts evenly spaced by length / num_samples, wrapping
    around (LLaDA eval_llada.py `_forward_process`); each count alone is still uniform on 1..length.

    Returns:
        (num_samples,) int64 in [1, length].
    """
    if num_samples < 1 or length < 1:
        raise ValueError(f"need num_samples >= 1 and length >= 1, got {num_samples} and {length}")
    start = torch.randint(length, (), generator=generator)
    offsets = torch.round(torch.arange(num_samples, dtype=torch.float64) * length / num_samples).long()
    return (start + offsets) % length + 1


@torch.inference_mode()
def continuation_loglikelihood(
    model: Denoiser,
    prefix: Sequence[int],
    target: Sequence[int],
    *,
    mask_id: int,
    num_samples: int,
    batch_size: int,
    cfg_scale: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> float:
    """Monte-Carlo estimate of LLaDA's lower bound on log p(target | prefix).

    Args:
        model: logits at the asked positions (`MMaDAModel`).
        prefix: the conditioning ids (bos first, as the model saw text in training); never masked.
        target: the continuation ids to score; empty gives 0.0 (log 1).
        num_samples: Monte-Carlo samples (masked copies of the sequence).
        batch_size: copies per model call.
        cfg_scale: guidance weight w >= 0 (`sampling.denoisers.guide`); 0 = the conditional model.
        generator: a CPU generator for the mask counts and positions.
        device: where the model runs.
    Returns:
        The estimate in nats (<= 0 in expectation; one draw of a bound, not an exact value).
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"need num_samples >= 1 and batch_size >= 1, got {num_samples} and {batch_size}")
    n = len(target)
    if n == 0:
        return 0.0
    ids = torch.tensor([*prefix, *target], device=device)  # (L,)
    counts = stratified_mask_counts(num_samples, n, generator=generator)  # (S,)
    hidden = random_subsets(counts, n, generator=generator)  # (S, n)
    total = 0.0
    for rows, count in zip(hidden.split(batch_size), counts.split(batch_size)):
        masked = torch.nn.functional.pad(rows, (len(prefix), 0)).to(device)  # (b, L), the prefix never masked
        clean = ids.expand(rows.shape[0], -1)  # (b, L)
        denoiser: Denoiser = model
        if cfg_scale > 0:
            prompt = torch.zeros_like(masked)
            prompt[:, : len(prefix)] = True
            denoiser = ClassifierFreeGuidance(model, cfg_scale, mask_positions(prompt, mask_id))
        logp = masked_token_logprobs(denoiser, clean.masked_fill(masked, mask_id), masked, clean)  # (N,) row-major
        weight = torch.repeat_interleave(n / count.double(), count)  # (N,) the n / l of each token's row
        total += float((logp.cpu().double() * weight).sum())  # summed in float64 on the CPU (MPS has none)
    return total / num_samples


def greedy_reproduces(
    model: Denoiser, prefix: Sequence[int], target: Sequence[int], *, mask_id: int, cfg_scale: float = 0.0,
    device: torch.device | str = "cpu",
) -> bool:
    """Whether greedy decoding of the fully masked continuation gives back `target` exactly.

    One token per step, the most confident first (LLaDA eval_llada.py `suffix_greedy_prediction`):
    `sampling.inpaint.infill_text` at temperature 0 with as many steps as target tokens. Costs
    len(target) model calls.
    """
    if not target:
        return True
    ids = torch.tensor([[*prefix, *[mask_id] * len(target)]], device=device)  # (1, L)
    settings = InfillSampling(steps=len(target), temperature=0.0, cfg_scale=cfg_scale)
    filled = infill_text(model, ids, settings, mask_id=mask_id)  # (1, L)
    return filled[0, len(prefix) :].tolist() == list(target)
