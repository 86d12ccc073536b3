"""TextTokenizer: loading a checkpoint's tokenizer files with `tokenizers` and matching HF behaviour."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mmada.prompting import TextTokenizer


@pytest.fixture(scope="module")
def tokenizer(reference_dir: Path) -> TextTokenizer:
    return TextTokenizer.from_pretrained(reference_dir / "prompting" / "tokenizer")


def test_special_tokens_and_length(tokenizer: TextTokenizer) -> None:
    assert len(tokenizer) == 319  # len(PreTrainedTokenizerFast): 300 BPE pieces + 19 added tokens
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|startoftext|>", "<|endoftext|>")
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (300, 301, 301)
    assert (tokenizer.mask_token, tokenizer.mask_token_id) == ("<|mdm_mask|>", 315)
    assert tokenizer.token_to_id("<|end_header_id|>") == 317 and tokenizer.token_to_id("nope") is None
    assert tokenizer.id_to_token(318) == "<|eot_id|>"
    assert tokenizer.chat_template is not None and "<|start_header_id|>" in tokenizer.chat_template


def test_encode_matches_recorded_tokenization(reference_dir: Path, tokenizer: TextTokenizer) -> None:
    cases = json.loads((reference_dir / "prompting" / "cases.json").read_text())
    recorded = cases["variants"]["reserved_tiny_ids"]["tokenizer_ids"]
    for text, ids in recorded.items():
        assert tokenizer.encode(text) == ids, text
    assert tokenizer.encode_batch(list(recorded)) == list(recorded.values())
    assert tokenizer.encode("") == []  # no bos added


def test_decode(tokenizer: TextTokenizer) -> None:
    text = "The quick brown fox."
    assert tokenizer.decode(tokenizer.encode(text)) == text
    chat = "<|startoftext|><|start_header_id|>user<|end_header_id|>\nHi<|eot_id|>"
    ids = tokenizer.encode(chat)
    assert tokenizer.decode(ids) == "user\nHi"
    assert tokenizer.decode(ids, skip_special_tokens=False) == chat
    assert tokenizer.decode([64, 400, 65]) == tokenizer.decode([64, 65])  # image ids are not text


def test_same_tokenizer_in_checkpoint_folder(reference_dir: Path, tokenizer: TextTokenizer) -> None:
    other = TextTokenizer.from_pretrained(str(reference_dir / "mmada_a"))
    assert len(other) == len(tokenizer) and other.chat_template == tokenizer.chat_template


def _copy(reference_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "tok"
    shutil.copytree(reference_dir / "prompting" / "tokenizer", folder)
    return folder


def test_missing_tokenizer_json(reference_dir: Path, tmp_path: Path) -> None:
    folder = _copy(reference_dir, tmp_path)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match=r"tokenizer\.json not found"):
        TextTokenizer.from_pretrained(folder)


def test_corrupt_files_are_named(reference_dir: Path, tmp_path: Path) -> None:
    folder = _copy(reference_dir, tmp_path)
    (folder / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"tokenizer_config\.json is not valid json"):
        TextTokenizer.from_pretrained(folder)
    (folder / "tokenizer.json").write_text('{"truncated": ')
    with pytest.raises(ValueError, match=r"tokenizer\.json cannot be read"):
        TextTokenizer.from_pretrained(folder)


def test_missing_folder() -> None:
    with pytest.raises(ValueError, match="does not exist"):
        TextTokenizer.from_pretrained("/nonexistent/tokenizer/folder")


def test_config_variants(reference_dir: Path, tmp_path: Path) -> None:
    folder = _copy(reference_dir, tmp_path)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    # AddedToken dicts, a list of named templates, and special tokens only in special_tokens_map.json.
    config["bos_token"] = {"__type": "AddedToken", "content": "<|startoftext|>"}
    config["chat_template"] = [{"name": "default", "template": "T"}, {"name": "tool_use", "template": "U"}]
    del config["mask_token"]
    config_path.write_text(json.dumps(config))
    loaded = TextTokenizer.from_pretrained(folder)
    assert loaded.bos_token_id == 300 and loaded.chat_template == "T" and loaded.mask_token_id == 315
    config["eos_token"] = "<|not_a_token|>"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: eos token '<\|not_a_token\|>' is not in"):
        TextTokenizer.from_pretrained(folder)
