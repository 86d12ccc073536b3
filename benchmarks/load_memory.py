"""Peak memory and time of loading a checkpoint, relative to its size on disk.

Writes a synthetic checkpoint (random bf16 weights, official names, sharded + index, >= 500 MB by
default) and loads it in fresh processes:

* `mmada.load_model`  - meta-device construction, shard-by-shard reads, `load_state_dict(assign=True)`;
* `naive baseline`    - what research code typically does: build the model with random init, read
                        every shard into one state dict, then copy it in with `load_state_dict`.

Peak RSS is measured in the child (`ru_maxrss`) minus its RSS right after importing torch and mmada,
and reported as a multiple of the checkpoint's bytes on disk (target <= 1.3x for mmada).

    python benchmarks/load_memory.py [--size-mb 600] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import torch, mmada
from safetensors.torch import load_file
from mmada.checkpoint.hf import official_to_ours, weight_files

def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024

folder, mode = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
base = rss_mb()
t0 = time.perf_counter()
if mode == "mmada":
    model = mmada.load_model(folder, dtype=torch.bfloat16)
else:
    config = mmada.ModelConfig.from_json(folder + "/config.json")
    model = mmada.MMaDAModel(config).to(torch.bfloat16)
    state = {}
    for path in weight_files(__import__("pathlib").Path(folder)):
        state.update({official_to_ours(k): v for k, v in load_file(path).items()})
    model.load_state_dict(state)
    del state
elapsed = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": elapsed, "peak_mb": peak, "base_mb": base}))
"""


def write_checkpoint(folder: Path, size_mb: int, shard_mb: int) -> int:
    """Random bf16 weights in the official layout; returns bytes written. Built shard by shard."""
    import torch
    from safetensors.torch import save_file

    from mmada import MMaDAModel, ModelConfig
    from mmada.checkpoint.hf import ours_to_official

    # d_model 1024 / SwiGLU 5632 / vocab 32k (about 21M parameters a layer); layers scale to the size.
    probe = ModelConfig(d_model=1024, n_heads=16, n_kv_heads=16, n_layers=1, mlp_hidden_size=5632,
                        vocab_size=32768, embedding_size=32768, mask_token_id=32000, llm_vocab_size=32000,
                        eos_token_id=31999, pad_token_id=31999,
                        codebook_size=768)
    per_layer = probe.replace(n_layers=2).num_parameters() - probe.num_parameters()
    fixed = probe.num_parameters() - per_layer
    layers = max(1, round((size_mb * 2**20 / 2 - fixed) / per_layer))
    config = probe.replace(n_layers=layers)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in MMaDAModel(config).state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    weight_map, shard, shard_bytes, index, total = {}, {}, 0, 0, 0

    def flush():
        nonlocal shard, shard_bytes, index
        if shard:
            index += 1
            name = f"model-{index:05d}-of-NNNNN.safetensors"
            save_file(shard, str(folder / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
            shard, shard_bytes = {}, 0

    for ours, shape in shapes.items():
        t = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
        if shard_bytes + t.numel() * 2 > shard_mb * 2**20:
            flush()
        shard[ours_to_official(ours)] = t
        shard_bytes += t.numel() * 2
        total += t.numel() * 2
    flush()
    final = {k: name.replace("NNNNN", f"{index:05d}") for k, name in weight_map.items()}
    for name in set(weight_map.values()):
        (folder / name).rename(folder / name.replace("NNNNN", f"{index:05d}"))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": final}, indent=2))
    config.to_json(folder / "config.json")
    return total


def run_child(folder: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), mode], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=600, help="checkpoint size on disk (MB)")
    parser.add_argument("--shard-mb", type=int, default=200, help="shard size (MB)")
    parser.add_argument("--keep", type=Path, default=None, help="write the checkpoint here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp) / "ckpt"
        t0 = time.perf_counter()
        nbytes = write_checkpoint(folder, args.size_mb, args.shard_mb)
        print(f"wrote {nbytes / 2**20:.0f} MB ({len(list(folder.glob('*.safetensors')))} shards) "
              f"in {time.perf_counter() - t0:.1f}s to {folder}")
        rows = [("mmada.load_model", run_child(folder, "mmada")), ("naive baseline", run_child(folder, "naive"))]
    print("\n| loader | load time (s) | peak RSS over baseline (MB) | peak / checkpoint size |")
    print("|---|---|---|---|")
    for name, r in rows:
        extra = r["peak_mb"] - r["base_mb"]
        print(f"| {name} | {r['seconds']:.2f} | {extra:.0f} | {extra * 2**20 / nbytes:.2f}x |")
    speed = rows[1][1]["seconds"] / rows[0][1]["seconds"]
    mem = (rows[1][1]["peak_mb"] - rows[1][1]["base_mb"]) / (rows[0][1]["peak_mb"] - rows[0][1]["base_mb"])
    print(f"\nmmada vs naive: {speed:.2f}x faster, {mem:.2f}x less peak memory")


if __name__ == "__main__":
    main()
