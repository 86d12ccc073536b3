"""The package's shape: a one-way layer stack (STYLE §5.1) and size budgets (STYLE §5.15)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mmada"

# Lower layers never import higher ones. Same-layer imports are allowed.
LAYERS = {
    "utils": 0,
    "model": 1, "image_tokenizer": 1,
    "checkpoint": 2, "prompting": 2,
    "diffusion": 3, "world": 3,
    "sampling": 4,
    "pipelines": 5,
    "training": 6, "evaluation": 6, "rewards": 6, "rl": 6,
    "recipe": 7, "demo": 7,
    "cli": 8, "serving": 8, "__main__": 8, "__init__": 8,
}
# Samplers see the model only through the Denoiser protocol.
FORBIDDEN = {"sampling": {"model", "checkpoint"}, "diffusion": {"model", "checkpoint"}}
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80
FUNCTION_ALLOW_LIST: set[str] = set()


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        yield path, path.relative_to(SRC).parts


def _top(parts: tuple[str, ...]) -> str:
    return parts[0].removesuffix(".py")


def _imported_packages(path: Path, parts: tuple[str, ...]) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = list(parts[:-1])[: len(parts) - node.level]
                target = [*base, *(node.module.split(".") if node.module else [])]
                if target:
                    found.add(target[0])
                else:  # `from . import x` at the top level
                    found.update(alias.name for alias in node.names)
            elif node.module and node.module.split(".")[0] == "mmada":
                names = node.module.split(".")
                found.update([names[1]] if len(names) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names = alias.name.split(".")
                if names[0] == "mmada" and len(names) > 1:
                    found.add(names[1])
    return {name.removesuffix(".py") for name in found}


@pytest.mark.parametrize(("path", "parts"), list(_modules()), ids=lambda x: str(x) if isinstance(x, Path) else "")
def test_imports_only_go_down_the_stack(path, parts):
    own = _top(parts)
    assert own in LAYERS, f"{path}: add package {own!r} to LAYERS"
    for other in _imported_packages(path, parts) - {own}:
        if other not in LAYERS:
            continue
        assert LAYERS[other] <= LAYERS[own], f"{path} ({own}) imports the higher layer {other!r}"
        assert other not in FORBIDDEN.get(own, set()), f"{path} ({own}) must not import {other!r}"


def test_file_and_function_budgets():
    offenders = []
    for path, _ in _modules():
        text = path.read_text()
        if text.count("\n") > MAX_FILE_LINES:
            offenders.append(f"{path}: {text.count(chr(10))} lines > {MAX_FILE_LINES}")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                name = f"{path.relative_to(SRC)}::{node.name}"
                if length > MAX_FUNCTION_LINES and name not in FUNCTION_ALLOW_LIST:
                    offenders.append(f"{name}: {length} lines > {MAX_FUNCTION_LINES}")
    assert not offenders, "\n".join(offenders)


# Task names: the training tasks are listed once (`training/tasks.py`), the layout kinds once
# (`prompting/collate.py`); everything else asks the task table. Only the data sources, which say how each
# task's rows are made, compare a name: `assemble` dispatches on the layout kind, the world checks r2i's rule.
TASK_LISTS = {"training/tasks.py", "prompting/collate.py"}
TASK_COMPARISONS = {"training/data_tasks.py", "training/data_world.py"}


def _task_names() -> set[str]:
    import typing

    from mmada.prompting import Task
    from mmada.training.tasks import TRAINING_TASKS

    return set(TRAINING_TASKS) | set(typing.get_args(Task))


def _task_name_uses(tree: ast.AST, names: set[str]) -> tuple[list[int], list[int]]:
    """Lines comparing a value with a task-name literal, and lines listing two or more task names."""
    def named(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) and node.value in names

    compares, lists = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            flat = [e for o in operands for e in (o.elts if isinstance(o, ast.Tuple | ast.List | ast.Set) else [o])]
            if any(named(e) for e in flat):
                compares.append(node.lineno)
        elif isinstance(node, ast.MatchValue) and named(node.value):
            compares.append(node.lineno)
        elif isinstance(node, ast.Tuple | ast.List | ast.Set) and sum(named(e) for e in node.elts) >= 2:
            lists.append(node.lineno)
    return compares, lists


def test_only_the_task_table_names_tasks():
    names, offenders = _task_names(), []
    for path, parts in _modules():
        where = "/".join(parts)
        compares, lists = _task_name_uses(ast.parse(path.read_text()), names)
        if where not in TASK_COMPARISONS:
            offenders += [f"{where}:{line}: compares with a task name; ask the task table" for line in compares]
        if where not in TASK_LISTS:
            offenders += [f"{where}:{line}: lists task names; use training.tasks.TRAINING_TASKS" for line in lists]
    assert not offenders, "\n".join(offenders)


def test_each_task_constant_is_defined_once():
    defined: dict[str, list[str]] = {}
    for path, parts in _modules():
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            bound = [t.id for t in targets if isinstance(t, ast.Name)]
            if isinstance(node, ast.ClassDef | ast.FunctionDef):
                bound = [node.name]
            for name in bound:
                if "task" in name.lower():
                    defined.setdefault(name, []).append("/".join(parts))
    twice = {name: where for name, where in defined.items() if len(where) > 1}
    assert not twice, f"task constants defined in more than one module: {twice}"


# The task API (`pipelines`) sits on top of the samplers; nothing below it reaches up, and of the training
# package only its preview / evaluation hooks use it (they run the pipeline on the model being trained).
PIPELINE_USERS = {"training/hooks.py"}


@pytest.mark.parametrize("package", ["sampling", "prompting", "diffusion", "model", "training"])
def test_lower_packages_and_training_do_not_import_the_pipelines(package):
    for path, parts in _modules():
        if _top(parts) != package or "/".join(parts) in PIPELINE_USERS:
            continue
        assert "pipelines" not in _imported_packages(path, parts), f"{path} imports mmada.pipelines"


def test_samplers_take_their_settings_object():
    import inspect
    from dataclasses import fields

    from mmada import sampling
    from mmada.sampling import ImageSampling, InfillSampling, TextSampling

    takes = {
        TextSampling: ("iter_sample_text", "sample_text"),
        ImageSampling: ("iter_sample_t2i", "sample_t2i", "iter_inpaint_image", "inpaint_image",
                        "iter_extrapolate_image", "extrapolate_image"),
        InfillSampling: ("iter_infill_text", "infill_text"),
    }
    setting_names = {f.name for kind in takes for f in fields(kind)}
    for kind, names in takes.items():
        for name in names:
            params = inspect.signature(getattr(sampling, name)).parameters.values()
            assert [p.annotation for p in params].count(kind.__name__) == 1, f"{name} must take a {kind.__name__}"
            flat = sorted(p.name for p in params if p.name in setting_names)
            assert not flat, f"{name} takes settings {flat} as loose arguments; they belong in {kind.__name__}"
