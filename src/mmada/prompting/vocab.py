"""Vocabulary facts of MMaDA's shared text + image token space, resolved once from the text tokenizer.

MMaDA (arXiv 2505.15809, §2.1) keeps LLaDA's text vocabulary and appends the MAGVIT-v2 codebook, so one
embedding table serves both modalities:

    [0, text_vocab_size)                 text tokens of the LLaDA tokenizer (126349 for the real one)
    [image_offset, image_offset + K)     image code c is token id c + image_offset (K = codebook_size = 8192)
    [..., vocab_size)                    spare embedding rows (134656 rows in total for MMaDA-8B)

The image offset is `len(text_tokenizer)` (126349), *not* LLaDA's embedding size `llm_vocab_size`
(126464): the official training scripts add `len(uni_prompting.text_tokenizer)` and `app.py` hard-codes
`+ 126349` (Gen-Verse/MMaDA issue #49).

MMaDA's task tokens (`<|t2i|>`, `<|soi|>`, `[iPAD]`, ...) reuse reserved LLaDA ids from a fixed table, so
the tokenizer is not extended (Gen-Verse/MMaDA training/prompting_utils.py `reserved_token_mapping`,
`use_reserved_token=True`). That table is `OFFICIAL_RESERVED_IDS`; a small test tokenizer cannot hold
those ids, so `Vocab.from_tokenizer(..., reserved=None)` looks the same slots up by their
`<|reserved_token_k|>` names instead.

`Vocab` is the only place where special ids are resolved: every other module reads them from it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from ..utils.files import CheckpointError

if TYPE_CHECKING:
    from ..model.config import ModelConfig

# Gen-Verse/MMaDA training/prompting_utils.py `reserved_token_mapping` (ids of the LLaDA tokenizer).
OFFICIAL_RESERVED_IDS: Mapping[str, int] = MappingProxyType(
    {
        "<|soi|>": 126084,
        "<|eoi|>": 126085,
        "<|sov|>": 126086,
        "<|eov|>": 126087,
        "<|t2i|>": 126088,
        "<|mmu|>": 126089,
        "<|t2v|>": 126090,
        "<|v2v|>": 126091,
        "<|lvg|>": 126092,
        "[iPAD]": 126093,
        "<|r2i|>": 126094,
    }
)

# Tokenizer names of the same slots: the reference fixture tokenizer numbers `<|reserved_token_k|>`
# right after eos, and its harness table (304…314) is exactly slots 2…12 in this order.
RESERVED_TOKEN_NAMES: Mapping[str, str] = MappingProxyType(
    {token: f"<|reserved_token_{k}|>" for k, token in enumerate(OFFICIAL_RESERVED_IDS, start=2)}
)

MASK_TOKEN = "<|mdm_mask|>"
START_HEADER_TOKEN = "<|start_header_id|>"
END_HEADER_TOKEN = "<|end_header_id|>"
EOT_ID_TOKEN = "<|eot_id|>"

# Vocab field that holds each reserved token.
_RESERVED_FIELDS: Mapping[str, str] = MappingProxyType(
    {
        "<|soi|>": "soi_id",
        "<|eoi|>": "eoi_id",
        "<|sov|>": "sov_id",
        "<|eov|>": "eov_id",
        "<|t2i|>": "t2i_id",
        "<|mmu|>": "mmu_id",
        "<|t2v|>": "t2v_id",
        "<|v2v|>": "v2v_id",
        "<|lvg|>": "lvg_id",
        "[iPAD]": "ipad_id",
        "<|r2i|>": "r2i_id",
    }
)
_SIZE_FIELDS = ("text_vocab_size", "image_offset", "codebook_size", "vocab_size")
# Roles that may share an id: LLaDA pads with eos (its `<|eot|>` in the official sptids_dict is eos too).
_ALLOWED_ALIASES = frozenset({frozenset({"pad_id", "eos_id"})})


class SpecialTokenSource(Protocol):
    """What `Vocab.from_tokenizer` needs from a tokenizer (`TextTokenizer` provides it)."""

    @property
    def bos_token_id(self) -> int | None: ...
    @property
    def eos_token_id(self) -> int | None: ...
    @property
    def pad_token_id(self) -> int | None: ...
    @property
    def mask_token_id(self) -> int | None: ...

    def __len__(self) -> int: ...

    def token_to_id(self, token: str) -> int | None: ...


@dataclass(frozen=True)
class Vocab:
    """Every special id of the shared vocabulary plus the image-token range; validated on construction."""

    mask_id: int
    """`<|mdm_mask|>`, the diffusion [MASK] (126336 for LLaDA)."""
    bos_id: int
    """`<|startoftext|>` (`<|sot|>` in the official sptids_dict)."""
    eos_id: int
    """`<|endoftext|>`; the official `<|eot|>` entry is this id; text rows are right-padded with it."""
    pad_id: int
    """Tokenizer pad token, used to left-pad generation prompts (equals eos for LLaDA)."""
    eot_id: int
    """`<|eot_id|>`, closes every chat turn."""
    start_header_id: int
    """`<|start_header_id|>`, opens a chat role header."""
    end_header_id: int
    """`<|end_header_id|>`, closes a role header; the last one ends the prompt of chat / mmu rows."""
    soi_id: int
    """`<|soi|>`, start of image."""
    eoi_id: int
    """`<|eoi|>`, end of image."""
    sov_id: int
    """`<|sov|>`, start of video (reserved, unused by the released model)."""
    eov_id: int
    """`<|eov|>`, end of video (reserved)."""
    t2i_id: int
    """`<|t2i|>`, text-to-image task token."""
    mmu_id: int
    """`<|mmu|>`, multimodal-understanding task token."""
    t2v_id: int
    """`<|t2v|>`, text-to-video task token (reserved)."""
    v2v_id: int
    """`<|v2v|>`, video-to-video task token (reserved)."""
    lvg_id: int
    """`<|lvg|>`, language-guided video task token (reserved)."""
    ipad_id: int
    """`[iPAD]`, left padding of the t2i text part."""
    r2i_id: int
    """`<|r2i|>`, reasoning-to-image task token (scaffolded, unused by released scripts)."""
    text_vocab_size: int
    """`len(text_tokenizer)`, number of text tokens including added specials (126349 for LLaDA)."""
    image_offset: int
    """Token id of image code 0; `len(text_tokenizer)` in the official code (126349)."""
    codebook_size: int
    """Number of image codes K (8192 for MAGVIT-v2)."""
    vocab_size: int
    """Embedding rows of the model (134656 for MMaDA-8B); every id must be below it."""

    def __post_init__(self) -> None:
        for name in _SIZE_FIELDS:
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ValueError(f"Vocab `{name}` ({value!r}) must be a positive int")
        if self.image_offset < self.text_vocab_size:
            raise ValueError(
                f"image range [{self.image_offset}, {self.image_end}) overlaps the text ids "
                f"[0, {self.text_vocab_size}): `image_offset` must be >= `text_vocab_size`"
            )
        if self.image_end > self.vocab_size:
            raise ValueError(
                f"image range [{self.image_offset}, {self.image_end}) exceeds `vocab_size` ({self.vocab_size}); "
                f"the embedding needs at least text_vocab_size + codebook_size = {self.image_end} rows"
            )
        ids = self.special_ids()
        for role, value in ids.items():
            if not _is_int(value) or value < 0:
                raise ValueError(f"Vocab `{role}` ({value!r}) must be a non-negative int")
            if value >= self.vocab_size:
                raise ValueError(f"Vocab `{role}` ({value}) is outside the embedding (vocab_size {self.vocab_size})")
            if self.image_offset <= value < self.image_end:
                raise ValueError(
                    f"Vocab `{role}` ({value}) falls inside the image-token range "
                    f"[{self.image_offset}, {self.image_end})"
                )
        if self.mask_id == self.pad_id:
            raise ValueError(f"Vocab `mask_id` ({self.mask_id}) must differ from `pad_id` ({self.pad_id})")
        for value, count in Counter(ids.values()).items():
            roles = frozenset(role for role, v in ids.items() if v == value)
            if count > 1 and roles not in _ALLOWED_ALIASES:
                raise ValueError(f"Vocab roles {sorted(roles)} share the id {value}; each role needs its own id")

    @property
    def image_end(self) -> int:
        """One past the last image token id: image_offset + codebook_size."""
        return self.image_offset + self.codebook_size

    def special_ids(self) -> dict[str, int]:
        """Field name -> id for every special token (sizes excluded)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _SIZE_FIELDS}

    def image_ids(self, codes: Tensor) -> Tensor:
        """Map image codes (any shape, int64 in [0, codebook_size)) to token ids of the shared vocabulary."""
        codes = torch.as_tensor(codes)
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"image codes must lie in [0, {self.codebook_size}); got [{int(codes.min())}, {int(codes.max())}]"
            )
        return codes.long() + self.image_offset

    def codes(self, image_ids: Tensor) -> Tensor:
        """Map image token ids (any shape) back to codes in [0, codebook_size); every id must be an image id."""
        image_ids = torch.as_tensor(image_ids)
        if not bool(self.is_image_token(image_ids).all()):
            raise ValueError(
                f"expected image token ids in [{self.image_offset}, {self.image_end}); "
                "mask or text ids cannot be turned into codes"
            )
        return image_ids.long() - self.image_offset

    def is_image_token(self, ids: Tensor) -> Tensor:
        """Bool tensor, same shape as `ids`: True where the id is an image token."""
        ids = torch.as_tensor(ids)
        return (ids >= self.image_offset) & (ids < self.image_end)

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: SpecialTokenSource,
        *,
        vocab_size: int,
        codebook_size: int,
        mask_token_id: int | None = None,
        reserved: Mapping[str, int] | None = OFFICIAL_RESERVED_IDS,
    ) -> Vocab:
        """Resolve every special id from a text tokenizer.

        Args:
            tokenizer: the text tokenizer (`TextTokenizer`); `len(tokenizer)` becomes the image offset.
            vocab_size: embedding rows of the model (config `vocab_size`).
            codebook_size: number of image codes (config `codebook_size`).
            mask_token_id: the [MASK] id (config `mask_token_id`); default: the tokenizer's mask token.
            reserved: official token name -> id for the 11 task tokens. Default: the official table, which
                needs a tokenizer holding ids up to 126094. None: look each slot up by its
                `<|reserved_token_k|>` name (small tokenizers such as the reference fixture's).
        """
        size = len(tokenizer)
        table = _resolve_reserved(tokenizer, size, reserved)
        mask = mask_token_id if mask_token_id is not None else tokenizer.mask_token_id
        if mask is None:
            mask = tokenizer.token_to_id(MASK_TOKEN)
        eos = _require(tokenizer.eos_token_id, "eos token (tokenizer_config `eos_token`)")
        return cls(
            mask_id=_require(mask, f"mask token ({MASK_TOKEN}, or pass mask_token_id)"),
            bos_id=_require(tokenizer.bos_token_id, "bos token (tokenizer_config `bos_token`)"),
            eos_id=eos,
            pad_id=eos if tokenizer.pad_token_id is None else tokenizer.pad_token_id,
            eot_id=_require(tokenizer.token_to_id(EOT_ID_TOKEN), EOT_ID_TOKEN),
            start_header_id=_require(tokenizer.token_to_id(START_HEADER_TOKEN), START_HEADER_TOKEN),
            end_header_id=_require(tokenizer.token_to_id(END_HEADER_TOKEN), END_HEADER_TOKEN),
            **{_RESERVED_FIELDS[token]: token_id for token, token_id in table.items()},
            text_vocab_size=size,
            image_offset=size,
            codebook_size=codebook_size,
            vocab_size=vocab_size,
        )


class HasModelConfig(Protocol):
    """A model (`MMaDAModel`): only its `config` is read."""

    @property
    def config(self) -> ModelConfig: ...


def vocab_for(tokenizer: SpecialTokenSource, model: HasModelConfig) -> Vocab:
    """The vocabulary of a checkpoint: the official reserved table when the tokenizer is the real
    LLaDA one (large enough to hold it), else the reserved slots looked up by name.

    The [MASK] id is the model config's `mask_token_id`; a tokenizer whose own mask token differs is
    refused (the model would be asked to denoise a token it never saw masked). So are a config
    `eos_token_id` / `pad_token_id` that differ from the tokenizer's eos / pad token, where both are set.
    """
    config = model.config
    if config.codebook_size is None:
        raise CheckpointError("config.json has no `codebook_size`; cannot place image tokens")
    own_mask = tokenizer.mask_token_id
    if own_mask is None:
        own_mask = tokenizer.token_to_id(MASK_TOKEN)
    pairs = (("mask_token_id", config.mask_token_id, own_mask, f"mask token {MASK_TOKEN}"),
             ("eos_token_id", config.eos_token_id, tokenizer.eos_token_id, "eos token"),
             ("pad_token_id", config.pad_token_id, tokenizer.pad_token_id, "pad token"))
    for key, configured, own, what in pairs:
        if configured is not None and own is not None and own != configured:
            raise CheckpointError(f"config.json `{key}` ({configured}) differs from the text tokenizer's {what} "
                                  f"({own}); they must be the same id")
    reserved = OFFICIAL_RESERVED_IDS if len(tokenizer) > max(OFFICIAL_RESERVED_IDS.values()) else None
    return Vocab.from_tokenizer(tokenizer, vocab_size=config.vocab_size, codebook_size=config.codebook_size,
                                mask_token_id=config.mask_token_id, reserved=reserved)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(value: int | None, what: str) -> int:
    if value is None:
        raise ValueError(f"the text tokenizer has no {what}")
    return value


def _resolve_reserved(tokenizer: SpecialTokenSource, size: int, reserved: Mapping[str, int] | None) -> dict[str, int]:
    if reserved is None:
        table = {}
        for token, name in RESERVED_TOKEN_NAMES.items():
            table[token] = _require(tokenizer.token_to_id(name), f"reserved token {name} (for {token})")
        return table
    missing = sorted(set(_RESERVED_FIELDS) - set(reserved))
    unknown = sorted(set(reserved) - set(_RESERVED_FIELDS))
    if missing or unknown:
        raise ValueError(f"reserved table: missing tokens {missing}, unknown tokens {unknown}")
    for token, token_id in reserved.items():
        if token_id >= size:
            raise ValueError(
                f"reserved id {token_id} ({token}) is not in the text tokenizer (len {size}); pass reserved=None "
                "to look the reserved tokens up by name, or an explicit table"
            )
    return dict(reserved)
