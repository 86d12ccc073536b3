"""World tokenizers: the committed artefacts load and behave, training is deterministic, the CLI works."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmada.cli import main
from mmada.image_tokenizer import CoderConfig, LFQConfig, MagvitConfig, load_image_tokenizer
from mmada.prompting import RESERVED_TOKEN_NAMES, TextTokenizer, encode_chat, render_chat
from mmada.world.calibration import parsed_exactly
from mmada.world.data import digit_examples, iter_t2i, iter_text, iter_vqa
from mmada.world.digits import load_digit_classifier
from mmada.world.magvit import MagvitTraining, train_image_tokenizer, train_magvit
from mmada.world.parser import parse_scene
from mmada.world.scenes import Scene, SceneObject, render_scene
from mmada.world.text_tokenizer import SPECIAL_TOKENS, train_text_tokenizer
from mmada.world.tokenizers import (
    evaluate_tokenizers,
    reconstruct,
    world_image_tokenizer_dir,
    world_text_tokenizer_dir,
    world_vocab,
)

MAX_IMAGE_TOKENIZER_BYTES = 10_000_000  # 2.3M float32 parameters (the codes MMaDA-tiny was trained on)


@pytest.fixture(scope="module")
def text_tokenizer() -> TextTokenizer:
    return TextTokenizer.from_pretrained(world_text_tokenizer_dir())


@pytest.fixture(scope="module")
def image_tokenizer():
    return load_image_tokenizer(world_image_tokenizer_dir())


def _world_texts(count: int = 40) -> list[str]:
    texts = [e.caption for e in _take(iter_t2i("validation"), count)]
    texts += [t for e in _take(iter_vqa("validation"), count) for t in (e.question, e.answer, e.cot_answer)]
    texts += [t for e in _take(iter_text("validation"), count) for t in (e.question, e.answer, e.cot_answer)]
    texts += [t for e in digit_examples("validation")[:10] for t in (e.caption, e.question, e.cot_answer)]
    return texts


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


# ---- text tokenizer ----------------------------------------------------------------------------------
def test_text_tokenizer_has_the_llada_special_token_layout(text_tokenizer: TextTokenizer) -> None:
    size = len(text_tokenizer)
    first = size - len(SPECIAL_TOKENS)
    assert [text_tokenizer.id_to_token(first + i) for i in range(len(SPECIAL_TOKENS))] == list(SPECIAL_TOKENS)
    assert (text_tokenizer.bos_token, text_tokenizer.eos_token) == ("<|startoftext|>", "<|endoftext|>")
    assert text_tokenizer.pad_token_id == text_tokenizer.eos_token_id == first + 1
    assert text_tokenizer.mask_token == "<|mdm_mask|>"
    assert text_tokenizer.id_to_token(0) == "!"  # the byte alphabet comes first, as in the fixture


def test_text_tokenizer_files_match_the_reference_format(reference_dir: Path) -> None:
    ours, reference = world_text_tokenizer_dir(), reference_dir / "tokenizer"
    assert json.loads((ours / "special_tokens_map.json").read_text()) == json.loads(
        (reference / "special_tokens_map.json").read_text()
    )
    config, ref_config = (json.loads((d / "tokenizer_config.json").read_text()) for d in (ours, reference))
    assert set(config) == set(ref_config)
    assert config["chat_template"] == ref_config["chat_template"]
    for key in ("bos_token", "eos_token", "pad_token", "mask_token", "padding_side", "tokenizer_class"):
        assert config[key] == ref_config[key], key
    assert [v["content"] for v in config["added_tokens_decoder"].values()] == list(SPECIAL_TOKENS)
    model, ref_model = (json.loads((d / "tokenizer.json").read_text()) for d in (ours, reference))
    for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        assert model[key] == ref_model[key], key
    assert model["model"]["type"] == "BPE"


def test_vocab_resolves_every_task_token(text_tokenizer: TextTokenizer, image_tokenizer) -> None:
    vocab = world_vocab(text_tokenizer, image_tokenizer.codebook_size)
    assert vocab.image_offset == len(text_tokenizer)
    assert vocab.vocab_size % 64 == 0 and vocab.vocab_size >= vocab.image_end
    assert vocab.t2i_id == text_tokenizer.token_to_id(RESERVED_TOKEN_NAMES["<|t2i|>"])
    assert vocab.soi_id == text_tokenizer.token_to_id("<|reserved_token_2|>")
    assert vocab.mask_id == text_tokenizer.mask_token_id != vocab.pad_id


def test_text_round_trips_exactly(text_tokenizer: TextTokenizer) -> None:
    texts = [*_world_texts(), "Über 12,345 ☃ emoji 🙂\n\ttabs  and  spaces ", ""]
    for text in texts:
        assert text_tokenizer.decode(text_tokenizer.encode(text)) == text


def test_world_text_is_compact(text_tokenizer: TextTokenizer) -> None:
    caption = "two green circles above an orange circle"
    assert len(text_tokenizer.encode(caption)) <= len(caption.split()) + 1


def test_chat_template_matches_render_chat(text_tokenizer: TextTokenizer) -> None:
    jinja2 = pytest.importorskip("jinja2")
    messages = [
        {"role": "system", "content": "You are helpful. "},
        {"role": "user", "content": "what color is the square?"},
        {"role": "assistant", "content": "<think> It is red. </think> red"},
        {"role": "user", "content": "Ann has 7 cookies. She eats 2. How many are left?"},
    ]
    template = jinja2.Environment().from_string(text_tokenizer.chat_template)
    rendered = template.render(messages=messages, bos_token=text_tokenizer.bos_token)
    assert rendered == render_chat(messages, bos_token=text_tokenizer.bos_token)
    ids = encode_chat(text_tokenizer, messages, thinking=True)
    assert ids == text_tokenizer.encode(render_chat(messages, bos_token=text_tokenizer.bos_token, thinking=True))
    assert ids[0] == text_tokenizer.bos_token_id
    header = [text_tokenizer.token_to_id(t) for t in ("<|start_header_id|>", "<|end_header_id|>")]
    assert ids.count(header[0]) == ids.count(header[1]) == len(messages) + 1


def test_text_training_is_deterministic(tmp_path: Path) -> None:
    def train(name: str, seed: int) -> bytes:
        folder = train_text_tokenizer(tmp_path / name, vocab_size=400, seed=seed, examples_per_task=150)
        return b"".join((folder / f).read_bytes() for f in ("tokenizer.json", "tokenizer_config.json"))

    assert train("a", 0) == train("b", 0)
    assert train("c", 1) != train("a", 0)
    with pytest.raises(ValueError, match="vocab_size"):
        train_text_tokenizer(tmp_path / "d", vocab_size=100)


# ---- image tokenizer ---------------------------------------------------------------------------------
def test_image_tokenizer_is_small_and_makes_8x8_codes(image_tokenizer) -> None:
    weights = sum(p.stat().st_size for p in world_image_tokenizer_dir().glob("*.safetensors"))
    assert weights < MAX_IMAGE_TOKENIZER_BYTES
    assert image_tokenizer.num_tokens(32) == 64
    assert image_tokenizer.codebook_size in (256, 512, 1024)


def test_image_tokenizer_reconstructs_held_out_scenes(image_tokenizer) -> None:
    examples = _take(iter_vqa("validation", seed=1), 100)  # random 1-4 object scenes
    recon, codes = reconstruct(image_tokenizer, np.stack([e.image for e in examples]))
    assert codes.shape == (100, 64) and recon.shape == (100, 32, 32, 3)
    accuracy = np.mean([parsed_exactly(e.scene, parse_scene(r)) for e, r in zip(examples, recon)])
    assert accuracy >= 0.95


def test_image_tokenizer_keeps_held_out_digits_readable(image_tokenizer) -> None:
    digits = digit_examples("validation")[:100]
    recon, _ = reconstruct(image_tokenizer, np.stack([d.image for d in digits]))
    labels = np.asarray([d.label for d in digits])
    judge = load_digit_classifier()
    original = np.mean(judge.predict(np.stack([d.image for d in digits])) == labels)
    assert np.mean(judge.predict(recon) == labels) >= original - 0.03


# Two levels (f = 2) and 16 codes: the recipe's determinism does not depend on the size.
SMALL = MagvitConfig(
    encoder=CoderConfig(ch=32, ch_mult=(1, 1), num_res_blocks=(1, 1), resolution=32),
    decoder=CoderConfig(ch=32, ch_mult=(1, 1), num_res_blocks=(1, 1), resolution=32),
    quantizer=LFQConfig(codebook_dim=4),
    image_size=32,
)


def test_image_training_is_deterministic() -> None:
    recipe = MagvitTraining(steps=2, batch_size=4, num_scenes=8, warmup_steps=1)

    def state(seed: int) -> dict[str, torch.Tensor]:
        return train_magvit(recipe, config=SMALL, seed=seed).state_dict()

    first, second, other = state(0), state(0), state(1)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_trained_image_tokenizer_saves_and_loads(tmp_path: Path) -> None:
    recipe = MagvitTraining(batch_size=2, num_scenes=2, warmup_steps=0)
    folder = train_image_tokenizer(tmp_path / "magvit", steps=1, recipe=recipe, config=SMALL)
    loaded = load_image_tokenizer(folder)
    assert loaded.config == SMALL
    expected = train_magvit(dataclasses.replace(recipe, steps=1), config=SMALL).state_dict()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())


def test_image_training_leaves_the_global_rng_alone() -> None:
    before = torch.random.get_rng_state()
    train_magvit(MagvitTraining(steps=1, batch_size=2, num_scenes=2, warmup_steps=0), config=SMALL, seed=0)
    assert torch.equal(before, torch.random.get_rng_state())


def test_training_recipe_validates() -> None:
    with pytest.raises(ValueError, match="digit_fraction"):
        MagvitTraining(digit_fraction=1.5)
    with pytest.raises(ValueError, match="steps"):
        MagvitTraining(steps=0)


# ---- CLI -----------------------------------------------------------------------------------------------
def _scene_png(tmp_path: Path) -> Path:
    scene = Scene((SceneObject("circle", "red", 2, 10, 10), SceneObject("square", "blue", 18, 12, 9)))
    path = tmp_path / "scene.png"
    Image.fromarray(render_scene(scene)).save(path)
    return path


def test_cli_world_sample_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    assert main(["world", "sample", "-o", str(out), "--n", "4", "--seed", "1"]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 0


def test_cli_world_judge_prints_the_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = _scene_png(tmp_path)
    assert main(["world", "judge", str(image), "a red circle to the left of a blue square"]) == 0
    out = capsys.readouterr().out
    assert "2 objects" in out and "red circle" in out and "verdict: correct" in out
    assert main(["world", "judge", str(image), "a red circle to the right of a blue square"]) == 1
    assert "verdict: incorrect" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing", "corrupt", "caption"])
def test_cli_world_judge_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    image, caption = _scene_png(tmp_path), "a red circle"
    if case == "missing":
        image = tmp_path / "nope.png"
    elif case == "corrupt":
        image = tmp_path / "corrupt.png"
        image.write_bytes(b"\x89PNG not really" + bytes(random.Random(0).randrange(256) for _ in range(64)))
    else:
        caption = "a dragon eating the moon"
    assert main(["world", "judge", str(image), caption]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmada world: error:") and err.count("\n") == 1


@pytest.mark.slow
def test_committed_tokenizers_meet_the_targets() -> None:
    results = evaluate_tokenizers(num_scenes=1000)
    image = results["image"]
    assert image["parser_original"] == 1.0 and image["parser_reconstructed"] >= 0.98
    assert image["digit_judge_reconstructed"] >= image["digit_judge_original"] - 0.02
    assert results["text"]["tokens"]["caption"]["mean"] < 10


@pytest.mark.slow
def test_cli_train_tokenizers_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["world", "train-tokenizers", "-o", str(tmp_path), "--steps", "5", "--json", str(tmp_path / "r.json"),
                 "-q"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "scenes parsed exactly" in out and "tokens per caption" in out
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["training_seconds"]["image"] > 0
    assert TextTokenizer.from_pretrained(tmp_path / "text_tokenizer")
    assert load_image_tokenizer(tmp_path / "image_tokenizer").codebook_size == results["image"]["codebook_size"]
