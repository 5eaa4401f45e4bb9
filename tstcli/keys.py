"""Recipe keys as data. A key declares, in one place, its default, its meaning, its closed set of values, its bounds
and whether a resume may change it (`key(...)`); everything else about keys is derived from those declarations:
the check of one value (`check`), the key table of recipes/README.md (`table`) and the keys a resume may change
(`neutral`). Nothing here knows a particular key: `recipe.py` declares them.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

from tstcli.errors import UsageError


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    def holds(self, v) -> bool:
        return (v > self.lo if self.lo_open else v >= self.lo) and (v < self.hi if self.hi_open else v <= self.hi)

    def __str__(self) -> str:
        return f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"


def key(default, doc: str, choices: tuple | None = None, item: type = str, toml: str | None = None,
        within: tuple | Range | None = None, neutral: bool = False):
    """A recipe key: its default, one-line meaning, optional closed set of values; a list's items are `item`s;
    `toml`: its name in recipes when that is not a Python name (`checkpoint.async`); `within`: the bounds of a
    number, `(lo, hi)` closed or a `Range`; `neutral`: a resume may change it, because it changes nothing that is
    computed (how often to log, save or evaluate; how the work is split across devices)."""
    bounds = Range(*within) if isinstance(within, tuple) else within
    meta = {"doc": doc, "choices": choices, "item": item, "toml": toml, "within": bounds, "neutral": neutral}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def name(f: dataclasses.Field) -> str:
    """A key's name in recipes: the field's, unless it declares another (a Python keyword such as `async`)."""
    return f.metadata.get("toml") or f.name


def fields(cls) -> dict[str, dataclasses.Field]:
    return {name(f): f for f in dataclasses.fields(cls)}


def default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def sections(root) -> dict[str, type]:
    """The section classes of a root dataclass whose fields are sections (`Recipe`: [run], [data], ...)."""
    return {f.name: f.default_factory().__class__ for f in dataclasses.fields(root)}


def walk(root) -> Iterator[tuple[str, dataclasses.Field]]:
    """(`section.key`, field) of every key, in declaration order."""
    for section, cls in sections(root).items():
        for f in dataclasses.fields(cls):
            yield f"{section}.{name(f)}", f


def neutral(root) -> frozenset[str]:
    """The keys declared resume-neutral."""
    return frozenset(dotted for dotted, f in walk(root) if f.metadata.get("neutral"))


def _type_name(t, item=str) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            list: f"a list of {'strings' if item is str else 'integers'}"}[t]


def check(where: str, dotted: str, f: dataclasses.Field, value: Any) -> Any:
    """One key's value, checked against its declaration (type, finite, choices, bounds) and normalised (an int
    given for a float). A list of tables is not checked here (see the binder)."""
    item = f.metadata.get("item", str)
    t = {"int": int, "float": float, "bool": bool, "str": str, "list": list}[f.type.removesuffix(" | None")]
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    ok = (isinstance(value, bool) if t is bool else
          is_int(value) if t is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) if t is float else
          isinstance(value, list) and all(is_int(v) if item is int else isinstance(v, str) for v in value)
          if t is list else isinstance(value, str))
    if not ok:
        raise UsageError(f"{where}: key '{dotted}' must be {_type_name(t, item)}, got {value!r}")
    if t is float:
        value = float(value)
        if not math.isfinite(value):
            raise UsageError(f"{where}: key '{dotted}' must be a finite number, got {value!r}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise UsageError(f"{where}: key '{dotted}' must be one of {', '.join(choices)}; got {value!r}")
    bounds = f.metadata.get("within")
    if bounds is not None and value is not None and not bounds.holds(value):
        raise UsageError(f"{where}: key '{dotted}' must be {bounds}; got {value!r}")
    return value


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table; None means "not set"
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise TypeError(v)


def _meaning(f: dataclasses.Field) -> str:
    doc, m = f.metadata["doc"], f.metadata
    if m.get("choices"):
        doc += f" (one of: {', '.join(m['choices'])})"
    if m.get("within") is not None:
        doc += f" ({m['within']})"
    if m.get("neutral"):
        doc += " (resume-neutral)"
    return doc


def table(root) -> str:
    """Markdown table of every key: type, default, meaning with its values, bounds and resume-neutrality."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for dotted, f in walk(root):
        rows.append(_row([f"`{dotted}`", f.type, f"`{toml_value(default(f))}`", _meaning(f)]))
        item = f.metadata.get("item")
        if dataclasses.is_dataclass(item):  # the keys of each table in the list
            for g in dataclasses.fields(item):
                need = ("required" if g.name in item.REQUIRED else "`weight`" if g.default is None else
                        f"`{toml_value(g.default)}`")
                rows.append(_row([f"`{dotted.split('.')[0]}.{f.name}[].{g.name}`", g.type, need, _meaning(g)]))
    return "\n".join(rows)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
