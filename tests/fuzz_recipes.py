"""Property: whatever bytes a recipe file holds, `tst train RECIPE --dry-run` loads it through the real CLI and
either succeeds (exit 0) or fails with exit 2 and one `error:` line naming the recipe file (and, for a bad key or
value, the key) — never a traceback. (A well-formed `data.tokenizer` naming no file is a data error, exit 3: the
dry run reads the tokenizer to size the vocabulary.) Shared by the test suite (a few hundred examples) and
`benchmarks/fuzz_recipes.py` (thousands)."""
import dataclasses
import io
import re
from contextlib import redirect_stderr, redirect_stdout

from hypothesis import strategies as st

from tstcli import keys
from tstcli import recipe as recipes
from tstcli.cli.app import main

KNOWN = {name: [f.name for f in dataclasses.fields(cls)] for name, cls in keys.sections(recipes.Recipe).items()}

toml_scalars = st.one_of(
    st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.text(max_size=30), st.text(min_size=5000, max_size=20000, alphabet="ab\"\\\n"),
    st.lists(st.text(max_size=5), max_size=3), st.lists(st.integers(), max_size=3),
)
sections = st.sampled_from(sorted(KNOWN) + ["nosuch", "Train", ""])


@st.composite
def key_names(draw, section):
    return draw(st.one_of(st.sampled_from(KNOWN.get(section, ["x"])), st.text(min_size=1, max_size=12)))


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(v, "nan" if v != v else repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


@st.composite
def recipe_bytes(draw):
    kind = draw(st.sampled_from(["structured", "structured", "one-key", "one-key", "raw", "non-utf8"]))
    if kind == "one-key":  # one known key set to an extreme or wrong value on top of the defaults
        section = draw(st.sampled_from(sorted(KNOWN)))
        key = draw(st.sampled_from(KNOWN[section]))
        value = draw(st.one_of(st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1), st.sampled_from(
            [0, -1, 2 ** 31, 2 ** 62, 10 ** 18, 1e308, -1e-308, float("inf"), float("nan")]), toml_scalars))
        return f"[{section}]\n{key} = {_toml_value(value)}\n".encode()
    if kind == "raw":
        return draw(st.text(max_size=200)).encode()
    if kind == "non-utf8":
        return b"[train]\nsteps = 10\nname = \"" + draw(st.binary(min_size=1, max_size=20)) + b"\xff\xfe\"\n"
    lines = []
    for section in draw(st.lists(sections, max_size=5, unique=True)):
        lines.append(f"[{section}]" if re.fullmatch(r"[A-Za-z0-9_-]+", section) else f'["{section}"]')
        for _ in range(draw(st.integers(0, 4))):
            key = draw(key_names(section))
            key = key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else '"' + key.replace("\\", "").replace('"', "") + '"'
            lines.append(f"{key} = {_toml_value(draw(toml_scalars))}")
    return "\n".join(lines).encode()


def check_recipe(tmp_dir, content: bytes) -> int:
    """Run the real CLI's `train --dry-run` on `content`; assert the contract; return the exit code."""
    path = tmp_dir / "fuzz.toml"
    path.write_bytes(content)
    err, out = io.StringIO(), io.StringIO()
    code = None
    with redirect_stderr(err), redirect_stdout(out):
        try:
            main(["train", str(path), "--dry-run", "--run-dir", str(tmp_dir / "run"),
                  "--set", f'data.dir="{tmp_dir / "no-data"}"'])
        except SystemExit as e:
            code = e.code
    stderr = err.getvalue()
    assert "Traceback" not in stderr, stderr
    assert code in (0, 2, 3), (code, stderr, content[:300])
    if code == 3:
        assert stderr.startswith("error: data.tokenizer: ") and len(stderr.strip().splitlines()) == 1, stderr
    if code == 2:
        lines = [l for l in stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: recipe {path}"), (stderr, content[:300])
        if "key '" in lines[0]:
            assert re.search(r"key '[^'.]+\..+'", lines[0]), lines[0]  # 'section.key' (a key may hold quotes)
    return code
