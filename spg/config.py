"""Helpers shared by every stage config: frozen dataclasses that serialise to JSON and hash stably.

Each stage of SPG has one frozen dataclass config (``ExtractConfig``, ``SAEConfig``, ``GuideConfig``,
``EvalConfig``). Their fields are the papermill parameters of the notebooks and the ``--set`` keys of
the command line; a config is saved next to every artifact it produced and its hash keys the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or field name that cannot be used; the message says which and what is valid."""


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-able dict of a (possibly nested) dataclass config; tuples become lists, paths strings."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex digest of the canonical JSON of ``obj`` (dataclasses are converted first)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = to_dict(obj)
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert a JSON / command-line value to the field's annotated type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if value is None:
        return None
    if origin is typing.Union or origin is types.UnionType:
        non_none = [a for a in args if a is not type(None)]
        return _coerce(value, non_none[0], name) if len(non_none) == 1 else value
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        inner = args[0] if args else str
        return tuple(_coerce(v, inner, name) for v in items)
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value) if isinstance(value, dict) else value
    if annotation is bool and isinstance(value, str):
        if value.lower() not in {"true", "false", "1", "0", "yes", "no"}:
            raise ConfigError(f"config field {name!r} expects true/false, got {value!r}")
        return value.lower() in {"true", "1", "yes"}
    if annotation in (int, float, str):
        try:
            return annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"config field {name!r} expects {annotation.__name__}, got {value!r}"
            ) from None
    if annotation is Path:
        return Path(value)
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build config ``cls`` from a dict, rejecting unknown keys with the list of valid ones."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; valid fields: {sorted(names)}")
    return cls(**{k: _coerce(v, hints[k], k) for k, v in data.items()})


def replace(cfg: T, **changes: Any) -> T:
    """``dataclasses.replace`` with type coercion and a clear error for unknown fields."""
    merged = {**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}}
    hints = _hints(type(cfg))
    for key, value in changes.items():
        if key not in merged:
            raise ConfigError(
                f"unknown {type(cfg).__name__} field {key!r}; valid fields: {sorted(merged)}"
            )
        merged[key] = _coerce(value, hints[key], key)
    return type(cfg)(**merged)


def save_json(obj: Any, path: Path) -> None:
    """Write ``obj`` (a dict or a dataclass, config dataclasses nested anywhere) as indented JSON, atomically."""

    def encode(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return to_dict(value)
        return str(value)

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(encode(obj) if dataclasses.is_dataclass(obj) else obj, indent=2, sort_keys=False,
                              default=encode) + "\n")
    tmp.replace(path)


def load_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
