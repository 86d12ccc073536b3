"""Exact vs fast sampling of an 8B-shaped model on one GPU: text, understanding and text-to-image.

A randomly initialised model with MMaDA-8B's shapes (`ModelConfig.mmada_8b()`: d_model 4096, 32 layers,
vocabulary 126,464 text + 8,192 image codes) is built in bfloat16 on CUDA, its head scaled so that a
share of the masked positions is confident (as a trained model; the adaptive commit rules then commit
several tokens per step), and each task is timed once per preset (`exact`, `fast`, `fastest`) after a
warm-up call, with `torch.cuda.synchronize()` around the call and the CUDA peak memory of the call:

* text: an 85-token prompt, 256 tokens in blocks of 32, 256 steps (the peer harness's text_s256);
* understanding: `<|mmu|> <|soi|>` 1,024 image codes (512 px) `<|eoi|>` + a 40-token question,
  128 tokens in blocks of 32, 64 steps;
* text-to-image: a 32-token caption in the 128-token t2i layout, 1,024 image codes, 16 MaskGIT
  steps, guidance 3.5 (batch 2 forwards);
* batching: 8 ragged text prompts (40..120 tokens, left-padded) in one call vs 8 calls at batch 1.

    python benchmarks/gpu_fast_sampling.py [--out docs/gpu_fast_sampling.json]   # ~5 min on one H100/H200
    python benchmarks/gpu_fast_sampling.py --smoke                               # the same code on a CPU toy

`--smoke` runs a tiny model on the CPU (what the test suite checks); the numbers mean nothing there.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mmada.model import MMaDAModel, ModelConfig
from mmada.prompting import Vocab, build_t2i_gen_batch, build_t2i_uncond
from mmada.sampling import IMAGE_PRESETS, PRESETS, ImageSampling, TextSampling, sample_t2i, sample_text


def llada_vocab(config: ModelConfig, text_vocab: int, codebook: int) -> Vocab:
    """The MMaDA-8B id layout (LLaDA's special tokens, the official reserved ids) for a model of `config`."""
    if text_vocab == 126464:
        bos, mask, special = 126080, 126336, dict(eot_id=126348, start_header_id=126346, end_header_id=126347)
        reserved = list(range(126084, 126095))
    else:  # --smoke: the same roles packed at the top of a small text vocabulary
        bos, mask = text_vocab - 20, text_vocab - 1
        special = dict(eot_id=text_vocab - 2, start_header_id=text_vocab - 4, end_header_id=text_vocab - 3)
        reserved = list(range(text_vocab - 16, text_vocab - 5))
    names = ("soi_id", "eoi_id", "sov_id", "eov_id", "t2i_id", "mmu_id", "t2v_id", "v2v_id", "lvg_id", "ipad_id",
             "r2i_id")
    return Vocab(mask_id=mask, bos_id=bos, eos_id=bos + 1, pad_id=bos + 1, **special, **dict(zip(names, reserved)),
                 text_vocab_size=text_vocab, image_offset=text_vocab, codebook_size=codebook,
                 vocab_size=config.vocab_size)


def build(smoke: bool, head_scale: float) -> tuple[MMaDAModel, Vocab, dict[str, int]]:
    if smoke:
        text_vocab, codebook = 1024, 256
        config = ModelConfig.tiny(d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=128,
                                  vocab_size=text_vocab + codebook, embedding_size=text_vocab + codebook,
                                  max_sequence_length=2048, mask_token_id=text_vocab - 1, eos_token_id=text_vocab - 19,
                                  pad_token_id=text_vocab - 19, llm_vocab_size=text_vocab, codebook_size=codebook,
                                  num_vq_tokens=64)
        device, dtype, sizes = torch.device("cpu"), torch.float32, dict(image=64, text_len=32, gen=64, mmu_gen=32)
    else:
        config, text_vocab, codebook = ModelConfig.mmada_8b(), 126464, 8192
        device, dtype = torch.device("cuda"), torch.bfloat16
        sizes = dict(image=1024, text_len=128, gen=256, mmu_gen=128)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device, torch.no_grad():
            model = MMaDAModel(config)
            model.reset_parameters()
            if model.head is not None:
                model.head.weight.mul_(head_scale)
    finally:
        torch.set_default_dtype(default)
    return model.eval(), llada_vocab(config, text_vocab, codebook), sizes


def timed(fn: Any, device: torch.device) -> tuple[float, Any, float | None]:
    """Seconds of one call (after a synchronize), its result, and its CUDA peak memory in GiB."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, out, (torch.cuda.max_memory_allocated() / 2**30) if cuda else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny model on the CPU (checks the script)")
    parser.add_argument("--head-scale", type=float, default=8.0, help="sharpen the random head (confidence)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    model, vocab, sizes = build(args.smoke, args.head_scale)
    device = model.device
    g = torch.Generator().manual_seed(1)
    words = (vocab.text_vocab_size - 400) if not args.smoke else vocab.bos_id

    def text_ids(n: int) -> torch.Tensor:
        return torch.randint(0, words, (1, n), generator=g)

    codes = torch.randint(0, vocab.codebook_size, (1, sizes["image"]), generator=g) + vocab.image_offset
    mmu = torch.cat([torch.tensor([[vocab.mmu_id, vocab.soi_id]]), codes, torch.tensor([[vocab.eoi_id]]),
                     text_ids(40)], dim=1)
    prompts = {"text": text_ids(85).to(device), "understanding": mmu.to(device)}
    text = TextSampling(gen_length=sizes["gen"], block_length=32, steps=sizes["gen"], temperature=0.0,
                        early_stop=False)
    mmu_text = replace(text, gen_length=sizes["mmu_gen"], steps=sizes["mmu_gen"] // 2)
    layout = build_t2i_gen_batch([text_ids(32)[0].tolist()], vocab=vocab, max_text_len=sizes["text_len"],
                                 num_image_tokens=sizes["image"]).to(device)
    null = build_t2i_uncond(vocab=vocab, max_text_len=sizes["text_len"], num_image_tokens=sizes["image"]).to(device)
    image = ImageSampling(timesteps=16, guidance_scale=3.5)
    results: dict[str, Any] = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                               "torch": torch.__version__, "dtype": str(model.dtype), "rows": []}

    def run(task: str, preset: str, fn: Any, units: float) -> None:
        fn()  # warm-up (kernels, allocator)
        seconds, _, peak = timed(fn, device)
        row = {"task": task, "preset": preset, "seconds": round(seconds, 3), "per_s": round(units / seconds, 2),
               "peak_gib": None if peak is None else round(peak, 2)}
        results["rows"].append(row)
        print(json.dumps(row), flush=True)

    with torch.inference_mode():
        for preset in PRESETS:
            for task, base in (("text", text), ("understanding", mmu_text)):
                settings = replace(base, **PRESETS[preset])
                run(task, preset, lambda s=settings, t=task: sample_text(model, prompts[t], s, mask_id=vocab.mask_id),
                    settings.gen_length)
            settings = replace(image, **IMAGE_PRESETS[preset])
            run("text-to-image", preset, lambda s=settings: sample_t2i(
                model, layout, s, vocab, uncond=null, generator=torch.Generator(device).manual_seed(0)), 1)
    with torch.inference_mode():
        batching(model, vocab, text, text_ids, run)
    for row in results["rows"]:
        exact = next(r for r in results["rows"] if r["task"] == row["task"] and r["preset"] == "exact")
        row["speedup"] = round(exact["seconds"] / row["seconds"], 2)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    print("\n| task | preset | s / call | tokens or images / s | speed-up | peak GiB |\n|---|---|---|---|---|---|")
    for row in results["rows"]:
        print(f"| {row['task']} | {row['preset']} | {row['seconds']} | {row['per_s']} | {row['speedup']}x | "
              f"{row['peak_gib']} |")
    return results


def batching(model: MMaDAModel, vocab: Vocab, text: TextSampling, text_ids: Any, run: Any) -> None:
    """8 ragged prompts (40..120 tokens, left-padded) in one call vs 8 calls at batch 1, per preset."""
    rows = [text_ids(n).to(model.device) for n in torch.linspace(40, 120, 8).long().tolist()]
    width = max(r.shape[1] for r in rows)
    ids = torch.full((8, width), vocab.pad_id, dtype=torch.long, device=model.device)
    mask = torch.zeros(8, width, dtype=torch.long, device=model.device)
    for i, r in enumerate(rows):
        ids[i, width - r.shape[1]:], mask[i, width - r.shape[1]:] = r[0], 1
    for preset in PRESETS:
        settings = replace(text, **PRESETS[preset])
        run("text, 8 ragged, batch 1 x 8", preset, lambda s=settings: [
            sample_text(model, r, s, mask_id=vocab.mask_id) for r in rows], 8 * settings.gen_length)
        run("text, 8 ragged, batch 8", preset, lambda s=settings: sample_text(
            model, ids, s, mask_id=vocab.mask_id, attention_mask=mask), 8 * settings.gen_length)


if __name__ == "__main__":
    main()
