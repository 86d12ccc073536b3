"""The unified chain-of-thought text format shared by every task of the tiny world.

MMaDA's mixed long-CoT fine-tuning (arXiv 2505.15809, Sec. 3.3) writes every answer as
``<think> reasoning </think> answer``; the world's generators write it with `format_cot` and the
judges read it with `split_cot`.
"""

from __future__ import annotations

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def format_cot(reasoning: str, answer: str) -> str:
    """'<think> {reasoning} </think> {answer}'."""
    return f"{THINK_OPEN} {reasoning.strip()} {THINK_CLOSE} {answer.strip()}"


def final_answer(text: str) -> str:
    """The text after the last `</think>`, or the whole text when there is none; stripped."""
    return text.rsplit(THINK_CLOSE, 1)[-1].strip()
