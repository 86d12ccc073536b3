"""Training data: record adapters, task layouts, the weighted mixture, resumable cursors, sharding, world sources."""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import random
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmada.prompting import THINKING_INSTRUCTION, TextTokenizer, Vocab
from mmada.training.data import RecordStream, brace_expand, build_source, expand_files
from mmada.training.data_adapters import SkipCounter, SourceSpec
from mmada.training.data_tasks import OFFICIAL_EOT, TaskSpec, record_text, t2i_caption
from mmada.utils.config import build

M, N = 256, 4  # text length and image tokens of the fake encoder
SEED = 3


def fake_encoder(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, 4) codes in [0, 128): the mean of each image quadrant, quantised."""
    pooled = torch.nn.functional.adaptive_avg_pool2d(pixels.mean(1, keepdim=True), 2).flatten(1)  # (B, 4)
    return ((pooled + 1) / 2 * 127).round().long().clamp(0, 127)


@pytest.fixture(scope="module")
def tokenizer(reference_dir: Path) -> TextTokenizer:
    return TextTokenizer.from_pretrained(reference_dir / "mmada_a")


@pytest.fixture(scope="module")
def vocab(tokenizer: TextTokenizer) -> Vocab:
    return Vocab.from_tokenizer(tokenizer, vocab_size=512, codebook_size=128, reserved=None)


def png(color: tuple[int, int, int], size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tar(path: Path, samples: list[dict[str, bytes | str]]) -> None:
    with tarfile.open(path, "w") as tar:
        for i, members in enumerate(samples):
            for ext, data in members.items():
                info = tarfile.TarInfo(f"sample{i:04d}.{ext}")
                payload = data.encode() if isinstance(data, str) else data
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def write_jsonl(path: Path, rows: list[object]) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    good = [{"png": png((10 * i, 200, 40)), "txt": f"The image shows box {i}. It is green."} for i in range(6)]
    corrupt, no_caption = {"png": b"not an image", "txt": "x"}, {"png": png((1, 2, 3))}
    json_caption = {"jpg": png((5, 5, 5)), "json": json.dumps({"prompt": "a json caption"})}
    write_tar(root / "shard-0.tar", [good[0], corrupt, good[1], no_caption, json_caption])
    write_tar(root / "shard-1.tar", [{**g, "shortcaption": b"a box"} for g in good[2:]])
    write_jsonl(root / "docs.jsonl", [{"text": f"document {i} " * 5} for i in range(5)] + ["{broken", {"title": "x"}])
    write_jsonl(root / "more.jsonl", [{"text": f"other text {i}"} for i in range(7)])
    write_jsonl(root / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"question": "1 + 1?", "reasoning": "one and one", "answer": "2"},
        {"content": "<|start_header_id|>user<|end_header_id|>\nq<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\na"},
        {"messages": [{"role": "robot", "content": "?"}]},
    ])
    (root / "images").mkdir()
    for i in range(4):
        (root / "images" / f"{i}.png").write_bytes(png((50 * i, 0, 0)))
    with open(root / "cot.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "question", "solution"])
        writer.writerows([[f"{i}.png", f"what is {i}?", f"<think> look </think> {i}"] for i in range(4)])
        writer.writerow(["missing.png", "where?", "<think> no </think> gone"])
    return {p.name: p for p in root.iterdir()} | {"root": root}


def read_epoch(spec: SourceSpec, paths: list[str], *, rank: int = 0, world_size: int = 1, seed: int = SEED):
    skips = SkipCounter()
    stream = RecordStream("s", spec, paths, seed=seed, rank=rank, world_size=world_size, skips=skips)
    records = []
    for record in stream:
        if stream.cursor["epoch"] > 0:
            break
        records.append(record)
    return records, skips.counts


def test_brace_expansion_and_missing_files(files):
    assert brace_expand("a/{00..02}.tar") == ["a/00.tar", "a/01.tar", "a/02.tar"]
    assert brace_expand("{x,y}-{1..2}") == ["x-1", "x-2", "y-1", "y-2"]
    root = files["root"]
    shards = [str(files["shard-0.tar"]), str(files["shard-1.tar"])]
    assert expand_files([f"{root}/shard-{{0..1}}.tar"], "urls") == shards
    with pytest.raises(ValueError, match="`data.tasks.t2i.urls`"):
        expand_files([f"{root}/shard-{{0..2}}.tar"], "data.tasks.t2i.urls")


def test_webdataset_skips_corrupt_image_and_missing_caption(files, caplog):
    spec = SourceSpec("webdataset", urls=(str(files["shard-0.tar"]),), shuffle=False)
    with caplog.at_level(logging.WARNING, logger="mmada.training.data_adapters"):
        records, skipped = read_epoch(spec, [str(files["shard-0.tar"])])
    assert [r.caption for r in records] == [
        "The image shows box 0. It is green.", "The image shows box 1. It is green.", "a json caption"]
    assert skipped == {"bad_image": 1, "missing_caption": 1}
    assert "shard-0.tar:1" in caplog.text and "shard-0.tar:3" in caplog.text
    assert records[0].image.size == (40, 40)


def test_jsonl_broken_line_is_skipped_and_counted(files, caplog):
    spec = SourceSpec("jsonl", path=(str(files["docs.jsonl"]),), shuffle=False)
    with caplog.at_level(logging.WARNING):
        records, skipped = read_epoch(spec, [str(files["docs.jsonl"])])
    assert sorted(r.text.split()[1] for r in records) == ["0", "1", "2", "3", "4"]
    assert skipped == {"bad_json": 1, "missing_field": 1}
    assert "docs.jsonl:6: Expecting" in caplog.text and "first at " in caplog.text


def test_csv_and_jsonl_chat_records(files):
    spec = SourceSpec("csv", path=(str(files["cot.csv"]),), image_root=str(files["images"]), shuffle=False)
    records, skipped = read_epoch(spec, [str(files["cot.csv"])])
    assert [r.question for r in records] == [f"what is {i}?" for i in range(4)] and skipped == {"bad_image": 1}
    assert all(r.cot and r.image is not None for r in records)
    text = record_text("mmu", records[0], TaskSpec(batch_size=1), None, (), "<|startoftext|>")
    user = f"{THINKING_INSTRUCTION}\nwhat is 0?\n"  # the official CoT caption string, `<eot_id>` quirk included
    assert text.startswith(f"<|start_header_id|>user<|end_header_id|>\n{user}{OFFICIAL_EOT}")
    chat = SourceSpec("jsonl_chat", path=(str(files["chat.jsonl"]),), shuffle=False)
    records, skipped = read_epoch(chat, [str(files["chat.jsonl"])])
    assert skipped == {"bad_chat": 1}
    assert records[0].messages[1]["content"] == "hello" and records[2].text.endswith("a")
    assert records[1].answer == "<think> one and one </think> 2" and records[1].cot
    rendered = record_text("lm_chat", records[1], TaskSpec(batch_size=1), None, (), "<|startoftext|>")
    assert THINKING_INSTRUCTION in rendered and rendered.endswith("</think> 2<|eot_id|>")


def test_parquet_source(files, tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "web.parquet"
    pq.write_table(pa.table({"content": ["line one\nline two", "", "third"]}), path)
    records, skipped = read_epoch(SourceSpec("parquet", path=(str(path),), shuffle=False), [str(path)])
    assert [r.text for r in records] == ["line one\nline two", "third"] and skipped == {"missing_field": 1}
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"mmada\[data\]"):
        build_source({"name": "mixture", "max_text_len": M, "tasks": {"lm": {"source": "parquet", "path": str(path),
                      "batch_size": 1}}}, tokenizer=None, vocab=None, image_tokenizer=None, seed=0)


def test_t2i_caption_rules():
    rng = random.Random(0)
    captions = {t2i_caption("A cat. It sleeps.", rng, 0.5) for _ in range(50)}
    assert captions == {"A cat", "A cat. It sleeps."}  # the first sentence with probability 0.5
    assert t2i_caption("The image depicts a cat. It sleeps.", rng, 1.0) == "a cat"
    assert "<person>" not in t2i_caption("<person> and <person> walk, <person> sits", rng, 0.0)


def mixture_spec(files: dict[str, Path], **lm: object) -> dict:
    return {"name": "mixture", "max_text_len": M, "resolution": 32, "tasks": {
        "t2i": {"source": "webdataset", "urls": [str(files["shard-0.tar"]), str(files["shard-1.tar"])],
                "batch_size": 3},
        "mmu": {"batch_size": 2, "eot_quirk": False, "mixture": {
            "captions": {"source": "webdataset", "urls": str(files["shard-1.tar"]), "weight": 1.0},
            "cot": {"source": "csv", "path": str(files["cot.csv"]), "image_root": str(files["images"])}}},
        "lm": lm or {"source": "jsonl", "path": str(files["docs.jsonl"]), "batch_size": 2, "max_chars": 30},
        "lm_chat": {"source": "jsonl_chat", "path": str(files["chat.jsonl"]), "batch_size": 2},
        "r2i": {"source": "webdataset", "urls": str(files["shard-1.tar"]), "batch_size": 1},
    }}


def make(spec: dict, tokenizer, vocab, **kwargs):
    return build_source(spec, tokenizer=tokenizer, vocab=vocab, image_tokenizer=fake_encoder, seed=SEED, **kwargs)


def check_layouts(batch: dict, vocab: Vocab, length: int, *, cap: bool = False) -> None:
    """Every layout is `length` long (cap=True: at most `length`, its own length for the rest)."""
    for task, layout in batch.items():
        assert layout.task == task and (layout.seq_len <= length if cap else layout.seq_len == length), task
        check_layout(layout, vocab)


def check_layout(layout, vocab: Vocab) -> None:
    task, length = layout.task, layout.seq_len
    assert layout.labels is not None and layout.labels.shape == layout.input_ids.shape
    spans, prompt, answer = layout.spans, layout.spans.prompt, layout.spans.answer
    assert bool((prompt.stop <= answer.start).all()) and bool((answer.stop <= length).all())
    if task in ("t2i", "mmu", "r2i"):
        image = layout.input_ids[spans.image.mask(length)].view(layout.batch_size, -1)
        assert image.shape[1] == N and bool(vocab.is_image_token(image).all())
    if task in ("mmu", "lm_chat"):  # the prompt ends right after the last <|end_header_id|>
        rows = torch.arange(layout.batch_size)
        assert bool((layout.input_ids[rows, prompt.stop - 1] == vocab.end_header_id).all())


def test_mixture_layouts_share_one_length(files, tokenizer, vocab):
    source = make(mixture_spec(files), tokenizer, vocab)
    for _, batch in zip(range(4), source):
        assert set(batch) == {"t2i", "mmu", "lm", "lm_chat", "r2i"}
        check_layouts(batch, vocab, M + N + 3)
        assert [batch[t].batch_size for t in ("t2i", "mmu", "lm", "lm_chat", "r2i")] == [3, 2, 2, 2, 1]
    r2i = tokenizer.decode(batch["r2i"].input_ids[0].tolist(), skip_special_tokens=False)
    assert "a box" in r2i and f"{OFFICIAL_EOT}<|start_header_id|>assistant" in r2i and "<think>The image" in r2i
    metrics = source.metrics()
    assert metrics["skipped"]["bad_image"] >= 1 and metrics["skipped"]["bad_json"] >= 1
    assert set(metrics["picks"]) >= {"t2i/t2i", "lm/lm"}


def test_mixture_respects_weights(files, tokenizer, vocab):
    lm = {"batch_size": 1, "mixture": {"a": {"source": "jsonl", "path": str(files["docs.jsonl"]), "weight": 3.0},
                                       "b": {"source": "jsonl", "path": str(files["more.jsonl"]), "weight": 1.0}}}
    spec = {"name": "mixture", "max_text_len": M, "seq_len": 64, "tasks": {"lm": lm}}
    source = build_source(spec, tokenizer=tokenizer, vocab=vocab, image_tokenizer=None, seed=SEED)
    batches = [batch for _, batch in zip(range(800), source)]
    picks = source.metrics()["picks"]
    assert abs(picks["lm/a"] / 800 - 0.75) < 0.05  # 4.7 standard deviations
    assert batches[-1]["lm"].seq_len == 64


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k].input_ids, b[k].input_ids) and torch.equal(a[k].labels, b[k].labels)
        and torch.equal(a[k].attention_mask, b[k].attention_mask) and torch.equal(a[k].prompt_mask, b[k].prompt_mask)
        for k in a)


def assert_resumes(build) -> None:
    source = build()
    iterator = iter(source)
    for _ in range(5):
        next(iterator)
    state = json.loads(json.dumps(source.state_dict()))  # plain data: saves with any checkpoint format
    expected = [next(iterator) for _ in range(4)]
    resumed = build()
    resumed.load_state_dict(copy.deepcopy(state))
    assert all(same(a, b) for a, b in zip(expected, resumed))
    assert not same(expected[0], next(iter(build())))  # the first batches differ from the resumed ones


def test_state_dict_resume_gives_the_same_batches(files, tokenizer, vocab):
    assert_resumes(lambda: make(mixture_spec(files), tokenizer, vocab))
    sizes = {"lm_chat": 2, "mmu": 2, "t2i": 2}
    world = {"name": "world_sft", "max_text_len": 400, "pool_size": 64, "batch_sizes": sizes}
    assert_resumes(lambda: make(world, tokenizer, vocab))
    with pytest.raises(ValueError, match="seed"):
        build_source(world, tokenizer=tokenizer, vocab=vocab, image_tokenizer=fake_encoder, seed=SEED + 1)\
            .load_state_dict(make(world, tokenizer, vocab).state_dict())


@pytest.mark.parametrize("paths", [["docs.jsonl", "more.jsonl", "chat.jsonl"], ["more.jsonl"]], ids=["file", "record"])
def test_rank_shards_are_disjoint_and_cover_the_stream(files, paths):
    paths = [str(files[p]) for p in paths]
    spec = SourceSpec("jsonl", path=tuple(paths))
    whole, _ = read_epoch(spec, paths)
    shards = [{r.origin for r in read_epoch(spec, paths, rank=rank, world_size=2)[0]} for rank in range(2)]
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    assert shards[0] | shards[1] == {r.origin for r in whole}


def world(tokenizer, vocab, **spec):
    return make({"name": "world_sft", "max_text_len": 400, "pool_size": 64, **spec}, tokenizer, vocab)


def test_world_splits_and_ranks_are_disjoint(tokenizer, vocab):
    train, validation = world(tokenizer, vocab), world(tokenizer, vocab, split="validation")
    keys = {"scenes": lambda e: e.scene.canonical(), "text": lambda e: e.question, "digits": lambda e: e.index}
    for kind, key in keys.items():
        assert not {key(e) for e in train.pool(kind)} & {key(e) for e in validation.pool(kind)}, kind
    ranks = [make({"name": "world_pretrain", "max_text_len": 400, "pool_size": 64}, tokenizer, vocab, rank=r,
                  world_size=2) for r in range(2)]
    shards = [{e.question for e in source.pool("text")} for source in ranks]
    assert not shards[0] & shards[1] and shards[0] | shards[1] == {e.question for e in train.pool("text")}


def answers(batch: dict, tokenizer: TextTokenizer, vocab: Vocab) -> list[str]:
    texts = []
    for layout in batch.values():
        answer = layout.spans.answer.mask(layout.seq_len)
        for row, mask in zip(layout.input_ids, answer):
            texts.append(tokenizer.decode([int(t) for t in row[mask] if t < vocab.image_offset]))
    return texts


def test_world_cot_switch(tokenizer, vocab):
    plain = world(tokenizer, vocab, cot=False, batch_sizes={"lm_chat": 4, "mmu": 4})
    cot = world(tokenizer, vocab, cot=True, plain_fraction=0.0, batch_sizes={"lm_chat": 4, "mmu": 4, "r2i": 1})
    plain_batches, cot_batches = [b for _, b in zip(range(3), plain)], [b for _, b in zip(range(3), cot)]
    assert not any("<think>" in text for b in plain_batches for text in answers(b, tokenizer, vocab))
    lm_chat = [t for b in cot_batches for t in answers({"lm_chat": b["lm_chat"]}, tokenizer, vocab)]
    assert all("<think>" in text and "</think>" in text for text in lm_chat)
    prompts = tokenizer.decode(cot_batches[0]["lm_chat"].input_ids[0].tolist())
    assert THINKING_INSTRUCTION in prompts
    check_layouts(cot_batches[0], vocab, 400 + N + 3, cap=True)
    with pytest.raises(ValueError, match="batch_sizes.r2i"):
        world(tokenizer, vocab, cot=False, batch_sizes={"r2i": 1})


def test_world_pretrain_has_every_skill(tokenizer, vocab):
    source = make({"name": "world_pretrain", "max_text_len": 400, "pool_size": 64}, tokenizer, vocab)
    batch = next(iter(source))
    assert set(batch) == {"t2i", "mmu", "lm", "lm_chat"}
    check_layouts(batch, vocab, 400 + N + 3, cap=True)
    full = next(iter(make({"name": "world_pretrain", "max_text_len": 400, "pool_size": 64, "pad_to": "max"},
                          tokenizer, vocab)))
    check_layouts(full, vocab, 400 + N + 3)
    assert not any("<think>" in text for text in answers(batch, tokenizer, vocab))


@pytest.mark.parametrize(("patch", "key"), [
    ({"tasks": {"lm": {"source": "foo", "path": "x", "batch_size": 1}}}, "data.tasks.lm.source"),
    ({"tasks": {"lm": {"source": "jsonl", "batch_size": 1}}}, "`path` is required"),
    ({"tasks": {"lm": {"source": "jsonl", "path": "/nonexistent/*.jsonl", "batch_size": 1}}}, "data.tasks.lm.path"),
    ({"tasks": {"t2i": {"source": "webdataset", "urls": "x.tar", "batch_size": -2}}},
     "data.tasks.t2i.batch_size` must be >= 1"),
    ({"tasks": {"lm": {"source": "jsonl", "path": "x", "batch_size": 1, "cond_dropout_prob": 0.1}}},
     "data.tasks.lm.cond_dropout_prob"),
    ({"tasks": {"lm": {"source": "jsonl", "path": "x", "batchsize": 1}}}, "data.tasks.lm.batchsize"),
    ({"tasks": {"video": {"source": "jsonl", "path": "x", "batch_size": 1}}}, "data.tasks.video"),
    ({"name": "nope"}, "data.name"),
    ({"name": "world_sft", "batch_sizes": {"t2i": -1}}, "batch_sizes.t2i"),
    ({"name": "world_pretrain", "cot": False}, "data.cot"),
])
def test_bad_specs_are_refused_naming_the_key(patch, key, tokenizer, vocab):
    spec = {"name": "mixture", "max_text_len": M, **patch}
    if spec["name"] != "mixture":
        spec.pop("tasks", None)
    with pytest.raises(ValueError, match=key.replace(".", r"\.").replace("`", ".")):
        make(spec, tokenizer, vocab)


def test_spec_types():
    """Data specs load like every config (`mmada.utils.config.build`): values converted, bad ones named."""
    with pytest.raises(ValueError, match=r"`t\.batch_size` expects int, got 'four'"):
        build(TaskSpec, {"batch_size": "four"}, "t")
    assert build(TaskSpec, {"batch_size": 2, "cond_dropout_prob": 0}, "t").cond_dropout_prob == 0.0
    assert np.isclose(build(SourceSpec, {"source": "jsonl", "path": "a"}, "s").weight, 1.0)
    assert build(SourceSpec, {"source": "jsonl", "path": "a"}, "s").path == ("a",)  # one path is a list of one


def test_world_padding_to_the_longest_row(tokenizer, vocab):
    """pad_to=longest drops padding columns only. t2i captions are left-padded and hidden, so with relative
    RoPE every real position gets the same logits as in the fully padded (official) layout; text rows keep
    their EOS padding up to the longest answer of the micro-batch (LLaDA's SFT convention, §2.3)."""
    from mmada.model import MMaDAModel, ModelConfig

    torch.manual_seed(0)
    config = ModelConfig.tiny(vocab_size=512, embedding_size=512, llm_vocab_size=319, codebook_size=128,
                              mask_token_id=vocab.mask_id, eos_token_id=vocab.eos_id, pad_token_id=vocab.pad_id)
    model = MMaDAModel(config).eval()
    spec = {"name": "world_sft", "max_text_len": 400, "pool_size": 64, "cond_dropout_prob": 0.0,
            "batch_sizes": {"t2i": 3, "mmu": 3, "lm_chat": 3}}
    short = next(iter(make({**spec, "pad_to": "longest"}, tokenizer, vocab)))
    full = next(iter(make({**spec, "pad_to": "max"}, tokenizer, vocab)))
    a, b = short["t2i"], full["t2i"]
    assert a.seq_len < b.seq_len and not bool(a.attention_mask[:, 1].all())  # some padding: a shorter caption
    real_a, real_b = a.attention_mask.bool(), b.attention_mask.bool()
    assert torch.equal(a.input_ids[real_a], b.input_ids[real_b])  # the same tokens, less padding
    with torch.no_grad():
        logits_a = model(a.input_ids, a.attention_mask, padding="hide")[real_a]
        logits_b = model(b.input_ids, b.attention_mask, padding="hide")[real_b]
    torch.testing.assert_close(logits_a, logits_b, atol=1e-4, rtol=1e-4)
    for task in ("mmu", "lm_chat"):
        a, b = short[task], full[task]
        assert a.seq_len < b.seq_len and torch.equal(a.input_ids, b.input_ids[:, : a.seq_len]), task
        assert bool((a.input_ids[:, -2] != vocab.eos_id).any()), task  # the longest answer ends at the last column
