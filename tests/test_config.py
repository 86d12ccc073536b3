"""ModelConfig: official config.json round trip, presets, refusals."""

from __future__ import annotations

import json

import pytest

from mmada.model import ModelConfig


def test_official_config_round_trips_every_key(reference_dir):
    raw = json.loads((reference_dir / "mmada_a" / "config.json").read_text())
    config = ModelConfig.from_dict(raw)
    assert config.to_dict() == raw
    assert (config.vocab_size, config.mask_token_id, config.d_model, config.kv_heads) == (512, 315, 64, 4)


def test_unknown_keys_survive(tmp_path):
    config = ModelConfig.from_dict({**ModelConfig.tiny().to_dict(), "my_new_key": [1, 2]})
    config.to_json(tmp_path / "config.json")
    assert ModelConfig.from_json(tmp_path / "config.json").to_dict()["my_new_key"] == [1, 2]


def test_presets():
    big = ModelConfig.mmada_8b()
    assert (big.vocab_size, big.mask_token_id, big.n_layers, big.hidden_size) == (134656, 126336, 32, 12288)
    assert 8.0e9 < big.num_parameters() < 8.2e9  # "8.08 B parameters" (fixture README)
    assert ModelConfig.tiny().vocab_size == 80


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("block_type", "sequential"),
        ("alibi", True),
        ("layer_norm_type", "default"),
        ("activation_type", "gelu"),
        ("include_bias", True),
        ("rope", False),
        ("multi_query_attention", True),
        ("attention_dropout", 0.1),
    ],
)
def test_unsupported_values_name_key_and_value(key, value):
    raw = {**ModelConfig.tiny().to_dict(), key: value}
    with pytest.raises(ValueError, match=rf"`{key}` = {value!r}".replace("(", r"\(")):
        ModelConfig.from_dict(raw)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"d_model": 30}, "divisible by `n_heads`"),
        ({"n_kv_heads": 3}, "must divide `n_heads`"),
        ({"embedding_size": 96}, "embedding_size"),
        ({"mask_token_id": 80}, "mask_token_id"),
        ({"n_layers": 0}, "n_layers"),
    ],
)
def test_inconsistent_values_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.tiny(**overrides)


def test_bad_json_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelConfig.from_json(tmp_path / "config.json")
