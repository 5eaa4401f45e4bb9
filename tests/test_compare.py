"""`tst compare`: equal-loss points and "never" computed right on hand-made metrics, table, JSON and PNG."""
import json

import pytest

from conftest import run_cli


def fake_run(path, vals, switch=None, recipe=None):
    """A run directory holding only metrics.jsonl: validation at steps 0, 10, 20, ... with the given losses;
    step k has k·10 FLOPs, k·7 raw tokens, k/2 seconds; steps up to `switch` are phase 1."""
    path.mkdir(parents=True)
    lines = []
    for i, loss in enumerate(vals):
        step = 10 * i
        if step:
            for k in range(step - 9, step + 1):
                lines.append({"kind": "train", "step": k, "phase": 1 if switch and k <= switch else 2, "loss": 9.0,
                              "flops": 10 * k, "tokens": 7 * k, "elapsed_s": k / 2})
        lines.append({"kind": "val", "step": step, "val_loss": loss})
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if recipe:
        (path / "recipe.toml").write_text(recipe)
    return path


@pytest.fixture
def runs(tmp_path):
    base = fake_run(tmp_path / "base", [5.0, 4.0, 3.0])
    tst = fake_run(tmp_path / "tst", [5.0, 3.5, 2.5], switch=6, recipe="[tst]\nbag_size = 4\nratio = 0.3\n"
                   "[train]\nsteps = 20\n")
    slow = fake_run(tmp_path / "slow", [5.0, 4.5, 3.5])
    return base, tst, slow


def test_equal_loss_point_and_never_are_right(runs):
    base, tst, slow = runs
    r = run_cli("compare", base, tst, slow, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["axis"] == "flops" and out["reference"] == "base" and out["target_loss"] == 3.0
    b, t, s = out["runs"]
    assert b["reach_x"] == 200 and b["speedup"] == 1.0
    # tst: 3.5 at 100 FLOPs, 2.5 at 200 -> 3.0 halfway, at 150; speed-up 200/150
    assert t["reach_x"] == pytest.approx(150) and t["speedup"] == pytest.approx(4 / 3)
    assert t["final_val_loss"] == 2.5 and t["final_x"] == 200 and t["switch_x"] == 60
    assert t["label"] == "s=4, ratio=0.3" and b["label"] == "baseline"
    assert s["reach_x"] is None and s["speedup"] is None
    # other axes: tokens (7 per step) and steps
    tok = json.loads(run_cli("compare", base, tst, "--x", "tokens", "--json").stdout)
    assert tok["runs"][1]["reach_x"] == pytest.approx(105)
    steps = json.loads(run_cli("compare", base, tst, "--x", "steps", "--reference", tst, "--json").stdout)
    assert steps["reference"] == "tst" and steps["target_loss"] == 2.5
    assert steps["runs"][0]["reach_x"] is None and steps["runs"][1]["reach_x"] == 20


def test_table_and_png(runs, tmp_path):
    base, tst, slow = runs
    png = tmp_path / "plots" / "curves.png"
    r = run_cli("compare", base, tst, slow, "--out", png)
    assert r.returncode == 0, r.stderr
    assert "1.33x" in r.stdout and "never" in r.stdout
    from PIL import Image  # with matplotlib, from the test extra
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 300


def test_bad_compare_input_is_one_line(runs, tmp_path):
    base, tst, _ = runs
    r = run_cli("compare", base, tmp_path / "missing")
    assert r.returncode == 4 and "missing: no metrics.jsonl" in r.stderr
    r = run_cli("compare", base, tst, "--x", "watts")
    assert r.returncode == 2 and "--x 'watts'" in r.stderr
    r = run_cli("compare", base, "--reference", tst)
    assert r.returncode == 2 and "not one of the compared" in r.stderr


@pytest.mark.parametrize("suffix,magic", [("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_the_plot_is_written_in_the_format_its_suffix_asks_for(runs, tmp_path, suffix, magic):
    base, tst, _ = runs
    out = tmp_path / f"curves.{suffix}"
    r = run_cli("compare", base, tst, "--out", out)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes().startswith(magic)
    from test_cli_errors import assert_one_line_error
    assert_one_line_error(run_cli("compare", base, tst, "--out", tmp_path / "curves.jpg"), 2, "curves.jpg", ".svg")
    assert not (tmp_path / "curves.jpg").exists()


def _rewrite(run, keep):
    path = run / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(row) + "\n" for row in map(keep, rows) if row is not None))


def test_a_log_with_gaps_or_rows_without_the_axis_is_refused(runs):
    """Issue 29 (6, 7): a damaged log is one line naming it, never a curve with points missing."""
    from test_cli_errors import assert_one_line_error
    base, tst, _ = runs
    _rewrite(tst, lambda row: None if row["kind"] == "train" and 5 <= row["step"] <= 8 else row)
    assert_one_line_error(run_cli("compare", base, tst), 4, "tst/metrics.jsonl", "no rows for steps 5-8")
    _rewrite(base, lambda row: {k: v for k, v in row.items() if k != "elapsed_s"})
    assert_one_line_error(run_cli("compare", base, "--x", "time"), 4, "base/metrics.jsonl", "elapsed_s", "--x time")
    r = run_cli("compare", base, "--x", "flops", "--json")  # the other axes still compare
    assert r.returncode == 0 and json.loads(r.stdout)["runs"][0]["final_x"] == 200, r.stderr
