"""TOML to frozen dataclasses and back, for a root dataclass whose fields are sections of keys (`Recipe`).

The only module that reads TOML. Unknown tables and keys, wrong types and values outside a key's declared set or
bounds are `UsageError`s naming the file and the key (`keys.check`); `--set section.key=value` overrides are
applied to the table before binding.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from tstcli import keys
from tstcli.errors import UsageError


def read(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """A TOML file's tables with `--set` overrides applied; every failure is one UsageError line."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"recipe {path}: no such file")
    try:
        table = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"recipe {path}: invalid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"recipe {path}: cannot read: {e}") from None
    for item in overrides:
        k, v = parse_set(item)
        _apply_override(table, k, v, f"recipe {path} (--set {item})")
    return table


def parse_set(item: str) -> tuple[str, Any]:
    """`key.path=value` with TOML value syntax; a bare word is taken as a string."""
    if "=" not in item:
        raise UsageError(f"--set {item!r}: expected key.path=value, e.g. --set train.steps=100")
    path, raw = item.split("=", 1)
    path, raw = path.strip(), raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return path, value


def _apply_override(table: dict, path: str, value: Any, where: str) -> None:
    parts = path.split(".")
    if len(parts) != 2 or not all(parts):
        raise UsageError(f"{where}: override key {path!r} must be section.key, e.g. train.steps")
    table.setdefault(parts[0], {})
    if not isinstance(table[parts[0]], dict):
        raise UsageError(f"{where}: '{parts[0]}' must be a table")
    table[parts[0]][parts[1]] = value


def bind(table: dict, root, where: str):
    """An instance of `root` from TOML tables, every key checked against its declaration."""
    classes = keys.sections(root)
    sections = {}
    for name, value in table.items():
        if name not in classes:
            raise UsageError(f"{where}: unknown table [{name}] (known: {', '.join(classes)})")
        if not isinstance(value, dict):
            raise UsageError(f"{where}: '{name}' must be a table [{name}], got {value!r}")
        fields = keys.fields(classes[name])
        kwargs = {}
        for k, v in value.items():
            if k not in fields:
                raise UsageError(f"{where}: unknown key '{name}.{k}' (known keys in [{name}]: {', '.join(fields)})")
            kwargs[fields[k].name] = _value(where, f"{name}.{k}", fields[k], v)
        sections[name] = classes[name](**kwargs)
    return root(**sections)


def _value(where: str, dotted: str, f: dataclasses.Field, value: Any) -> Any:
    item = f.metadata.get("item", str)
    if dataclasses.is_dataclass(item):
        return _tables(where, dotted, item, value)
    return keys.check(where, dotted, f, value)


def _tables(where: str, name: str, cls: type, value: Any) -> list:
    """A list of TOML tables (`[[data.mix]]`), each parsed into a `cls`; keys without a default are required."""
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise UsageError(f"{where}: key '{name}' must be a list of [[{name}]] tables, got {value!r}")
    if not value:
        raise UsageError(f"{where}: key '{name}' is empty: give at least one [[{name}]] table ("
                         f"{', '.join(cls.REQUIRED)}) or leave {name} out")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = []
    for i, table in enumerate(value):
        for k in table:
            if k not in fields:
                raise UsageError(f"{where}: unknown key '{name}[{i}].{k}' (known keys in [[{name}]]: "
                                 f"{', '.join(fields)})")
        for k in cls.REQUIRED:
            if k not in table:
                raise UsageError(f"{where}: [[{name}]] table {i} ({table.get('name', 'unnamed')!r}) lacks key "
                                 f"'{name}[{i}].{k}'")
        out.append(cls(**{k: _value(where, f"{name}[{i}].{k}", fields[k], v) for k, v in table.items()}))
    return out


def to_dict(obj) -> dict:
    """An instance of a root dataclass as its TOML tables (keys named as in TOML)."""
    classes = keys.sections(type(obj))
    return {section: {keys.name(f): v for f, v in zip(dataclasses.fields(classes[section]), values.values())}
            for section, values in dataclasses.asdict(obj).items()}


def to_toml(obj) -> str:
    """Every key of the instance, defaults included, as TOML that `bind` reads back to an equal instance."""
    out = []
    tables = {name: {f.name for f in dataclasses.fields(cls) if dataclasses.is_dataclass(f.metadata.get("item"))}
              for name, cls in keys.sections(type(obj)).items()}
    for section, values in to_dict(obj).items():
        out.append(f"[{section}]")
        # An unset list of tables is left out: written as [], it would read as a list of no tables (refused).
        out += [f"{k} = {keys.toml_value(v)}" for k, v in values.items() if not (k in tables[section] and v == [])]
        out.append("")
    return "\n".join(out)
