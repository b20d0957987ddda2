"""Settings of a run given on the command line: ``--set KEY=VALUE``, ``--config FILE`` and the
shortcut flags, as a list of :class:`Override` applied over a config.

A key is a dotted path into the config dataclasses of :mod:`pbridge.config`
(``bridge.commitment``, ``bridge.paper.tau_p``, ``train.lr``, ``num_codes``, ``unet_mults``);
a ``--set`` value is read as the field's annotated type (``int``, ``float``, ``bool``, ``str``,
``X | None``, ``tuple[int, ...]`` written ``1,2,2``). Every key and value is checked against
the dataclasses, and the result by their own checks, before anything is written.
"""

from __future__ import annotations

import json
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import _check_types, _fits, setting_type, type_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "Override",
    "parse_assignment",
    "read_config_file",
    "apply_overrides",
    "changed",
    "flatten",
]

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_NONE = ("none", "null")


@dataclass(frozen=True)
class Override:
    """One setting to change: ``key`` (dotted), its ``value`` as plain data (tuples as lists,
    as in ``config.json``) and ``origin``, what the user wrote (``--set train.lr=1e-3``,
    ``--lr 0.001``, ``run.toml: train.lr = 0.001``), for messages."""

    key: str
    value: Any
    origin: str


def _parse(text: str, hint: Any) -> Any:
    """``text`` read as a value of the annotation ``hint``; ``ValueError`` when it is not one."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.strip().lower() in _NONE:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _parse(text, arg)
            except ValueError:
                continue
        raise ValueError(text)
    if hint is bool:
        word = text.strip().lower()
        if word not in _TRUE + _FALSE:
            raise ValueError(text)
        return word in _TRUE
    if hint is int:
        return int(text)
    if hint is float:
        return float(text)
    if hint is str:
        return text
    if origin is tuple:
        items = text.strip().strip("()[]").split(",")
        return [_parse(item, args[0]) for item in items if item.strip()]
    raise ValueError(text)


def parse_assignment(text: str, cls: type) -> Override:
    """``KEY=VALUE`` of ``--set`` for the config class ``cls``, the value read as the key's
    annotated type. ``ValueError`` naming the key, the value and the type expected."""
    key, equals, value = text.partition("=")
    key = key.strip()
    if not equals or not key:
        raise ValueError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.lr=1e-3")
    origin = f"--set {key}={value}"
    try:
        hint = setting_type(cls, key)
    except ValueError as err:
        raise ValueError(f"--set {text}: {err}") from None
    try:
        parsed = _parse(value, hint)
    except ValueError:
        expected = type_name(hint)
        if hint is bool or bool in typing.get_args(hint):
            expected += f" ({'/'.join(_TRUE)} or {'/'.join(_FALSE)})"
        raise ValueError(f"{origin}: {key} must be {expected}, got {value!r}") from None
    return Override(key, parsed, origin)


def read_config_file(path: str | Path, cls: type) -> list[Override]:
    """The settings of a TOML (``.toml``) or JSON file (any other name, e.g. a run's
    ``config.json``) for the config class ``cls``: a table / object of settings, sections as
    tables (``[train]``) / objects, any subset of them. Keys and value types are checked;
    errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML: {err}") from err
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
            "a TOML file must end in .toml"
        ) from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold an object of settings, got {type(data).__name__}")
    _check_types(cls, data, str(path))
    return [
        Override(key, value, f"{path}: {key} = {value!r}") for key, value in flatten(data).items()
    ]


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config's data (:meth:`~pbridge.config.ImageConfig.to_dict`) keyed by dotted setting:
    ``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}``."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def apply_overrides(config: Any, overrides: list[Override]) -> Any:
    """``config`` with every override applied in order (a later one wins), rebuilt and so
    checked by the dataclasses' own checks; a failing check is named with the overrides of
    the setting it names (all of them when it names none)."""
    data = config.to_dict()
    for item in overrides:
        hint = setting_type(type(config), item.key)
        if not _fits(item.value, hint):  # flags come typed; a check for library callers
            raise ValueError(f"{item.origin}: {item.key} must be {type_name(hint)}")
        *sections, name = item.key.split(".")
        target = data
        for section in sections:
            target = target[section]
        target[name] = item.value
    try:
        return type(config).from_dict(data)
    except (TypeError, ValueError) as err:
        named = [o.origin for o in overrides if re.search(rf"\b{o.key.split('.')[-1]}\b", str(err))]
        culprits = named or [o.origin for o in overrides] or ["the config"]
        raise ValueError(f"{', '.join(dict.fromkeys(culprits))}: {err}") from None


def changed(config: Any, new: Any, overrides: list[Override]) -> dict[str, tuple[str, Any]]:
    """The settings that ``new`` changes from ``config``, each with the origin of its (last)
    override and the old value: ``{"train.seed": ("--seed 1", 0)}``."""
    old_flat, new_flat = flatten(config.to_dict()), flatten(new.to_dict())
    origins = {item.key: item.origin for item in overrides}
    return {
        key: (origin, old_flat[key])
        for key, origin in origins.items()
        if _plain(new_flat[key]) != _plain(old_flat[key])
    }


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
