"""One training step: logits only at the masked positions vs the full head, tokens/s and peak memory.

For randomly initialised models of two sizes, one optimizer step (forward, backward, gradient clipping,
AdamW) on a stage-1.1-shaped micro-batch (t2i + lm + mmu rows of length M + N + 3), with:

* ours: `MaskedDiffusionObjective`, which asks the model for the logits of the positions a loss reads
  (`positions=`: the masked tokens, ~40-60% of a row);
* the baseline: the same objective over a wrapper that projects every position through the head and
  then selects, as the official training code computes `logits` for the whole batch.

Both give the same loss (checked). Each (size, variant) runs in a fresh process, so that peak memory
is its own: the peak of the forward + backward over the memory just before the step (where the logits
live; the AdamW update that follows is the same for both), on CPU as peak RSS (glibc is told to return
freed memory at once, `MALLOC_MMAP_THRESHOLD_`, so RSS follows live memory), on CUDA as
`torch.cuda.max_memory_allocated`. Throughput counts the whole step (forward, backward, clipping,
AdamW). One warm-up step first (it creates the AdamW state), then the best of `--repeats` steps.

    python benchmarks/train_step.py [--sizes small,medium] [--rows 4,1,3] [--repeats 2] [--threads 1]

Read the ratios, not the absolute seconds.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time

import torch

from mmada.model import MMaDAModel, ModelConfig
from mmada.prompting import Vocab, build_lm_batch, build_mmu_batch, build_t2i_batch
from mmada.training.config import OptimConfig
from mmada.training.objectives import MaskedDiffusionObjective
from mmada.training.optim import build_optimizer

SIZES = {  # name: (d_model, n_layers, n_heads, mlp_hidden_size, vocab_size); vocab / d_model ~ 32 as MMaDA-8B
    "small": (256, 4, 4, 704, 8192),
    "medium": (384, 6, 6, 1024, 12288),
    "wide": (256, 4, 4, 704, 134656),  # opt-in: MMaDA-8B's real 134,656-row vocabulary on a small trunk
}
MAX_TEXT_LEN, IMAGE_TOKENS = 128, 256  # stage 1.1: max_seq_length 128, 256x256 images -> 256 codes


class FullHead(torch.nn.Module):
    """The baseline: full (B, L, V) logits, then the positions the loss reads."""

    def __init__(self, inner: MMaDAModel) -> None:
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, ids, mask=None, *, positions=None, padding="hide"):
        logits = self.inner(ids, mask, padding=padding)  # (B, L, V)
        return logits if positions is None else logits[positions]


def synthetic_vocab(vocab_size: int) -> Vocab:
    """Text ids below V/2 (specials at its top), image codes in the upper half."""
    text = vocab_size // 2
    names = ("soi_id", "eoi_id", "sov_id", "eov_id", "t2i_id", "mmu_id", "t2v_id", "v2v_id", "lvg_id", "ipad_id",
             "r2i_id")
    specials = {name: text - 20 + i for i, name in enumerate(names)}
    return Vocab(mask_id=text - 1, bos_id=text - 2, eos_id=text - 3, pad_id=text - 3, eot_id=text - 4,
                 start_header_id=text - 5, end_header_id=text - 6, **specials, text_vocab_size=text,
                 image_offset=text, codebook_size=vocab_size - text, vocab_size=vocab_size)


def build_model(size: str) -> MMaDAModel:
    d, layers, heads, hidden, vocab = SIZES[size]
    v = synthetic_vocab(vocab)
    config = ModelConfig.tiny(d_model=d, n_layers=layers, n_heads=heads, n_kv_heads=heads, mlp_hidden_size=hidden,
                              vocab_size=vocab, embedding_size=vocab, max_sequence_length=4096,
                              mask_token_id=v.mask_id, eos_token_id=v.eos_id, pad_token_id=v.pad_id,
                              llm_vocab_size=v.text_vocab_size, codebook_size=v.codebook_size)
    torch.manual_seed(0)
    model = MMaDAModel(config)
    model.reset_parameters()
    return model.train()


def build_batch(vocab: Vocab, rows: tuple[int, int, int], seed: int = 0) -> dict:
    """t2i / lm / mmu rows of length M + N + 3 with random text (20-token captions, 60-token answers)."""
    n_t2i, n_lm, n_mmu = rows
    gen = torch.Generator().manual_seed(seed)

    def text(n: int) -> list[int]:
        return torch.randint(0, vocab.text_vocab_size - 32, (n,), generator=gen).tolist()

    def images(n: int) -> torch.Tensor:
        return vocab.image_ids(torch.randint(0, vocab.codebook_size, (n, IMAGE_TOKENS), generator=gen))

    t2i_images = images(n_t2i)
    batch = {"t2i": build_t2i_batch([text(20) for _ in range(n_t2i)], t2i_images, t2i_images, vocab=vocab,
                                    max_text_len=MAX_TEXT_LEN, cond_dropout_prob=0.1, generator=gen)}
    length = batch["t2i"].seq_len
    if n_lm:
        batch["lm"] = build_lm_batch([text(length) for _ in range(n_lm)], vocab=vocab, max_seq_len=length)
    if n_mmu:
        chats = [[vocab.start_header_id, *text(2), vocab.end_header_id, *text(30), vocab.eot_id,
                  vocab.start_header_id, *text(2), vocab.end_header_id, *text(60)] for _ in range(n_mmu)]
        batch["mmu"] = build_mmu_batch(images(n_mmu), chats, vocab=vocab, max_text_len=MAX_TEXT_LEN)
    return batch


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _reset_peak(device: torch.device) -> int:
    """Start a peak measurement; returns the current usage."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back, so RSS is live memory
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: reset VmHWM (the peak RSS) to the current RSS
    return _rss_bytes()


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return _peak_rss_bytes()


def child(size: str, variant: str, rows: tuple[int, int, int], repeats: int, device: torch.device) -> dict:
    """Time one variant in this process; returns tokens/s, seconds and the step's peak memory."""
    model = build_model(size).to(device)
    net = FullHead(model) if variant == "full" else model
    objective = MaskedDiffusionObjective()
    optimizer = build_optimizer(model, OptimConfig())
    batch = {task: layout.to(device) for task, layout in build_batch(synthetic_vocab(SIZES[size][4]), rows).items()}
    tokens = sum(layout.input_ids.numel() for layout in batch.values())

    def step(seed: int) -> tuple[float, int]:
        """One optimizer step; returns its time and the peak memory of its forward + backward."""
        before = _reset_peak(device)
        start = time.perf_counter()
        objective(net, batch, torch.Generator(device).manual_seed(seed)).total.backward()
        peak = _peak(device) - before  # read before the optimizer, whose temporaries both variants share
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, peak

    step(0)  # warm-up: AdamW state, allocator pools
    runs = [step(i + 1) for i in range(repeats)]
    best, peak = min(t for t, _ in runs), max(p for _, p in runs)
    return {"seconds": best, "tokens_per_s": tokens / best, "peak_mb": peak / 2**20, "tokens": tokens}


def same_loss(size: str, rows: tuple[int, int, int]) -> None:
    """Ours and the baseline compute the same loss on the same noised batch."""
    model = build_model(size)
    batch = build_batch(synthetic_vocab(SIZES[size][4]), rows)
    objective = MaskedDiffusionObjective()
    with torch.no_grad():
        ours = objective(model, batch, torch.Generator().manual_seed(0)).total
        full = objective(FullHead(model), batch, torch.Generator().manual_seed(0)).total
    torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-5)


def run_child(size: str, variant: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, __file__, "--child", size, variant, "--rows", args.rows, "--repeats", str(args.repeats),
           "--threads", str(args.threads), "--device", args.device]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def head_share(size: str) -> float:
    d, layers, _, hidden, vocab = SIZES[size]
    return d * vocab / (layers * (4 * d * d + 3 * d * hidden) + d * vocab)  # of the forward FLOPs per position


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="small,medium")
    parser.add_argument("--rows", default="4,1,3", help="t2i,lm,mmu rows per micro-batch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = tuple(int(r) for r in args.rows.split(","))
    if args.child:
        print(json.dumps(child(*args.child, rows, args.repeats, torch.device(args.device))))  # type: ignore[arg-type]
        return
    print(f"device {args.device}, torch {torch.__version__}, {args.threads} thread(s), rows t2i/lm/mmu {args.rows}, "
          f"L = {MAX_TEXT_LEN} + {IMAGE_TOKENS} + 3, best of {args.repeats}")
    print("| size | head share | variant | tokens/s | step (s) | peak fwd+bwd memory (MB) | speed-up | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        same_loss(size, rows)
        ours, full = run_child(size, "ours", args), run_child(size, "full", args)
        for name, r in (("full logits (baseline)", full), ("positions= (ours)", ours)):
            ratio = ours is r
            print(f"| {size} | {head_share(size):.0%} | {name} | {r['tokens_per_s']:.0f} | {r['seconds']:.2f} | "
                  f"{r['peak_mb']:.0f} | {full['seconds'] / r['seconds'] if ratio else 1:.2f}x | "
                  f"{full['peak_mb'] / r['peak_mb'] if ratio else 1:.2f}x |")


if __name__ == "__main__":
    main()
