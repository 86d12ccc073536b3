"""Checkpoint I/O: official format in and out, bit-identical round trips, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import mmada
from mmada import CheckpointError
from mmada.checkpoint.hf import INDEX_NAME, official_to_ours, ours_to_official


def _names_and_shapes(folder):
    out = {}
    for path in folder.glob("*.safetensors"):
        if path.name.startswith("expected_"):
            continue
        with safe_open(path, "pt") as f:
            for k in f.keys():  # noqa: SIM118
                out[k] = tuple(f.get_slice(k).get_shape())
    return out


@pytest.fixture
def checkpoint(reference_dir, tmp_path):
    """A writable copy of the official fixture checkpoint (weights and config only)."""
    dst = tmp_path / "ckpt"
    dst.mkdir()
    for p in (reference_dir / "mmada_a").iterdir():
        if p.name.startswith("model") or p.name in ("config.json", "generation_config.json"):
            shutil.copy(p, dst / p.name)
    return dst


def test_key_map_round_trips(reference_dir):
    names = _names_and_shapes(reference_dir / "mmada_a")
    assert len(names) == 21
    for name in names:
        assert ours_to_official(official_to_ours(name)) == name


def test_load_save_load_is_bit_identical_and_official(reference_dir, tmp_path):
    first = mmada.load_model(reference_dir / "mmada_a")
    out = mmada.save_model(first, tmp_path / "saved", dtype=torch.bfloat16, max_shard_bytes=100_000)
    assert (out / INDEX_NAME).is_file() and len(list(out.glob("model-*-of-*.safetensors"))) > 1
    assert _names_and_shapes(out) == _names_and_shapes(reference_dir / "mmada_a")
    original = json.loads((reference_dir / "mmada_a" / "config.json").read_text())
    assert json.loads((out / "config.json").read_text()) == original
    second = mmada.load_model(out)
    for (k, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), k
    # the stored bf16 tensors themselves are unchanged
    for shard in out.glob("model-*.safetensors"):
        for name, tensor in load_file(shard).items():
            ref = (
                reference_dir
                / "mmada_a"
                / json.loads((reference_dir / "mmada_a" / INDEX_NAME).read_text())["weight_map"][name]
            )
            assert torch.equal(tensor, load_file(ref)[name]), name


def test_single_file_save_and_float32_round_trip(reference_dir, tmp_path):
    model = mmada.load_model(reference_dir / "mmada_a")
    out = mmada.save_model(model, tmp_path / "single")
    assert (out / "model.safetensors").is_file() and not (out / INDEX_NAME).exists()
    again = mmada.load_model(out)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"


def test_resave_removes_stale_shards(reference_dir, tmp_path):
    model = mmada.load_model(reference_dir / "mmada_a")
    mmada.save_model(model, tmp_path / "x", max_shard_bytes=50_000)
    mmada.save_model(model, tmp_path / "x")
    assert sorted(p.name for p in (tmp_path / "x").glob("*.safetensors")) == ["model.safetensors"]
    mmada.load_model(tmp_path / "x")


def test_public_api_names(reference_dir):
    model = mmada.load_model(reference_dir / "mmada_a", dtype=torch.float32, device="cpu")
    assert model.config.vocab_size == 512 and model.config.mask_token_id == 315
    assert model(torch.tensor([[1, 2, 3]]), torch.tensor([[1, 1, 1]])).shape == (1, 3, 512)


# ---- bad inputs -----------------------------------------------------------------------------------
def test_missing_folder():
    with pytest.raises(CheckpointError, match="does not exist"):
        mmada.load_model("/no/such/folder")


def test_hub_id_without_network_gives_a_clear_message(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="could not download 'Gen-Verse/MMaDA-8B-Base'"):
        mmada.load_model("Gen-Verse/MMaDA-8B-Base")


def test_missing_config(checkpoint):
    (checkpoint / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        mmada.load_model(checkpoint)


def test_truncated_shard(checkpoint):
    shard = checkpoint / "model-00002-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="model-00002-of-00003.safetensors.*corrupt or truncated"):
        mmada.load_model(checkpoint)


def test_garbage_shard(checkpoint):
    (checkpoint / "model-00001-of-00003.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="model-00001-of-00003.safetensors"):
        mmada.load_model(checkpoint)


def test_missing_shard(checkpoint):
    (checkpoint / "model-00003-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00003-of-00003.safetensors.*missing"):
        mmada.load_model(checkpoint)


def _rewrite(shard, edit):
    tensors = load_file(shard)
    edit(tensors)
    save_file(tensors, shard, metadata={"format": "pt"})


def test_missing_key(checkpoint):
    shard = checkpoint / "model-00003-of-00003.safetensors"
    _rewrite(shard, lambda t: t.pop("model.transformer.ff_out.weight"))
    with pytest.raises(CheckpointError, match=r"'model.transformer.ff_out.weight' is missing"):
        mmada.load_model(checkpoint)


def test_unexpected_key(checkpoint):
    _rewrite(
        checkpoint / "model-00003-of-00003.safetensors",
        lambda t: t.update({"model.transformer.blocks.7.q_proj.weight": torch.zeros(64, 64)}),
    )
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model.transformer.blocks.7.q_proj.weight'"):
        mmada.load_model(checkpoint)


def test_shape_mismatch(checkpoint):
    _rewrite(
        checkpoint / "model-00002-of-00003.safetensors",
        lambda t: t.update({"model.transformer.blocks.0.k_proj.weight": torch.zeros(32, 64, dtype=torch.bfloat16)}),
    )
    with pytest.raises(CheckpointError, match=r"'model.transformer.blocks.0.k_proj.weight' has shape \[32, 64\]"):
        mmada.load_model(checkpoint)


def test_config_vocab_disagrees_with_weights(checkpoint):
    raw = json.loads((checkpoint / "config.json").read_text())
    raw["vocab_size"] = raw["embedding_size"] = 600
    (checkpoint / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="vocab_size 600, the weights have 512 rows"):
        mmada.load_model(checkpoint)


def test_unsupported_config_value(checkpoint):
    raw = json.loads((checkpoint / "config.json").read_text())
    raw["alibi"] = True
    (checkpoint / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="`alibi` = True is not supported"):
        mmada.load_model(checkpoint)


def test_pickle_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(mmada.ModelConfig.tiny().to_dict()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="pickle.*arbitrary code.*mmada convert"):
        mmada.load_model(tmp_path)


def test_bad_dtype_and_device(reference_dir):
    with pytest.raises(ValueError, match="dtype 'int8'"):
        mmada.load_model(reference_dir / "mmada_a", dtype="int8")
    with pytest.raises(ValueError, match="device 'tpu9'"):
        mmada.load_model(reference_dir / "mmada_a", device="tpu9")


def test_convert_pickle_to_safetensors(reference_dir, tmp_path):
    from mmada.checkpoint.convert import convert_to_safetensors

    model = mmada.load_model(reference_dir / "mmada_a")
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(reference_dir / "mmada_a" / "config.json", folder / "config.json")
    official = {ours_to_official(k): v for k, v in model.state_dict().items()}
    torch.save(official, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="mmada convert"):
        mmada.load_model(folder)
    assert [p.name for p in convert_to_safetensors(folder)] == ["model.safetensors"]
    again = mmada.load_model(folder)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))


def test_convert_refuses_non_tensor_pickles(tmp_path):
    from mmada.checkpoint.convert import convert_to_safetensors

    (tmp_path / "evil.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match="cannot convert"):
        convert_to_safetensors(tmp_path)
