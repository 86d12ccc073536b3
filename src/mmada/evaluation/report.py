"""Reading evaluation records side by side: a markdown diff of two runs, accuracy-vs-speed plots.

`compare_markdown(a, b)` answers "what changed between these two numbers": every score with its
difference, then the cost (wall time, tokens/s, NFE), then every setting or provenance field that
differs (sampler settings, seed, batch size, dtype, model hash, commit, ...). Two runs that differ
only in time stamps compare as "same settings".

`plot_records(records, path)` draws the picture a user wants before choosing a fast mode: the
headline score against the number of sampling steps and against generated tokens/s (images/s for
image runs), one line per sampler mode. A mode is what a run's sampler settings change from the
exact sampler apart from `steps` (`exact`, `cache=delayed`, `cache=delayed threshold=0.9`, ...).
"""

from __future__ import annotations

import importlib
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from ..sampling import IMAGE_PRESETS, PRESETS

VOLATILE = frozenset({"created"})
"""The one provenance field that differs between two identical runs (cost fields are compared separately)."""
COST = ("wall_seconds", "tokens_per_second", "images_per_second", "nfe", "model_calls", "generated_tokens", "images")
HEADLINES = {"gsm8k": "accuracy", "vqa": "soft_accuracy", "geneval": "overall"}
"""Each runner's headline metric; the world suite's is the mean of its tasks' "overall"."""


# ---- numbers ---------------------------------------------------------------------------------------
def headline(record: Mapping[str, Any], metric: str | None = None) -> float | None:
    """The run's headline score: `metric` ("task/key") when given, else the runner's own (`HEADLINES`)."""
    scores: Mapping[str, Mapping[str, float]] = record["scores"]
    if metric is not None:
        task, _, name = metric.partition("/")
        value = scores.get(task, {}).get(name)
        return None if value is None else float(value)
    if record.get("task") == "world":
        overall = [groups["overall"] for groups in scores.values() if "overall" in groups]
        return sum(overall) / len(overall) if overall else None
    for task, groups in scores.items():
        key = HEADLINES.get(task)
        if key is None:
            key = "accuracy" if "accuracy" in groups else next(iter(groups), None)
        if key is not None and key in groups:
            return float(groups[key])
    return None


def speed(record: Mapping[str, Any]) -> float:
    """Generated tokens/s, or images/s for a run that made only images."""
    tokens = float(record.get("tokens_per_second") or 0.0)
    return tokens if tokens > 0 else float(record.get("images_per_second") or 0.0)


def sampler_section(record: Mapping[str, Any]) -> str:
    """"text" or "image": the sampler whose settings the run recorded ("text" when both)."""
    settings = record.get("settings", {})
    return "text" if "text" in settings else "image"


def mode_label(record: Mapping[str, Any]) -> str:
    """The sampler mode: the preset whose fields the run's settings match (`sampling.PRESETS` /
    `IMAGE_PRESETS`), else the speed fields (those a preset sets) that differ from `exact`."""
    section = sampler_section(record)
    values = record.get("settings", {}).get(section, {})
    table = PRESETS if section == "text" else IMAGE_PRESETS
    for name, preset in table.items():
        if all(values.get(key) == value for key, value in preset.items()):
            return name
    speed_fields = sorted({key for preset in table.values() for key in preset})
    exact = table["exact"]
    changed = [f"{k}={values[k]}" for k in speed_fields if k in values and values[k] != exact.get(k)]
    return " ".join(changed) or "exact"


def steps(record: Mapping[str, Any]) -> int | None:
    section = record.get("settings", {}).get(sampler_section(record), {})
    value = section.get("steps", section.get("timesteps"))
    return int(value) if isinstance(value, (int, float)) else None


# ---- compare -----------------------------------------------------------------------------------------
def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 40 else text[:18] + "…" + text[-18:]


def compare_markdown(a: Mapping[str, Any], b: Mapping[str, Any], names: Sequence[str] = ("A", "B")) -> str:
    """Scores (with B − A in points), cost, and the settings that differ, as markdown tables."""
    first, second = names
    lines = [f"| task | metric | {first} | {second} | Δ (points) |", "|---|---|---|---|---|"]
    tasks = list(dict.fromkeys([*a["scores"], *b["scores"]]))
    for task in tasks:
        ga, gb = a["scores"].get(task, {}), b["scores"].get(task, {})
        for key in dict.fromkeys([*ga, *gb]):
            x, y = ga.get(key), gb.get(key)
            delta = "-" if x is None or y is None else f"{100 * (y - x):+.1f}"
            lines.append(f"| {task} | {key} | {_percent(x)} | {_percent(y)} | {delta} |")
    lines += ["", f"| cost | {first} | {second} | {second} / {first} |", "|---|---|---|---|"]
    for key in COST:
        x, y = a.get(key), b.get(key)
        if not x and not y:  # absent or zero in both (images of a text run)
            continue
        ratio = f"{y / x:.2f}x" if isinstance(x, (int, float)) and isinstance(y, (int, float)) and x else "-"
        lines.append(f"| {key} | {_cell(x)} | {_cell(y)} | {ratio} |")
    fa, fb = (_settings(r) for r in (a, b))
    differing = [k for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
    lines.append("")
    if differing:
        lines += [f"| setting | {first} | {second} |", "|---|---|---|"]
        lines += [f"| {k} | {_cell(fa.get(k))} | {_cell(fb.get(k))} |" for k in differing]
    else:
        lines.append("Same settings, data, model and code (time stamps and speed aside).")
    return "\n".join(lines) + "\n"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _settings(record: Mapping[str, Any]) -> dict[str, Any]:
    skip = VOLATILE | set(COST) | {"scores", "outputs", "format", "sampler_calls"}
    return _flatten({k: v for k, v in record.items() if k not in skip})


# ---- plot --------------------------------------------------------------------------------------------
def plot_records(records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *, metric: str | None = None,
                 title: str | None = None) -> None:
    """Headline score vs sampling steps (left) and vs tokens/s (right), one line per sampler mode.

    Needs matplotlib (`pip install 'mmada[plots]'`).
    """
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        raise ImportError("`mmada eval plot` needs matplotlib: pip install 'mmada[plots]'") from None
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    lines: dict[str, list[tuple[int | None, float, float]]] = defaultdict(list)
    for record in records:
        score = headline(record, metric)
        if score is None:
            raise ValueError(f"a {record.get('task')} record has no score {metric or 'headline'!r}; "
                             f"its scores: {sorted(record['scores'])}")
        lines[mode_label(record)].append((steps(record), speed(record), 100 * score))
    figure, (by_steps, by_speed) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, points in sorted(lines.items()):
        points.sort(key=lambda p: (p[0] is None, p[0] or 0, p[1]))
        with_steps = [(s, y) for s, _, y in points if s is not None]
        by_steps.plot([s for s, _ in with_steps], [y for _, y in with_steps], "o-", label=mode)
        by_speed.plot([x for _, x, _ in points], [y for _, _, y in points], "o-", label=mode)
    unit = "images/s" if all(not r.get("tokens_per_second") for r in records) else "generated tokens/s"
    by_steps.set_xlabel("sampling steps")
    by_speed.set_xlabel(f"{unit} (log)")
    by_speed.set_xscale("log")
    for axis in (by_steps, by_speed):
        axis.set_ylabel(f"{metric or 'headline score'} (%)")
        axis.grid(alpha=0.3)
    by_speed.legend(fontsize=8)
    figure.suptitle(title or f"{records[0].get('task')}: score vs steps and speed, per sampler mode")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
