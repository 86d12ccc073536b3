"""One config loader: YAML files and `key=value` overrides into frozen, documented dataclasses.

Every typed configuration of mmada (training runs, their `data:` sections, the saved sampler defaults of
a pipeline) is a tree of frozen dataclasses whose fields carry docstrings and whose `__post_init__`
checks the values. This module turns plain nested mappings into such a tree:

    raw = {}
    merge(raw, read_yaml("stage1_2.yaml"))
    set_override(raw, "optim.lr=3e-5", TrainConfig)
    config = build(TrainConfig, raw)

Conversion and type checks are pydantic's (`TypeAdapter` over the standard dataclasses: "1e-4" becomes
a float, lists become tuples, `Literal` values are checked); this module adds what pydantic does not
say the way a config user needs it: unknown keys are refused with the list of valid ones, a mapping
field merges with its default's keys, and every error is one `ValueError` naming the key path
(`optim.lr`), including the errors the dataclasses' own checks raise.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

_T = TypeVar("_T")
_NULLS = ("null", "none", "~", "")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML file holds; a clear error when it is missing, malformed or not a mapping."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ValueError(f"config file {path} not found") from err
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def merge(base: dict[str, Any], new: Mapping[str, Any]) -> None:
    """Deep-merge `new` into `base` in place: nested mappings merge, anything else replaces."""
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value


def set_override(raw: dict[str, Any], item: str, schema: type) -> None:
    """Apply one `section.key=value` to the nested dict `raw`, checking the key path against `schema`.

    The value is read as a YAML scalar or flow collection (`4`, `null`, `[a, b]`, `{t2i: 4}`), except for
    string fields, which keep the text as given (`model.init=1234` stays a folder name).
    """
    key, sep, text = item.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ValueError(f"override {item!r} must look like section.key=value (e.g. optim.lr=3e-4)")
    tp: Any = schema
    node: Any = raw
    for depth, part in enumerate(path):
        where = ".".join(path[: depth + 1])
        members = _dataclasses_of(tp)
        if members:
            chosen = _pick(members, node if isinstance(node, Mapping) else {})
            members = [chosen] if chosen is not None else members
            names = {f.name for cls in members for f in dataclasses.fields(cls)}
            if part not in names:
                raise _unknown_key(members, where)
            tp = next(_hints(cls)[part] for cls in members if part in _hints(cls))
        elif _is_mapping(tp) or tp is Any:
            tp = get_args(tp)[1] if get_args(tp) else Any
        else:
            raise ValueError(f"`{'.'.join(path[:depth])}` is a value, not a section (override {item!r})")
        node = node.get(part) if isinstance(node, Mapping) else None
    if _dataclasses_of(tp):
        raise ValueError(f"`{key}` is a section; override one of its keys (e.g. {key}.<key>=...)")
    node = raw
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = _parse_value(text, tp)


def build(cls: type[_T], raw: Mapping[str, Any], where: str = "") -> _T:
    """The dataclass `cls` from nested mappings: types converted, unknown keys and bad values refused.

    Raises:
        ValueError: one line naming the key path (prefixed with `where`, e.g. "data").
    """
    from pydantic import ValidationError

    raw = _with_defaults(cls, raw, where)
    try:
        config = _adapter(cls).validate_python(raw)  # type: ignore[arg-type]  # mypy: a type[_T] is Hashable
    except ValidationError as err:
        raise ValueError(_message(err, cls, raw, where)) from None
    _check_finite(config, where)
    return config


def to_dict(config: Any) -> Any:
    """A config as plain nested dicts and lists (tuples as lists): the inverse of `build`."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {k: to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    return config


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its docstring (the string literal right below the field), whitespace folded: for --help."""
    import ast
    import inspect
    import itertools
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):  # subclasses win
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body  # type: ignore[attr-defined]
        for node, after in itertools.pairwise(body):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


# ---- helpers ------------------------------------------------------------------------------------------
def _check_finite(value: Any, path: str) -> None:
    """Refuse NaN and ±inf in every float of a built config (YAML reads `.nan` / `.inf`, pydantic lets
    them through): no setting of mmada means anything at a non-finite value, and one would run to the end
    on garbage (`optim.lr=inf` trains on NaN losses)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"`{path or 'config'}` must be a finite number, got {value}")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _check_finite(getattr(value, f.name), f"{path}.{f.name}" if path else f.name)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_finite(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_finite(item, f"{path}[{index}]")


@functools.cache
def _adapter(cls: type) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(cls)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _members(tp: Any) -> tuple[Any, ...]:
    """The alternatives of a Union / Optional (Annotated stripped), or (tp,)."""
    if get_origin(tp) is not None and hasattr(tp, "__metadata__"):  # Annotated[X, ...]
        tp = get_args(tp)[0]
    if get_origin(tp) in (Union, types.UnionType):
        return tuple(m for a in get_args(tp) for m in _members(a))
    return (tp,)


def _dataclasses_of(tp: Any) -> list[type]:
    return [m for m in _members(tp) if isinstance(m, type) and dataclasses.is_dataclass(m)]


def _is_mapping(tp: Any) -> bool:
    return any(m is dict or get_origin(m) in (dict, Mapping) for m in _members(tp))


def _is_sequence(tp: Any) -> bool:
    return any(get_origin(m) in (tuple, list) for m in _members(tp))


def _parse_value(text: str, tp: Any) -> Any:
    import yaml

    kinds = [m for m in _members(tp) if m is not type(None)]
    if kinds and all(m is str for m in kinds):  # a string field keeps the text (None where Optional says so)
        return None if type(None) in _members(tp) and text.strip().lower() in _NULLS else text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    if isinstance(value, str) and _is_sequence(tp):  # "vqa,t2i" on a command line is a list
        return [item.strip() for item in value.split(",")] if value else []
    return value


def _pick(members: list[type], raw: Mapping[str, Any]) -> type | None:
    """The dataclass of a union that `raw` describes: the one whose Literal `name` matches, or the only one."""
    if len(members) == 1:
        return members[0]
    for cls in members:
        name = _hints(cls).get("name")
        if get_origin(name) is Literal and raw.get("name") in get_args(name):
            return cls
    return None


def _with_defaults(tp: Any, raw: Any, where: str) -> Any:
    """`raw` checked for unknown keys along the schema, with mapping fields merged over their defaults."""
    members = _dataclasses_of(tp)
    if members and isinstance(raw, Mapping):
        cls = _pick(members, raw)
        if cls is None:
            return raw  # pydantic names the missing or unknown `name`
        hints = _hints(cls)
        out = {}
        for key, value in raw.items():
            path = f"{where}.{key}" if where else str(key)
            if key not in hints:
                raise _unknown_key([cls], path)
            default = _default(cls, key)
            if isinstance(default, Mapping) and default and isinstance(value, Mapping) and not _replaces(cls, key):
                value = {**default, **value}  # a mapping overrides the default's keys
            out[key] = _with_defaults(hints[key], value, path)
        return out
    if isinstance(raw, str) and _is_sequence(tp) and not any(m is str for m in _members(tp)):
        return [raw]  # one string where a list of strings is expected (`urls: shard.tar`)
    if _is_mapping(tp) and isinstance(raw, Mapping):
        value_type = next((get_args(m)[1] for m in _members(tp) if len(get_args(m)) == 2), Any)
        return {k: _with_defaults(value_type, v, f"{where}.{k}") for k, v in raw.items()}
    return raw


REPLACE = "replace"
"""Field metadata key: `field(..., metadata={REPLACE: True})` makes a mapping given in a file or an override
replace the field's default mapping whole (a task mixture) instead of updating its keys (sampler settings)."""


def _replaces(cls: type, name: str) -> bool:
    return bool(next(f for f in dataclasses.fields(cls) if f.name == name).metadata.get(REPLACE))


def _default(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _unknown_key(classes: list[type], key: str) -> ValueError:
    where = f" of `{key.rpartition('.')[0]}`" if "." in key else ""
    valid = ", ".join(dict.fromkeys(f.name for cls in classes for f in dataclasses.fields(cls)))
    return ValueError(f"unknown config key `{key}`; valid keys{where}: {valid}")


def _message(err: Any, cls: type, raw: Mapping[str, Any], where: str) -> str:
    """The first pydantic error as one line, in the words of the config: "`optim.lr` expects float, got 'fast'"."""
    error = err.errors()[0]
    loc = _without_tags(cls, tuple(error["loc"]))
    field_loc = loc[: next((i for i, part in enumerate(loc) if isinstance(part, int)), len(loc))]
    path = ".".join(str(part) for part in ((where,) if where else ()) + field_loc) or "config"
    tp = _type_at(cls, field_loc)
    kind, given = error["type"], error.get("input")
    if kind == "value_error":  # a dataclass's own check: qualify the names of its fields it quotes
        text = str(error.get("ctx", {}).get("error", error["msg"]))
        names = {name for m in _dataclasses_of(tp) for name in _hints(m)}
        return re.sub(r"`(\w+)([.\w]*)`",
                      lambda m: f"`{path}.{m.group(1)}{m.group(2)}`" if m.group(1) in names else m.group(0), text)
    if kind == "literal_error":
        choices = ", ".join(repr(a) for m in _members(tp) for a in get_args(m))
        return f"`{path}` must be one of {choices}, got {given!r}"
    if len(field_loc) < len(loc) and kind in ("missing", "too_long", "too_short"):  # a fixed-length tuple
        return f"`{path}` expects {len(get_args(tp))} values ({_type_name(tp)}), got {_value_at(raw, field_loc)!r}"
    if kind == "missing":
        return f"`{path}` is required"
    if kind.startswith("union_tag"):
        name = given.get("name") if isinstance(given, Mapping) else given
        return f"`{path}.name` must be one of {_union_names(tp)}, got {name!r}"
    return f"`{path}` expects {_type_name(tp)}, got {given!r}"


def _without_tags(cls: type, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """`loc` without the union tags pydantic inserts (`data.world_sft.max_text_len` -> `data.max_text_len`)."""
    out: list[Any] = []
    tp: Any = cls
    for part in loc:
        members = _dataclasses_of(tp)
        if len(members) > 1 and isinstance(part, str) and part not in {n for m in members for n in _hints(m)}:
            continue  # the tag of a discriminated union
        out.append(part)
        tp = _type_at(cls, tuple(out))
    return tuple(out)


def _type_at(cls: type, loc: tuple[Any, ...]) -> Any:
    """The annotated type found by following the keys of `loc` from `cls` (Any where the schema is free-form)."""
    tp: Any = cls
    for part in loc:
        members = _dataclasses_of(tp)
        if members:
            tp = next((_hints(m)[part] for m in members if part in _hints(m)), Any)
        elif _is_mapping(tp):
            tp = next((get_args(m)[1] for m in _members(tp) if len(get_args(m)) == 2), Any)
        else:
            return Any
    return tp


def _value_at(raw: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        raw = raw.get(part) if isinstance(raw, Mapping) else None
    return raw


def _type_name(tp: Any) -> str:
    name = getattr(tp, "__name__", None)
    return name if name and get_origin(tp) is None else str(tp).replace("typing.", "")


def _union_names(tp: Any) -> str:
    names = [a for m in _dataclasses_of(tp) for a in get_args(_hints(m).get("name", Any))]
    return ", ".join(map(repr, names))
