"""GSM8K-style arithmetic word problems with 1-4 steps and worked chain-of-thought.

A problem is a short story about one person's collection (apples, coins, pages, ...): a start amount,
then `num_steps` operations, each one line of the reasoning with one equation ("8 + 3 = 11"):

- add / subtract a small number ("She buys 3 more apples." / "She eats 2 apples.");
- double or triple ("Then the number of her apples doubles.");
- halve ("She gives half of her apples to her brother.", only when even);
- boxes ("She buys 3 bags with 4 apples in each." = two steps: 3 x 4, then the sum);
- share ("She shares them equally among 3 friends.", last step only, asks "how many each").

All intermediate values are integers in [0, `MAX_VALUE`]. The CoT answer uses the unified
`<think> ... </think> answer` format; the plain answer is the integer alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mmada.world.cot import format_cot

MAX_STEPS = 4
MAX_VALUE = 200
"""Upper bound on every intermediate value and the answer."""

_PEOPLE = (
    ("Tom", "he", "his"), ("Ann", "she", "her"), ("Ben", "he", "his"), ("Mia", "she", "her"),
    ("Sam", "he", "his"), ("Lia", "she", "her"), ("Max", "he", "his"), ("Zoe", "she", "her"),
)  # fmt: skip
_RELATIVES = ("brother", "sister", "friend", "cousin")


@dataclass(frozen=True)
class _Item:
    plural: str
    gain: tuple[str, ...]
    """Verb phrases with {n}: '{who} {gain}.'"""
    lose: tuple[str, ...]
    bag: str
    """Container for the 'boxes' step."""


_ITEMS = (
    _Item("apples", ("picks {n} more apples", "buys {n} more apples"), ("eats {n} apples", "sells {n} apples"), "bags"),
    _Item("coins", ("finds {n} more coins", "earns {n} coins"), ("spends {n} coins", "loses {n} coins"), "purses"),
    _Item(
        "pages", ("writes {n} more pages", "prints {n} more pages"), ("tears out {n} pages", "throws away {n} pages"),
        "folders",
    ),
    _Item(
        "marbles", ("wins {n} marbles", "buys {n} more marbles"), ("loses {n} marbles", "gives away {n} marbles"),
        "jars",
    ),
    _Item(
        "stickers",
        ("gets {n} new stickers", "buys {n} more stickers"), ("uses {n} stickers", "gives away {n} stickers"),
        "sheets",
    ),
    _Item(
        "cookies", ("bakes {n} more cookies", "buys {n} more cookies"), ("eats {n} cookies", "sells {n} cookies"),
        "boxes",
    ),
)  # fmt: skip


@dataclass(frozen=True)
class ArithmeticProblem:
    """One word problem with its worked solution."""

    question: str
    """The story and the question."""
    answer: int
    """The final integer answer."""
    reasoning: str
    """One sentence per step, each with its equation (the text inside <think>...</think>)."""
    num_steps: int
    """Number of arithmetic operations (equations) needed, 1-4."""

    @property
    def cot_answer(self) -> str:
        """'<think> ... </think> 12'."""
        return format_cot(self.reasoning, str(self.answer))


@dataclass(frozen=True)
class _Step:
    sentence: str
    """Story sentence for the question."""
    work: str
    """Reasoning sentence with the equation(s)."""
    value: int
    """Amount after the step."""
    steps: int
    """Equations in `work`."""
    shares: bool = False
    """The step splits the amount among friends, so the question asks how many each gets."""


def _next_step(rng: random.Random, value: int, budget: int, last: bool, who: tuple[str, str, str],
               item: _Item) -> _Step | None:  # fmt: skip
    """One operation on `value` using at most `budget` equations, or None if the draw does not fit."""
    name, pron, poss = who
    kind = rng.choice(("add", "add", "sub", "sub", "mul", "half", "boxes", "share"))
    if kind == "add":
        n = rng.randint(1, 20)
        verb = rng.choice(item.gain).format(n=n)
        return _Step(f"Then {pron} {verb}.", f"{name} {verb}: {value} + {n} = {value + n}.", value + n, 1)
    if kind == "sub" and value >= 2:
        n = rng.randint(1, min(value - 1, 20))
        verb = rng.choice(item.lose).format(n=n)
        return _Step(f"Then {pron} {verb}.", f"{name} {verb}: {value} - {n} = {value - n}.", value - n, 1)
    if kind == "mul" and 1 <= value <= 30:
        k = rng.choice((2, 3))
        word = {2: "doubles", 3: "triples"}[k]
        return _Step(
            f"Then the number of {poss} {item.plural} {word}.", f"It {word}: {value} * {k} = {value * k}.", value * k, 1
        )
    if kind == "half" and value >= 2 and value % 2 == 0:
        rel = rng.choice(_RELATIVES)
        return _Step(
            f"Then {pron} gives half of {poss} {item.plural} to {poss} {rel}.",
            f"{name} keeps half: {value} / 2 = {value // 2}.",
            value // 2,
            1,
        )
    if kind == "boxes" and budget >= 2:
        k, m = rng.randint(2, 4), rng.randint(2, 6)
        return _Step(
            f"Then {pron} buys {k} {item.bag} with {m} {item.plural} in each.",
            f"The {item.bag} hold {k} * {m} = {k * m}, so {name} has {value} + {k * m} = {value + k * m}.",
            value + k * m,
            2,
        )
    if kind == "share" and last:
        divisors = [k for k in range(2, 6) if value % k == 0 and value // k >= 1]
        if divisors:
            k = rng.choice(divisors)
            return _Step(
                f"Then {pron} shares them equally among {k} friends.",
                f"Each friend gets {value} / {k} = {value // k}.",
                value // k,
                1,
                shares=True,
            )
    return None


def sample_problem(rng: random.Random, num_steps: int | None = None) -> ArithmeticProblem:
    """A random word problem with `num_steps` equations (uniform in 1..4 when None).

    Args:
        rng: the only source of randomness; the same state gives the same problem.
        num_steps: number of operations, 1..`MAX_STEPS`.
    """
    if num_steps is None:
        num_steps = rng.randint(1, MAX_STEPS)
    if not 1 <= num_steps <= MAX_STEPS:
        raise ValueError(f"`num_steps` must be in 1..{MAX_STEPS}, got {num_steps}")
    who, item = rng.choice(_PEOPLE), rng.choice(_ITEMS)
    name, _, _ = who
    value = rng.randint(2, 20)
    story, work, used, shared = [f"{name} has {value} {item.plural}."], [f"{name} starts with {value}."], 0, False
    while used < num_steps:
        step = _next_step(rng, value, num_steps - used, used + 1 == num_steps, who, item)
        if step is None or step.value > MAX_VALUE:
            continue  # redraw: the operation does not apply to this amount or budget
        story.append(step.sentence)
        work.append(step.work)
        value, used, shared = step.value, used + step.steps, step.shares
    first = story[1].removeprefix("Then ")  # the first operation reads better without "Then"
    story[1] = first[0].upper() + first[1:]
    question = (f"How many {item.plural} does each friend get?" if shared
                else f"How many {item.plural} does {name} have now?")  # fmt: skip
    work.append(f"The answer is {value}.")
    return ArithmeticProblem(" ".join([*story, question]), value, " ".join(work), num_steps)
