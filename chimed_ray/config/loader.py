"""Typed stage configs: YAML in, `key=value` overrides on top, validated once before Ray starts.

Every stage config is a tree of dataclasses. `load_config` reads a YAML file, applies dotted
overrides (`train.lr=1e-4`, `scale.num_workers=2`), converts every value to its declared type and
then calls `validate()` on each node, so a typo or an impossible value fails with the key's full
dotted path before any actor is created.
"""

from __future__ import annotations

import dataclasses
import decimal
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is missing, unknown, mistyped or impossible; the message names the key."""


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(tp))
    if typing.get_origin(tp) is typing.Literal:
        return " or ".join(repr(arg) for arg in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _to_int(value: Any, key: str) -> int:
    """An exact integer: never through float, so `seed=1152921504606846977` stays exact."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number: Any = None
    if isinstance(value, float):
        number = value
    elif isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                number = decimal.Decimal(value.strip())  # "1e3" is an integer too
            except decimal.InvalidOperation:
                number = None
    if number is None or not math.isfinite(number) or number != int(number):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    return int(number)


def _to_float(value: Any, key: str, allow_inf: bool = False) -> float:
    """A finite number (NaN never; +-inf only where the field's metadata says `allow_inf`)."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if math.isnan(number) or (math.isinf(number) and not allow_inf):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    return number


def _convert(value: Any, tp: Any, key: str, allow_inf: bool = False) -> Any:
    """Convert a YAML value to the annotated type `tp`, or raise ConfigError naming `key`.

    `allow_inf` comes from the field's metadata (`field(metadata={"allow_inf": True})`)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key, allow_inf)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        return [_convert(v, item_type, f"{key}[{i}]", allow_inf) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        value_type = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, value_type, f"{key}.{k}", allow_inf) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        return _to_int(value, key)
    if tp is float:
        return _to_float(value, key, allow_inf)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported config type {_type_name(tp)}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    # A field named after a Python keyword (`async_`) is written without the underscore in YAML.
    data = {(f"{key}_" if f"{key}_" in fields and key not in fields else key): value for key, value in data.items()}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown key (valid keys under "
            f"{prefix.rstrip('.') or cls.__name__}: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{prefix}{name}", field.metadata.get("allow_inf", False))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: required key is missing")
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-dict form of a config, for YAML dumps and for shipping to Ray workers."""
    return dataclasses.asdict(config)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn `a.b=1 c=[x,y]` into a nested dict; values are parsed as YAML scalars/lists."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        dotted, raw = item.split("=", 1)
        if not dotted:
            raise ConfigError(f"override {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return nested


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursively overlay `extra` on `base` (returns a new dict)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    from chimed_ray.utils.files import InputError, read_utf8

    try:
        data = yaml.safe_load(read_utf8(path))
    except InputError as exc:
        raise ConfigError(str(exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def validate_tree(config: Any, prefix: str = "") -> None:
    """Call `validate()` on every dataclass node, children first, prefixing errors with the path."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            validate_tree(value, f"{prefix}{field.name}.")
    validator = getattr(config, "validate", None)
    if validator is not None:
        try:
            validator()
        except ConfigError as exc:
            message = str(exc)
            raise ConfigError(message if message.startswith(prefix) else f"{prefix}{message}") from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load stage config `cls` from YAML `path` plus `key=value` overrides, then validate it."""
    data = read_yaml(path) if path is not None else {}
    data = merge(data, parse_overrides(overrides or []))
    try:
        config = from_dict(cls, data)
        validate_tree(config)
    except ConfigError as exc:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{exc}") from None
    return config


def dump_config(config: Any, path: str | Path) -> None:
    """Write the resolved config next to a run's outputs so the run can be reproduced."""
    from chimed_ray.utils.files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(config), allow_unicode=True, sort_keys=False))


def check(condition: bool, key: str, message: str) -> None:
    """Raise ConfigError for `key` unless `condition` holds; used inside `validate()` methods."""
    if not condition:
        raise ConfigError(f"{key}: {message}")
