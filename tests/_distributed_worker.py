"""Worker for tests/test_distributed.py: a few optimizer steps on one global batch.

Run as a plain process (world size 1: the reference) or under
`python -m torch.distributed.run --nproc_per_node 2` (gloo on CPU, FSDP2-sharded). Every rank noises
the same *global* batch with the same seed and keeps its own contiguous slice of rows, so the
sharded run and the single-process run see exactly the same rows and masks. The losses are per-row
means (lm "tokens", lm_chat "answer_length"), and FSDP averages gradients over ranks, so both runs
must take identical steps.

Each step clips the global gradient norm to MAX_GRAD_NORM (always active here). Rank 0
writes `result.safetensors` to --out: the final weights (`weight.<name>`), the per-step global
losses (`losses`) and gradient norms before clipping (`grad_norms`). With --dcp it also saves a
sharded checkpoint after the steps, then takes one more step twice, once continuing and once from a
fresh model resumed from that checkpoint (`continued.<name>` / `resumed.<name>`).

Flags --replicate (wrap_model(fsdp=False)), --mixed-precision (bf16 compute) and --accumulate N
(N micro-batches per rank and step, gradient sync only after the last) select the variants.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
from safetensors.torch import save_file

import mmada
from mmada.prompting import Span, TextTokenizer, TokenLayout, Vocab, build_lm_batch, build_lm_chat_batch
from mmada.training.distributed import (
    DistributedContext,
    all_reduce_mean,
    clip_grad_norm,
    full_state_dict,
    init_distributed,
    load_sharded,
    save_sharded,
    set_gradient_sync,
    teardown,
    wrap_model,
)
from mmada.training.objectives import MaskedDiffusionObjective, NoisedTask

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mmada_reference" / "mmada_a"
SEQ_LEN = 24
MAX_GRAD_NORM = 0.5  # below every step's norm here, so clipping is always active
TEXTS = ["once upon a time", "a red cube on a table", "two blue balls", "hello world, a tiny test"]
CHATS = [
    "<|start_header_id|>user<|end_header_id|>\nWhat is it?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
    + answer
    for answer in ("A cube.", "Two balls, one red.", "Nothing at all", "It is 42.")
]


def global_batch() -> dict[str, TokenLayout]:
    tok = TextTokenizer.from_pretrained(REFERENCE)
    vocab = Vocab.from_tokenizer(tok, vocab_size=512, codebook_size=128, reserved=None)
    return {
        "lm": build_lm_batch(tok.encode_batch(TEXTS), vocab=vocab, max_seq_len=SEQ_LEN),
        "lm_chat": build_lm_chat_batch(tok.encode_batch(CHATS), vocab=vocab, max_seq_len=SEQ_LEN),
    }


def rows_of(item: NoisedTask, part: int, parts: int) -> NoisedTask:
    """The `part`-th of `parts` equal contiguous shares of a noised task's rows."""
    per_part = item.layout.batch_size // parts
    rows = slice(part * per_part, (part + 1) * per_part)
    lay = item.layout
    layout = TokenLayout(
        lay.task, lay.input_ids[rows], lay.attention_mask[rows], lay.prompt_mask[rows],
        lay.spans.map(lambda s: Span(s.start[rows], s.stop[rows])),
        None if lay.labels is None else lay.labels[rows],
    )
    masked = dataclasses.replace(
        item.masked, noisy=item.masked.noisy[rows], is_masked=item.masked.is_masked[rows],
        p_mask=item.masked.p_mask[rows],
    )
    return NoisedTask(item.task, layout, masked, item.loss_positions[rows])


def train_step(
    model, optimizer, batch, step: int, ctx: DistributedContext, accumulate: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step; with `accumulate` > 1 this rank's rows are split into that many micro-batches."""
    objective = MaskedDiffusionObjective()
    gen = torch.Generator().manual_seed(1000 + step)  # the same masks on every rank
    noised = [objective.noise(task, layout, model.config.mask_token_id, gen) for task, layout in batch.items()]
    mine = [rows_of(item, ctx.rank, ctx.world_size) for item in noised]
    loss = torch.zeros(())
    for micro in range(accumulate):
        set_gradient_sync(model, micro == accumulate - 1)  # reduce once, after the last micro-batch
        out = objective.loss(model, [rows_of(item, micro, accumulate) for item in mine])
        (out.total / accumulate).backward()  # the mean of per-row means over equal micro-batches
        loss = loss + out.total.detach() / accumulate
    grad_norm = clip_grad_norm(model, MAX_GRAD_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return all_reduce_mean(loss, ctx), grad_norm


def build(ctx: DistributedContext, args: argparse.Namespace):
    model = mmada.load_model(REFERENCE).train()
    model = wrap_model(model, ctx, fsdp=not args.replicate, mixed_precision=args.mixed_precision)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    return model, optimizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dcp", type=Path, default=None)
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument("--replicate", action="store_true", help="wrap_model(fsdp=False): data parallel")
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per step (gradient accumulation)")
    args = parser.parse_args()

    ctx = init_distributed(backend="gloo", device="cpu")
    batch = global_batch()
    model, optimizer = build(ctx, args)
    steps = (train_step(model, optimizer, batch, step, ctx, args.accumulate) for step in range(args.steps))
    losses, grad_norms = zip(*steps)
    result = {f"weight.{k}": v for k, v in full_state_dict(model, ctx).items()}
    result["losses"], result["grad_norms"] = torch.stack(losses).float(), torch.stack(grad_norms).float()

    if args.dcp is not None:
        save_sharded(model, optimizer, args.dcp, ctx)
        train_step(model, optimizer, batch, args.steps, ctx)
        result.update({f"continued.{k}": v for k, v in full_state_dict(model, ctx).items()})
        fresh, fresh_optimizer = build(ctx, args)
        load_sharded(fresh, fresh_optimizer, args.dcp, ctx)
        train_step(fresh, fresh_optimizer, batch, args.steps, ctx)
        result.update({f"resumed.{k}": v for k, v in full_state_dict(fresh, ctx).items()})

    if ctx.is_main:
        args.out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in result.items()}, str(args.out / "result.safetensors"))
    teardown(ctx)


if __name__ == "__main__":
    main()
