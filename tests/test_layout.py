"""Layouts: parity with every recorded `UniversalPrompting` call, the inference layouts, spans, collation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from mmada.prompting import (
    IGNORE_INDEX,
    TextTokenizer,
    TokenLayout,
    Vocab,
    build_lm,
    build_lm_batch,
    build_lm_chat,
    build_lm_chat_batch,
    build_mmu,
    build_mmu_batch,
    build_mmu_gen,
    build_mmu_gen_batch,
    build_r2i,
    build_r2i_batch,
    build_t2i,
    build_t2i_batch,
    build_t2i_gen,
    build_t2i_gen_batch,
    build_t2i_uncond,
    build_text_gen,
    build_text_gen_batch,
    check_left_padded,
    collate_training,
    encode_chat,
    official_mmu_gen_prompt_mask,
    pad_layouts,
)

M = 16  # max_text_len of every recorded call
FIELDS = {"<|soi|>": "soi_id", "<|eoi|>": "eoi_id", "<|sov|>": "sov_id", "<|eov|>": "eov_id", "<|t2i|>": "t2i_id"}
FIELDS |= {"<|mmu|>": "mmu_id", "<|t2v|>": "t2v_id", "<|v2v|>": "v2v_id", "<|lvg|>": "lvg_id", "<|r2i|>": "r2i_id"}


@pytest.fixture(scope="module")
def tokenizer(reference_dir: Path) -> TextTokenizer:
    return TextTokenizer.from_pretrained(reference_dir / "prompting" / "tokenizer")


@pytest.fixture(scope="module")
def vocab(tokenizer: TextTokenizer) -> Vocab:
    return Vocab.from_tokenizer(tokenizer, vocab_size=512, codebook_size=128, reserved=None)


@pytest.fixture(scope="module")
def cases(reference_dir: Path) -> dict[str, Any]:
    return json.loads((reference_dir / "prompting" / "cases.json").read_text())


def variant_vocab(base: Vocab, info: dict[str, Any]) -> Vocab:
    """The vocabulary each recorded variant used (the legacy one keeps [iPAD] = 126093: official bug)."""
    ids = {FIELDS[t]: v[0] for t, v in info["sptids_dict"].items() if t in FIELDS}
    ids.setdefault("r2i_id", info["reserved_token_mapping"]["<|r2i|>"])
    size = info["len_text_tokenizer"]
    return dataclasses.replace(
        base,
        **ids,
        ipad_id=info["pad_id"],
        mask_id=info["mask_id_used"],
        text_vocab_size=size,
        image_offset=max(size, info["image_token_offset_used"]),
        codebook_size=info["codebook_size_used"],
        vocab_size=base.vocab_size if info["pad_id"] < base.vocab_size else 134656,
    )


def run_call(task: str, inputs: dict[str, Any], vocab: Vocab, tok: TextTokenizer) -> list[list[Any]]:
    """Our builder for one recorded official call, returning its outputs in the official order."""
    texts = tok.encode_batch(inputs["texts"])
    image = torch.tensor(inputs["image_ids"]) if "image_ids" in inputs else None
    if task == "t2i_gen":
        assert image is not None and bool((image == vocab.mask_id).all())
        lay = build_t2i_gen_batch(texts, vocab=vocab, max_text_len=M, num_image_tokens=image.shape[1])
        return [lay.input_ids.tolist(), lay.attention_mask.long().tolist()]
    if task == "t2i_plus_lm":
        b = inputs["config_training_batch_size"]
        return [
            run_call("t2i", {**inputs, "texts": inputs["texts"][:b], "cond_dropout_prob": 0.0}, vocab, tok),
            run_call("lm", {"texts": inputs["texts"][b:], "max_seq_len": inputs["max_seq_len"]}, vocab, tok),
        ]
    if task == "t2i":
        labels = torch.tensor(inputs["labels"])
        p = inputs["cond_dropout_prob"]
        lay = build_t2i_batch(texts, image, labels, vocab=vocab, max_text_len=M, cond_dropout_prob=p)
        return [lay.input_ids.tolist(), lay.attention_mask.long().tolist(), lay.labels.tolist()]
    if task == "lm":
        lay = build_lm_batch(texts, vocab=vocab, max_seq_len=inputs["max_seq_len"])
        return [lay.input_ids.tolist(), lay.attention_mask.long().tolist(), lay.labels.tolist()]
    if task == "mmu_gen_prompt":
        lay = build_mmu_gen_batch(image, texts, vocab=vocab, max_text_len=M)
        return [lay.input_ids.tolist(), [official_mmu_gen_prompt_mask(int(lay.spans.prompt.stop[0]), M)]]
    if task == "lm_chat":
        lay = build_lm_chat_batch(texts, vocab=vocab, max_seq_len=inputs["max_seq_len"])
    elif task == "mmu":
        lay = build_mmu_batch(image, texts, vocab=vocab, max_text_len=M)
    elif task == "r2i":
        lay = build_r2i_batch(texts, image, vocab=vocab, max_text_len=M)
        return [lay.input_ids.tolist(), lay.prompt_mask.float().tolist(), lay.labels.tolist()]
    else:
        raise AssertionError(task)
    return [lay.input_ids.tolist(), lay.prompt_mask.long().tolist(), lay.labels.tolist()]


RECORDED = [
    ("reserved_official_ids", 11),
    ("reserved_tiny_ids", 11),
    ("legacy_added_tokens", 5),
]


@pytest.mark.parametrize(("variant", "index"), [(v, i) for v, n in RECORDED for i in range(n)])
def test_recorded_official_calls(
    variant: str, index: int, cases: dict[str, Any], vocab: Vocab, tokenizer: TextTokenizer
) -> None:
    entry = cases["variants"][variant]
    call = entry["calls"][index]
    assert run_call(call["task"], call["inputs"], variant_vocab(vocab, entry["info"]), tokenizer) == call["outputs"]


def test_every_recorded_call_is_covered(cases: dict[str, Any]) -> None:
    assert [(v, len(cases["variants"][v]["calls"])) for v, _ in RECORDED] == RECORDED


def test_mmu_inference_layout_matches_sampling_fixture(
    reference_dir: Path, vocab: Vocab, tokenizer: TextTokenizer
) -> None:
    prompt = load_file(reference_dir / "mmada_a" / "expected_sampling.safetensors")["mmu_image.prompt"]  # (1, 50)
    image = prompt[0, 2:18]
    chat = encode_chat(tokenizer, [{"role": "user", "content": "Describe the image in detail."}])
    lay = build_mmu_gen(image, chat, vocab=vocab)
    assert torch.equal(lay.input_ids, prompt)
    assert bool(lay.prompt_mask.all()) and bool(lay.attention_mask.all()) and lay.labels is None
    assert lay.spans.image.as_slice() == slice(2, 18) and lay.spans.answer.as_slice() == slice(50, 50)


def test_text_generation_batch_matches_sampling_fixture(
    reference_dir: Path, vocab: Vocab, tokenizer: TextTokenizer
) -> None:
    expected = load_file(reference_dir / "mmada_a" / "expected_sampling.safetensors")
    chats = json.loads((reference_dir / "mmada_a" / "cases.json").read_text())["extra"]["chat_texts"]
    lay = build_text_gen_batch(tokenizer.encode_batch(chats), vocab=vocab)
    assert torch.equal(lay.input_ids, expected["mmu_1block.prompt"])  # left-padded with eos 301
    assert torch.equal(lay.attention_mask.long(), expected["mmu_padmask.attention_mask"][:, : lay.seq_len])
    assert lay.spans.prompt.start.tolist() == [0, 5] and lay.spans.answer.stop.tolist() == [33, 33]


def test_t2i_generation_matches_t2i_fixture(reference_dir: Path, vocab: Vocab, tokenizer: TextTokenizer) -> None:
    expected = load_file(reference_dir / "mmada_a" / "expected_t2i.safetensors")
    prompts = json.loads((reference_dir / "mmada_a" / "cases.json").read_text())["extra"]["t2i_prompts"]
    cond = build_t2i_gen_batch(tokenizer.encode_batch(prompts), vocab=vocab, max_text_len=M, num_image_tokens=16)
    uncond = build_t2i_uncond(vocab=vocab, max_text_len=M, num_image_tokens=16, batch_size=2)
    for case in ("t2i_cfg_cosine", "t2i_nocfg_cosine", "t2i_cfg_linear"):
        assert torch.equal(cond.input_ids, expected[f"{case}.input_ids"])
        assert torch.equal(cond.attention_mask.long(), expected[f"{case}.attention_mask"])
    assert torch.equal(uncond.input_ids, expected["t2i_cfg_cosine.uncond_input_ids"])
    assert torch.equal(uncond.attention_mask.long(), expected["t2i_cfg_cosine.uncond_attention_mask"])
    # The MaskGIT sampler's unconditional prefix is everything before <|soi|>.
    assert cond.spans.image.as_slice() == slice(M + 2, M + 18) and cond.spans.prompt.stop.tolist() == [M + 1] * 2


def test_real_sizes(vocab: Vocab) -> None:
    lay = build_t2i_gen([64] * 5000, vocab=vocab, max_text_len=512, num_image_tokens=1024)
    assert lay.seq_len == 1539 and lay.spans.image.as_slice() == slice(514, 1538)
    assert lay.input_ids[0, 512].item() == vocab.eos_id  # truncated caption ends with a re-appended eos
    assert build_lm([64] * 10, vocab=vocab, max_seq_len=1539).seq_len == 1539


def test_cond_dropout_uses_the_generator(vocab: Vocab) -> None:
    texts = [[64, 65]] * 64
    image = torch.full((64, 4), vocab.mask_id)
    labels = torch.full((64, 4), IGNORE_INDEX)

    def dropped(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        lay = build_t2i_batch(texts, image, labels, vocab=vocab, max_text_len=8, cond_dropout_prob=0.1, generator=g)
        return lay.spans.text.lengths == 2  # [bos, eos]

    assert torch.equal(dropped(3), dropped(3))
    assert torch.equal(dropped(3), torch.rand(64, generator=torch.Generator().manual_seed(3)) < 0.1)
    assert 0 < int(dropped(3).sum()) < 20


def test_lm_padding_mask_option(vocab: Vocab) -> None:
    lay = build_lm([64, 65], vocab=vocab, max_seq_len=8, mask_padding=True)
    assert lay.attention_mask.long().tolist() == [[1, 1, 1, 1, 0, 0, 0, 0]]
    assert bool(build_lm([64, 65], vocab=vocab, max_seq_len=8).attention_mask.all())  # official default


def test_builder_validation(vocab: Vocab) -> None:
    image = torch.full((4,), vocab.mask_id)
    with pytest.raises(ValueError, match=r"`max_text_len` \(1\) must be >= 2"):
        build_mmu(image, [64], vocab=vocab, max_text_len=1)
    with pytest.raises(ValueError, match=r"image_ids must be a non-empty \(N,\)"):
        build_mmu(image[None], [64], vocab=vocab, max_text_len=8)
    with pytest.raises(ValueError, match="image_labels .* must match"):
        build_t2i([64], image, torch.zeros(3, dtype=torch.long), vocab=vocab, max_text_len=8)
    with pytest.raises(ValueError, match=r"text ids must lie in \[0, 319\)"):
        build_lm([64, 400], vocab=vocab, max_seq_len=8)
    with pytest.raises(ValueError, match="cond_dropout_prob"):
        build_t2i_batch([[64]], image[None], image[None], vocab=vocab, max_text_len=8, cond_dropout_prob=1.5)
    with pytest.raises(ValueError, match="2 texts but 1 image rows"):
        build_mmu_batch(image[None], [[64], [65]], vocab=vocab, max_text_len=8)
    with pytest.raises(ValueError, match="empty"):
        build_lm_batch([], vocab=vocab, max_seq_len=8)


def test_cat_and_pad_errors(vocab: Vocab) -> None:
    a, b = build_lm([64], vocab=vocab, max_seq_len=4), build_lm([64], vocab=vocab, max_seq_len=6)
    with pytest.raises(ValueError, match="lengths differ"):
        TokenLayout.cat([a, b])
    with pytest.raises(ValueError, match="cannot mix tasks"):
        TokenLayout.cat([a, build_lm_chat([64], vocab=vocab, max_seq_len=4)])
    with pytest.raises(ValueError, match="shorter than the longest row"):
        pad_layouts([a, b], side="right", pad_id=vocab.eos_id, length=5)
    with pytest.raises(ValueError, match=r"rows \[1\] have padding after a token"):
        check_left_padded(torch.tensor([[0, 1, 1], [1, 1, 0]]))


def test_training_collation_trains_on_eos_padding(vocab: Vocab) -> None:
    rows = [build_lm_chat([vocab.end_header_id, 64], vocab=vocab, max_seq_len=n) for n in (4, 7)]
    batch = collate_training(rows, vocab=vocab)
    assert batch.seq_len == 7 and batch.input_ids[0, 4:].tolist() == [vocab.eos_id] * 3
    assert batch.labels is not None and batch.labels[0, 4:].tolist() == [vocab.eos_id] * 3
    assert batch.spans.answer.stop.tolist() == [7, 7] and not bool(batch.prompt_mask[0, 4:].any())
    ignored = pad_layouts(rows, side="right", pad_id=vocab.eos_id)
    assert ignored.labels is not None and ignored.labels[0, 4:].tolist() == [IGNORE_INDEX] * 3
    assert ignored.spans.answer.stop.tolist() == [4, 7] and not bool(ignored.attention_mask[0, 4:].any())


# ---------------------------------------------------------------------------------------------------------
# Property tests: any caption / question length, empty and far too long included.

PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SPECIAL = [300, 301, 313, 316, 317, 318]  # bos, eos, [iPAD], headers, eot_id of the fixture tokenizer
text_ids = st.lists(st.one_of(st.integers(0, 299), st.sampled_from(SPECIAL)), max_size=60)
max_text_lens = st.integers(2, 24)
n_images = st.integers(1, 8)


def image_row(draw: st.DrawFn, n: int, mask_id: int = 315) -> torch.Tensor:
    return torch.tensor(draw(st.lists(st.one_of(st.integers(319, 446), st.just(mask_id)), min_size=n, max_size=n)))


def with_bos(ids: list[int]) -> list[int]:
    return ids if ids and ids[0] == 300 else [300, *ids]


def last(ids: list[int], token: int) -> int:
    return max((i for i, t in enumerate(ids) if t == token), default=-1)


def check_spans(lay: TokenLayout) -> None:
    for span in (lay.spans.text, lay.spans.prompt, lay.spans.answer, lay.spans.image):
        assert bool((span.start <= span.stop).all()) and bool((span.stop <= lay.seq_len).all())
    # The answer follows the prompt; text starts with bos.
    assert bool((lay.spans.answer.start >= lay.spans.prompt.stop).all())
    assert bool((lay.input_ids[0, int(lay.spans.text.start)] == 300).all())


@PROPS
@given(st.data(), text_ids, max_text_lens, n_images, st.booleans())
def test_t2i_properties(vocab: Vocab, data: st.DataObject, text: list[int], m: int, n: int, drop: bool) -> None:
    image, labels = image_row(data.draw, n), image_row(data.draw, n, IGNORE_INDEX)
    lay = build_t2i(text, image, labels, vocab=vocab, max_text_len=m, drop_condition=drop)
    ids, (p0, p1) = lay.input_ids[0].tolist(), (int(lay.spans.prompt.start), int(lay.spans.prompt.stop))
    assert lay.seq_len == m + n + 3 and p1 == m + 1
    assert torch.equal(lay.input_ids[0, lay.spans.image.as_slice()], image) and ids[m + 1] == vocab.soi_id
    assert ids[-1] == vocab.eoi_id and int(lay.spans.image.stop) == lay.seq_len - 1
    assert ids[:p0] == [vocab.ipad_id] * p0 and lay.attention_mask[0].tolist() == [i >= p0 for i in range(len(ids))]
    assert ids[p0] == vocab.t2i_id and ids[p0 + 1] == vocab.bos_id and ids[m] == vocab.eos_id
    caption = [300] if drop else with_bos(text)
    assert ids[p0 + 1 : m] == caption[: m - p0 - 1]
    expected = [IGNORE_INDEX if t == vocab.ipad_id else t for t in ids]
    expected[m + 2 : m + 2 + n] = labels.tolist()
    assert lay.labels is not None and lay.labels[0].tolist() == expected
    assert torch.equal(lay.prompt_mask, ~lay.spans.image.mask(lay.seq_len))
    check_spans(lay)


@PROPS
@given(st.data(), text_ids, max_text_lens, n_images)
def test_mmu_properties(vocab: Vocab, data: st.DataObject, text: list[int], m: int, n: int) -> None:
    image = image_row(data.draw, n)
    lay = build_mmu(image, text, vocab=vocab, max_text_len=m)
    ids, prompt_end = lay.input_ids[0].tolist(), int(lay.spans.prompt.stop)
    assert lay.seq_len == n + 3 + m and ids[:2] == [vocab.mmu_id, vocab.soi_id] and ids[n + 2] == vocab.eoi_id
    assert torch.equal(lay.input_ids[0, lay.spans.image.as_slice()], image)
    assert ids[n + 3] == vocab.bos_id and ids[int(lay.spans.text.stop) - 1] == vocab.eos_id
    assert set(ids[int(lay.spans.text.stop) :]) <= {vocab.eos_id}
    header = last(ids[n + 3 :], vocab.end_header_id)
    assert prompt_end == n + 3 + header + 1  # through the last <|end_header_id|>, else the image block
    assert torch.equal(lay.prompt_mask, lay.spans.prompt.mask(lay.seq_len))
    assert int(lay.spans.answer.start) == prompt_end and int(lay.spans.answer.stop) == lay.seq_len
    expected = [IGNORE_INDEX] * (n + 3) + [IGNORE_INDEX if t == vocab.ipad_id else t for t in ids[n + 3 :]]
    assert lay.labels is not None and lay.labels[0].tolist() == expected
    gen = build_mmu_gen(image, text, vocab=vocab)
    assert gen.input_ids[0, n + 3 :].tolist() == with_bos(text) and int(gen.spans.prompt.stop) == gen.seq_len
    check_spans(lay)


@PROPS
@given(text_ids, st.integers(1, 40))
def test_lm_and_lm_chat_properties(vocab: Vocab, text: list[int], length: int) -> None:
    lm, chat = build_lm(text, vocab=vocab, max_seq_len=length), build_lm_chat(text, vocab=vocab, max_seq_len=length)
    assert torch.equal(lm.input_ids, chat.input_ids) and lm.seq_len == length
    row = [*with_bos(text), vocab.eos_id]
    assert lm.input_ids[0].tolist() == (row + [vocab.eos_id] * length)[:length]
    assert torch.equal(lm.labels, lm.input_ids) and bool(lm.attention_mask.all())
    assert int(lm.spans.answer.start) == 0 and not bool(lm.prompt_mask.any())
    prompt_end = last(chat.input_ids[0].tolist(), vocab.end_header_id) + 1
    assert int(chat.spans.prompt.stop) == prompt_end == int(chat.spans.answer.start)
    assert torch.equal(chat.prompt_mask, chat.spans.prompt.mask(length))
    check_spans(lm)
    check_spans(chat)


@PROPS
@given(st.data(), text_ids, max_text_lens, n_images)
def test_r2i_properties(vocab: Vocab, data: st.DataObject, text: list[int], m: int, n: int) -> None:
    image = image_row(data.draw, n)
    lay = build_r2i(text, image, vocab=vocab, max_text_len=m)
    ids, mask = lay.input_ids[0].tolist(), lay.prompt_mask[0]
    assert lay.seq_len == m + n + 3 and ids[0] == vocab.r2i_id and ids[m + 1] == vocab.soi_id
    assert torch.equal(lay.input_ids[0, lay.spans.image.as_slice()], image) and ids[-1] == vocab.eoi_id
    header = last(ids[1 : m + 1], vocab.end_header_id)
    assert int(lay.spans.prompt.stop) == (header + 2 if header >= 0 else m + 1)
    assert bool(mask[m + 1]) and bool(mask[-1]) and not bool(mask[m + 2 : m + 2 + n].any())
    assert torch.equal(lay.labels, lay.input_ids)
    check_spans(lay)


@PROPS
@given(st.lists(text_ids, min_size=1, max_size=5))
def test_generation_collation_left_pads(vocab: Vocab, prompts: list[list[int]]) -> None:
    rows = [build_text_gen(p, vocab=vocab) for p in prompts]
    batch = build_text_gen_batch(prompts, vocab=vocab)
    check_left_padded(batch.attention_mask)
    assert batch.seq_len == max(r.seq_len for r in rows)
    for i, row in enumerate(rows):
        start = int(batch.spans.prompt.start[i])
        assert start == batch.seq_len - row.seq_len and int(batch.spans.prompt.stop[i]) == batch.seq_len
        assert torch.equal(batch.input_ids[i, start:], row.input_ids[0])
        assert batch.input_ids[i, :start].tolist() == [vocab.pad_id] * start
        assert torch.equal(batch.attention_mask[i], batch.spans.prompt.mask(batch.seq_len)[i])
        assert bool(batch.prompt_mask[i].all())
