"""Shell completions are generated from the app and must be current."""
import subprocess

from conftest import ROOT
from tstcli.cli.completions import FILES, GENERATORS


def test_completion_scripts_are_current():
    for shell, name in FILES.items():
        assert (ROOT / "completions" / name).read_text() == GENERATORS[shell](), (
            f"completions/{name} is stale: run `python -m tstcli.cli.completions completions/`")


def _bash_complete(words):
    script = (f"source {ROOT / 'completions' / 'tst.bash'}; COMP_WORDS=({words}); "
              "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); _tst; printf '%s\\n' \"${COMPREPLY[@]}\"")
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.split()


def test_bash_completion_completes_verbs_and_options():
    assert _bash_complete("tst tr") == ["train"]
    assert set(_bash_complete("tst ''")) >= {"prepare", "train", "resume"}
    assert "--dry-run" in _bash_complete("tst train --d")
    assert _bash_complete("tst resume --j") == ["--json"]
