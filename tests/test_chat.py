"""Chat template rendering, thinking mode and `<think>` parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmada.prompting import (
    THINKING_INSTRUCTION,
    TextTokenizer,
    encode_chat,
    render_chat,
    split_thinking,
    strip_thinking,
    with_thinking,
)


@pytest.fixture(scope="module")
def tokenizer(reference_dir: Path) -> TextTokenizer:
    return TextTokenizer.from_pretrained(reference_dir / "prompting" / "tokenizer")


def test_recorded_chat_template_cases(reference_dir: Path, tokenizer: TextTokenizer) -> None:
    cases = json.loads((reference_dir / "prompting" / "cases.json").read_text())["chat_template"]
    assert len(cases) == 3
    for case in cases:
        assert render_chat(case["messages"]) == case["text"]
        assert encode_chat(tokenizer, case["messages"]) == case["ids"]


def test_generation_prompt_and_trimming() -> None:
    text = render_chat([{"role": "user", "content": "  hi \n"}], bos_token="<s>", add_generation_prompt=False)
    assert text == "<s><|start_header_id|>user<|end_header_id|>\nhi<|eot_id|>"
    assert render_chat([{"role": "user", "content": "hi"}]).endswith("<|start_header_id|>assistant<|end_header_id|>\n")


def test_thinking_instruction_is_the_demo_wording() -> None:
    # Gen-Verse/MMaDA app.py L222: the sentence before "\n" + the user's prompt.
    assert THINKING_INSTRUCTION.startswith("You should first think about the reasoning process in the mind")
    assert THINKING_INSTRUCTION.endswith("i.e. <think> reasoning process here </think> answer here")
    assert "\n" not in THINKING_INSTRUCTION


def test_thinking_prefixes_only_the_last_user_message() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "What is 2+3?  "},
    ]
    thought = with_thinking(messages)
    assert thought[1]["content"] == "first" and messages[3]["content"] == "What is 2+3?  "
    assert thought[3]["content"] == THINKING_INSTRUCTION + "\nWhat is 2+3?  "
    text = render_chat(messages, thinking=True)
    assert text.count(THINKING_INSTRUCTION) == 1
    assert f"{THINKING_INSTRUCTION}\nWhat is 2+3?<|eot_id|><|start_header_id|>assistant" in text
    with pytest.raises(ValueError, match="needs a user message"):
        render_chat([{"role": "system", "content": "x"}], thinking=True)


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "messages is empty"),
        ("hello", "must be a list"),
        ([("user", "hi")], r"messages\[0\] must be a dict"),
        ([{"role": "user"}], r"messages\[0\] has no 'content'"),
        ([{"content": "hi"}], r"messages\[0\] has no 'role'"),
        ([{"role": "tool", "content": "hi"}], r"role 'tool' must be one of"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": 3}], r"messages\[1\] content must be a str"),
    ],
)
def test_message_validation(messages: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_chat(messages)  # type: ignore[arg-type]


def test_split_thinking() -> None:
    full = split_thinking("<think> add 2 and 3 </think> The answer is 5.")
    assert (full.reasoning, full.answer) == ("add 2 and 3", "The answer is 5.")
    opened_by_prompt = split_thinking("reasoning only</think>5")
    assert (opened_by_prompt.reasoning, opened_by_prompt.answer) == ("reasoning only", "5")
    unfinished = split_thinking("<think> still going")
    assert (unfinished.reasoning, unfinished.answer) == ("still going", "")
    plain = split_thinking("  just an answer ")
    assert (plain.reasoning, plain.answer) == (None, "just an answer")
    assert strip_thinking("<think>x</think>\n\\boxed{5}") == "\\boxed{5}"
