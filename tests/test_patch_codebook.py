"""The patch-codebook image tokenizer: exact round trips, one code per patch content, files, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmada.image_tokenizer import PatchCodebook, build_patch_codebook, load_image_tokenizer, save_patch_codebook
from mmada.image_tokenizer.patch_codebook import count_patches
from mmada.utils.files import CheckpointError
from mmada.world.data import iter_vqa
from mmada.world.magvit import to_pixels, to_uint8
from mmada.world.scenes import Scene, SceneObject, render_scene
from mmada.world.tokenizers import code_meaning, reconstruct, world_image_tokenizer_dir


def _images(seed: int = 0) -> np.ndarray:
    """(5, 8, 8, 3) uint8: a black image, two solid colours, two halves."""
    rng = np.random.default_rng(seed)
    images = np.zeros((5, 8, 8, 3), dtype=np.uint8)
    images[1] = (200, 10, 10)
    images[2, :4] = (10, 200, 10)
    images[3, :, 4:] = rng.integers(0, 255, 3, dtype=np.uint8)
    images[4, 2:6, 2:6] = (5, 5, 250)
    return images


@pytest.fixture(scope="module")
def world() -> PatchCodebook:
    return load_image_tokenizer(world_image_tokenizer_dir())


def test_most_frequent_patch_is_code_zero_and_ties_are_deterministic() -> None:
    images = _images()
    tokenizer = build_patch_codebook(images, patch_size=4, size=100)
    counts = count_patches(images, 4)
    assert tokenizer.codebook_size == len(counts)  # fewer distinct patches than asked for
    assert tokenizer.patches[0].sum() == 0  # black is the commonest patch of these images
    frequencies = [counts[p.numpy().tobytes()] for p in tokenizer.patches]
    assert frequencies == sorted(frequencies, reverse=True)
    again = build_patch_codebook(images[::-1].copy(), patch_size=4, size=100)
    assert torch.equal(again.patches, tokenizer.patches)  # order of images does not matter


def test_encode_decode_is_exact_for_table_patches() -> None:
    images = _images()
    tokenizer = build_patch_codebook(images, patch_size=4, size=100)
    codes = tokenizer.encode(to_pixels(images))
    assert codes.shape == (5, 4) and codes.dtype == torch.int64
    assert np.array_equal(to_uint8(tokenizer.decode(codes)), images)
    assert tokenizer.num_tokens(8) == 4 and tokenizer.num_tokens((8, 16)) == 8


def test_one_code_per_patch_content_whatever_surrounds_it() -> None:
    tokenizer = build_patch_codebook(_images(), patch_size=4, size=100)
    codes = tokenizer.encode(to_pixels(_images())).view(5, 2, 2)
    assert codes[0].unique().numel() == 1  # black everywhere: one code
    assert codes[2, 1].tolist() == codes[0, 0].tolist()  # black beside green = black alone
    assert codes[1].unique().numel() == 1 and codes[1, 0, 0] != codes[0, 0, 0]


def test_unseen_patches_get_the_nearest_table_patch() -> None:
    tokenizer = build_patch_codebook(_images(), patch_size=4, size=100)
    nearly_red = np.full((1, 4, 4, 3), (190, 20, 10), dtype=np.uint8)
    code = tokenizer.encode(to_pixels(nearly_red))
    assert to_uint8(tokenizer.decode(code))[0, 0, 0].tolist() == [200, 10, 10]


def test_codebook_size_caps_the_table() -> None:
    tokenizer = build_patch_codebook(_images(), patch_size=4, size=2)
    assert tokenizer.codebook_size == 2
    assert int(tokenizer.encode(to_pixels(_images())).max()) <= 1


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    tokenizer = build_patch_codebook(_images(), patch_size=4, size=100)
    folder = save_patch_codebook(tokenizer, tmp_path / "tok")
    loaded = load_image_tokenizer(folder)
    assert isinstance(loaded, PatchCodebook)
    assert torch.equal(loaded.patches, tokenizer.patches) and loaded.config == tokenizer.config
    assert not any(p.requires_grad for p in loaded.parameters())


@pytest.mark.parametrize("case", ["no_weights", "bad_config", "extra_tensor", "wrong_shape"])
def test_malformed_folders_are_refused(tmp_path: Path, case: str) -> None:
    from safetensors.torch import save_file

    folder = save_patch_codebook(build_patch_codebook(_images(), patch_size=4, size=100), tmp_path / "tok")
    if case == "no_weights":
        (folder / "model.safetensors").unlink()
    elif case == "bad_config":
        (folder / "config.json").write_text(json.dumps({"_class_name": "PatchCodebook", "patch_size": 3,
                                                        "image_size": 32}))
    elif case == "extra_tensor":
        save_file({"codebook": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "x": torch.zeros(1)},
                  folder / "model.safetensors")
    else:
        save_file({"codebook": torch.zeros(2, 3, 5, 5, dtype=torch.uint8)}, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="PatchCodebook|model.safetensors|codebook"):
        load_image_tokenizer(folder)


def test_bad_inputs_are_refused() -> None:
    tokenizer = build_patch_codebook(_images(), patch_size=4, size=100)
    with pytest.raises(ValueError, match="multiples of 4"):
        tokenizer.encode(torch.zeros(1, 3, 6, 8))
    with pytest.raises(ValueError, match="NaN"):
        tokenizer.encode(torch.full((1, 3, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="floating point"):
        tokenizer.encode(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="out of range"):
        tokenizer.decode(torch.tensor([[0, 1, 2, 999]]))
    with pytest.raises(ValueError, match="grid"):
        tokenizer.decode(torch.tensor([[0, 1, 2]]))


def test_world_codebook_codes_mean_one_thing(world: PatchCodebook) -> None:
    """One code for plain background, every solid-colour code names one colour, scenes come back exactly."""
    examples = [next(it) for it in [iter_vqa("validation", seed=3)] for _ in range(200)]
    images = np.stack([e.image for e in examples])
    recon, codes = reconstruct(world, images)
    meaning = code_meaning(images, codes, world.downsample_factor)
    assert meaning == {"background_codes": 1, "solid_colour_purity": 1.0}
    assert world.codebook_size == 1024 and world.num_tokens(32) == 64
    same = (recon == images).all(-1).reshape(200, 8, 4, 8, 4).all((2, 4))  # (scene, 8, 8) exact patches
    assert same.mean() >= 0.99  # the few patches not in the table come back as their nearest one


def test_world_codebook_reconstruction_is_read_by_the_judges(world: PatchCodebook) -> None:
    from mmada.world.calibration import parsed_exactly
    from mmada.world.parser import parse_scene

    scene = Scene((SceneObject("circle", "red", 2, 3, 11), SceneObject("triangle", "blue", 18, 17, 9)))
    image = render_scene(scene)
    recon, _ = reconstruct(world, image[None])
    assert parsed_exactly(scene, parse_scene(recon[0]))
