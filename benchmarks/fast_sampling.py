"""Key/value caching for text sampling: exact vs prefix vs dual cache, in one run.

A randomly initialised medium model (d_model 512, 8 layers, vocab 12288) generates `--gen-length`
tokens after a random prompt with the LLaDA block loop, greedy, once per mode:

* exact: the default loop (every step a full forward; `positions=` keeps the head to the block);
* prefix: `TextSampling(cache="prefix")`, keys/values before the block reused, block + suffix recomputed;
* dual: `cache="dual"`, keys/values before and after the block reused, only the block recomputed;

the caches refreshed at each block start only (`cache_refresh=0`, Fast-dLLM's setting). With
`--threshold`, the same three again with Fast-dLLM's confidence-threshold commits. The table gives
tokens/s, the speed-up over exact, model calls (NFE) and full forwards, and the share of generated
tokens equal to the exact mode's (with the threshold rows: to exact + threshold). A cache is an
approximation: on a random model the share says how far it drifts, not how a trained model fares.
`--head-scale` sharpens the random head so that the threshold commits several tokens per step.

    python benchmarks/fast_sampling.py [--threshold 0.9] [--threads 2] [--batch 1]

Read the ratios, not the absolute seconds.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from mmada.model import MMaDAModel, ModelConfig
from mmada.sampling import TextSampling, sample_text


class Counting:
    """The model, counting its calls and its full (cache-recording or uncached) forwards."""

    def __init__(self, model: MMaDAModel) -> None:
        self.model, self.calls, self.full = model, 0, 0

    def new_cache(self):
        return self.model.new_cache()

    def __call__(self, input_ids, attention_mask=None, **kw):
        self.calls += 1
        self.full += kw.get("fresh") is None
        return self.model(input_ids, attention_mask, **kw)


def build(args: argparse.Namespace) -> MMaDAModel:
    vocab = args.vocab
    config = ModelConfig.tiny(d_model=args.d_model, n_layers=args.layers, n_heads=args.d_model // 64,
                              n_kv_heads=args.d_model // 64, mlp_hidden_size=args.d_model * 8 // 3 // 64 * 64,
                              vocab_size=vocab, embedding_size=vocab, max_sequence_length=4096,
                              mask_token_id=vocab // 2 - 1, llm_vocab_size=vocab // 2, codebook_size=vocab // 2)
    torch.manual_seed(0)
    model = MMaDAModel(config)
    model.reset_parameters()
    with torch.no_grad():
        model.head.weight.mul_(args.head_scale)
    return model.eval()


def run(model: MMaDAModel, prompt: torch.Tensor, settings: TextSampling) -> tuple[float, torch.Tensor, Counting]:
    counting = Counting(model)
    start = time.perf_counter()
    out = sample_text(counting, prompt, settings, mask_id=model.config.mask_token_id)
    return time.perf_counter() - start, out, counting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=512, help="model width (heads of 64)")
    parser.add_argument("--layers", type=int, default=8, help="transformer blocks")
    parser.add_argument("--vocab", type=int, default=12288, help="vocabulary size")
    parser.add_argument("--batch", type=int, default=1, help="prompts per call")
    parser.add_argument("--prompt-len", type=int, default=64, help="prompt tokens")
    parser.add_argument("--gen-length", type=int, default=256, help="generated tokens")
    parser.add_argument("--block-length", type=int, default=32, help="semi-autoregressive block length")
    parser.add_argument("--steps", type=int, default=128, help="steps of the fixed-quota modes")
    parser.add_argument("--threshold", type=float, default=None, help="also run Fast-dLLM threshold commits")
    parser.add_argument("--head-scale", type=float, default=1.0, help="sharpen the random head (confidence)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = build(args)
    prompt = torch.randint(0, model.config.mask_token_id, (args.batch, args.prompt_len),
                           generator=torch.Generator().manual_seed(1))
    base = TextSampling(gen_length=args.gen_length, block_length=args.block_length, steps=args.steps,
                        temperature=0.0, early_stop=False)
    policies = [("", base)] + ([(f" + threshold {args.threshold}", replace(base, threshold=args.threshold))]
                               if args.threshold is not None else [])
    with torch.inference_mode():
        model(prompt)  # warm-up
    rows = ["| mode | tokens/s | speed-up | model calls | full forwards | tokens = reference |",
            "|---|---|---|---|---|---|"]
    exact_s = None
    for suffix, policy in policies:
        reference = None
        for cache in ("none", "prefix", "dual"):
            seconds, out, counting = run(model, prompt, replace(policy, cache=cache))
            exact_s = seconds if exact_s is None else exact_s
            reference = out if reference is None else reference
            same = (out == reference)[:, args.prompt_len:].float().mean().item()
            name = "exact" if cache == "none" else f"{cache} cache"
            rows.append(f"| {name}{suffix} | {out[:, args.prompt_len:].numel() / seconds:.1f} | "
                        f"{exact_s / seconds:.2f}x | {counting.calls} | {counting.full} | {same:.1%} |")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); d_model {args.d_model}, "
          f"{args.layers} layers, vocab {args.vocab}; batch {args.batch}, prompt {args.prompt_len}, "
          f"gen {args.gen_length}, block {args.block_length}, steps {args.steps}; caches refreshed at block "
          "starts; speed-up vs exact, tokens compared with the first row of their group\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
