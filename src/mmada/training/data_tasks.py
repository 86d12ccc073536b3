"""Task builders: records -> the text of each training row -> `TokenLayout` micro-batches.

Shared by the file-based mixture (`mmada.training.data`) and the tiny world (`data_world`). The text rules
are the official ones (Gen-Verse/MMaDA training/data.py, parquet/my_dataset.py):

* t2i captions: `<person>` tags replaced, "The image shows"-style prefixes removed, and with probability 0.5
  only the first sentence (`caption.split('.')[0]`); CFG dropout 0.1 happens in `build_t2i_batch`.
* understanding captions: a random captioning question in the chat format
  `<|start_header_id|>user<|end_header_id|>\\n{question}<eot_id><|start_header_id|>assistant<|end_header_id|>\\n{caption}`.
  The official string spells `<eot_id>` without pipes, so it is plain text, not the special `<|eot_id|>`;
  `eot_quirk=True` keeps that (the released 8B models were trained on it), False renders the inference
  chat template instead (`render_chat`), which is what a model trained from scratch should see.
* CoT understanding rows (ai2d / clevr / geo CSVs) put `THINKING_INSTRUCTION` before the question.
* lm documents: newlines removed and a random window of `max_chars` characters (`RefinedWebDataset`).
* Rows whose text would be truncated are skipped (`skip_long`), as the official `filter_long_samples`.

Every row of a micro-batch has the same length L = M + N + 3 (M = `max_text_len`, N image tokens):
t2i, mmu and r2i by construction, lm and lm_chat right-padded with eos to L, so the trainer can
concatenate them into one forward pass as the official scripts do.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..prompting import (
    THINKING_INSTRUCTION,
    TokenLayout,
    Vocab,
    build_lm_batch,
    build_lm_chat_batch,
    build_mmu_batch,
    build_r2i_batch,
    build_t2i_batch,
    render_chat,
)
from ..prompting.vocab import END_HEADER_TOKEN, START_HEADER_TOKEN
from .data_adapters import Record, Skip
from .tasks import training_task

ImageEncoder = Callable[[Tensor], Tensor]
"""(B, 3, H, W) float pixels in [-1, 1] -> (B, N) int64 codes in [0, codebook_size), e.g. `MagvitV2.encode`."""

# Gen-Verse/MMaDA parquet/my_dataset.py `R2iDataset`, verbatim.
R2I_INSTRUCTION = (
    "You should first think out a more detailed version of the description and then provide the user with "
    "the image. The detailed description is enclosed within <think> </think> tags, i.e. <think> detailed "
    "description here </think> image here"
)
OFFICIAL_EOT = "<eot_id>"
"""The turn separator of the official training captions: no pipes, so ordinary text (see module doc)."""

# Default captioning questions (ours); `questions_file` loads a json list such as the official questions.json.
CAPTION_QUESTIONS = (
    "Describe this image.",
    "What is in the picture?",
    "Give a short description of the image.",
    "Write a caption for this image.",
    "What does this image show?",
    "Describe the image in detail.",
)
# Gen-Verse/MMaDA training/data.py `remove_prefix`: captioner boilerplate removed from t2i captions.
_CAPTION_PREFIXES = (
    "The image features ", "The image presents ", "The image you've sent is, ", "In the center of the image, ",
    "The image showcases ", "The image is ", "The image captures ", "In the given image ", "The image portrays ",
    "In the image, ", "In this image, we see ", "The image depicts ", "This is ", "In this image, ",
    "This image captures ",
)
_PERSON_TOKENS = ("a person", "someone", "somebody")  # training/data.py `replace_person_token` (CC12M)


@dataclass(frozen=True)
class TaskSpec:
    """Rows of one task slot: how many per micro-batch and how their text is formed."""

    batch_size: int
    """Rows per micro-batch (per rank)."""
    cond_dropout_prob: float = 0.1
    """t2i: probability of replacing the caption by the empty text (classifier-free guidance)."""
    short_caption_prob: float = 0.5
    """t2i: probability of keeping only the first sentence of a caption."""
    caption_prompt: bool = True
    """mmu: turn a bare caption into a chat turn answering a random captioning question."""
    questions_file: str | None = None
    """mmu: json list of captioning questions (default `CAPTION_QUESTIONS`)."""
    eot_quirk: bool = True
    """mmu / r2i: spell the user-turn end `<eot_id>` as the official training data (8B recipes)."""
    thinking: bool = True
    """Prefix reasoning prompts with MMaDA's thinking instruction."""
    max_chars: int | None = 8000
    """lm: random character window of longer documents (official 8000); None keeps whole documents."""
    remove_newlines: bool = True
    """lm: drop newlines as the official RefinedWeb reader does."""
    skip_long: bool = True
    """Skip (and count) rows that would be truncated instead of cutting them."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {self.batch_size}")
        for name in ("cond_dropout_prob", "short_caption_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}` must lie in [0, 1], got {getattr(self, name)}")
        if self.max_chars is not None and self.max_chars < 1:
            raise ValueError(f"`max_chars` must be >= 1, got {self.max_chars}")


# ---------------------------------------------------------------------------------------------------
# Text of a row
# ---------------------------------------------------------------------------------------------------


def t2i_caption(caption: str, rng: random.Random, short_caption_prob: float) -> str:
    """The official t2i caption: first sentence with probability p, prefixes removed, `<person>` replaced."""
    if rng.random() < short_caption_prob:
        caption = caption.split(".")[0]
    for prefix in _CAPTION_PREFIXES:
        caption = caption.replace(prefix, "")
    caption = re.sub(r"<person>([,\s]*(and)*[,\s]*<person>)+", " people ", caption, flags=re.IGNORECASE)
    return re.sub(r"<person>", lambda _: f" {rng.choice(_PERSON_TOKENS)} ", caption, flags=re.IGNORECASE)


def qa_transcript(user: str, answer: str, *, eot_quirk: bool, bos_token: str | None) -> str:
    """One user turn and its answer: the official training string, or the inference chat template."""
    if eot_quirk:
        return (f"{START_HEADER_TOKEN}user{END_HEADER_TOKEN}\n{user}{OFFICIAL_EOT}"
                f"{START_HEADER_TOKEN}assistant{END_HEADER_TOKEN}\n{answer}")
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return render_chat(messages, bos_token=bos_token or "", add_generation_prompt=False)


def reasoning_prompt(question: str, instruction: str, *, eot_quirk: bool) -> str:
    """`instruction` + newline + question; the official CoT captions also end the question with a newline."""
    return f"{instruction}\n{question}\n" if eot_quirk else f"{instruction}\n{question}"


def r2i_transcript(short: str, detailed: str, *, thinking: bool, eot_quirk: bool, bos_token: str | None) -> str:
    """Reasoning-to-image text (official `R2iDataset`): short prompt in, `<think>detailed</think>` out."""
    user = f"{R2I_INSTRUCTION}\n{short}" if thinking else short
    return qa_transcript(user, f"<think>{detailed}</think>", eot_quirk=eot_quirk, bos_token=bos_token)


def lm_window(text: str, rng: random.Random, max_chars: int | None, remove_newlines: bool) -> str:
    """A random `max_chars` window of a document (official `RefinedWebDataset`, its newline removal too)."""
    if remove_newlines:
        text = text.replace("\n", "")
    if max_chars is None or len(text) <= max_chars:
        return text
    start = rng.randint(0, len(text) - max_chars - 1)  # official bounds: the last character is never chosen
    return text[start : start + max_chars]


def record_text(
    task: str, record: Record, spec: TaskSpec, rng: random.Random, questions: Sequence[str], bos_token: str | None
) -> str | Skip:
    """The text of one row of `task` built from `record` (the task's `text` kind), or a Skip when the record
    lacks what it needs."""
    entry = training_task(task)
    quirk = spec.eot_quirk and "eot_quirk" in entry.options
    if entry.text == "caption":
        if record.caption is None:
            return Skip("missing_field", f"{record.origin}: {task} needs a caption")
        return t2i_caption(record.caption, rng, spec.short_caption_prob)
    if entry.text == "document":
        text = record.text or record.caption
        if text is None:
            return Skip("missing_field", f"{record.origin}: {task} needs a text")
        return lm_window(text, rng, spec.max_chars, spec.remove_newlines)
    if entry.text == "reasoning_caption":
        short = record.extras.get("shortcaption")
        if record.caption is None or not short:
            return Skip("missing_field", f"{record.origin}: {task} needs a caption and a shortcaption")
        return r2i_transcript(short, record.caption, thinking=spec.thinking, eot_quirk=quirk, bos_token=bos_token)
    # "chat": a transcript, however the record spells it
    if record.text is not None:  # an already rendered transcript (`content`)
        return record.text
    if record.messages is not None:
        return render_chat(record.messages, bos_token=bos_token or "", add_generation_prompt=False)
    if record.question is not None and record.answer is not None:
        user = record.question
        if record.cot and spec.thinking:
            user = reasoning_prompt(user, THINKING_INSTRUCTION, eot_quirk=quirk)
        return qa_transcript(user, record.answer, eot_quirk=quirk, bos_token=bos_token)
    if record.caption is not None and "caption_prompt" in entry.options:  # a bare caption answers a question
        if not spec.caption_prompt:
            return record.caption
        return qa_transcript(rng.choice(questions), record.caption, eot_quirk=quirk, bos_token=bos_token)
    return Skip("missing_field", f"{record.origin}: no text for a {task} row")


def text_budget(task: str, max_text_len: int, seq_len: int) -> int:
    """Tokens a row's text may take including bos and eos: M beside an image, L for a text-only row (its `budget`)."""
    return seq_len if training_task(task).budget == "row" else max_text_len


def text_length(ids: Sequence[int], vocab: Vocab) -> int:
    """Tokens a row's text takes in a layout: bos (unless already there) + ids + eos."""
    return len(ids) + (0 if ids and ids[0] == vocab.bos_id else 1) + 1


def fits(ids: Sequence[int], budget: int, vocab: Vocab) -> bool:
    """Whether bos (unless already there) + ids + eos fit in `budget` tokens without truncation."""
    return text_length(ids, vocab) <= budget


# ---------------------------------------------------------------------------------------------------
# Images and layouts
# ---------------------------------------------------------------------------------------------------


def as_image_encoder(image_tokenizer: Any) -> ImageEncoder | None:
    """`MagvitV2` (its `encode`), a plain callable, or None (text-only sources)."""
    if image_tokenizer is None:
        return None
    encode = getattr(image_tokenizer, "encode", None)
    if callable(encode):
        return encode
    if callable(image_tokenizer):
        return image_tokenizer
    raise ValueError(f"`image_tokenizer` must be a MagvitV2 or a pixels -> codes callable, got {type(image_tokenizer)}")


def encode_image_ids(encoder: ImageEncoder | None, pixels: Tensor, vocab: Vocab) -> Tensor:
    """(B, 3, H, W) pixels in [-1, 1] -> (B, N) int64 token ids (codes + `vocab.image_offset`), one encoder call."""
    if encoder is None:  # the sources refuse image tasks without an image tokenizer before any batch
        raise ValueError("an image tokenizer is needed to encode images, got None")
    with torch.inference_mode():
        codes = encoder(pixels)
    if codes.dim() != 2 or codes.shape[0] != pixels.shape[0] or codes.is_floating_point():
        raise ValueError(f"the image encoder must return (B, N) integer codes, got {tuple(codes.shape)} {codes.dtype}")
    return vocab.image_ids(codes.cpu())


def count_image_tokens(encoder: ImageEncoder | None, resolution: int, image_tokenizer: Any = None) -> int:
    """N for `resolution`: the tokenizer's `num_tokens` when it has one, else one probe encode of a blank image."""
    num_tokens = getattr(image_tokenizer, "num_tokens", None)
    if callable(num_tokens):
        return int(num_tokens(resolution))
    if encoder is None:
        raise ValueError("an image tokenizer is needed to derive the row length; or set `seq_len`")
    with torch.inference_mode():
        return int(encoder(torch.zeros(1, 3, resolution, resolution)).shape[1])


def assemble(
    task: str,
    texts: Sequence[Sequence[int]],
    image_ids: Tensor | None,
    *,
    vocab: Vocab,
    max_text_len: int,
    seq_len: int,
    cond_dropout_prob: float,
    generator: torch.Generator,
) -> TokenLayout:
    """The layout of one micro-batch, made by the task's `layout` builder; texts: B token lists, image_ids:
    (B, N) int64 (tasks with an image).

    t2i rows carry clean image ids as inputs and labels: the objective masks them (MaskGIT schedule).
    """
    layout = training_task(task).layout
    if layout == "t2i":
        images = _needs_images(task, image_ids)
        return build_t2i_batch(texts, images, images, vocab=vocab, max_text_len=max_text_len,
                               cond_dropout_prob=cond_dropout_prob, generator=generator)
    if layout == "mmu":
        return build_mmu_batch(_needs_images(task, image_ids), texts, vocab=vocab, max_text_len=max_text_len)
    if layout == "r2i":
        return build_r2i_batch(texts, _needs_images(task, image_ids), vocab=vocab, max_text_len=max_text_len)
    if layout == "lm":
        return build_lm_batch(texts, vocab=vocab, max_seq_len=seq_len)
    if layout == "lm_chat":
        return build_lm_chat_batch(texts, vocab=vocab, max_seq_len=seq_len)
    raise ValueError(f"task {task!r}: no training builder for the {layout!r} layout")


def _needs_images(task: str, image_ids: Tensor | None) -> Tensor:
    if image_ids is None:
        raise ValueError(f"task {task!r}: its rows need image ids, got None")
    return image_ids


def batch_rng(seed: int, rank: int, name: str, index: int) -> random.Random:
    """The rng of micro-batch `index` of slot `name`: a pure function of its position, so resuming is exact."""
    return random.Random(f"mmada-data:{seed}:{rank}:{name}:{index}")  # str seeds hash with SHA-512


def torch_generator(rng: random.Random) -> torch.Generator:
    """A torch generator seeded from `rng` (for the CFG dropout draw of `build_t2i_batch`)."""
    return torch.Generator().manual_seed(rng.getrandbits(63))


def check_state(state: Mapping[str, Any], **expected: Any) -> None:
    """Refuse a data state saved by another source, seed or sharding: it would not resume the same stream."""
    for key, value in expected.items():
        if state.get(key) != value:
            raise ValueError(f"data state has {key}={state.get(key)!r}, this source {key}={value!r}")
