"""MAGVIT-v2 tokenizer: official fixture parity, checkpoint loading/saving/conversion, input errors."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmada.checkpoint.convert import convert_to_safetensors
from mmada.image_tokenizer import (
    CoderConfig,
    MagvitConfig,
    MagvitV2,
    load_image_tokenizer,
    save_image_tokenizer,
)
from mmada.utils.files import CheckpointError

PIXEL_ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny_dir(reference_dir) -> Path:
    return reference_dir / "magvitv2_tiny"


@pytest.fixture(scope="module")
def tok(tiny_dir) -> MagvitV2:
    return load_image_tokenizer(tiny_dir)


@pytest.fixture(scope="module")
def expected(tiny_dir) -> dict[str, torch.Tensor]:
    return load_file(tiny_dir / "expected_vq.safetensors")


@pytest.fixture
def one_thread():
    # The fixtures were recorded with 1 thread; more threads move conv outputs by up to ~5e-6.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _encoder(tok, e):
    return {"hidden": tok.encoder(e["vq_encoder.images"])}


def _encode(tok, e):
    out = tok.encode_with_quantized(e["vq_encode.images"])
    return {"quantized": out.quantized, "indices": out.codes}


def _get_code(tok, e):
    return {"indices": tok.encode(e["vq_get_code.images"])}


def _quantize(tok, e):
    out = tok.quantize(e["vq_quantize.hidden"])
    return {
        "z": out.quantized,
        "indices": out.indices.unsqueeze(1),  # official layout (B, 1, h, w)
        "quantizer_loss": out.quantizer_loss.reshape(1),
        "entropy_loss": out.entropy_loss.reshape(1),
    }


def _codebook_entry(tok, e):
    return {"z_q": tok.quantize.get_codebook_entry(e["vq_get_codebook_entry.indices"])}


def _decode(name: str, shape: tuple[int, int] | None = None) -> Callable:
    return lambda tok, e: {"images": tok.decode(e[f"{name}.indices"], shape=shape)}


CASES: dict[str, Callable] = {
    "vq_encoder": _encoder,
    "vq_encode": _encode,
    "vq_get_code": _get_code,
    "vq_quantize": _quantize,
    "vq_get_codebook_entry": _codebook_entry,
    "vq_decode_fixed": _decode("vq_decode_fixed"),
    "vq_decode_shape": _decode("vq_decode_shape", shape=(2, 8)),
    "vq_decode_roundtrip": _decode("vq_decode_roundtrip"),
}


def test_every_fixture_case_is_covered(tiny_dir):
    names = {case["name"] for case in json.loads((tiny_dir / "cases.json").read_text())["cases"]}
    assert names == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture_case(name, tok, expected, one_thread):
    with torch.no_grad():
        outputs = CASES[name](tok, expected)
    for key, got in outputs.items():
        want = expected[f"{name}.{key}"]
        assert got.shape == want.shape and got.dtype == want.dtype, key
        if want.dtype == torch.int64:
            assert torch.equal(got, want), key
        elif "loss" in key:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
        else:
            torch.testing.assert_close(got, want, rtol=0, atol=PIXEL_ATOL)


def test_state_dict_keys_are_the_official_ones(tok, tiny_dir):
    official = load_file(tiny_dir / "pytorch_model.safetensors")
    ours = tok.state_dict()
    assert set(ours) == set(official)
    assert all(ours[k].shape == official[k].shape for k in official)


def test_official_preset_layout():
    cfg = MagvitConfig.official()
    assert (cfg.downsample_factor, cfg.codebook_size, cfg.z_channels) == (16, 8192, 13)
    with torch.device("meta"):
        model = MagvitV2(cfg)
    keys = set(model.state_dict())
    assert "encoder.down.4.block.3.conv2.weight" in keys and "encoder.down.4.downsample.conv.weight" not in keys
    assert "encoder.down.0.block.0.nin_shortcut.weight" not in keys  # 128 -> 128
    assert "encoder.down.1.block.0.nin_shortcut.weight" in keys  # 128 -> 256
    assert "decoder.up.4.block.2.conv1.weight" in keys and "decoder.up.0.upsample.conv.weight" not in keys
    assert model.quantize.embedding.shape == (8192, 13)
    assert model.num_tokens(512) == 1024 and model.num_tokens(256) == 256 and model.num_tokens((256, 512)) == 512


def test_attention_inside_levels_when_resolution_is_reached():
    coder = CoderConfig(ch=32, ch_mult=(1, 2), num_res_blocks=(1, 2), attn_resolutions=(8,), resolution=16)
    model = MagvitV2(MagvitConfig(coder, coder, image_size=16))
    keys = set(model.state_dict())
    assert {"encoder.down.1.attn.0.q.weight", "encoder.down.1.attn.1.proj_out.bias"} <= keys
    assert "decoder.up.1.attn.1.k.weight" in keys and not any(k.startswith("encoder.down.0.attn") for k in keys)
    codes = model.encode(torch.zeros(1, 3, 16, 16))
    assert codes.shape == (1, 64) and model.decode(codes).shape == (1, 3, 16, 16)


@pytest.mark.parametrize(
    ("pixels", "match"),
    [
        (torch.zeros(1, 1, 64, 64), "3 channels"),
        (torch.zeros(1, 4, 64, 64), "3 channels"),
        (torch.zeros(3, 64, 64), r"\(B, C, H, W\)"),
        (torch.zeros(1, 3, 64, 40), "multiples of 16"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "floating point"),
    ],
)
def test_bad_pixels_are_refused(tok, pixels, match):
    with pytest.raises(ValueError, match=match):
        tok.encode(pixels)


@pytest.mark.parametrize(("bad", "shown"), [(128, "128"), (-3, "-3"), (10**6, "1000000")])
def test_out_of_range_code_is_refused(tok, bad, shown):
    codes = torch.zeros(1, 16, dtype=torch.long)
    codes[0, 5] = bad
    with pytest.raises(ValueError, match=f"image code {shown} is outside the codebook range"):
        tok.decode(codes)


def test_decode_grid_must_fit(tok):
    with pytest.raises(ValueError, match="square"):
        tok.decode(torch.zeros(1, 12, dtype=torch.long))
    assert tok.decode(torch.zeros(1, 12, dtype=torch.long), shape=(3, 4)).shape == (1, 3, 48, 64)


def test_config_json_round_trip_and_validation(tiny_dir):
    arch = json.loads((tiny_dir / "tiny_arch.json").read_text())
    assert MagvitConfig.from_arch_json(arch).to_arch_json() == arch
    bad = json.loads(json.dumps(arch))
    bad["decoder"]["z_channels"] = 8
    with pytest.raises(ValueError, match=r"decoder\.z_channels"):
        MagvitConfig.from_arch_json(bad)
    with pytest.raises(ValueError, match="num_res_blocks"):
        CoderConfig(ch=32, ch_mult=(1, 2), num_res_blocks=(1,))
    with pytest.raises(ValueError, match="divisible by 32"):
        CoderConfig(ch=24, ch_mult=(1,), num_res_blocks=(1,))


def test_load_in_bfloat16(tiny_dir):
    tok = load_image_tokenizer(tiny_dir, dtype="bf16")
    assert tok.encoder.conv_in.weight.dtype == torch.bfloat16
    assert tok.quantize.power_vals.dtype == torch.int64
    assert tok.encode(torch.zeros(1, 3, 64, 64)).shape == (1, 16)


def test_save_load_round_trip_is_bit_identical(tok, tmp_path):
    save_image_tokenizer(tok, tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["_class_name"] == "MAGVITv2"
    again = load_image_tokenizer(tmp_path / "saved")
    assert again.config == tok.config
    ours, theirs = tok.state_dict(), again.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_missing_lfq_buffers_are_recomputed(tiny_dir, tok, tmp_path):
    folder = _copy_with(tiny_dir, tmp_path, lambda sd: {k: v for k, v in sd.items() if not k.startswith("quantize.")})
    loaded = load_image_tokenizer(folder)
    assert torch.equal(loaded.quantize.embedding, tok.quantize.embedding)


def _copy_with(tiny_dir: Path, tmp_path: Path, edit: Callable[[dict], dict]) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for name in ("config.json", "tiny_arch.json"):
        shutil.copyfile(tiny_dir / name, folder / name)
    save_file(edit(load_file(tiny_dir / "pytorch_model.safetensors")), folder / "pytorch_model.safetensors")
    return folder


def _drop(key):
    return lambda sd: {k: v for k, v in sd.items() if k != key}


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_drop("decoder.conv_out.bias"), "missing the key 'decoder.conv_out.bias'"),
        (lambda sd: {**sd, "encoder.extra.weight": torch.zeros(1)}, "unexpected key 'encoder.extra.weight'"),
        (lambda sd: {**sd, "encoder.conv_in.bias": torch.zeros(5)}, r"encoder\.conv_in\.bias has shape \(5,\)"),
        (lambda sd: {**sd, "quantize.power_vals": sd["quantize.power_vals"].flip(0)}, "MSB-first"),
    ],
)
def test_bad_weights_are_refused(tiny_dir, tmp_path, edit, match):
    with pytest.raises(CheckpointError, match=match):
        load_image_tokenizer(_copy_with(tiny_dir, tmp_path, edit))


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_image_tokenizer(tmp_path / "nope")


def test_corrupt_safetensors_is_refused(tiny_dir, tmp_path):
    folder = _copy_with(tiny_dir, tmp_path, lambda sd: sd)
    (folder / "pytorch_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_image_tokenizer(folder)


def test_other_model_config_is_refused(tiny_dir, tmp_path):
    folder = _copy_with(tiny_dir, tmp_path, lambda sd: sd)
    (folder / "config.json").write_text('{"_class_name": "MMadaModelLM"}')
    with pytest.raises(CheckpointError, match="not a MAGVITv2"):
        load_image_tokenizer(folder)


def test_pickle_only_folder_is_refused_then_converted(tok, tiny_dir, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copyfile(tiny_dir / "tiny_arch.json", folder / "tiny_arch.json")
    torch.save(tok.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"refused for security.*mmada convert"):
        load_image_tokenizer(folder)
    written = convert_to_safetensors(folder)
    assert written == [folder / "model.safetensors"]
    loaded = load_image_tokenizer(folder)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in tok.state_dict().items())
    with pytest.raises(CheckpointError, match="already exists"):
        convert_to_safetensors(folder)


class _Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_convert_refuses_pickles_with_code(tmp_path):
    torch.save({"weight": torch.zeros(1), "evil": _Payload()}, tmp_path / "model.bin")
    with pytest.raises(CheckpointError, match="weights-only"):
        convert_to_safetensors(tmp_path / "model.bin", tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()
