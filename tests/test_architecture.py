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
    "training": 6, "evaluation": 6, "rewards": 6,
    "recipe": 7, "demo": 7,
    "cli": 8, "serve": 8, "__main__": 8, "__init__": 8,
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
