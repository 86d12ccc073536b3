"""Sequence layouts of every MMaDA task, as explicit builders returning a `TokenLayout`.

Token for token what Gen-Verse/MMaDA training/prompting_utils.py `UniversalPrompting` produces (checked
against the recorded fixture `prompting/cases.json`), plus the inference layouts of inference_mmu.py /
generate.py. M = `max_text_len` (config `max_seq_length`), N = image tokens, L = row length, P = prompt
(`prompt_mask` True), A = answer, I = image tokens, `.` = left padding. Text is bos-prefixed when it does
not start with bos; an empty text is [bos].

t2i / t2i_gen (L = M + N + 3; the text part is M + 1 long and left-padded with `[iPAD]`):
    [iPAD]…[iPAD] <|t2i|> <bos> caption <eos> <|soi|> img_1 … img_N <|eoi|>
    .   .   .   .    P      P      P      P      P       I   …   I     P
    attention 0 on [iPAD]; labels: -100 on [iPAD], own ids on text / soi / eoi, image labels on I.
    Too long: cut to <|t2i|> + M - 1 tokens and re-append <eos>. CFG dropout: caption -> empty.

mmu (training; L = M + N + 3; text right-padded with eos to M, or cut to M - 1 + <eos>):
    <|mmu|> <|soi|> img_1 … img_N <|eoi|> <bos> …user…<|end_header_id|> \\n answer <eos> <eos>…
       P       P     P   …   P       P      P           P                 A    A      A     A
    labels -100 over the first N + 3 positions, then the text; no header: only the image part is P.

mmu_gen (inference: chat prompt as is, the sampler appends masks):
    <|mmu|> <|soi|> img_1 … img_N <|eoi|> <bos> …user…<|end_header_id|> \\n
       P  …                                                               P

lm (L = max_seq_len; too long: cut without eos):
    <bos> text <eos> <eos>…          all A; labels = ids; attention all ones (official quirk)

lm_chat (as lm):
    <bos> …<|end_header_id|> \\n q <|eot_id|> …assistant<|end_header_id|> \\n a <|eot_id|> <eos> <eos>…
      P                 P                                    P                A       A    A     A

text_gen (LLaDA generation prompt):
    <bos> …user…<|end_header_id|> \\n      all P

r2i (L = M + N + 3):
    <|r2i|> <bos> …<|end_header_id|> \\n <think>…</think> <eos>… <|soi|> img_1 … img_N <|eoi|>
       P      P                P       A     A …     A       A       P       A   …   A     P

Quirks kept on purpose: `lm` rows attend to their eos padding (the official mask is built after
padding; `mask_padding=True` fixes it); mmu text is M tokens after the image block while the t2i text part
is M + 1 with its task token, so both rows are M + N + 3 long and can share a batch; official
`mmu_gen_prompt` returns a prompt mask of the wrong length (`official_mmu_gen_prompt_mask`). Training
captions spell the turn separator `<eot_id>` (no pipes, training/data.py), so it is ordinary text there:
that is a property of the data, not of these builders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor

from .collate import IGNORE_INDEX, LayoutSpans, Span, Task, TokenLayout, collate_generation
from .vocab import Vocab


def _text(text_ids: Sequence[int], vocab: Vocab) -> list[int]:
    ids = [int(t) for t in text_ids]
    if ids and (min(ids) < 0 or max(ids) >= vocab.image_offset):
        raise ValueError(f"text ids must lie in [0, {vocab.image_offset}); got [{min(ids)}, {max(ids)}]")
    # As the official builders: prepend bos unless the text already starts with it; empty -> [bos].
    return ids if ids and ids[0] == vocab.bos_id else [vocab.bos_id, *ids]


def _image(image_ids: Tensor | Sequence[int], vocab: Vocab, what: str = "image_ids") -> Tensor:
    image = torch.as_tensor(image_ids).detach().cpu()
    if image.dim() != 1 or image.numel() == 0 or image.is_floating_point():
        raise ValueError(f"{what} must be a non-empty (N,) integer tensor, got {tuple(image.shape)} {image.dtype}")
    image = image.long()
    valid = (image >= 0) & (image < vocab.vocab_size)
    if what == "image_labels":
        valid |= image == IGNORE_INDEX
    if not bool(valid.all()):
        raise ValueError(f"{what} must be token ids in [0, {vocab.vocab_size}) (codes + image_offset)")
    return image


def _fit_text(text_ids: Sequence[int], vocab: Vocab, length: int) -> tuple[list[int], int]:
    """bos…eos right-padded with eos to `length`, or cut to `length - 1` + eos; also the unpadded size."""
    if length < 2:
        raise ValueError(f"`max_text_len` ({length}) must be >= 2 (bos and eos)")
    row = [*_text(text_ids, vocab), vocab.eos_id]
    if len(row) <= length:
        return row + [vocab.eos_id] * (length - len(row)), len(row)
    return [*row[: length - 1], vocab.eos_id], length


def _last(row: Sequence[int], token: int) -> int:
    """Index of the last `token` in `row`, -1 when absent."""
    return max((i for i, t in enumerate(row) if t == token), default=-1)


def _layout(
    task: Task,
    ids: Tensor,
    *,
    text: tuple[int, int],
    prompt: tuple[int, int],
    answer: tuple[int, int],
    image: tuple[int, int],
    prompt_mask: Tensor | None = None,
    attention: Tensor | None = None,
    labels: Tensor | None = None,
) -> TokenLayout:
    """One row (B = 1); the prompt mask defaults to the prompt span, attention to all ones."""
    spans = LayoutSpans(Span.fixed(*text), Span.fixed(*prompt), Span.fixed(*answer), Span.fixed(*image))
    length = ids.numel()
    return TokenLayout(
        task=task,
        input_ids=ids.long()[None],
        attention_mask=(torch.ones(length, dtype=torch.bool) if attention is None else attention)[None],
        prompt_mask=spans.prompt.mask(length) if prompt_mask is None else prompt_mask[None],
        spans=spans,
        labels=None if labels is None else labels.clone()[None],  # never a view of input_ids
    )


def _t2i(
    task: Task, text_ids: Sequence[int], image: Tensor, vocab: Vocab, max_text_len: int, drop: bool
) -> tuple[TokenLayout, list[int]]:
    if max_text_len < 2:
        raise ValueError(f"`max_text_len` ({max_text_len}) must be >= 2 (bos and eos)")
    width = max_text_len + 1  # the task token is counted too (official `max_text_len + 1`)
    head = [vocab.t2i_id, *_text([] if drop else text_ids, vocab), vocab.eos_id]
    if len(head) > width:
        head = [*head[:max_text_len], vocab.eos_id]  # official: cut, then re-append eos
    n_pad = width - len(head)
    head = [vocab.ipad_id] * n_pad + head
    n = image.numel()
    ids = torch.cat([torch.tensor([*head, vocab.soi_id]), image, torch.tensor([vocab.eoi_id])])
    length = ids.numel()
    layout = _layout(
        task,
        ids,
        text=(n_pad + 1, width),
        prompt=(n_pad, width),
        answer=(length, length),
        image=(width + 1, width + 1 + n),
        prompt_mask=~Span.fixed(width + 1, width + 1 + n).mask(length)[0],
        attention=torch.arange(length) >= n_pad,
    )
    return layout, head


def build_t2i(
    text_ids: Sequence[int],
    image_ids: Tensor,
    image_labels: Tensor,
    *,
    vocab: Vocab,
    max_text_len: int,
    drop_condition: bool = False,
) -> TokenLayout:
    """Text-to-image training row (official `t2i_prompt`), B = 1, L = M + N + 3.

    Args:
        text_ids: caption token ids (no bos needed).
        image_ids: (N,) int64 image token ids (codes + image_offset), masked positions = mask_id.
        image_labels: (N,) int64 targets, IGNORE_INDEX on positions without loss.
        drop_condition: replace the caption by the empty text (classifier-free-guidance dropout).
    """
    image = _image(image_ids, vocab)
    targets = _image(image_labels, vocab, "image_labels")
    if targets.shape != image.shape:
        raise ValueError(f"image_labels {tuple(targets.shape)} must match image_ids {tuple(image.shape)}")
    layout, head = _t2i("t2i", text_ids, image, vocab, max_text_len, drop_condition)
    labels = torch.cat([torch.tensor([*head, vocab.soi_id]), targets, torch.tensor([vocab.eoi_id])])
    labels[labels == vocab.ipad_id] = IGNORE_INDEX  # official: over the whole label row
    return replace(layout, labels=labels[None])


def build_t2i_batch(
    text_ids: Sequence[Sequence[int]],
    image_ids: Tensor,
    image_labels: Tensor,
    *,
    vocab: Vocab,
    max_text_len: int,
    cond_dropout_prob: float,
    generator: torch.Generator | None = None,
) -> TokenLayout:
    """`build_t2i` over a batch; each caption is dropped with probability `cond_dropout_prob` (MMaDA: 0.1).

    One `torch.rand(B, generator=generator)` draw per call, compared with `cond_dropout_prob`, as the
    official `t2i_prompt`. image_ids / image_labels: (B, N) int64.
    """
    if not 0.0 <= cond_dropout_prob <= 1.0:
        raise ValueError(f"`cond_dropout_prob` ({cond_dropout_prob}) must lie in [0, 1]")
    _check_batch(text_ids, image_ids, image_labels)
    drop = torch.rand(len(text_ids), generator=generator) < cond_dropout_prob  # (B,)
    rows = zip(text_ids, image_ids, image_labels, drop.tolist())
    return TokenLayout.cat(
        [build_t2i(t, i, lab, vocab=vocab, max_text_len=max_text_len, drop_condition=d) for t, i, lab, d in rows]
    )


def build_t2i_gen(text_ids: Sequence[int], *, vocab: Vocab, max_text_len: int, num_image_tokens: int) -> TokenLayout:
    """Text-to-image generation prompt (official `t2i_gen_prompt`): N image positions, all mask_id."""
    if num_image_tokens < 1:
        raise ValueError(f"`num_image_tokens` ({num_image_tokens}) must be >= 1")
    image = torch.full((num_image_tokens,), vocab.mask_id, dtype=torch.long)
    return _t2i("t2i_gen", text_ids, image, vocab, max_text_len, False)[0]


def build_t2i_gen_batch(
    text_ids: Sequence[Sequence[int]], *, vocab: Vocab, max_text_len: int, num_image_tokens: int
) -> TokenLayout:
    """`build_t2i_gen` over a batch of captions; every row is M + N + 3 long."""
    return TokenLayout.cat(
        [build_t2i_gen(t, vocab=vocab, max_text_len=max_text_len, num_image_tokens=num_image_tokens) for t in text_ids]
    )


def build_t2i_uncond(*, vocab: Vocab, max_text_len: int, num_image_tokens: int, batch_size: int = 1) -> TokenLayout:
    """The null prompt of classifier-free guidance: empty captions, as inference_t2i.py builds it."""
    return build_t2i_gen_batch(
        [[]] * batch_size, vocab=vocab, max_text_len=max_text_len, num_image_tokens=num_image_tokens
    )


def _mmu(task: Task, image: Tensor, row: list[int], n_text: int, vocab: Vocab, padded: bool) -> TokenLayout:
    prefix = image.numel() + 3  # <|mmu|> <|soi|> image <|eoi|>
    ids = torch.cat([torch.tensor([vocab.mmu_id, vocab.soi_id]), image, torch.tensor([vocab.eoi_id, *row])])
    length = ids.numel()
    # Same rule as the official code: through the last <|end_header_id|>, else the image block only.
    prompt_end = prefix + _last(row, vocab.end_header_id) + 1 if padded else length
    return _layout(
        task,
        ids,
        text=(prefix, prefix + n_text),
        prompt=(0, prompt_end),
        answer=(prompt_end, length),
        image=(2, 2 + image.numel()),
    )


def build_mmu(image_ids: Tensor, text_ids: Sequence[int], *, vocab: Vocab, max_text_len: int) -> TokenLayout:
    """Understanding training row (official `mmu_prompt`), B = 1, L = N + 3 + M.

    Args:
        image_ids: (N,) int64 image token ids.
        text_ids: chat text ids; the prompt runs through its last `<|end_header_id|>`.
    """
    image = _image(image_ids, vocab)
    row, n_text = _fit_text(text_ids, vocab, max_text_len)
    layout = _mmu("mmu", image, row, n_text, vocab, padded=True)
    labels = torch.cat([torch.full((image.numel() + 3,), IGNORE_INDEX), torch.tensor(row)])
    labels[labels == vocab.ipad_id] = IGNORE_INDEX  # official: an [iPAD] id in the text loses its label
    return replace(layout, labels=labels[None])


def build_mmu_gen(
    image_ids: Tensor, prompt_ids: Sequence[int], *, vocab: Vocab, max_text_len: int | None = None
) -> TokenLayout:
    """Understanding generation prompt, B = 1.

    Default: the inference_mmu.py / app.py layout, `[<|mmu|>, <|soi|>, image, <|eoi|>] + prompt_ids`
    (chat-template ids), all prompt. With `max_text_len`: the ids of the official `mmu_gen_prompt`
    (text eos-padded / cut to M, same as `build_mmu`) with a prompt mask through the last
    `<|end_header_id|>`; see `official_mmu_gen_prompt_mask` for the mask that method really returns.
    """
    image = _image(image_ids, vocab)
    if max_text_len is None:
        row = _text(prompt_ids, vocab)
        return _mmu("mmu_gen", image, row, len(row), vocab, padded=False)
    row, n_text = _fit_text(prompt_ids, vocab, max_text_len)
    return _mmu("mmu_gen", image, row, n_text, vocab, padded=True)


def official_mmu_gen_prompt_mask(prompt_length: int, max_text_len: int) -> list[int]:
    """The prompt mask official `mmu_gen_prompt` returns, recorded as is (a bug).

    It computes the answer length as `len(text) - prompt_length` instead of `len(ids) - prompt_length`,
    so the mask has `max(prompt_length, M)` entries instead of N + 3 + M. `prompt_length` is
    `layout.spans.prompt.stop` of `build_mmu_gen(..., max_text_len=M)`.
    """
    return [1] * prompt_length + [0] * (max_text_len - prompt_length)


def build_mmu_batch(
    image_ids: Tensor, text_ids: Sequence[Sequence[int]], *, vocab: Vocab, max_text_len: int
) -> TokenLayout:
    """`build_mmu` over a batch; image_ids: (B, N) int64."""
    _check_batch(text_ids, image_ids)
    return TokenLayout.cat(
        [build_mmu(i, t, vocab=vocab, max_text_len=max_text_len) for i, t in zip(image_ids, text_ids)]
    )


def build_mmu_gen_batch(
    image_ids: Tensor, prompt_ids: Sequence[Sequence[int]], *, vocab: Vocab, max_text_len: int | None = None
) -> TokenLayout:
    """`build_mmu_gen` over a batch, left-padded with `vocab.pad_id` (whole rows, before `<|mmu|>`)."""
    _check_batch(prompt_ids, image_ids)
    rows = [build_mmu_gen(i, p, vocab=vocab, max_text_len=max_text_len) for i, p in zip(image_ids, prompt_ids)]
    return collate_generation(rows, vocab=vocab)


def _lm_row(text_ids: Sequence[int], vocab: Vocab, max_seq_len: int) -> tuple[list[int], int]:
    if max_seq_len < 1:
        raise ValueError(f"`max_seq_len` ({max_seq_len}) must be >= 1")
    row = [*_text(text_ids, vocab), vocab.eos_id]
    n_text = min(len(row), max_seq_len)
    # Official lm rows: eos-padded, or cut without re-appending eos.
    return row[:max_seq_len] + [vocab.eos_id] * (max_seq_len - len(row)), n_text


def build_lm(text_ids: Sequence[int], *, vocab: Vocab, max_seq_len: int, mask_padding: bool = False) -> TokenLayout:
    """Text pretraining row (official `lm_prompt`), B = 1, L = max_seq_len; all answer, labels = ids.

    `mask_padding=True` puts attention 0 on the eos padding, which the official code meant to do; by
    default the mask is all ones, as recorded (it is computed after padding).
    """
    row, n_text = _lm_row(text_ids, vocab, max_seq_len)
    ids = torch.tensor(row)
    attention = torch.arange(max_seq_len) < n_text if mask_padding else None
    end = (max_seq_len, max_seq_len)
    return _layout(
        "lm", ids, text=(0, n_text), prompt=(0, 0), answer=(0, max_seq_len), image=end, attention=attention, labels=ids
    )


def build_lm_chat(text_ids: Sequence[int], *, vocab: Vocab, max_seq_len: int) -> TokenLayout:
    """Chat / CoT SFT row (official `lm_chat_prompt`): as `build_lm`, prompt through the last header."""
    row, n_text = _lm_row(text_ids, vocab, max_seq_len)
    ids = torch.tensor(row)
    prompt_end = _last(row, vocab.end_header_id) + 1  # 0 without a header: everything is answer
    answer, end = (prompt_end, max_seq_len), (max_seq_len, max_seq_len)
    return _layout("lm_chat", ids, text=(0, n_text), prompt=(0, prompt_end), answer=answer, image=end, labels=ids)


def build_lm_batch(
    text_ids: Sequence[Sequence[int]], *, vocab: Vocab, max_seq_len: int, mask_padding: bool = False
) -> TokenLayout:
    """`build_lm` over a batch (official: max_seq_len = the t2i row length of the same step)."""
    return TokenLayout.cat(
        [build_lm(t, vocab=vocab, max_seq_len=max_seq_len, mask_padding=mask_padding) for t in text_ids]
    )


def build_lm_chat_batch(text_ids: Sequence[Sequence[int]], *, vocab: Vocab, max_seq_len: int) -> TokenLayout:
    """`build_lm_chat` over a batch."""
    return TokenLayout.cat([build_lm_chat(t, vocab=vocab, max_seq_len=max_seq_len) for t in text_ids])


def build_text_gen(prompt_ids: Sequence[int], *, vocab: Vocab) -> TokenLayout:
    """Text generation prompt (generate.py): chat-template ids, all prompt; the sampler appends masks."""
    ids = torch.tensor(_text(prompt_ids, vocab))
    n = ids.numel()
    return _layout("text_gen", ids, text=(0, n), prompt=(0, n), answer=(n, n), image=(n, n))


def build_text_gen_batch(prompt_ids: Sequence[Sequence[int]], *, vocab: Vocab) -> TokenLayout:
    """`build_text_gen` over a batch, left-padded with `vocab.pad_id`."""
    return collate_generation([build_text_gen(p, vocab=vocab) for p in prompt_ids], vocab=vocab)


def build_r2i(text_ids: Sequence[int], image_ids: Tensor, *, vocab: Vocab, max_text_len: int) -> TokenLayout:
    """Reasoning-to-image row (official `r2i_prompt`, a scaffold no released script calls), L = M + N + 3.

    The prompt is the task token and the text through its last `<|end_header_id|>` (the whole text
    without one); `<|soi|>` and `<|eoi|>` are prompt too; the `<think>` text and the image are answer.
    Labels are the ids, as the official method returns them.
    """
    image = _image(image_ids, vocab)
    row, n_text = _fit_text(text_ids, vocab, max_text_len)
    ids = torch.cat([torch.tensor([vocab.r2i_id, *row, vocab.soi_id]), image, torch.tensor([vocab.eoi_id])])
    length, soi = ids.numel(), max_text_len + 1
    header = _last(row, vocab.end_header_id)
    prompt_end = header + 2 if header >= 0 else soi
    prompt_mask = Span.fixed(0, prompt_end).mask(length)[0]
    prompt_mask[[soi, length - 1]] = True
    text, prompt, answer, img = (1, 1 + n_text), (0, prompt_end), (prompt_end, soi), (soi + 1, length - 1)
    return _layout("r2i", ids, text=text, prompt=prompt, answer=answer, image=img, prompt_mask=prompt_mask, labels=ids)


def build_r2i_batch(
    text_ids: Sequence[Sequence[int]], image_ids: Tensor, *, vocab: Vocab, max_text_len: int
) -> TokenLayout:
    """`build_r2i` over a batch; image_ids: (B, N) int64."""
    _check_batch(text_ids, image_ids)
    return TokenLayout.cat(
        [build_r2i(t, i, vocab=vocab, max_text_len=max_text_len) for t, i in zip(text_ids, image_ids)]
    )


def _check_batch(texts: Sequence[Sequence[int]], *images: Tensor) -> None:
    if len(texts) == 0:
        raise ValueError("the batch is empty")
    for image in images:
        if len(image) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(image)} image rows")
