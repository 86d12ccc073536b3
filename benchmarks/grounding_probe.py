"""How fast does a fresh MMaDA-tiny learn to read an image? A two-minute stand-in for the 30-minute recipe.

Each variant (a set of `key=value` overrides of `tiny_pretrain`) trains a fresh model on captioning only,
every caption token masked and plain cross-entropy (the hardest grounding case of MMaDA's mmu loss, with
no diffusion noise to average over), then reports the colour-word accuracy on held-out scenes: chance
is about 1/6, a model that reads colours off the image codes gets far above it. The first variant is the
baseline of the table.

    python benchmarks/grounding_probe.py --steps 400 --variants model.init_std=0.02 model.init_std=0.1

Used to find that the 8B initialisation scale (std 0.02) leaves grounding at chance for hundreds of steps
at this size (docs/results.md).
"""

from __future__ import annotations

import argparse
import time

import torch

from mmada.prompting import Vocab
from mmada.training.config import build_model, load_config, resolve_asset
from mmada.training.data_world import WorldSource
from mmada.world.tokenizers import world_text_tokenizer_dir, world_vocab

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")


def colour_ids(tokenizer) -> set[int]:
    ids = set()
    for colour in COLOURS:
        for text in (colour, " " + colour):
            ids.update(tokenizer.encode(text)[:1])
    return ids


def source(config, tokenizer, vocab: Vocab, image_tokenizer, split: str, seed: int) -> WorldSource:
    spec = {**dict(config.data), "split": split, "batch_sizes": {"mmu": 16},
            "weights": {"mmu": {"caption": 1, "vqa": 0, "digits": 0}}}
    return WorldSource.from_spec(spec, stage="pretrain", tokenizer=tokenizer, vocab=vocab,
                                 image_tokenizer=image_tokenizer, seed=seed, rank=0, world_size=1)


def masked_logits(model, layout, vocab: Vocab) -> tuple[torch.Tensor, torch.Tensor]:
    answer = ~layout.prompt_mask
    noisy = layout.input_ids.masked_fill(answer, vocab.mask_id)
    return model(noisy, layout.attention_mask, positions=answer, padding="hide"), layout.input_ids[answer]


def probe(overrides: list[str], steps: int, lr: float, eval_batches: int, assets) -> tuple[float, float]:
    """(held-out colour-word accuracy, seconds) of one variant."""
    tokenizer, vocab, image_tokenizer, colours = assets
    torch.manual_seed(0)
    config = load_config(["tiny_pretrain"], overrides)
    model = build_model(config.model, "cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 30))
    batches = iter(source(config, tokenizer, vocab, image_tokenizer, "train", seed=1))
    start = time.perf_counter()
    for _ in range(steps):
        logits, targets = masked_logits(model, next(batches)["mmu"], vocab)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        warmup.step()
    seconds = time.perf_counter() - start
    model.eval()
    hits = total = 0
    held_out = iter(source(config, tokenizer, vocab, image_tokenizer, "validation", seed=2))
    with torch.no_grad():
        for _ in range(eval_batches):
            logits, targets = masked_logits(model, next(held_out)["mmu"], vocab)
            is_colour = torch.tensor([int(t) in colours for t in targets], dtype=torch.bool)
            hits += int((logits.argmax(-1)[is_colour] == targets[is_colour]).sum())
            total += int(is_colour.sum())
    return hits / max(total, 1), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-batches", type=int, default=8, help="held-out batches of 16 captions")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["model.init_std=0.02", "model.init_std=0.1"],
                        help="one quoted group of space-separated key=value overrides per variant")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from mmada.image_tokenizer import load_image_tokenizer
    from mmada.prompting import TextTokenizer

    tokenizer = TextTokenizer.from_pretrained(world_text_tokenizer_dir())
    image_tokenizer = load_image_tokenizer(resolve_asset("world"))
    vocab = world_vocab(tokenizer, image_tokenizer.codebook_size)
    assets = (tokenizer, vocab, image_tokenizer, colour_ids(tokenizer))
    print(f"captioning probe: {args.steps} steps x 16 captions, lr {args.lr}, held-out colour-word accuracy "
          f"(chance ~{1 / len(COLOURS):.2f})")
    print("| variant | colour-word accuracy | vs baseline | train s |")
    print("|---|---|---|---|")
    baseline = None
    for variant in args.variants:
        accuracy, seconds = probe(variant.split(), args.steps, args.lr, args.eval_batches, assets)
        baseline = accuracy if baseline is None else baseline
        ratio = f"{accuracy / baseline:.2f}x" if baseline > 0 else "-"
        print(f"| {variant} | {accuracy:.3f} | {ratio} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
