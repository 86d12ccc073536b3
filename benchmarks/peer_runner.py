#!/usr/bin/env python3
"""peer_bench runner for the `mmada` package (runner contract of ../shared/peer_bench/README.md).

Runs in mmada's own virtualenv (no transformers there): the model comes from `mmada.load_model`, the prompt
ids from mmada's own prompting (`TextTokenizer`, `encode_chat`, `build_mmu_gen`, `build_t2i_gen_batch`,
`build_t2i_uncond`), the samplers are `mmada.sampling.sample_text` / `sample_t2i`. Timing, NFE counting,
peak RSS, token dumps / comparison and the JSON record come from the harness's `pb_common`.

Modes (text / mmu take any `TextSampling` settings, t2i any `ImageSampling` settings):
  --exact            mmada's default sampler (low-confidence remasking, fixed transfer quotas): the official tokens
  --preset NAME      a named preset (exact, fast, fastest; `mmada.sampling.PRESETS`) over the harness settings
  --threshold T      Fast-dLLM confidence-threshold parallel decoding
  --set FIELD=VALUE  any other sampler field, e.g. --set cache=dual --set cache_refresh=4 (repeatable)
  --sequential       with --batch B: B batch-1 sampler calls one after the other (same output tensor)

Prompt check: with --prompts FILE (dumped by dump_prompts.py in the harness venv from pb_common +
the official UniversalPrompting) the runner records whether its own ids equal the harness's ids.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, replace
from pathlib import Path

HARNESS = os.environ.get("PEER_BENCH_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "peer_bench"))
sys.path.insert(0, HARNESS)
import pb_common as C  # noqa: E402

C.quiet_env()

import torch  # noqa: E402
import yaml  # noqa: E402

import mmada  # noqa: E402
from mmada import sampling  # noqa: E402
from mmada.prompting import (  # noqa: E402
    TextTokenizer,
    Vocab,
    build_mmu_gen,
    build_t2i_gen_batch,
    build_t2i_uncond,
    encode_chat,
)


def text_ids(tok, prompt_tokens):
    """pb_common.text_prompt_ids, with mmada's chat encoder instead of transformers' apply_chat_template."""
    def ids_for(q):
        return encode_chat(tok, [{"role": "user", "content": q}])

    ids = ids_for(C.TEXT_QUESTION)
    if prompt_tokens and len(ids) < prompt_tokens:
        q = C.TEXT_QUESTION
        while len(ids_for(q)) < prompt_tokens:
            q = q + " " + C.TEXT_QUESTION
        ids = ids_for(q)
    if prompt_tokens and len(ids) > prompt_tokens:
        eot = tok.token_to_id("<|eot_id|>")
        frame = ids_for("")
        n_tail = len(frame) - frame.index(eot)
        ids = ids[: prompt_tokens - n_tail] + ids[len(ids) - n_tail:]
    return list(ids)


def mmu_ids(tok, vocab, meta):
    v = meta["vocab"]
    g = torch.Generator().manual_seed(C.IMAGE_SEED)
    codes = torch.randint(0, v["codebook_size"], (v["num_vq_tokens"],), generator=g) + v["image_token_offset"]
    chat = encode_chat(tok, [{"role": "user", "content": C.MMU_QUESTION}])
    return build_mmu_gen(codes, chat, vocab=vocab).input_ids[0].tolist()


def _overrides(pairs):
    """--set FIELD=VALUE pairs as typed values (YAML scalars: 4, 0.9, dual, null, true)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def text_settings(a, steps, temperature):
    """The harness call's TextSampling: its shape and temperature, then the preset, then --threshold / --set."""
    base = sampling.TextSampling(gen_length=a.gen_length, block_length=a.block_length, steps=steps,
                                 temperature=temperature, remasking=a.remasking, cfg_scale=a.cfg_scale,
                                 early_stop=False)
    base = sampling.apply_preset(base, a.preset)
    if a.threshold is not None:
        base = replace(base, threshold=a.threshold)
    return replace(base, **_overrides(a.set))


def image_settings(a, timesteps, temperature):
    base = sampling.ImageSampling(timesteps=timesteps, guidance_scale=a.guidance, temperature=temperature,
                                  schedule=a.schedule)
    return replace(sampling.apply_preset(base, a.preset), **_overrides(a.set))


def main(argv=None):
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--task", choices=("text", "mmu", "t2i"), required=True)
    p.add_argument("--exact", action="store_true", help="mmada's default sampler (the default)")
    p.add_argument("--preset", default=None, help="a named sampling preset (mmada.sampling.PRESETS)")
    p.add_argument("--threshold", type=float, default=None, help="Fast-dLLM threshold decoding (text/mmu)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any other sampler setting (TextSampling for text/mmu, ImageSampling for t2i)")
    p.add_argument("--sequential", action="store_true", help="--batch B as B batch-1 calls")
    p.add_argument("--cfg-scale", type=float, default=0.0)
    p.add_argument("--remasking", choices=("low_confidence", "random"), default="low_confidence")
    p.add_argument("--timesteps", type=int, default=16)
    p.add_argument("--guidance", type=float, default=3.5)
    p.add_argument("--schedule", default="cosine")
    p.add_argument("--prompts", default=None, help="harness prompt ids (dump_prompts.py) to check against; "
                   "default: PB_PROMPTS_DIR/<checkpoint folder name>.json if it exists")
    p.add_argument("--name", default=None, help="runner name in the record")
    a = p.parse_args(argv)
    if a.exact and (a.threshold is not None or a.preset or a.set):
        p.error("--exact excludes --threshold, --preset and --set")

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    ckpt = Path(a.ckpt)
    meta = C.load_meta(ckpt)
    v = meta["vocab"]
    dtype = getattr(torch, a.dtype)
    model = mmada.load_model(ckpt, dtype=dtype, device="cpu")
    tok = TextTokenizer.from_pretrained(ckpt)
    vocab = Vocab.from_tokenizer(tok, vocab_size=model.config.vocab_size, codebook_size=v["codebook_size"],
                                 mask_token_id=v["mask"], reserved=meta["reserved_token_mapping"])
    assert vocab.image_offset == v["image_token_offset"] and vocab.mask_id == model.config.mask_token_id
    counter = C.ForwardCounter(model)
    mode = a.preset or ("threshold" if a.threshold is not None else "exact")
    if a.set:
        mode += "+" + ",".join(a.set)
    if a.sequential:
        mode += "-sequential"
    rec = {"runner": a.name or f"mmada-{mode}", "task": a.task, "mode": mode, "threshold": a.threshold,
           "checkpoint": ckpt.name, "preset": meta.get("preset"), "params": meta.get("params_total"),
           "dtype": a.dtype, "threads": torch.get_num_threads(), "batch": a.batch, "repeat": a.repeat,
           "warmup": a.warmup, "cpu": C.cpu_name(), "nproc": os.cpu_count(),
           "versions": {"python": platform.python_version(), "torch": torch.__version__,
                        "mmada": mmada.__version__, "torch_threads": str(torch.get_num_threads())}}
    temperature = a.temperature if a.temperature is not None else (1.0 if a.task == "t2i" else 0.0)
    prompts_file = a.prompts or (Path(os.environ["PB_PROMPTS_DIR"]) / f"{ckpt.name}.json"
                                 if os.environ.get("PB_PROMPTS_DIR") else None)
    harness = json.loads(Path(prompts_file).read_text()) if prompts_file and Path(prompts_file).exists() else None

    if a.task in ("text", "mmu"):
        ids = text_ids(tok, a.prompt_tokens) if a.task == "text" else mmu_ids(tok, vocab, meta)
        if harness is not None and not a.prompt_tokens:
            rec["prompt_check"] = "equal" if ids == harness[a.task] else "DIFFERENT"
        prompt = C.batch_of(ids, a.batch)
        P = prompt.shape[1]

        def call(steps):
            settings = text_settings(a, steps, temperature)
            if a.sequential:
                return torch.cat([sampling.sample_text(model, prompt[i:i + 1], settings, mask_id=vocab.mask_id,
                                                       generator=torch.Generator().manual_seed(a.seed))
                                  for i in range(prompt.shape[0])])
            return sampling.sample_text(model, prompt, settings, mask_id=vocab.mask_id,
                                        generator=torch.Generator().manual_seed(a.seed))

        warm = {"full": lambda: call(a.steps), "none": None,
                "short": lambda: call(C.short_steps(a.gen_length, a.block_length, a.steps))}[a.warmup]
        secs, out, nfes, toks, peak = C.time_calls(lambda: call(a.steps), a.repeat, warm, counter)
        rec["settings"] = asdict(text_settings(a, a.steps, temperature))
        rec.update(sampler="sample_text", prompt_len=P, gen_length=a.gen_length, block_length=a.block_length,
                   steps=a.steps, temperature=temperature, cfg_scale=a.cfg_scale, remasking=a.remasking)
        s = C.summarize(secs, nfes, toks, a.batch * a.gen_length)
        rec["tokens_per_s"] = s.pop("per_s_median")
        rec.update(s)
        rec["masks_left"] = int((out[:, P:] == vocab.mask_id).sum())
        if a.reference_tokens:
            ref = json.loads(Path(a.reference_tokens).read_text())
            rec["reference_prompt_equal"] = [r[:P] for r in ref["tokens"]][:1] == [prompt[0].tolist()]
    else:
        prompts = C.t2i_prompts(a.batch)
        n_img, M = v["num_vq_tokens"], v["max_text_len"]
        lay = build_t2i_gen_batch(tok.encode_batch(prompts), vocab=vocab, max_text_len=M, num_image_tokens=n_img)
        null = build_t2i_uncond(vocab=vocab, max_text_len=M, num_image_tokens=n_img, batch_size=a.batch)
        ids, am, uids, uam = lay.input_ids, lay.attention_mask, null.input_ids, null.attention_mask
        if harness is not None and a.batch == 1:
            h = harness["t2i"]
            same = (ids.tolist() == h["ids"] and am.long().tolist() == h["am"] and uids.tolist() == h["uids"]
                    and uam.long().tolist() == h["uam"])
            rec["prompt_check"] = "equal" if same else "DIFFERENT"

        def call(timesteps):
            settings = image_settings(a, timesteps, temperature)
            return sampling.sample_t2i(model, lay, settings, vocab, uncond=null if a.guidance > 0 else None,
                                       generator=torch.Generator().manual_seed(a.seed))

        warm = {"full": lambda: call(a.timesteps), "none": None,
                "short": lambda: call(min(2, a.timesteps))}[a.warmup]
        secs, out, nfes, toks, peak = C.time_calls(lambda: call(a.timesteps), a.repeat, warm, counter)
        rec["settings"] = asdict(image_settings(a, a.timesteps, temperature))
        rec.update(sampler="sample_t2i", prompt_len=int(ids.shape[1]), image_tokens=n_img,
                   timesteps=a.timesteps, guidance=a.guidance, temperature=temperature, schedule=a.schedule)
        s = C.summarize(secs, nfes, toks, a.batch)
        rec["images_per_s"] = s.pop("per_s_median")
        rec["tokens_per_s"] = round(a.batch * n_img / s["seconds_median"], 3)
        rec.update(s)
        P = 0

    rec["peak_rss_mb"] = round(C.lifetime_peak_rss_mb(), 1)
    rec["peak_rss_timed_mb"] = round(peak, 1) if peak is not None else None
    rec["tokens_sha1"] = C.tokens_digest(out)
    settings = {k: rec.get(k) for k in ("task", "gen_length", "block_length", "steps", "timesteps", "guidance",
                                        "temperature", "batch", "prompt_len")}
    if a.dump_tokens:
        C.dump_tokens(a.dump_tokens, out, P, settings)
    if a.reference_tokens:
        rec["compare"] = C.compare_tokens(a.reference_tokens, out, P)
    C.finish(rec, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
