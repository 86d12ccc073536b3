"""Vocab: resolution from the fixture tokenizer, the official table, validation and image-id mapping."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from mmada.prompting import OFFICIAL_RESERVED_IDS, TextTokenizer, Vocab
from mmada.prompting.vocab import RESERVED_TOKEN_NAMES


class FakeTokenizer:
    """A tokenizer shaped like the real LLaDA one: only the ids Vocab.from_tokenizer reads."""

    def __init__(self, size: int, tokens: dict[str, int], **special: int | None) -> None:
        self._size, self._tokens = size, tokens
        self.bos_token_id = special.get("bos")
        self.eos_token_id = special.get("eos")
        self.pad_token_id = special.get("pad")
        self.mask_token_id = special.get("mask")

    def __len__(self) -> int:
        return self._size

    def token_to_id(self, token: str) -> int | None:
        return self._tokens.get(token)


# The real LLaDA / MMaDA-8B numbers as documented in shared/MMADA.md §1.1 (headers believed 126346-8).
LLADA_HEADERS = {"<|start_header_id|>": 126346, "<|end_header_id|>": 126347, "<|eot_id|>": 126348}


def llada_like(**overrides: int | None) -> FakeTokenizer:
    special = {"bos": 126080, "eos": 126081, "pad": 126081, "mask": 126336, **overrides}
    return FakeTokenizer(126349, LLADA_HEADERS, **special)


@pytest.fixture(scope="module")
def tokenizer(reference_dir: Path) -> TextTokenizer:
    return TextTokenizer.from_pretrained(reference_dir / "prompting" / "tokenizer")


@pytest.fixture(scope="module")
def tiny(tokenizer: TextTokenizer) -> Vocab:
    return Vocab.from_tokenizer(tokenizer, vocab_size=512, codebook_size=128, reserved=None)


def test_tiny_vocab_matches_fixture_harness(reference_dir: Path, tiny: Vocab) -> None:
    cases = json.loads((reference_dir / "mmada_a" / "cases.json").read_text())
    facts = cases["vocab"]
    assert (tiny.bos_id, tiny.eos_id, tiny.pad_id, tiny.mask_id) == (
        facts["bos"],
        facts["eos"],
        facts["pad"],
        facts["mask"],
    )
    assert (tiny.start_header_id, tiny.end_header_id, tiny.eot_id) == (
        facts["start_header"],
        facts["end_header"],
        facts["eot_id"],
    )
    assert tiny.text_vocab_size == tiny.image_offset == facts["len_tokenizer"] == facts["image_token_offset"]
    assert (tiny.codebook_size, tiny.vocab_size) == (facts["codebook_size"], facts["vocab_size"])
    # The by-name lookup of <|reserved_token_k|> reproduces the harness table 304…314.
    fields = {"[iPAD]": "ipad_id"}
    for token, token_id in cases["tiny_reserved_token_mapping"].items():
        field = fields.get(token, token.strip("<|>") + "_id")
        assert getattr(tiny, field) == token_id, token


def test_vocab_from_checkpoint_folder(reference_dir: Path, tiny: Vocab) -> None:
    folder = reference_dir / "mmada_a"
    config = json.loads((folder / "config.json").read_text())
    vocab = Vocab.from_tokenizer(
        TextTokenizer.from_pretrained(folder),
        vocab_size=config["vocab_size"],
        codebook_size=config["codebook_size"],
        mask_token_id=config["mask_token_id"],
        reserved=None,
    )
    assert vocab == tiny


def test_official_table_and_real_offsets() -> None:
    vocab = Vocab.from_tokenizer(llada_like(), vocab_size=134656, codebook_size=8192)
    assert vocab.soi_id == OFFICIAL_RESERVED_IDS["<|soi|>"] == 126084
    assert vocab.ipad_id == 126093 and vocab.r2i_id == 126094
    assert vocab.image_offset == 126349  # len(tokenizer), not llm_vocab_size 126464
    assert vocab.image_end == 134541 <= vocab.vocab_size
    assert vocab.image_ids(torch.tensor([0, 8191])).tolist() == [126349, 134540]


def test_reserved_names_are_slots_2_to_12() -> None:
    assert list(RESERVED_TOKEN_NAMES.values()) == [f"<|reserved_token_{k}|>" for k in range(2, 13)]


def test_official_table_does_not_fit_tiny_tokenizer(tokenizer: TextTokenizer) -> None:
    with pytest.raises(ValueError, match=r"126084 \(<\|soi\|>\).*reserved=None"):
        Vocab.from_tokenizer(tokenizer, vocab_size=512, codebook_size=128)


def test_explicit_reserved_table(tokenizer: TextTokenizer, tiny: Vocab) -> None:
    table = {token: 304 + k for k, token in enumerate(OFFICIAL_RESERVED_IDS)}
    assert Vocab.from_tokenizer(tokenizer, vocab_size=512, codebook_size=128, reserved=table) == tiny
    with pytest.raises(ValueError, match="missing tokens"):
        Vocab.from_tokenizer(tokenizer, vocab_size=512, codebook_size=128, reserved={"<|soi|>": 304})


def test_mask_override_and_missing_mask() -> None:
    assert Vocab.from_tokenizer(llada_like(), vocab_size=134656, codebook_size=8192, mask_token_id=126300).mask_id == (
        126300
    )
    with pytest.raises(ValueError, match="mask token"):
        Vocab.from_tokenizer(llada_like(mask=None), vocab_size=134656, codebook_size=8192)
    with pytest.raises(ValueError, match="bos token"):
        Vocab.from_tokenizer(llada_like(bos=None), vocab_size=134656, codebook_size=8192)


def test_pad_defaults_to_eos() -> None:
    assert Vocab.from_tokenizer(llada_like(pad=None), vocab_size=134656, codebook_size=8192).pad_id == 126081


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vocab_size": 134000}, r"image range \[126349, 134541\) exceeds `vocab_size` \(134000\)"),
        ({"vocab_size": 126349 + 8191}, "needs at least text_vocab_size \\+ codebook_size = 134541"),
        ({"codebook_size": 0}, "`codebook_size` \\(0\\) must be a positive int"),
        ({"mask_token_id": 200000}, "`mask_id` \\(200000\\) is outside the embedding"),
        ({"mask_token_id": 126081}, "`mask_id` \\(126081\\) must differ from `pad_id`"),
        ({"mask_token_id": 126400}, "`mask_id` \\(126400\\) falls inside the image-token range"),
    ],
)
def test_inconsistent_tokenizer_config_pairs_are_refused(kwargs: dict, message: str) -> None:
    args = {"vocab_size": 134656, "codebook_size": 8192, **kwargs}
    with pytest.raises(ValueError, match=message):
        Vocab.from_tokenizer(llada_like(), **args)


def test_validation_of_direct_construction(tiny: Vocab) -> None:
    with pytest.raises(ValueError, match=r"roles \['eoi_id', 'soi_id'\] share the id 304"):
        dataclasses.replace(tiny, eoi_id=304)
    with pytest.raises(ValueError, match="overlaps the text ids"):
        dataclasses.replace(tiny, image_offset=300)
    with pytest.raises(ValueError, match="`bos_id` \\(-1\\)"):
        dataclasses.replace(tiny, bos_id=-1)
    # The official alias pad == eos is accepted; another pad is accepted too.
    assert dataclasses.replace(tiny, pad_id=302).pad_id == 302
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny.mask_id = 1  # type: ignore[misc]


def test_image_id_mapping(tiny: Vocab) -> None:
    codes = torch.tensor([[0, 5], [127, 64]])
    ids = tiny.image_ids(codes)
    assert ids.tolist() == [[319, 324], [446, 383]]
    assert torch.equal(tiny.codes(ids), codes)
    assert tiny.is_image_token(torch.tensor([318, 319, 446, 447, tiny.mask_id])).tolist() == [
        False,
        True,
        True,
        False,
        False,
    ]
    with pytest.raises(ValueError, match=r"\[0, 128\)"):
        tiny.image_ids(torch.tensor([128]))
    with pytest.raises(ValueError, match="mask or text ids"):
        tiny.codes(torch.tensor([319, tiny.mask_id]))


def test_special_ids_lists_every_role(tiny: Vocab) -> None:
    ids = tiny.special_ids()
    assert len(ids) == 18 and "text_vocab_size" not in ids
    assert ids["mask_id"] == 315


def test_vocab_for_checks_the_model_mask_id_against_the_tokenizer(tokenizer: TextTokenizer, tiny: Vocab) -> None:
    from types import SimpleNamespace

    from mmada.model import ModelConfig
    from mmada.prompting import vocab_for
    from mmada.utils.files import CheckpointError

    config = ModelConfig.tiny(vocab_size=512, embedding_size=512, mask_token_id=tiny.mask_id, codebook_size=128,
                              eos_token_id=tiny.eos_id, pad_token_id=tiny.pad_id)
    assert vocab_for(tokenizer, SimpleNamespace(config=config)) == tiny
    wrong = dataclasses.replace(config, mask_token_id=tiny.mask_id - 1)
    message = rf"`mask_token_id` \({tiny.mask_id - 1}\) differs from .*\({tiny.mask_id}\)"
    with pytest.raises(CheckpointError, match=message):
        vocab_for(tokenizer, SimpleNamespace(config=wrong))
