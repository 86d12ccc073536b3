"""Worker for tests/test_distributed_rl.py: a short UniGRPO stage on the built-in tiny model.

Run as a plain process (one rank) or under `python -m torch.distributed.run --nproc_per_node 2` (gloo on
CPU, FSDP2-sharded): `mmada.rl.trainer.run_rl_training` with the rollouts shrunk, writing its run folder
(checkpoints and metrics.jsonl) to --out. With 2 ranks every rank rolls out the same prompts and trains on
half of the kept rows (`mmada.rl.loop.Shard`), so both launches must take the same steps. AdamW's eps is
1e-4: with 1e-8, a weight whose gradient is ~1e-9 (an embedding row seen once) moves by a full lr-sized
step whose sign is decided by float rounding, which then differs between the two summation orders.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmada.rl.trainer import load_stage, run_rl_training
from mmada.utils.device import seed_everything

TINY = Path(__file__).resolve().parents[1] / "src" / "mmada" / "assets" / "mmada-tiny"
SETTINGS = [
    f"model.init={TINY}", "model.mixed_precision=none", "device=cpu", "rl.tasks={arithmetic: 1.0, vqa: 1.0}",
    "rl.thinking=false",  # short answers: 16 tokens hold no <think> trace, and every group would score 0
    "rl.prompts_per_step=3", "rl.unigrpo.group_size=4", "rl.unigrpo.inner_steps=2",
    "rl.text={gen_length: 16, steps: 8, block_length: 16, temperature: 1.0}",
    "rl.short={gen_length: 8, steps: 4, block_length: 8, temperature: 1.0}",
    "log.progress=false", "checkpoint.every=3", "optim.lr=1e-3", "optim.eps=1e-4", "schedule.max_steps=3",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    seed_everything(0)
    config = load_stage(["tiny_unigrpo"], [f"log.run_dir={args.out}", *SETTINGS])
    result = run_rl_training(config)
    assert result.step == 3, result


if __name__ == "__main__":
    main()
