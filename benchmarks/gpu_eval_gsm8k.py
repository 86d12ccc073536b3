"""The GSM8K runner end to end on an 8B-shaped model on one GPU: does the path run, and how fast.

A randomly initialised model with MMaDA-8B's trunk (`ModelConfig.mmada_8b()`: d_model 4096, 32 layers,
32 heads, MLP 12,288) in bfloat16 on CUDA, with the official-format test tokenizer of the shared fixtures
(`../shared/fixtures/mmada_reference/mmada_a`: LLaDA's special tokens in a small vocabulary, so the head
is small and the trunk is the 8B one). `mmada.evaluation.gsm8k.evaluate_gsm8k` answers the first
`--limit` questions of the real GSM8K test set once per preset, with the official lm-eval settings
(`evaluation/lm/eval.sh`: 256 tokens, 256 steps, blocks of 64; zero-shot here), and every run is written
as a results.json record like `mmada eval gsm8k` writes. Random weights answer nothing right: the
numbers are the path and the speed.

    python benchmarks/gpu_eval_gsm8k.py --out runs/gpu_eval          # ~3 min on one H100/H200
    python benchmarks/gpu_eval_gsm8k.py --smoke --out /tmp/gpu_eval  # the same code on a CPU toy model
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mmada.evaluation.gsm8k import Gsm8kConfig, evaluate_gsm8k
from mmada.evaluation.records import environment, record, write_run
from mmada.model import MMaDAModel, ModelConfig
from mmada.pipelines import MMaDAPipeline, PipelineSettings
from mmada.prompting import TextTokenizer, vocab_for
from mmada.sampling import PRESETS, Overrides, TextSampling

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURE = SHARED / "fixtures" / "mmada_reference" / "mmada_a"
GSM8K = SHARED / "data" / "gsm8k" / "test.jsonl"
OFFICIAL_LM_EVAL = dict(gen_length=256, steps=256, block_length=64, temperature=0.0)  # R evaluation/lm/eval.sh


def build_pipeline(smoke: bool) -> MMaDAPipeline:
    """The fixture's tokenizer and vocabulary layout over an 8B trunk (random, bf16, CUDA) or a toy one (CPU)."""
    tokenizer = TextTokenizer.from_pretrained(FIXTURE)
    fixture = ModelConfig.from_json(FIXTURE / "config.json")
    if smoke:
        config = replace(fixture, max_sequence_length=1024)
        device, dtype = torch.device("cpu"), torch.float32
    else:
        big = ModelConfig.mmada_8b()
        config = replace(fixture, d_model=big.d_model, n_heads=big.n_heads, n_kv_heads=big.n_kv_heads,
                         n_layers=big.n_layers, mlp_hidden_size=big.mlp_hidden_size, max_sequence_length=4096)
        device, dtype = torch.device("cuda"), torch.bfloat16
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device, torch.no_grad():
            model = MMaDAModel(config)
            model.reset_parameters()
    finally:
        torch.set_default_dtype(default)
    model.eval()
    return MMaDAPipeline(model, tokenizer, vocab_for(tokenizer, model), None, PipelineSettings(max_text_len=256))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a toy model on the CPU (what the tests run)")
    parser.add_argument("--limit", type=int, default=None, help="questions (default: 64; --smoke: 4)")
    parser.add_argument("--batch-size", type=int, default=None, help="questions per call (default: 16; --smoke: 2)")
    parser.add_argument("--out", type=Path, required=True, help="folder for one run folder per preset + summary.json")
    args = parser.parse_args(argv)
    limit = args.limit or (4 if args.smoke else 64)
    batch = args.batch_size or (2 if args.smoke else 16)
    settings = dict(gen_length=32, steps=16, block_length=16, temperature=0.0) if args.smoke else OFFICIAL_LM_EVAL
    pipe = build_pipeline(args.smoke)
    rows = []
    for preset in ("exact", "fast", "fastest"):
        text = Overrides(TextSampling, **{**PRESETS[preset], **settings})
        config = Gsm8kConfig(GSM8K, limit=limit, batch_size=batch, text=text)
        evaluate_gsm8k(pipe, replace(config, limit=batch))  # warm-up (CUDA kernels, allocator)
        if pipe.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        run = evaluate_gsm8k(pipe, config)
        env = environment(None, model=pipe.model)
        path = write_run(args.out / preset, record(run, env, seed=0, batch_size=batch), run.outputs)
        peak = torch.cuda.max_memory_allocated() / 2**30 if pipe.device.type == "cuda" else None
        cost = run.meter.summary()
        rows.append({"preset": preset, **cost, "peak_gib": peak, "record": str(path)})
        print(f"{preset:8s} {cost['wall_seconds']:8.1f} s  {cost['tokens_per_second']:9.1f} tokens/s  "
              f"NFE {cost['nfe']:6.1f}  peak {peak if peak is None else round(peak, 1)} GiB", flush=True)
    exact = rows[0]["tokens_per_second"] or 1.0
    for row in rows:
        row["speedup"] = row["tokens_per_second"] / exact
    summary = {"device": str(pipe.device), "smoke": args.smoke, "limit": limit, "batch_size": batch,
               "settings": settings, "rows": rows}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


if __name__ == "__main__":
    main()
