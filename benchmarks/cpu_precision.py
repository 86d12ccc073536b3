"""bf16 autocast vs float32 for MMaDA-tiny's training step on this CPU, per task and batch shape.

For each task micro-batch of the tiny world (pretraining and SFT shapes, as `WorldSource` draws them),
one forward + backward of `MaskedDiffusionObjective` on the tiny model, timed in float32 and under
bf16 autocast, interleaved (A B A B ...) so that machine noise hits both alike; the median of
`--repeats` each. Also the relative difference of the losses (bf16 must keep them right) and, last,
a whole mixed step of each stage. Read the ratios, not the seconds.

    python benchmarks/cpu_precision.py [--threads 2] [--repeats 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Mapping

import torch

from mmada.prompting import TokenLayout
from mmada.training.config import build_model, load_config, load_tokenizers
from mmada.training.data import build_source
from mmada.training.objectives import MaskedDiffusionObjective

STAGES = {"pretrain": "tiny_pretrain", "sft": "tiny_sft"}


def _step(model: torch.nn.Module, objective: MaskedDiffusionObjective, batch: Mapping[str, TokenLayout],
          bf16: bool) -> tuple[float, float]:
    """Seconds of one forward + backward, and the loss (the same masking draws in both modes)."""
    model.zero_grad(set_to_none=True)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = objective(model, batch, generator)
    out.total.backward()
    return time.perf_counter() - start, float(out.total.detach())


def compare(model: torch.nn.Module, objective: MaskedDiffusionObjective, batch: Mapping[str, TokenLayout],
            repeats: int) -> dict[str, float]:
    times: dict[bool, list[float]] = {False: [], True: []}
    losses: dict[bool, float] = {}
    for _ in range(repeats + 1):  # the first round warms up both
        for bf16 in (False, True):
            seconds, losses[bf16] = _step(model, objective, batch, bf16)
            times[bf16].append(seconds)
    fp32, bf16 = statistics.median(times[False][1:]), statistics.median(times[True][1:])
    return {"fp32_s": fp32, "bf16_s": bf16, "speedup": fp32 / bf16,
            "loss_rel_diff": abs(losses[True] - losses[False]) / max(abs(losses[False]), 1e-9)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for stage, name in STAGES.items():
        # the SFT shapes on a fresh model of the pretraining architecture (the SFT config inherits its model)
        config = load_config([name], ["model.init=tiny", *_overrides(load_config(["tiny_pretrain"]))]
                             if stage == "sft" else [])
        torch.manual_seed(0)
        model = build_model(config.model, "cpu")
        tokenizers = load_tokenizers(config.model, model, "cpu")
        source = build_source(config.data, tokenizer=tokenizers.text, vocab=tokenizers.vocab,
                              image_tokenizer=tokenizers.image, seed=0)
        objective = MaskedDiffusionObjective(config.objective)
        batch = next(iter(source))
        for task, layout in [*batch.items(), ("all", None)]:
            part = batch if layout is None else {task: layout}
            shape = "mixed step" if layout is None else f"{layout.batch_size} x {layout.seq_len}"
            rows.append({"stage": stage, "task": task, "shape": shape, **compare(model, objective, part, args.repeats)})
            r = rows[-1]
            print(f"{stage:8s} {task:8s} {shape:>11s}  fp32 {r['fp32_s'] * 1e3:7.1f} ms"
                  f"  bf16 {r['bf16_s'] * 1e3:7.1f} ms  speedup {r['speedup']:.2f}x"
                  f"  loss diff {r['loss_rel_diff']:.1e}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "rows": rows}, f, indent=2)


def _overrides(pretrain) -> list[str]:
    """`model.overrides.*` of the pretraining config as key=value items (the SFT config inherits its model)."""
    return [f"model.overrides.{k}={v}" for k, v in pretrain.model.overrides.items()] + [
        f"model.tokenizer={pretrain.model.tokenizer}", f"model.image_tokenizer={pretrain.model.image_tokenizer}"]


if __name__ == "__main__":
    main()
