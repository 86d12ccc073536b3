"""Record adapters: one file on disk -> plain `Record`s, for the seeded, resumable streams of `data.py`.

One adapter per format, all robust to bad data: a corrupt record (undecodable image, missing caption,
broken json line, unreadable file) becomes a `Skip` that the stream counts (`SkipCounter`) and logs with
its file and index; it never stops a run. Formats (`ADAPTERS`):

* `webdataset`: tar shards of `<key>.jpg|png|webp` + `<key>.txt|caption|json` members, grouped by key as
  webdataset does (Gen-Verse/MMaDA training/data.py `tarfile_to_samples_nothrow`), read with `tarfile`.
* `jsonl`: `{"text": ...}` documents, streamed: one pass indexes the byte offset of every non-blank line
  (16 bytes a line), then lines are read one at a time, so a file is never held in memory whole and one
  bad line (a byte that is not UTF-8, broken json) skips that record only, reported as `file:line`.
* `parquet`: one text column (`content`, as parquet/my_dataset.py `RefinedWebDataset` / `ChatDataset`),
  needs the optional `pyarrow`.
* `jsonl_chat`: `{"messages": [...]}` (or LLaVA `{"conversations": [...]}`), `{"content": "<rendered chat>"}`
  or CoT `{"question", "reasoning", "answer"}`; an optional `"image"` path makes it an understanding record.
* `csv`: image path + question + answer columns, as the official ai2d / clevr / docvqa / geo CoT CSVs.

An adapter reads one file from a start position and yields one item per entry, so a stream's cursor
`(epoch, file, record)` can resume by opening the file again and skipping entries without decoding them
(`mmada.training.data.RecordStream`). Row formats are permuted per file with the stream's seeded rng; tar
shards are read in order, since webdataset shards are written pre-shuffled.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import re
import tarfile
import types
import zlib
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

from ..image_tokenizer import load_image
from ..prompting import validate_messages
from ..world.cot import format_cot
from .tasks import TaskName

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_LOG_FIRST = 10  # warn for the first skips of each reason, then every _LOG_EVERY-th
_LOG_EVERY = 1000
_SURROGATE = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of a byte that is not UTF-8


@dataclass(frozen=True)
class Record:
    """One example as read from disk; which fields are set depends on the format."""

    origin: str
    """`file:index` (or `file line n`), for logs."""
    text: str | None = None
    """A document (lm) or an already rendered chat transcript (`content` columns)."""
    caption: str | None = None
    """Image caption (webdataset)."""
    question: str | None = None
    answer: str | None = None
    """Single-turn question and answer (csv, CoT jsonl); a CoT answer is `<think> … </think> answer`."""
    cot: bool = False
    """The answer is a reasoning trace: reasoning prompts get MMaDA's thinking instruction."""
    messages: tuple[Mapping[str, str], ...] | None = None
    """Chat turns [{"role", "content"}], rendered with the LLaDA template."""
    image: Image.Image | None = field(default=None, repr=False)
    """Decoded RGB image."""
    extras: Mapping[str, str] = field(default_factory=dict)
    """Other text members of a webdataset sample, by extension (e.g. `shortcaption` for r2i)."""


@dataclass(frozen=True)
class Skip:
    """A record that could not be used: counted under `reason`, logged with `detail` (file and index)."""

    reason: str
    detail: str
    where: str = ""
    """Its location (`file:line` for jsonl); default: the start of `detail`, up to its first `: `."""

    @property
    def location(self) -> str:
        return self.where or self.detail.split(": ", 1)[0]


@dataclass(frozen=True)
class SourceSpec:
    """Where one named sub-source reads its records (one entry of a task's `mixture`)."""

    source: Literal["webdataset", "jsonl", "parquet", "jsonl_chat", "csv"]
    """Record format, a key of `ADAPTERS`."""
    urls: tuple[str, ...] = ()
    """webdataset shards: globs and/or brace patterns such as `data/{0000..0999}.tar`."""
    path: tuple[str, ...] = ()
    """Files of the other formats: globs and/or brace patterns."""
    weight: float = 1.0
    """Sampling weight inside the task's mixture (a whole micro-batch comes from one sub-source)."""
    task: TaskName | None = None
    """Rows to build; default: the task the entry sits under."""
    shuffle: bool = True
    """Reshuffle files every epoch and permute the rows of row formats."""
    text_key: str = "text"
    """jsonl: the document field."""
    column: str = "content"
    """parquet: the text column (official RefinedWeb / instruction parquet: `content`)."""
    caption_keys: tuple[str, ...] = ("txt", "caption", "text", "json")
    """webdataset: caption members in order of preference; `json` reads `caption`, `prompt` or `text`."""
    image_root: str | None = None
    """csv / jsonl_chat: folder the image paths are relative to."""
    image_column: str = "image"
    question_column: str = "question"
    answer_column: str = "solution"
    """csv columns (the official CoT CSVs: image, question, solution)."""
    image_mode: Literal["crop", "squash"] | None = None
    """Preprocessing; default `squash` for csv (official `conditional_image_transform`), else `crop`."""

    def __post_init__(self) -> None:
        key = "urls" if self.source == "webdataset" else "path"
        if not getattr(self, key):
            raise ValueError(f"`{key}` is required for source {self.source!r}")
        if self.weight <= 0:
            raise ValueError(f"`weight` must be > 0, got {self.weight}")

    @property
    def patterns(self) -> tuple[str, ...]:
        return self.urls if self.source == "webdataset" else self.path

    @property
    def resolved_image_mode(self) -> Literal["crop", "squash"]:
        return self.image_mode or ("squash" if self.source == "csv" else "crop")


class SkipCounter:
    """Counts skipped records by reason and logs them (the first few per reason, then 1 in 1000), each log
    line with the count so far and the location of the first record skipped for that reason."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.first: dict[str, str] = {}
        """reason -> location of the first record skipped for it (`file:line`, `file:index (key)`)."""

    def add(self, skip: Skip) -> None:
        self.counts[skip.reason] += 1
        self.first.setdefault(skip.reason, skip.location)
        n = self.counts[skip.reason]
        if n <= _LOG_FIRST or n % _LOG_EVERY == 0:
            logger.warning("skipped record (%s, %d so far, first at %s): %s", skip.reason, n, self.first[skip.reason],
                           skip.detail)

    def summary(self) -> str:
        """`bad_utf8: 1 (first at a.jsonl:17), bad_json: 2 (first at ...)`, or `none`."""
        return ", ".join(f"{r}: {n} (first at {self.first.get(r, '?')})" for r, n in self.counts.items()) or "none"


# ---------------------------------------------------------------------------------------------------
# Adapters: (path, spec, start, keep, rng) -> one item per position from `start`: Record, Skip or None
# (None = a position `keep` gives to another rank). Positions count raw entries, bad ones included.
# ---------------------------------------------------------------------------------------------------

Item = Record | Skip | None
Adapter = Callable[[str, SourceSpec, int, Callable[[int], bool], random.Random | None], Iterator[Item]]


def _split_key(name: str) -> tuple[str | None, str]:
    # webdataset `base_plus_ext`: the key runs to the first dot of the basename.
    match = re.match(r"^((?:.*/|)[^./][^.]*)\.([^/]*)$", name)
    return (match.group(1), match.group(2).lower()) if match else (None, "")


def _tar_samples(tar: tarfile.TarFile, want: Callable[[int], bool]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Consecutive members sharing a key form one sample; member data is only read when `want(pos)`."""
    key: str | None = None
    files: dict[str, bytes] = {}
    pos = -1
    for member in tar:
        if not member.isfile():
            continue
        name, ext = _split_key(member.name)
        if name is None:
            continue
        if name != key or ext in files:
            if key is not None:
                yield key, files
            key, files, pos = name, {}, pos + 1
        handle = tar.extractfile(member) if want(pos) else None
        files[ext] = handle.read() if handle is not None else b""
    if key is not None:
        yield key, files


def _webdataset_record(origin: str, files: dict[str, bytes], spec: SourceSpec) -> Record | Skip:
    image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in files), None)
    if image_ext is None:
        return Skip("missing_image", f"{origin}: no {'/'.join(IMAGE_EXTENSIONS)} member")
    try:
        image = load_image(files[image_ext])
    except ValueError as err:  # load_image reports every decode failure as ValueError
        return Skip("bad_image", f"{origin}: {err}")
    texts = {}
    for ext, data in files.items():
        if ext in IMAGE_EXTENSIONS:
            continue
        try:
            texts[ext] = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            continue  # binary members (.npy, ...) are not text
    caption = next((text for ext in spec.caption_keys if (text := _caption(texts, ext))), None)
    if caption is None:
        return Skip("missing_caption", f"{origin}: no non-empty {'/'.join(spec.caption_keys)} member")
    return Record(origin, caption=caption, image=image, extras=texts)


def _caption(texts: Mapping[str, str], ext: str) -> str | None:
    """A member's caption; `json` members carry it under `caption`, `prompt` (text-to-image-2M) or `text`."""
    if ext != "json":
        return texts.get(ext) or None
    try:
        meta = json.loads(texts.get("json", "null"))
    except json.JSONDecodeError:
        return None
    values = [meta.get(key) for key in ("caption", "prompt", "text")] if isinstance(meta, dict) else []
    return next((v.strip() for v in values if isinstance(v, str) and v.strip()), None)


def read_webdataset(
    path: str, spec: SourceSpec, start: int, keep: Callable[[int], bool], rng: random.Random | None
) -> Iterator[Item]:
    """Samples of one tar shard in order (`rng` unused: shards are shuffled across, not within)."""
    try:
        with tarfile.open(path, "r|*") as tar:  # stream mode: also .tar.gz / .tgz (JourneyDB shards)
            for pos, (key, files) in enumerate(_tar_samples(tar, lambda p: p >= start and keep(p))):
                if pos >= start:
                    yield _webdataset_record(f"{path}:{pos} ({key})", files, spec) if keep(pos) else None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        yield Skip("unreadable_file", f"{path}: {err}")


def _read_rows(
    path: str,
    load: Callable[[str], list[Any]],
    parse: Callable[[Any, str], Record | Skip],
    start: int,
    keep: Callable[[int], bool],
    rng: random.Random | None,
) -> Iterator[Item]:
    """Row formats: load the file, permute its rows with `rng`, parse the kept positions from `start`.

    `parse(row, origin)` gets `file:row` as the origin its records and skips report.
    """
    try:
        rows = load(path)
    except (OSError, ValueError, csv.Error) as err:
        yield Skip("unreadable_file", f"{path}: {err}")
        return
    order = list(range(len(rows)))
    if rng is not None:
        rng.shuffle(order)
    for pos in range(start, len(rows)):
        yield parse(rows[order[pos]], f"{path}:{order[pos]}") if keep(pos) else None


def _line_index(path: str) -> tuple[array, array]:
    """(line numbers, byte offsets) of the non-blank lines of `path`, read in one streaming pass."""
    numbers, offsets = array("q"), array("q")
    offset = 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if raw.strip():
                numbers.append(n)
                offsets.append(offset)
            offset += len(raw)
    return numbers, offsets


def read_jsonl_lines(
    path: str, parse: Callable[[str, str], Record | Skip], start: int, keep: Callable[[int], bool],
    rng: random.Random | None,
) -> Iterator[Item]:
    """The records of a jsonl file, one line read at a time, rows permuted with `rng`.

    Positions count non-blank lines. `parse(line, origin)` gets `file:line` (1-based) as the origin; a line
    that is not UTF-8 becomes a `bad_utf8` skip of that record alone.
    """
    try:
        numbers, offsets = _line_index(path)
    except OSError as err:
        yield Skip("unreadable_file", f"{path}: {err}", where=path)
        return
    order = list(range(len(offsets)))
    if rng is not None:
        rng.shuffle(order)
    try:
        with open(path, "rb") as f:
            for pos in range(start, len(order)):
                if not keep(pos):
                    yield None
                    continue
                row = order[pos]
                origin = f"{path}:{numbers[row]}"
                f.seek(offsets[row])
                raw = f.readline()
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    yield Skip("bad_utf8", f"{origin}: not UTF-8 (byte 0x{raw[err.start]:02x} at column "
                               f"{err.start + 1})", where=origin)
                    continue
                yield parse(line, origin)
    except OSError as err:  # the file vanished or became unreadable mid-read
        yield Skip("unreadable_file", f"{path}: {err}", where=path)


def _json_object(line: str, origin: str) -> dict[str, Any] | Skip:
    """The json object of a jsonl line, or a Skip naming `origin` (`file:line`)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        return Skip("bad_json", f"{origin}: {err}", where=origin)
    return obj if isinstance(obj, dict) else Skip("bad_json", f"{origin}: not a json object", where=origin)


def _parse_jsonl(line: str, origin: str, spec: SourceSpec) -> Record | Skip:
    obj = _json_object(line, origin)
    if isinstance(obj, Skip):
        return obj
    text = obj.get(spec.text_key)
    if not isinstance(text, str) or not text.strip():
        return Skip("missing_field", f"{origin}: no text in {spec.text_key!r}")
    return Record(origin, text=text)


def _open_image(root: str | None, relative: object, origin: str) -> Image.Image | Skip:
    if not isinstance(relative, str) or not relative:
        return Skip("missing_image", f"{origin}: no image path")
    try:
        return load_image(os.path.join(root or "", relative))
    except (OSError, ValueError) as err:
        return Skip("bad_image", f"{origin}: {err}")


def _messages(obj: dict[str, Any], origin: str) -> tuple[dict[str, str], ...] | Skip:
    if "conversations" in obj:  # LLaVA: [{"from": "human" | "gpt", "value": ...}], "<image>" marker removed
        turns: list[Any] = obj["conversations"] if isinstance(obj["conversations"], list) else [None]
        try:
            messages = [
                {"role": "user" if t["from"] == "human" else "assistant", "content": t["value"].replace("<image>", "")}
                for t in turns
            ]
        except (KeyError, TypeError, AttributeError):
            return Skip("bad_chat", f"{origin}: conversations must be [{{'from', 'value'}}]")
    else:
        messages = obj["messages"]
    try:
        validate_messages(messages)
    except ValueError as err:
        return Skip("bad_chat", f"{origin}: {err}")
    if messages[-1]["role"] != "assistant":  # the last assistant turn is the answer a row trains
        return Skip("bad_chat", f"{origin}: the conversation must end with an assistant turn")
    return tuple({"role": m["role"], "content": m["content"]} for m in messages)


def _parse_jsonl_chat(line: str, origin: str, spec: SourceSpec) -> Record | Skip:
    obj = _json_object(line, origin)
    if isinstance(obj, Skip):
        return obj
    image = _open_image(spec.image_root, obj["image"], origin) if "image" in obj else None
    if isinstance(image, Skip):
        return image
    if "messages" in obj or "conversations" in obj:
        messages = _messages(obj, origin)
        return messages if isinstance(messages, Skip) else Record(origin, messages=messages, image=image)
    if isinstance(obj.get("content"), str):
        return Record(origin, text=obj["content"], image=image)
    if isinstance(obj.get("question"), str) and isinstance(obj.get("answer"), str):
        reasoning = obj.get("reasoning")
        if isinstance(reasoning, str):
            return Record(origin, question=obj["question"], answer=format_cot(reasoning, obj["answer"]), cot=True,
                          image=image)
        return Record(origin, question=obj["question"], answer=obj["answer"], image=image)
    return Skip("missing_field", f"{origin}: expected messages, conversations, content or question + answer")


def _csv_rows(path: str) -> list[dict[str, str]]:
    # surrogateescape: a byte that is not UTF-8 spoils its row only (`_parse_csv` skips it), not the file
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        return list(csv.DictReader(f))


def _parse_csv(row: dict[str, str], origin: str, spec: SourceSpec) -> Record | Skip:
    if any(isinstance(v, str) and not v.isascii() and _SURROGATE.search(v) for v in row.values()):
        return Skip("bad_utf8", f"{origin}: a field is not UTF-8", where=origin)
    origin = f"{origin} ({row.get(spec.image_column, '?')})"
    question, answer = row.get(spec.question_column), row.get(spec.answer_column)
    if not question or not answer:
        return Skip("missing_field", f"{origin}: empty {spec.question_column!r} or {spec.answer_column!r}")
    image = _open_image(spec.image_root, row.get(spec.image_column), origin)
    if isinstance(image, Skip):
        return image
    # The official CoT CSV answers are `<think> … </think> answer` traces (Gen-Verse/MMaDA training/data.py).
    return Record(origin, question=question, answer=answer, cot=True, image=image)


def _pyarrow_parquet() -> types.ModuleType:
    """`pyarrow.parquet`, an optional dependency imported only by the parquet source."""
    try:
        import pyarrow.parquet as pq
    except ImportError as err:  # an install problem, not bad data: stop with the fix
        raise ImportError("the parquet source needs pyarrow: pip install 'mmada[data]'") from err
    return pq


def check_dependencies(spec: SourceSpec) -> None:
    """Raise ImportError now, at build time, when `spec`'s format needs a package that is missing."""
    if spec.source == "parquet":
        _pyarrow_parquet()


def _parquet_column(path: str, column: str) -> list[Any]:
    return _pyarrow_parquet().read_table(path, columns=[column]).column(column).to_pylist()


def _parse_parquet(value: Any, origin: str, spec: SourceSpec) -> Record | Skip:
    if not isinstance(value, str) or not value.strip():
        return Skip("missing_field", f"{origin}: empty or non-text {spec.column!r} value")
    return Record(origin, text=value)


def _rows_adapter(load: Callable[[str, SourceSpec], list[Any]], parse: Callable[..., Record | Skip]) -> Adapter:
    def read(path: str, spec: SourceSpec, start: int, keep: Callable[[int], bool], rng: random.Random | None):
        return _read_rows(path, lambda p: load(p, spec), lambda r, p: parse(r, p, spec), start, keep, rng)

    return read


def _lines_adapter(parse: Callable[[str, str, SourceSpec], Record | Skip]) -> Adapter:
    def read(path: str, spec: SourceSpec, start: int, keep: Callable[[int], bool], rng: random.Random | None):
        return read_jsonl_lines(path, lambda line, origin: parse(line, origin, spec), start, keep, rng)

    return read


ADAPTERS: Mapping[str, Adapter] = types.MappingProxyType(
    {
        "webdataset": read_webdataset,
        "jsonl": _lines_adapter(_parse_jsonl),
        "jsonl_chat": _lines_adapter(_parse_jsonl_chat),
        "csv": _rows_adapter(lambda p, s: _csv_rows(p), _parse_csv),
        "parquet": _rows_adapter(lambda p, s: _parquet_column(p, s.column), _parse_parquet),
    }
)
