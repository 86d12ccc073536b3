"""Fast text sampling in one run: caches, commit rules and presets against the exact sampler, and batching.

Part 1 (modes): one prompt (or `--batch` copies), greedy, `--gen-length` tokens in blocks of
`--block-length`, once per mode: the exact loop; Fast-dLLM's prefix and dual caches; the delayed cache
(each committed token re-encoded once, one step later) keeping finished blocks; the `fast` and
`fastest` presets; and the adaptive commit rules (threshold 0.9, factor 1, entropy bound 0.3, each over
the `fastest` cache). The table gives tokens/s, the speed-up over exact, model calls (NFE), the share of
generated tokens equal to exact, and the peak resident memory of the call above the model's.

Part 2 (`--ragged B`): B prompts of different lengths (left-padded, with an attention mask) in one
batched call against B calls at batch 1, per preset: throughput ratio and peak memory. The batched
cached samplers give every row what it gets alone (tests/test_kv_cache.py), so only time differs.

The model is a random medium one (d_model 512, 8 layers, vocab 12288, LLaDA shapes), or a checkpoint
folder (`--ckpt`, e.g. the peer harness's `medium-confident`, whose head is sharp enough for the
adaptive rules to commit several tokens per step; on a plain random head they commit one).

    python benchmarks/fast_sampling.py [--ckpt DIR] [--threads 1] [--ragged 8]

Read the ratios, not the absolute seconds.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from mmada.model import MMaDAModel, ModelConfig
from mmada.sampling import PRESETS, TextSampling, sample_text

MODES: dict[str, dict[str, object]] = {
    "exact": dict(PRESETS["exact"]),
    "prefix cache (Fast-dLLM)": {"cache": "prefix"},
    "dual cache (Fast-dLLM)": {"cache": "dual"},
    "delayed cache, keep finished": {"cache": "delayed", "cache_keep": "finished"},
    "preset fast": dict(PRESETS["fast"]),
    "dual cache + threshold 0.9 (Fast-dLLM)": {"cache": "dual", "threshold": 0.9},
    "preset fastest (threshold 0.9)": dict(PRESETS["fastest"]),
    "fastest cache + factor 1.0": {**PRESETS["fastest"], "threshold": None, "factor": 1.0},
    "fastest cache + entropy bound 0.3": {**PRESETS["fastest"], "threshold": None, "entropy_bound": 0.3},
    "fastest + early commit 5": {**PRESETS["fastest"], "early_commit": 5.0},
}


class Counting:
    """The model, counting its calls."""

    def __init__(self, model: MMaDAModel) -> None:
        self.model, self.calls = model, 0

    def new_cache(self):
        return self.model.new_cache()

    def __call__(self, input_ids, attention_mask=None, **kw):
        self.calls += 1
        return self.model(input_ids, attention_mask, **kw)


def reset_peak_rss() -> int | None:
    """Reset the process's peak resident set (Linux) and return the current RSS in bytes, else None."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kb("VmRSS") * 1024
    except OSError:
        return None


def peak_rss_above(base: int | None) -> float | None:
    """MB of peak resident memory above `base` since the last reset."""
    return None if base is None else (_status_kb("VmHWM") * 1024 - base) / 2**20


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(key)


def build(args: argparse.Namespace) -> MMaDAModel:
    if args.ckpt:
        from mmada import load_model

        return load_model(args.ckpt).eval()
    vocab = 12288
    config = ModelConfig.tiny(d_model=512, n_layers=8, n_heads=8, n_kv_heads=8, mlp_hidden_size=1536,
                              vocab_size=vocab, embedding_size=vocab, max_sequence_length=4096,
                              mask_token_id=vocab // 2 - 1, llm_vocab_size=vocab // 2, codebook_size=vocab // 2)
    torch.manual_seed(0)
    model = MMaDAModel(config)
    model.reset_parameters()
    return model.eval()


def timed(model: MMaDAModel, prompt: torch.Tensor, settings: TextSampling,
          mask: torch.Tensor | None = None) -> tuple[float, torch.Tensor, int, float | None]:
    counting, base = Counting(model), reset_peak_rss()
    start = time.perf_counter()
    out = sample_text(counting, prompt, settings, mask_id=model.config.mask_token_id, attention_mask=mask)
    return time.perf_counter() - start, out, counting.calls, peak_rss_above(base)


def ragged_prompts(batch: int, vocab: int, lengths: tuple[int, int]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    sizes = torch.linspace(lengths[0], lengths[1], batch).long().tolist()
    return [torch.randint(0, vocab, (1, n), generator=g) for n in sizes]


def left_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(r.shape[1] for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - r.shape[1]:], mask[i, width - r.shape[1]:] = r[0], 1
    return ids, mask


def mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default=None, help="checkpoint folder (default: a random medium model)")
    parser.add_argument("--batch", type=int, default=1, help="copies of the prompt per call in part 1")
    parser.add_argument("--prompt-len", type=int, default=85, help="prompt tokens in part 1")
    parser.add_argument("--gen-length", type=int, default=256, help="generated tokens")
    parser.add_argument("--block-length", type=int, default=32, help="semi-autoregressive block length")
    parser.add_argument("--steps", type=int, default=256, help="steps of the fixed-quota modes")
    parser.add_argument("--ragged", type=int, default=0, help="part 2: this many ragged prompts (0 = skip)")
    parser.add_argument("--modes", default=None, help="comma-separated subset of part 1's mode numbers (1-based)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build(args)
    text_vocab = model.config.mask_token_id
    base = TextSampling(gen_length=args.gen_length, block_length=args.block_length, steps=args.steps,
                        temperature=0.0, early_stop=False)
    prompt = torch.randint(0, text_vocab, (args.batch, args.prompt_len), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        sample_text(model, prompt, replace(base, steps=args.gen_length // args.block_length),
                    mask_id=model.config.mask_token_id)  # warm-up
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), pid {os.getpid()}; "
          f"{args.ckpt or 'random medium model'}; gen {args.gen_length}, block {args.block_length}, "
          f"steps {args.steps}\n")
    chosen = list(MODES.items())
    if args.modes:
        chosen = [chosen[int(i) - 1] for i in args.modes.split(",")]
    print("| mode | tokens/s | speed-up | NFE | tokens = exact | peak MB above model |")
    print("|---|---|---|---|---|---|")
    reference, exact_s = None, None
    for name, values in chosen:
        seconds, out, calls, peak = timed(model, prompt, replace(base, **values))
        exact_s = exact_s or seconds
        reference = out if reference is None else reference
        same = (out == reference)[:, args.prompt_len:].float().mean().item()
        print(f"| {name} | {out[:, args.prompt_len:].numel() / seconds:.1f} | {exact_s / seconds:.2f}x | {calls} | "
              f"{same:.0%} | {mb(peak)} |", flush=True)
    if args.ragged:
        ragged(model, base, args.ragged, text_vocab)


def ragged(model: MMaDAModel, base: TextSampling, batch: int, vocab: int) -> None:
    rows = ragged_prompts(batch, vocab, (40, 120))
    ids, mask = left_pad(rows)
    print(f"\nBatching: {batch} prompts of {rows[0].shape[1]}..{rows[-1].shape[1]} tokens, left-padded, in one "
          f"call vs {batch} calls at batch 1\n")
    print(f"| preset | {batch} x batch 1 tokens/s | batch {batch} tokens/s | throughput ratio | NFE 1 x {batch} / "
          f"batched | peak MB batch 1 / batched |")
    print("|---|---|---|---|---|---|")
    for name in PRESETS:
        settings = replace(base, **PRESETS[name])
        single_s, single_calls, single_peak = 0.0, 0, 0.0
        for row in rows:
            seconds, _, calls, peak = timed(model, row, settings)
            single_s, single_calls, single_peak = single_s + seconds, single_calls + calls, max(single_peak, peak or 0)
        seconds, _, calls, peak = timed(model, ids, settings, mask)
        tokens = batch * base.gen_length
        print(f"| {name} | {tokens / single_s:.1f} | {tokens / seconds:.1f} | {single_s / seconds:.2f}x | "
              f"{single_calls} / {calls} | {single_peak:.0f} / {mb(peak)} |", flush=True)


if __name__ == "__main__":
    main()
