"""Recipes: YAML files (``safe_load``) validated against dataclasses, with ``base:`` inheritance and overrides.

Every key is checked: an unknown key or a value of the wrong type is a :class:`ConfigError` naming the key, the
file and (for typos) the closest valid key.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from weakseg.errors import ConfigError

T = TypeVar("T")
RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


def from_dict(cls: type[T], data: dict | None, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, checking keys and types recursively."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'recipe'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{where + '.' if where else ''}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown key '{path}'{hint}")
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(option, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"'{path}': invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"'{path}' must be a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"'{path}' must have {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{path}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{path}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{path}' must be an integer, got {value!r}")
        return value
    if tp is float:
        # YAML 1.1 reads exponents without a dot (1e-3) as strings: accept any finite number spelled out.
        number = _float_or_none(value)
        if number is None:
            raise ConfigError(f"'{path}' must be a number, got {value!r}")
        return number
    if tp is str:
        # Plain scalars YAML reads as numbers or dates (a run named 2024-05-01) are names too.
        if not isinstance(value, str | int | float | datetime.date) or isinstance(value, bool):
            raise ConfigError(f"'{path}' must be a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config type {tp} at {path}")


def _float_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain dicts/lists (tuples become lists), for YAML and checkpoints."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def resolve_recipe_path(name: str | Path, relative_to: Path | None = None) -> Path:
    """A recipe file: a path (absolute, relative to ``relative_to`` or the cwd) or a built-in recipe name."""
    candidates = [Path(name)]
    if relative_to is not None:
        candidates.insert(0, relative_to / name)
    stem = Path(name).name.removesuffix(".yaml")
    candidates.append(RECIPE_DIR / f"{stem}.yaml")
    for path in candidates:
        if path.is_file():
            return path
    builtin = ", ".join(sorted(p.stem for p in RECIPE_DIR.glob("*.yaml") if not p.stem.startswith("_")))
    raise ConfigError(f"{name}: recipe not found (built-in recipes: {builtin})")


def load_recipe_dict(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A recipe as a merged dict: its ``base:`` recipes (in order) overlaid by its own keys."""
    path = resolve_recipe_path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: recipe inherits from itself")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot parse recipe ({str(exc).splitlines()[0]})") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping")
    bases = data.pop("base", None) or []
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        base_path = resolve_recipe_path(base, relative_to=path.parent)
        merged = deep_merge(merged, load_recipe_dict(base_path, (*_seen, path)))
    return deep_merge(merged, data)


# Recipe keys that moved: (the method whose recipes had the key, where it was, where it is now). Recipes,
# checkpoints and benchmark records written before a move are read with the key at its new place
# (`upgrade_recipe_dict`).
MOVED_KEYS: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("pmp", ("method_args", "norm"), ("model", "norm")),  # group norm + weight standardisation, for every method
]


def move_key(recipe: dict, source: tuple[str, ...], target: tuple[str, ...]) -> None:
    """In place: the value at the key path ``source`` goes to ``target`` (nothing happens when it is absent)."""
    *parents, key = source
    section = recipe
    for name in parents:
        section = section.get(name)
        if not isinstance(section, dict):
            return
    if key not in section:
        return
    value = section.pop(key)
    *parents, key = target
    section = recipe
    for name in parents:
        section = section.setdefault(name, {})
    section[key] = value


def upgrade_recipe_dict(recipe: dict) -> dict:
    """A copy of ``recipe`` (a recipe as a dict) with the keys of :data:`MOVED_KEYS` at their current places."""
    recipe = copy.deepcopy(recipe)
    for method, source, target in MOVED_KEYS:
        if recipe.get("method") == method:
            move_key(recipe, source, target)
    return recipe


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides; values are parsed as YAML scalars/lists (``safe_load``)."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return data
