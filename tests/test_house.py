"""The house rules of docs/design.md, checked on the source: layers import only downward, no import cycles, small
modules and short loop functions, and a model that knows nothing of TST or of parallelism."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "tstcli"

# Layers, bottom up: a module imports only from its own package or a lower layer.
LAYERS = [
    {"tstcli", "tstcli.errors", "tstcli.keys", "tstcli.binder", "tstcli.recipe", "tstcli.recipe_rules", "tstcli.locks",
     "tstcli.phases", "tstcli.schedule", "tstcli.files", "tstcli.compressed"},
    {"tstcli.model", "tstcli.tst", "tstcli.data", "tstcli.prep"},
    {"tstcli.objective", "tstcli.parallel"},
    {"tstcli.run"},
    {"tstcli.eval", "tstcli.compare", "tstcli.export", "tstcli.sample"},
    {"tstcli.train"},
    {"tstcli.cli", "tstcli.__main__"},
]


def unit(module: str) -> str:
    """The layer unit of a module: its first-level package (tstcli.train.hooks.x -> tstcli.train)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def layer(module: str) -> int:
    return next(i for i, units in enumerate(LAYERS) if unit(module) in units)


def modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = path
    return out


def imports(path: Path) -> set[str]:
    """Every tstcli module imported anywhere in the file (module level and inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tstcli"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tstcli"))
    return found


def test_every_module_belongs_to_a_layer():
    for name in modules():
        layer(name)  # StopIteration: a new top-level package needs a place in LAYERS and docs/design.md


def test_no_layer_imports_upward():
    known = modules()
    bad = []
    for name, path in known.items():
        for imported in imports(path):
            if imported in known and unit(imported) != unit(name) and layer(imported) > layer(name):
                bad.append(f"{name} imports {imported}")
    assert not bad, bad


def test_no_import_cycle_between_packages_or_modules():
    known = modules()
    graph = {name: {i for i in imports(path) if i in known and i != name} for name, path in known.items()}
    packages: dict[str, set[str]] = {}
    for name, deps in graph.items():
        packages.setdefault(unit(name), set()).update(unit(d) for d in deps if unit(d) != unit(name))

    def cycle(g):
        state = {}

        def visit(n, trail):
            state[n] = 1
            for m in g.get(n, ()):
                if state.get(m) == 1:
                    return trail + [m]
                if m not in state and (found := visit(m, trail + [m])):
                    return found
            state[n] = 2
            return None
        return next((c for n in g if n not in state and (c := visit(n, [n]))), None)

    assert cycle(packages) is None, cycle(packages)
    # within a package, __init__ re-exports are not cycles worth failing on; plain modules must not loop
    plain = {n: {d for d in deps if not known[d].name == "__init__.py"} for n, deps in graph.items()}
    assert cycle(plain) is None, cycle(plain)


def test_rows_never_import_preparation():
    """Two rooms: `tstcli.prep` (`tst prepare`: sources, tokenizer, work units, the shard writer) may read what
    `tstcli.data` defines (the manifest's reader, packing); what training reads never imports the preparation."""
    known = modules()
    bad = [f"{name} imports {i}" for name, path in known.items() if unit(name) == "tstcli.data"
           for i in imports(path) if i in known and unit(i) == "tstcli.prep"]
    assert not bad, bad


def test_small_modules_and_short_loop_functions():
    long_modules = [f"{n} ({len(p.read_text().splitlines())} lines)" for n, p in modules().items()
                    if len(p.read_text().splitlines()) > 300]
    assert not long_modules, long_modules
    long_functions = []
    for path in (PKG / "train").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long_functions.append(f"{path.name}:{node.name}")
    assert not long_functions, long_functions


def test_the_model_knows_nothing_of_tst_training_or_parallelism():
    known = modules()
    for name, path in known.items():
        if unit(name) == "tstcli.model":
            text = path.read_text()
            assert not {i for i in imports(path) if i in known and unit(i) not in ("tstcli.model", "tstcli.recipe", "tstcli.errors",
                                                                     "tstcli")}, name
            assert "checkpoint(" not in text and "DistributedDataParallel" not in text, name


def test_no_docstring_cites_a_file_users_do_not_have():
    for name, path in modules().items():
        assert "DESIGN.md" not in path.read_text(), f"{name} cites DESIGN.md (the project's own is docs/design.md)"
    assert (PKG.parent / "docs" / "design.md").is_file()


def test_only_the_binder_reads_toml():
    readers = sorted(n for n, p in modules().items() if "tomllib" in p.read_text())
    assert readers == ["tstcli.binder"], readers


# Number keys whose bounds depend on another key: checked in recipe_rules.py, not declared with the key.
BOUNDED_BY_RULES = {"model.n_heads", "model.n_kv_heads", "model.moe_top_k"}


def test_every_number_key_declares_its_bounds():
    """A key's rules live with the key: a number key without declared bounds would take any value (a step count
    of 10^30 overflows a tensor size; a negative rate trains backwards) unless a rule between keys bounds it."""
    from tstcli import keys
    from tstcli.recipe import Recipe

    unbounded = [k for k, f in keys.walk(Recipe) if f.type in ("int", "float") and f.metadata["within"] is None]
    assert sorted(unbounded) == sorted(BOUNDED_BY_RULES), unbounded


def test_neutral_keys_are_the_declared_ones():
    """Resume-neutrality is declared with each key; the resume check's list is derived from it. A key becoming
    neutral is a contract change (a resume then accepts a changed value): this list moves with it deliberately."""
    from tstcli.run.rundir import NEUTRAL_KEYS

    assert NEUTRAL_KEYS == {
        "train.log_every", "train.profile_steps", "eval.every", "eval.batches", "eval.bench", "eval.bench_limit",
        "eval.bench_every", "eval.bench_data_dir", "log.tensorboard", "log.wandb", "log.wandb_project",
        "checkpoint.every", "checkpoint.keep", "checkpoint.async", "distributed.strategy",
        "distributed.activation_checkpointing", "distributed.backend", "distributed.timeout_s"}


def test_no_hook_assigns_a_trainer_attribute():
    """Side jobs own their state and act on the run through the trainer's methods: no `t.x = ...` (nor `t.x.y = ...`,
    `t.x += ...`) in a hook, where `t` is the trainer every hook point receives."""
    bad = []
    for path in (PKG / "train" / "hooks").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = (node.targets if isinstance(node, ast.Assign) else
                       [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
            for target in targets:
                while isinstance(target, (ast.Attribute, ast.Subscript)):
                    target = target.value
                    if isinstance(target, ast.Name) and target.id == "t":
                        bad.append(f"{path.name}:{node.lineno}")
    assert not bad, bad


def test_hooks_are_ordered_by_priority_not_by_list_position():
    """Hook order is declared (each hook's `priority`), not implied by where `default_hooks` appends it."""
    from tstcli.train.hooks import Hook, Hooks

    calls = []

    class Late(Hook):
        priority = 90

        def on_start(self, t):
            calls.append("late")

    class Early(Hook):
        priority = 5

        def on_start(self, t):
            calls.append("early")

        def on_close(self, t):
            calls.append("early closed")

    hooks = Hooks([Late(), Early()])
    hooks.on_start(None)
    hooks.on_close(None)
    assert calls == ["early", "late", "early closed"]
    hook_classes = [n for n, p in modules().items() if n.startswith("tstcli.train.hooks.")]
    for name in hook_classes:
        text = (PKG.parent / (name.replace(".", "/") + ".py")).read_text()
        assert "(Hook):" not in text or "priority = " in text, f"{name}: a hook without a declared priority"


def test_the_trainer_keeps_the_step_math_only():
    assert len((PKG / "train" / "trainer.py").read_text().splitlines()) <= 200
