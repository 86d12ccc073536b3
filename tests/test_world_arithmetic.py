"""Arithmetic word problems: worked solutions are correct and the checker agrees with the generator."""

from __future__ import annotations

import random
import re

import pytest

from mmada.world.arithmetic import MAX_STEPS, MAX_VALUE, sample_problem
from mmada.world.cot import final_answer
from mmada.world.judges import extract_number, score_arithmetic, score_format

_EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
_OPS = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__, "/": int.__floordiv__}


def test_checker_agrees_with_generator_on_10000_problems():
    for seed in range(10_000):
        problem = sample_problem(random.Random(seed))
        wrong = problem.answer + 1
        assert score_arithmetic(problem.cot_answer, problem.answer) == 1.0
        assert score_arithmetic(str(problem.answer), problem.answer) == 1.0
        assert score_arithmetic(problem.cot_answer, wrong) == 0.0
        assert score_arithmetic(problem.cot_answer.replace(f"</think> {problem.answer}", f"</think> {wrong}"),
                                problem.answer) == 0.0  # fmt: skip


def test_worked_solutions_are_correct_and_count_the_steps():
    for seed in range(2000):
        problem = sample_problem(random.Random(seed))
        equations = _EQUATION.findall(problem.reasoning)
        assert len(equations) == problem.num_steps, problem.reasoning
        for a, op, b, result in equations:
            assert _OPS[op](int(a), int(b)) == int(result)
            assert op != "/" or int(a) % int(b) == 0
            assert 0 <= int(result) <= MAX_VALUE
        assert int(equations[-1][3]) == problem.answer
        assert score_format(problem.cot_answer) == 1.0
        assert final_answer(problem.cot_answer) == str(problem.answer)
        assert problem.question.endswith("?") and str(problem.answer) not in problem.question.split("?")[-1]


@pytest.mark.parametrize("steps", range(1, MAX_STEPS + 1))
def test_requested_step_count_is_honoured_and_deterministic(steps):
    for seed in range(100):
        problem = sample_problem(random.Random(seed), steps)
        assert problem.num_steps == steps
        assert problem == sample_problem(random.Random(seed), steps)


def test_invalid_step_count_names_the_parameter():
    with pytest.raises(ValueError, match="num_steps"):
        sample_problem(random.Random(0), 5)


@pytest.mark.parametrize(
    ("completion", "answer"),
    [("12", 12), (" 12 ", 12), ("The answer is 12.", 12), ("12.0", 12), ("1,234", 1234), ("$1,234.00", 1234),
     ("<think> 5 + 7 = 12 </think> 12 apples", 12), ("<think> 7 </think>\n\nanswer: -3", -3),
     ("<think> it is 5 </think> so 4 + 8 = 12", 12)],
)  # fmt: skip
def test_checker_tolerates_formatting(completion, answer):
    assert score_arithmetic(completion, answer) == 1.0


@pytest.mark.parametrize(
    ("completion", "answer"),
    [("", 12), ("twelve", 12), ("<think> 12 </think>", 12), ("<think> 12 </think> 13", 12), ("12.5", 12),
     ("1,2", 12)],
)  # fmt: skip
def test_checker_rejects(completion, answer):
    assert score_arithmetic(completion, answer) == 0.0


def test_extract_number():
    assert extract_number("<think> 3 </think> The answer is 1,234.") == 1234.0
    assert extract_number("no number") is None
    assert extract_number(None) is None
