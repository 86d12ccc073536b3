"""LLaDA chat template, MMaDA's "thinking mode" instruction and `<think>` answer parsing.

The template is the one MMaDA's `generate.py` (L120) and `app.py` (L115) install on the tokenizer
(Gen-Verse/MMaDA): bos, then for every message

    <|start_header_id|>{role}<|end_header_id|>\\n{content.strip()}<|eot_id|>

then always the generation prompt `<|start_header_id|>assistant<|end_header_id|>\\n` (the official Jinja
template emits it even when `add_generation_prompt` is false; we keep that as the default). Only the
content is trimmed, with Python `str.strip` semantics (Jinja's `trim`).

Thinking mode (MMaDA paper §2.2, mixed long-CoT): the demo prefixes the user's text with
`THINKING_INSTRUCTION` and a newline before rendering (Gen-Verse/MMaDA app.py L222 / L381; the same
sentence opens the CoT training prompts in training/data.py). The model then answers
`<think> reasoning </think> answer`; `split_thinking` separates the two parts.

We render to a string and tokenize the whole string, as `apply_chat_template` does: byte-level BPE
merges "\\n" with the following text, so encoding the pieces separately would give other ids. A
checkpoint whose tokenizer_config.json carries another `chat_template` is rendered with it (sandboxed
Jinja, as `transformers`); the LLaDA template and a missing one give `render_chat`'s text. Special-token
strings inside messages stay plain text (`encode_chat`): only the template emits control tokens.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from .vocab import END_HEADER_TOKEN, EOT_ID_TOKEN, START_HEADER_TOKEN

Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")

LLADA_BOS_TOKEN = "<|startoftext|>"
"""bos string of the LLaDA tokenizer, the template's `bos_token`."""

# Gen-Verse/MMaDA app.py L222 (thinking_mode_lm) and L381 (thinking_mode_mmu), verbatim.
THINKING_INSTRUCTION = (
    "You should first think about the reasoning process in the mind and then provide the user with the "
    "answer. The reasoning process is enclosed within <think> </think> tags, i.e. <think> reasoning "
    "process here </think> answer here"
)
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


# The `chat_template` of the LLaDA tokenizer_config.json, verbatim (generate.py / app.py install it; the
# reference fixture records it). `render_chat` renders it in Python; `encode_chat` uses it when a checkpoint
# ships no template or this one, and renders any other template with a sandboxed Jinja.
LLADA_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n' }}"
)
_PRIVATE_USE = range(0xE000, 0xF900)  # placeholder characters for special-token strings typed by a user


class _Encoder(Protocol):
    @property
    def bos_token(self) -> str | None: ...

    @property
    def chat_template(self) -> str | None: ...

    @property
    def special_tokens(self) -> tuple[str, ...]: ...

    def token_to_id(self, token: str) -> int | None: ...

    def encode(self, text: str, *, parse_special: bool = True) -> list[int]: ...


def validate_messages(messages: Sequence[Mapping[str, str]]) -> None:
    """Raise ValueError unless `messages` is a non-empty list of {"role": Role, "content": str}."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages is empty; a chat prompt needs at least one message")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(message).__name__}")
        for key in ("role", "content"):
            if key not in message:
                raise ValueError(f"messages[{i}] has no {key!r} key")
        if message["role"] not in ROLES:
            raise ValueError(f"messages[{i}] role {message['role']!r} must be one of {ROLES}")
        if not isinstance(message["content"], str):
            raise ValueError(f"messages[{i}] content must be a str, got {type(message['content']).__name__}")


def with_thinking(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """Copy of `messages` whose last user message starts with `THINKING_INSTRUCTION` + "\\n" (as app.py)."""
    validate_messages(messages)
    out = [{"role": m["role"], "content": m["content"]} for m in messages]
    last_user = max((i for i, m in enumerate(out) if m["role"] == "user"), default=None)
    if last_user is None:
        raise ValueError("thinking mode needs a user message to prefix with the instruction")
    out[last_user]["content"] = THINKING_INSTRUCTION + "\n" + out[last_user]["content"]
    return out


def render_chat(
    messages: Sequence[Mapping[str, str]],
    *,
    bos_token: str = LLADA_BOS_TOKEN,
    thinking: bool = False,
    add_generation_prompt: bool = True,
) -> str:
    """Render a conversation with the LLaDA template used by MMaDA.

    Args:
        messages: [{"role": "system" | "user" | "assistant", "content": str}, ...], at least one.
        bos_token: the tokenizer's bos string.
        thinking: prefix the last user message with `THINKING_INSTRUCTION` (MMaDA thinking mode).
        add_generation_prompt: append the assistant header. The official template always does; pass
            False to render a finished conversation (e.g. an SFT sample ending in an assistant turn).
    """
    messages = with_thinking(messages) if thinking else messages
    validate_messages(messages)
    turns = [
        f"{START_HEADER_TOKEN}{m['role']}{END_HEADER_TOKEN}\n{m['content'].strip()}{EOT_ID_TOKEN}" for m in messages
    ]
    prompt = f"{START_HEADER_TOKEN}assistant{END_HEADER_TOKEN}\n" if add_generation_prompt else ""
    return bos_token + "".join(turns) + prompt


def encode_chat(
    tokenizer: _Encoder,
    messages: Sequence[Mapping[str, str]],
    *,
    thinking: bool = False,
    add_generation_prompt: bool = True,
    allow_special_tokens: bool = False,
) -> list[int]:
    """Token ids of the conversation rendered with the tokenizer's chat template (starts with bos).

    The template is the checkpoint's `chat_template` (tokenizer_config.json), or the LLaDA one
    (`render_chat`) when it ships none. Special-token strings inside the messages (a user typing
    `<|eot_id|>`) are encoded as plain text, so only the template itself produces control tokens;
    `allow_special_tokens=True` parses them instead (trusted messages).
    """
    if tokenizer.bos_token is None:
        raise ValueError("the tokenizer has no bos token; the chat template starts with it")
    messages = with_thinking(messages) if thinking else messages
    validate_messages(messages)
    specials = () if allow_special_tokens else tuple(sorted(tokenizer.special_tokens, key=len, reverse=True))
    if not specials:
        return tokenizer.encode(apply_chat_template(tokenizer, messages, add_generation_prompt=add_generation_prompt))
    pattern = re.compile("|".join(map(re.escape, specials)))
    # Stand-ins for the specials a message holds: the template's own control tokens are then the only
    # special strings in the rendered text, which is encoded piece by piece between them (the tokenizer
    # splits at special tokens anyway, so ordinary messages get exactly the ids of a whole-text encode).
    mark = chr(next(c for c in _PRIVATE_USE if not any(chr(c) in m["content"] for m in messages)))
    typed: list[str] = []

    def stand_in(match: re.Match[str]) -> str:
        typed.append(match.group(0))
        return f"{mark}{len(typed) - 1}{mark}"

    safe = [{"role": m["role"], "content": pattern.sub(stand_in, m["content"])} for m in messages]
    text = apply_chat_template(tokenizer, safe, add_generation_prompt=add_generation_prompt)
    restore = re.compile(f"{mark}(\\d+){mark}")
    ids: list[int] = []
    for piece in re.split(f"({pattern.pattern})", text):
        if piece in specials:
            ids.append(_require_id(tokenizer, piece))
        elif piece:
            ids += tokenizer.encode(restore.sub(lambda m: typed[int(m.group(1))], piece), parse_special=False)
    return ids


def apply_chat_template(
    tokenizer: _Encoder, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True
) -> str:
    """The conversation rendered with the tokenizer's template: `render_chat` for the LLaDA template (or
    none), else the checkpoint's Jinja template in a sandbox, as `transformers` renders it."""
    bos = tokenizer.bos_token or ""
    template = tokenizer.chat_template
    if template is None or template == LLADA_CHAT_TEMPLATE:
        return render_chat(messages, bos_token=bos, add_generation_prompt=add_generation_prompt)
    import jinja2  # a torch dependency
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    names = {f"{role}_token": getattr(tokenizer, f"{role}_token", None) for role in ("eos", "pad", "mask")}
    try:
        return env.from_string(template).render(messages=[dict(m) for m in messages], bos_token=bos,
                                                add_generation_prompt=add_generation_prompt, **names)
    except jinja2.TemplateError as err:
        raise ValueError(f"the tokenizer's chat_template cannot render these messages: {err}") from None


def _require_id(tokenizer: _Encoder, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise ValueError(f"special token {token!r} is not in the tokenizer vocabulary")
    return token_id


@dataclass(frozen=True)
class ThinkingSplit:
    """A completion split at `</think>`."""

    reasoning: str | None
    """Text inside `<think> … </think>` (stripped); None when the completion has no think block."""
    answer: str
    """Text after `</think>` (stripped); the whole completion when there is no think block; empty when
    the think block was never closed."""


def split_thinking(text: str) -> ThinkingSplit:
    """Separate `<think>reasoning</think>answer`.

    The prompt may already have opened the block, so a missing `<think>` before `</think>` is accepted;
    an unclosed `<think>` means the model never reached its answer.
    """
    close = text.find(THINK_CLOSE)
    if close >= 0:
        head = text[:close]
        open_ = head.find(THINK_OPEN)
        reasoning = head[open_ + len(THINK_OPEN) :] if open_ >= 0 else head
        return ThinkingSplit(reasoning.strip(), text[close + len(THINK_CLOSE) :].strip())
    open_ = text.find(THINK_OPEN)
    if open_ >= 0:
        return ThinkingSplit(text[open_ + len(THINK_OPEN) :].strip(), "")
    return ThinkingSplit(None, text.strip())


def final_answer(text: str) -> str:
    """The text after the *last* `</think>`, or the whole text when there is none; stripped.

    The judges' lenient reading (`world.judges`): a model that never closes its think block is still
    scored on everything it wrote, where `split_thinking` gives it an empty answer.
    """
    return text.rsplit(THINK_CLOSE, 1)[-1].strip()


def strip_thinking(text: str) -> str:
    """The final answer of a completion, without its `<think>` block."""
    return split_thinking(text).answer
