"""The unified chain-of-thought text format shared by every task of the tiny world.

MMaDA's mixed long-CoT fine-tuning (arXiv 2505.15809, Sec. 3.3) writes every answer as
``<think> reasoning </think> answer``; the world's generators write it with `format_cot` and the
judges read it with `final_answer`, which lives with the other `<think>` parsing in `prompting.chat`.
"""

from __future__ import annotations

from mmada.prompting.chat import THINK_CLOSE, THINK_OPEN, final_answer

__all__ = ["THINK_CLOSE", "THINK_OPEN", "final_answer", "format_cot"]


def format_cot(reasoning: str, answer: str) -> str:
    """'<think> {reasoning} </think> {answer}'."""
    return f"{THINK_OPEN} {reasoning.strip()} {THINK_CLOSE} {answer.strip()}"
