"""The `tst` application: registers the verbs and turns every failure into one line and a documented exit code."""
from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
import traceback

import typer

from tstcli import __version__
from tstcli.cli import eval as eval_cmd
from tstcli.cli import anneal, compare, export, prepare, resume, sample, train
from tstcli.errors import (EXIT_CHECKPOINT, EXIT_INTERNAL, EXIT_USAGE, Stopped, Terminated, TstError,
                          describe_os_error, environment_fault)

app = typer.Typer(name="tst", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]},
                  help="Pretrain language models with Token Superposition Training (TST).")


def _version(value: bool):
    if value:
        print(f"tst {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")):
    """Pretrain language models with Token Superposition Training (TST)."""


# One line each in `tst --help` (click would cut the docstrings' first lines with "..."); `tst VERB --help` has more.
VERBS = {
    "prepare": (prepare.prepare, "Tokenize and shard the corpus; pack the rows each phase reads."),
    "train": (train.train, "Train a model: superposition phase, then next-token recovery."),
    "resume": (resume.resume, "Continue a run from its latest complete checkpoint."),
    "anneal": (anneal.anneal, "Decay a WSD run from one of its checkpoints into a new run."),
    "eval": (eval_cmd.eval_, "Held-out loss and benchmarks of a run or an export."),
    "export": (export.export, "Export a checkpoint as a self-tested Hugging Face model."),
    "sample": (sample.sample, "Generate text from a run or an export (KV cache, seeded)."),
    "compare": (compare.compare_runs, "Compare runs: loss or score against compute, speed-up."),
}
for _name, (_verb, _short) in VERBS.items():
    app.command(_name, short_help=_short)(_verb)


def _internal_error() -> int:
    fd, path = tempfile.mkstemp(prefix=f"tst-error-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log")
    with os.fdopen(fd, "w") as fh:
        traceback.print_exc(file=fh)
    exc = sys.exc_info()[1]
    _error(f"internal error ({type(exc).__name__}: {exc}); this is a bug in tst, traceback in {path}"
           .replace("\n", " "))
    return EXIT_INTERNAL


def _error(message: str) -> None:
    """The one error line, in one write: under torchrun the ranks share stderr, and a line written in two parts
    (print writes the text, then the newline) interleaves with another rank's."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def _terminate(signum, _frame):
    raise Terminated(signum)


def _run(command, argv) -> int:
    try:
        # Typer turns Ctrl-C into Exit(130) and, without standalone mode, *returns* the code: keep it.
        code = command.main(args=argv, prog_name="tst", standalone_mode=False)
        code = code if isinstance(code, int) else 0
        if code == 130:
            _error("interrupted")
        return code
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        _error("interrupted")
        return 130
    except TstError as e:
        _error(e.message)
        return e.exit_code
    except Stopped as e:
        return 128 + e.signum
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Terminated as e:
        _error("terminated")
        return 128 + e.signum
    except BaseException as e:  # noqa: BLE001 -- torch's CheckpointException is a BaseException
        if isinstance(e, SystemExit):
            raise
        fault = environment_fault(e)
        if fault is not None:  # read-only, full disk, permission: the environment, not a bug
            _error(describe_os_error(fault))
            return EXIT_CHECKPOINT
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `tst`: show the help
            print(e.format_message(), file=sys.stderr)
            return EXIT_USAGE
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):  # a click usage error (typer may vendor click)
            _error(f"{e.format_message()} (see `tst --help`)")
            return e.exit_code or EXIT_USAGE
        return _internal_error()


def main(argv: list[str] | None = None) -> None:
    command = typer.main.get_command(app)
    # SIGTERM unwinds like Ctrl-C (temporary files removed, exit 143), and so do SIGHUP (a closed SSH session) and
    # SIGUSR1 (SLURM's warning before pre-emption); the training loop installs its own handler.
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(signum, _terminate)
    code = _run(command, argv)
    sys.stdout.flush()
    sys.exit(code)
