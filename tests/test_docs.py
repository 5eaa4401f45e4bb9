"""The documentation against the code. Each reference table has one home under docs/ and is checked here: the exit
codes against `tstcli/errors.py`, the resume-neutral keys against `rundir.NEUTRAL_KEYS`, the `metrics.jsonl` schema
and the run-directory tree against `metrics.SCHEMA` and what two small real runs write. The README stays a front
door: short, its two command blocks intact, every link resolving."""
import json
import re
import signal

import pytest

from conftest import MOBY, ROOT, SHARED, run_cli, small_recipe, write_recipe
from tstcli import errors
from tstcli import recipe as recipes
from tstcli.run import metrics, rundir

DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_LINES = 250
# The markdown files the single-copy rule covers (recipes/README.md holds the generated key table, not these).
DOC_FILES = [README, *sorted(DOCS.glob("*.md"))]


def block(path, name):
    """The text between `<!-- name -->` and `<!-- /name -->` in `path` (the block must be there, once)."""
    text = path.read_text()
    found = re.findall(rf"<!-- {name} -->\n(.*?)\n<!-- /{name} -->", text, re.S)
    assert len(found) == 1, f"{path.relative_to(ROOT)} must hold one <!-- {name} --> block, has {len(found)}"
    return found[0]


def table(text):
    """The body rows of the markdown table in `text`, as lists of stripped cells."""
    rows = [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            for line in text.splitlines() if line.startswith("|")]
    assert len(rows) > 2 and set("".join(rows[1])) <= set("-: "), "not a markdown table"
    return rows[2:]


def names(cell):
    return re.findall(r"`([^`]+)`", cell)


# ---- one home each ----

@pytest.mark.parametrize("name,home,signature", [
    ("exit-codes", "reliability.md", r"^\|\s*143\s*\||\b130 Ctrl-C"),
    ("neutral-keys", "reliability.md", r"`checkpoint\.keep`,\s*`checkpoint\.async`"),
    ("metrics-schema", "metrics-and-run-dir.md", r"skipped_total|`val_tokens` \(predicted"),
    ("run-dir", "metrics-and-run-dir.md", r"^\s*runs/<name>/\s*$"),
])
def test_each_reference_table_has_one_home(name, home, signature):
    """A table kept in two places drifts: the block lives in its home page only, and nothing that looks like a
    copy of it (its signature line) appears in the README or another page."""
    for path in DOC_FILES:
        text = path.read_text()
        if path == DOCS / home:
            block(path, name)
            continue
        assert f"<!-- {name} -->" not in text, f"{path.relative_to(ROOT)}: a second <!-- {name} --> block"
        if signature:
            assert not re.search(signature, text, re.M), (
                f"{path.relative_to(ROOT)} holds a copy of the {name} table: link docs/{home} instead")


# ---- exit codes ----

def _exit_rows():
    rows = {}
    for code, raised, meaning in table(block(DOCS / "reliability.md", "exit-codes")):
        assert int(code) not in rows, f"exit code {code} twice"
        rows[int(code)] = (raised, meaning)
    return rows


def _error_classes():
    """Every TstError class errors.py defines, the base excepted (nothing raises it bare)."""
    out, todo = [], [errors.TstError]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__ == errors.__name__:
                out.append(sub)
    return out


def test_exit_code_table_has_every_code_errors_py_defines():
    rows = _exit_rows()
    constants = {n: v for n, v in vars(errors).items() if n.startswith("EXIT_") and isinstance(v, int)}
    assert {c for c in rows if c < 128} == set(constants.values()), "documented codes below 128 != errors.EXIT_*"
    for name, code in constants.items():
        assert names(rows[code][0])[0] == name, f"exit code {code} is errors.{name}"


def test_exit_code_table_names_each_error_class_under_its_code():
    rows = _exit_rows()
    classes = _error_classes()
    assert classes, "no TstError classes found in errors.py"
    for cls in classes:
        where = [code for code, (raised, _) in rows.items() if cls.__name__ in names(raised)]
        assert where == [cls.exit_code], f"{cls.__name__} (exit {cls.exit_code}) is documented under {where}"
    documented = {n for raised, _ in rows.values() for n in names(raised) if not n.startswith("EXIT_")}
    known = {c.__name__ for c in classes} | {"Stopped", "Terminated", "KeyboardInterrupt"}
    assert documented <= known, f"the table names classes errors.py does not define: {documented - known}"
    assert all(hasattr(errors, n) for n in ("Stopped", "Terminated"))


def test_exit_codes_above_128_are_the_stop_signals():
    """The signals that stop a run (`train/hooks/signals.SIGNALS`: SIGINT, SIGTERM, SIGHUP, SIGUSR1) exit with
    128 + the signal's number (`Stopped.signum`, `Terminated.signum`); each has its row, and no other."""
    from tstcli.train.hooks.signals import SIGNALS

    rows = _exit_rows()
    signals = {128 + s: s.name for s in SIGNALS}
    assert {c for c in rows if c >= 128} == set(signals)
    for code, sig in signals.items():
        raised, meaning = rows[code]
        assert f"128 + {sig}" in raised and sig in meaning
        assert "Stopped" in names(raised)
    assert errors.Stopped(signal.SIGTERM, 1).signum == 143 - 128


# ---- resume-neutral keys ----

def test_neutral_keys_list_is_rundir_neutral_keys():
    text = block(DOCS / "reliability.md", "neutral-keys")
    listed = re.findall(r"`([a-z_]+\.[a-z_0-9]+)`", text)
    assert len(listed) == len(set(listed)), "a key is listed twice"
    assert set(listed) == set(rundir.NEUTRAL_KEYS), (
        f"docs/reliability.md lists {sorted(set(listed) - set(rundir.NEUTRAL_KEYS))} that are not neutral and "
        f"misses {sorted(set(rundir.NEUTRAL_KEYS) - set(listed))}")
    keys = set(re.findall(r"^\| `([^`]+)`", recipes.key_table(), re.M))
    assert set(listed) <= keys, f"not recipe keys: {set(listed) - keys}"


# ---- metrics.jsonl and the run directory, against real runs ----

MOE = {"model.moe_experts": 4, "model.moe_top_k": 2, "model.moe_ffn_dim": 32}
TRACKERS_OFFLINE = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}


@pytest.fixture(scope="module")
def runs(small_data, tmp_path_factory):
    """Two 12-step runs of the SMALL recipe through the real CLI, between them writing every optional row field and
    run-directory entry the docs name: (a) a mixture of experts with an in-loop benchmark, the profiler, TensorBoard,
    W&B (offline) and documents as units; (b) a one-entry mixture that starts from (a)'s weights and diverges at
    once, its non-finite steps skipped."""
    tmp = tmp_path_factory.mktemp("docs")
    a = write_recipe(tmp / "a.toml", small_recipe(small_data, **MOE, **{
        "eval.bench": ["arc_easy"], "eval.bench_limit": 2, "eval.bench_data_dir": str(SHARED),
        "train.profile_steps": [2, 3], "log.tensorboard": True, "log.wandb": True,
        "train.attention": "document", "tst.bag_boundaries": "document"}))
    r = run_cli("train", a, "--run-dir", tmp / "a", env=TRACKERS_OFFLINE)
    assert r.returncode == 0, r.stderr
    table_b = recipes.to_dict(small_recipe(tmp / "mix-data", **MOE, **{
        "model.init_from": str(tmp / "a"), "train.lr": 1000.0, "train.warmup_steps": 0, "train.grad_clip": 0.0,
        "train.skip_nonfinite_steps": 1000}))
    table_b["data"].update(tokenizer=str(small_data / "tokenizer.json"), sources=["unused"],
                           mix=[{"name": "moby", "sources": [str(MOBY)], "weight": 1.0}])
    b = write_recipe(tmp / "b.toml", recipes.from_dict(table_b, "test recipe"))
    r = run_cli("train", b, "--run-dir", tmp / "b")
    assert r.returncode == 0, r.stderr
    return tmp / "a", tmp / "b"


def documented_schema():
    """{kind: {field: where it is present}} from the schema table."""
    out = {}
    for kind, field, present, meaning in table(block(DOCS / "metrics-and-run-dir.md", "metrics-schema")):
        (kind,), (field,) = names(kind), names(field)
        assert field not in out.get(kind, {}), f"{kind}.{field} documented twice"
        assert meaning, f"{kind}.{field} has no meaning"
        out.setdefault(kind, {})[field] = present
    return out


def test_schema_table_fields_in_every_row_are_metrics_schema():
    doc = documented_schema()
    assert set(doc) == set(metrics.SCHEMA), "the documented kinds are not metrics.SCHEMA's"
    for kind, fields in metrics.SCHEMA.items():
        always = {f for f, present in doc[kind].items() if present == "every row"}
        assert always == set(fields), f"{kind}: documented as in every row {sorted(always)}, SCHEMA {sorted(fields)}"


def test_schema_table_is_what_runs_write(runs):
    """Every row of every kind carries the fields documented for every row, and no field the table lacks; every
    optional field documented is written by one of the runs (the phase-1 losses of the other `tst.loss` ablations
    excepted: those are named after `tst.loss`'s choices)."""
    doc = documented_schema()
    seen = {}
    for run in runs:
        for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
            kind = row.pop("kind")
            assert kind in doc, f"{run.name}: a {kind!r} row, not in the table: {row}"
            always = {f for f, present in doc[kind].items() if present == "every row"}
            assert always <= set(row), f"{run.name}: a {kind} row without {sorted(always - set(row))}"
            extra = set(row) - set(doc[kind])
            assert not extra, f"{run.name}: {kind} fields not in the table: {sorted(extra)}"
            seen.setdefault(kind, set()).update(row)
    assert set(seen) == set(doc), f"kinds no run wrote: {set(doc) - set(seen)}"
    choices = re.search(r"^\| `tst\.loss` .*\(one of: ([^)]*)\)", recipes.key_table(), re.M).group(1).split(", ")
    losses = {f"{c}_loss" for c in choices}
    for kind, fields in doc.items():
        unseen = set(fields) - seen[kind]
        assert unseen <= losses, f"{kind}: documented but written by neither run: {sorted(unseen - losses)}"
    assert losses <= set(doc["train"]), f"phase-1 losses not documented: {losses - set(doc['train'])}"


def documented_tree():
    """[(regex of a path relative to the run directory, optional)] from the tree block: indentation gives the
    nesting, UPPER-case runs of letters are placeholders, a description starting "with" marks an optional entry."""
    lines = block(DOCS / "metrics-and-run-dir.md", "run-dir").strip().strip("`").strip().splitlines()
    assert lines[0].strip() == "runs/<name>/"
    out, stack, optional_stack = [], [], []
    for line in lines[1:]:
        depth = (len(line) - len(line.lstrip())) // 2 - 1
        name, _, desc = line.strip().partition(" ")
        stack[depth:] = [name.rstrip("/")]
        optional = desc.strip().startswith("with ") or any(optional_stack[:depth])
        optional_stack[depth:] = [optional]
        out.append((re.sub(r"[A-Z]+", r"\\d+", re.escape("/".join(stack))), optional))
    return out


def test_run_directory_tree_is_what_runs_write(runs):
    """Every file and folder of the two finished runs is in the tree (checkpoint folders and files by pattern), and
    every entry the tree gives without "with …" is in both runs."""
    tree = documented_tree()
    for run in runs:
        have = {p.relative_to(run).as_posix() for p in run.rglob("*")}
        if (run / "wandb").is_dir():  # W&B's own files inside its folder are W&B's business
            have = {p for p in have if not p.startswith("wandb/")} | {"wandb"}
        if (run / "tensorboard").is_dir():
            have = {p for p in have if not p.startswith("tensorboard/")} | {"tensorboard"}
        for path in sorted(have):
            assert any(re.fullmatch(p, path) for p, _ in tree), f"{run.name}/{path} is not in the documented tree"
        for pattern, optional in tree:
            if not optional:
                assert any(re.fullmatch(pattern, path) for path in have), f"{run.name} has no {pattern}"
    both = set()
    for run in runs:
        both |= {p.relative_to(run).as_posix() for p in run.rglob("*")}
    for pattern, optional in tree:
        assert any(re.fullmatch(pattern, p) for p in both), f"neither run has the documented {pattern}"


# ---- the README ----

def test_readme_is_a_short_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; reference material goes to docs/"


def test_readme_holds_the_two_command_blocks():
    """`.ci/run` and tests/test_e2e.py read these blocks; their markers and fences must stay as they are."""
    text = README.read_text()
    for name, tail in (("main-command", "tst train recipes/tiny.toml"), ("test-command", "python -m pytest -q")):
        found = re.findall(rf"<!-- {name} -->\n```\n(.*?)\n```\n<!-- /{name} -->", text, re.S)
        assert len(found) == 1, f"README.md must hold one {name} block"
        assert found[0].startswith("python3 -m venv .venv && ") and found[0].endswith(tail)


def _slug(heading):
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _links(path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path):
    """Every relative link in the README and the docs names a file that exists and, with `#anchor`, a heading of
    that file."""
    for link in _links(path):
        if re.match(r"^[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        dest = (path.parent / target).resolve() if target else path
        assert dest.exists(), f"{path.relative_to(ROOT)}: link {link} names a missing file"
        if anchor and dest.suffix == ".md":
            heads = {_slug(h) for h in re.findall(r"^#+ (.*)$", re.sub(r"```.*?```", "", dest.read_text(), flags=re.S),
                                                   re.M)}
            assert anchor in heads, f"{path.relative_to(ROOT)}: link {link}: no such heading in {target or path.name}"


def test_readme_links_every_docs_page():
    linked = {(ROOT / link.partition("#")[0]).resolve() for link in _links(README)}
    missing = [p.name for p in DOCS.glob("*.md") if p.resolve() not in linked]
    assert not missing, f"README.md does not link docs/{missing}"
