"""Tokenizers for the tiny world: where the committed ones live, how to retrain them, how good they are.

- `world_text_tokenizer_dir()`: a byte-level BPE in the LLaDA file format (`text_tokenizer.py`), load
  it with `mmada.prompting.TextTokenizer.from_pretrained`;
- `world_image_tokenizer_dir()`: a patch codebook, 32x32 pixels -> 8x8 codes, one code per exact 4x4
  patch (`mmada.image_tokenizer.PatchCodebook`, made by `build_world_patch_codebook`); load it with
  `mmada.load_image_tokenizer`. A world MAGVIT-v2 with LFQ (`magvit.py`, `train_image_tokenizer`) is
  the learned alternative: its codes carry each patch's neighbourhood, which a small model trained from
  scratch could not learn to read in the recipe's budget (docs/results.md);
- `world_vocab`: the shared text + image vocabulary of a tiny MMaDA over both;
- `evaluate_tokenizers`: held-out numbers (tokens per sequence, PSNR, what the world's judges read
  in reconstructions), reported in docs/results.md and by `mmada world train-tokenizers`.

Reconstruction quality uses the metric of the judges' calibration (`calibration.parsed_exactly`): a
scene counts when the parser finds exactly its objects (shape, colour, centre within 1.5 px).
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmada.image_tokenizer import ImageTokenizer, PatchCodebook, build_patch_codebook, load_image_tokenizer
from mmada.image_tokenizer import save_patch_codebook as _save_patch_codebook
from mmada.image_tokenizer.patch_codebook import image_patches
from mmada.prompting.tokenizer import TextTokenizer
from mmada.prompting.vocab import Vocab
from mmada.world.calibration import parsed_exactly
from mmada.world.captions import evaluate_prompt
from mmada.world.data import _take_unique, digit_examples, iter_t2i, iter_text, iter_vqa
from mmada.world.digits import load_digit_classifier
from mmada.world.magvit import to_pixels, to_uint8, train_image_tokenizer, training_images
from mmada.world.parser import parse_scene
from mmada.world.text_tokenizer import train_text_tokenizer

__all__ = [
    "build_world_patch_codebook",
    "evaluate_image_tokenizer",
    "evaluate_tokenizers",
    "format_evaluation",
    "reconstruct",
    "text_token_stats",
    "train_image_tokenizer",
    "train_text_tokenizer",
    "world_image_tokenizer_dir",
    "world_text_tokenizer_dir",
    "world_vocab",
]

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
"""Committed artefacts, shipped inside the wheel (package data `world/assets/**`)."""
TEXT_TOKENIZER_SUBDIR = "text_tokenizer"
IMAGE_TOKENIZER_SUBDIR = "image_tokenizer"
VOCAB_MULTIPLE = 64
"""Embedding rows are rounded up to a multiple of this (tensor-core friendly, like LLaDA's 126464)."""


def world_text_tokenizer_dir() -> Path:
    """Folder of the committed world text tokenizer (tokenizer.json, tokenizer_config.json, ...)."""
    return ASSETS_DIR / TEXT_TOKENIZER_SUBDIR


def world_image_tokenizer_dir() -> Path:
    """Folder of the committed world image tokenizer (tiny_arch.json, config.json, safetensors)."""
    return ASSETS_DIR / IMAGE_TOKENIZER_SUBDIR


PATCH_SIZE = 4
"""The world's image patch side: 32x32 images -> 8x8 = 64 codes, as the world MAGVIT-v2 gives."""
PATCH_CODEBOOK_SIZE = 1024
"""Patches kept: the world draws 1193 distinct 4x4 patches; the 1024 most frequent cover 99.6% of the
training patches and every held-out scene reconstructs to what the judges read in the original."""
PATCH_CODEBOOK_SCENES = 16_000
"""Training scenes counted (half t2i compositions, half VQA scenes) plus every train-split digit."""


def build_world_patch_codebook(
    out: str | os.PathLike[str] | None = None, *, size: int = PATCH_CODEBOOK_SIZE,
    num_scenes: int = PATCH_CODEBOOK_SCENES, seed: int = 0,
) -> PatchCodebook:
    """The world's patch codebook from train-split images (~10 s); saved to `out` when given."""
    scenes, digits = training_images(seed, num_scenes)
    images = np.concatenate([scenes.numpy(), digits.numpy()])
    tokenizer = build_patch_codebook(images, patch_size=PATCH_SIZE, size=size)
    if out is not None:
        _save_patch_codebook(tokenizer, out)
    return tokenizer


def world_vocab(text_tokenizer: TextTokenizer, codebook_size: int, multiple: int = VOCAB_MULTIPLE) -> Vocab:
    """The shared vocabulary of a tiny MMaDA: text ids, then the image codes, rounded up to `multiple` rows.

    Task tokens are looked up by their `<|reserved_token_k|>` names (`reserved=None`), the way the
    reference fixture's tiny tokenizer maps them.
    """
    if multiple < 1:
        raise ValueError(f"`multiple` must be >= 1, got {multiple}")
    vocab_size = math.ceil((len(text_tokenizer) + codebook_size) / multiple) * multiple
    return Vocab.from_tokenizer(text_tokenizer, vocab_size=vocab_size, codebook_size=codebook_size, reserved=None)


def _stats(lengths: list[int]) -> dict[str, float]:
    return {"mean": float(np.mean(lengths)), "max": int(max(lengths))}


def text_token_stats(
    tokenizer: TextTokenizer, *, num_examples: int = 500, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Tokens per sequence on validation text: {"caption" | "vqa" | "arithmetic": {"mean", "max"}}.

    "vqa" and "arithmetic" count the question plus the chain-of-thought answer (the longest form a
    training row holds, without the chat template's few extra tokens).
    """
    if num_examples < 1:
        raise ValueError(f"`num_examples` must be >= 1, got {num_examples}")
    texts = {
        "caption": [e.caption for e in itertools.islice(iter_t2i("validation", seed), num_examples)],
        "vqa": [f"{e.question} {e.cot_answer}" for e in itertools.islice(iter_vqa("validation", seed), num_examples)],
        "arithmetic": [
            f"{e.question} {e.cot_answer}" for e in itertools.islice(iter_text("validation", seed), num_examples)
        ],
    }
    return {name: _stats([len(ids) for ids in tokenizer.encode_batch(batch)]) for name, batch in texts.items()}


@torch.no_grad()
def reconstruct(tokenizer: ImageTokenizer, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Encode and decode images through the tokenizer.

    Args:
        tokenizer: an image tokenizer whose downsampling divides the image side.
        images: (N, H, W, 3) uint8.
        batch_size: images per forward pass.

    Returns:
        ((N, H, W, 3) uint8 reconstructions, (N, h*w) int64 codes).
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"`images` must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    outputs, codes = [], []
    for start in range(0, len(images), batch_size):
        batch_codes = tokenizer.encode(to_pixels(images[start : start + batch_size]))  # (b, h*w)
        outputs.append(to_uint8(tokenizer.decode(batch_codes)))
        codes.append(batch_codes.cpu().numpy())
    return np.concatenate(outputs), np.concatenate(codes)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


@dataclass(frozen=True)
class ImageTokenizerReport:
    """Reconstruction quality on held-out (validation-split) images; accuracies are fractions."""

    num_scenes: int
    """Distinct held-out shapes scenes (half t2i compositions, half random VQA scenes)."""
    psnr_scenes: float
    """PSNR (dB) of the scene reconstructions."""
    parser_original: float
    """Scenes the parser reads exactly from the original renders."""
    parser_reconstructed: float
    """Scenes the parser reads exactly from their reconstructions."""
    t2i_judge_original: float
    """t2i compositions whose true caption the GenEval-style judge accepts, originals."""
    t2i_judge_reconstructed: float
    """The same on reconstructions."""
    num_digits: int
    """Held-out real digits."""
    psnr_digits: float
    """PSNR (dB) of the digit reconstructions."""
    digit_judge_original: float
    """Digit judge accuracy on the original held-out digits."""
    digit_judge_reconstructed: float
    """Digit judge accuracy on their reconstructions."""
    codes_used: int
    """Distinct codes over all held-out images."""
    codebook_size: int
    """Codes available."""
    background_codes: int
    """Distinct codes given to plain background (all-black) patches of the held-out scenes: 1 when a
    code means one thing."""
    solid_colour_purity: float
    """Over held-out patches of one solid palette colour: the share whose code's majority colour (over
    all such patches) is their colour. 1.0 when every code names one colour."""


def evaluate_image_tokenizer(
    tokenizer: ImageTokenizer, *, num_scenes: int = 1000, seed: int = 0
) -> ImageTokenizerReport:
    """Reconstruct held-out scenes and digits and ask the world's judges what they see (~5 s on 2 cores)."""
    if num_scenes < 2:
        raise ValueError(f"`num_scenes` must be >= 2, got {num_scenes}")
    t2i = _take_unique(iter_t2i("validation", seed), num_scenes // 2, lambda e: e.scene.canonical())
    vqa = _take_unique(iter_vqa("validation", seed), num_scenes - len(t2i), lambda e: e.scene.canonical())
    scenes = [e.scene for e in t2i] + [e.scene for e in vqa]
    originals = np.stack([e.image for e in t2i] + [e.image for e in vqa])
    recon, scene_codes = reconstruct(tokenizer, originals)
    digits = digit_examples("validation")
    digit_images = np.stack([d.image for d in digits])
    digit_recon, digit_codes = reconstruct(tokenizer, digit_images)
    labels = np.asarray([d.label for d in digits])
    judge = load_digit_classifier()

    def parser_accuracy(images: np.ndarray) -> float:
        return float(np.mean([parsed_exactly(s, parse_scene(image)) for s, image in zip(scenes, images)]))

    def t2i_accuracy(images: np.ndarray) -> float:
        return float(np.mean([bool(evaluate_prompt(parse_scene(im) or (), e.spec)) for e, im in zip(t2i, images)]))

    return ImageTokenizerReport(
        num_scenes=len(scenes),
        psnr_scenes=_psnr(recon, originals),
        parser_original=parser_accuracy(originals),
        parser_reconstructed=parser_accuracy(recon),
        t2i_judge_original=t2i_accuracy(originals),
        t2i_judge_reconstructed=t2i_accuracy(recon),
        num_digits=len(digits),
        psnr_digits=_psnr(digit_recon, digit_images),
        digit_judge_original=float(np.mean(judge.predict(digit_images) == labels)),
        digit_judge_reconstructed=float(np.mean(judge.predict(digit_recon) == labels)),
        codes_used=len(np.unique(np.concatenate([scene_codes.ravel(), digit_codes.ravel()]))),
        codebook_size=tokenizer.codebook_size,
        **code_meaning(originals, scene_codes, tokenizer.downsample_factor),
    )


def code_meaning(images: np.ndarray, codes: np.ndarray, patch: int) -> dict[str, Any]:
    """`background_codes` and `solid_colour_purity` (see `ImageTokenizerReport`) of (N, H, W, 3) uint8 scenes
    and their (N, H/patch * W/patch) codes in raster order."""
    rgb = image_patches(images, patch).reshape(-1, 3, patch * patch).astype(np.int64)  # (patches, 3, p^2)
    colour = rgb[:, 0] * 65536 + rgb[:, 1] * 256 + rgb[:, 2]  # (patches, p^2) one int per pixel colour
    solid = (colour == colour[:, :1]).all(axis=1)
    flat_codes = codes.reshape(-1)
    background = solid & (colour[:, 0] == 0)
    coloured = solid & ~background
    purity = 1.0
    if coloured.any():  # per code, the count of its commonest colour, summed over codes
        pairs, counts = np.unique(np.stack([flat_codes[coloured], colour[coloured, 0]], 1), axis=0, return_counts=True)
        majority = np.zeros(int(pairs[:, 0].max()) + 1, dtype=np.int64)
        np.maximum.at(majority, pairs[:, 0], counts)
        purity = int(majority.sum()) / int(coloured.sum())
    return {"background_codes": len(np.unique(flat_codes[background])), "solid_colour_purity": float(purity)}


def evaluate_tokenizers(
    text_dir: str | os.PathLike[str] | None = None,
    image_dir: str | os.PathLike[str] | None = None,
    *,
    num_scenes: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure a pair of world tokenizers (default: the committed ones) on held-out data.

    Returns:
        A json-serialisable dict: "text" (vocabulary size, tokens per caption / VQA / arithmetic
        problem), "image" (`ImageTokenizerReport` fields, parameters, weight bytes) and "vocab" (the
        shared vocabulary a tiny MMaDA over both would use).
    """
    text_dir = Path(text_dir) if text_dir is not None else world_text_tokenizer_dir()
    image_dir = Path(image_dir) if image_dir is not None else world_image_tokenizer_dir()
    text = TextTokenizer.from_pretrained(text_dir)
    image = load_image_tokenizer(image_dir)
    vocab = world_vocab(text, image.codebook_size)
    report = evaluate_image_tokenizer(image, num_scenes=num_scenes, seed=seed)
    weights = sum(p.stat().st_size for p in image_dir.glob("*.safetensors"))
    return {
        "text": {"vocab_size": len(text), "tokens": text_token_stats(text, seed=seed)},
        "image": {**asdict(report), "parameters": sum(p.numel() for p in image.parameters()), "weight_bytes": weights},
        "vocab": {
            "text_vocab_size": vocab.text_vocab_size,
            "image_offset": vocab.image_offset,
            "codebook_size": vocab.codebook_size,
            "vocab_size": vocab.vocab_size,
        },
    }


def format_evaluation(results: dict[str, Any]) -> str:
    """A plain-text table of `evaluate_tokenizers` results (what the CLI prints)."""
    text, image, vocab = results["text"], results["image"], results["vocab"]
    lines = [f"text tokenizer: {text['vocab_size']} tokens (incl. 19 specials)"]
    for name, stats in text["tokens"].items():
        lines.append(f"  tokens per {name:<11} mean {stats['mean']:6.1f}   max {stats['max']:4d}")

    def row(label: str, key: str, note: str = "") -> str:
        return f"  {label:<26} {image[key + '_original']:9.1%} {image[key + '_reconstructed']:14.1%}{note}"

    lines += [
        f"image tokenizer: {image['parameters'] / 1e6:.2f}M parameters, {image['weight_bytes'] / 1e3:.0f} kB, "
        f"{image['codes_used']}/{image['codebook_size']} codes used on held-out images; "
        f"{image['background_codes']} code(s) for plain background, "
        f"solid-colour purity {image['solid_colour_purity']:.1%}",
        f"  {'held-out':<26} {'original':>9} {'reconstructed':>14}",
        row(
            "scenes parsed exactly", "parser", f"   ({image['num_scenes']} scenes, PSNR {image['psnr_scenes']:.1f} dB)"
        ),
        row("t2i captions accepted", "t2i_judge"),
        row(
            "digits judged correctly",
            "digit_judge",
            f"   ({image['num_digits']} digits, PSNR {image['psnr_digits']:.1f} dB)",
        ),
        f"shared vocabulary: text [0, {vocab['text_vocab_size']}), image [{vocab['image_offset']}, "
        f"{vocab['image_offset'] + vocab['codebook_size']}), {vocab['vocab_size']} embedding rows",
    ]
    return "\n".join(lines)
