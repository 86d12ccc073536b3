"""The text tokenizer of a checkpoint folder, read with `tokenizers` alone (no `transformers`).

A MMaDA / LLaDA checkpoint ships the files `PreTrainedTokenizerFast.save_pretrained` writes:
`tokenizer.json` (the byte-level BPE and its added tokens), `tokenizer_config.json` (bos / eos / pad /
mask token names and the chat template) and optionally `special_tokens_map.json`. `TextTokenizer` reads
them and mirrors the few `transformers` behaviours the official code relies on:

* `len(tokenizer)` counts added tokens, as `len(PreTrainedTokenizerFast)` does; it is the image-token
  offset (126349 for LLaDA, see `mmada.prompting.vocab`).
* `encode` never adds bos: the LLaDA tokenizer has no post-processor, and the layout builders insert bos
  themselves, as Gen-Verse/MMaDA training/prompting_utils.py does.
* `encode(text, parse_special=False)` encodes special-token strings as plain text (`encode_special_tokens`
  of `tokenizers`): user text goes through it, so typing `<|eot_id|>` cannot end a turn.
* `decode(..., skip_special_tokens=True)` drops every token flagged special (bos, eos, headers, mask, ...).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from mmada.utils.files import CheckpointError, resolve_folder

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # where transformers >= 4.47 saves the template instead
_TOKENIZER_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE, CHAT_TEMPLATE_FILE)
_ROLES = ("bos", "eos", "pad", "mask")


class TextTokenizer:
    """Byte-level BPE text tokenizer with the special-token names of its `tokenizer_config.json`."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        mask_token: str | None = None,
        chat_template: str | None = None,
    ) -> None:
        """Wrap a loaded `tokenizers.Tokenizer`; every named special token must be in its vocabulary."""
        self._tokenizer = tokenizer
        self._tokens = {"bos": bos_token, "eos": eos_token, "pad": pad_token, "mask": mask_token}
        self._ids: dict[str, int | None] = {}
        for role, token in self._tokens.items():
            token_id = None if token is None else tokenizer.token_to_id(token)
            if token is not None and token_id is None:
                raise ValueError(f"{role} token {token!r} is not in the tokenizer vocabulary")
            self._ids[role] = token_id
        self._chat_template = chat_template
        self._plain: Tokenizer | None = None

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike[str]) -> TextTokenizer:
        """Load from a checkpoint folder or a hub id (`owner/name`).

        Raises `CheckpointError` (a `ValueError`) naming the file when `tokenizer.json` is missing or
        unreadable, or when a json config file is corrupt.
        """
        folder = resolve_folder(path_or_id, allow_patterns=list(_TOKENIZER_FILES))
        path = folder / TOKENIZER_FILE
        if not path.is_file():
            raise CheckpointError(f"{path} not found: the folder has no Hugging Face fast tokenizer")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as err:  # `tokenizers` raises a bare Exception for every parse error
            raise CheckpointError(f"{path} cannot be read as a Hugging Face tokenizer: {err}") from err
        config = _read_json(folder / TOKENIZER_CONFIG_FILE)
        special_map = _read_json(folder / SPECIAL_TOKENS_MAP_FILE)
        template_file = folder / CHAT_TEMPLATE_FILE
        template = config.get("chat_template")
        if template is None and template_file.is_file():
            template = template_file.read_text(encoding="utf-8")
        try:
            names = {}
            for role in _ROLES:
                key = f"{role}_token"
                names[key] = _token_content(config.get(key, special_map.get(key)))
            return cls(tokenizer, chat_template=_default_template(template), **names)
        except ValueError as err:
            raise CheckpointError(f"{folder / TOKENIZER_CONFIG_FILE}: {err}") from err

    def __len__(self) -> int:
        """Number of tokens including added ones, as `len(PreTrainedTokenizerFast)`."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, parse_special: bool = True) -> list[int]:
        """Token ids of `text`; no bos is added.

        `parse_special=True` (the `transformers` behaviour): special-token strings in `text` become
        their ids, for trusted text such as a rendered template or training data. False: they are
        encoded as the plain characters they are, so text typed by a user (`"<|eot_id|>"`) can never
        become a control token.
        """
        return self._for(parse_special).encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], *, parse_special: bool = True) -> list[list[int]]:
        """`encode` for many texts (parallel inside `tokenizers`)."""
        return [e.ids for e in self._for(parse_special).encode_batch(list(texts), add_special_tokens=False)]

    def _for(self, parse_special: bool) -> Tokenizer:
        if parse_special:
            return self._tokenizer
        if self._plain is None:  # a copy, so that the shared tokenizer's setting never flips under a caller
            self._plain = Tokenizer.from_str(self._tokenizer.to_str())
            self._plain.encode_special_tokens = True
        return self._plain

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """The strings of every token flagged special (bos, eos, mask, chat headers, reserved slots)."""
        return tuple(t.content for t in self._tokenizer.get_added_tokens_decoder().values() if t.special)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`; ids outside the text vocabulary (image tokens) are ignored."""
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string (None when unknown)."""
        return self._tokenizer.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """Token string of an id (None when out of range)."""
        return self._tokenizer.id_to_token(token_id)

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template of the checkpoint, if any (`mmada.prompting.chat` renders it)."""
        return self._chat_template

    @property
    def bos_token(self) -> str | None:
        return self._tokens["bos"]

    @property
    def eos_token(self) -> str | None:
        return self._tokens["eos"]

    @property
    def pad_token(self) -> str | None:
        return self._tokens["pad"]

    @property
    def mask_token(self) -> str | None:
        return self._tokens["mask"]

    @property
    def bos_token_id(self) -> int | None:
        return self._ids["bos"]

    @property
    def eos_token_id(self) -> int | None:
        return self._ids["eos"]

    @property
    def pad_token_id(self) -> int | None:
        return self._ids["pad"]

    @property
    def mask_token_id(self) -> int | None:
        return self._ids["mask"]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not valid json: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a json object, got {type(data).__name__}")
    return data


def _token_content(entry: object) -> str | None:
    """A special token as saved by transformers: a string, or an AddedToken dict with `content`."""
    if entry is None or isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"]
    raise ValueError(f"cannot read a special token from {entry!r}")


def _default_template(template: object) -> str | None:
    """transformers stores either one template string or a list of named templates."""
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        chosen = named.get("default")
        return chosen if isinstance(chosen, str) else None
    raise ValueError(f"unexpected chat_template of type {type(template).__name__}")
