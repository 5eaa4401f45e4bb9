"""User-facing errors and the exit codes of docs/design.md ("Contracts").

Anything raised as a `TstError` is a user or environment problem: the CLI prints its one-line message and exits
with its code. Any other exception is a bug (exit 1, traceback to a log file).
"""

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_CHECKPOINT = 4
EXIT_DIVERGED = 5


class TstError(Exception):
    exit_code = EXIT_INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class RecipeError(TstError):
    """Bad usage, bad recipe file, bad key or value."""

    exit_code = EXIT_USAGE


class DataError(TstError):
    """Missing, corrupt or mismatched corpus, shards or tokenizer."""

    exit_code = EXIT_DATA


class CheckpointError(TstError):
    """Missing, corrupt or incompatible checkpoint or run directory."""

    exit_code = EXIT_CHECKPOINT


class DivergedError(TstError):
    """Non-finite loss or gradient."""

    exit_code = EXIT_DIVERGED


class Stopped(Exception):
    """Training stopped by a signal after saving a checkpoint; exit 128 + signum."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by signal {signum} at step {step}")
        self.signum = signum
        self.step = step
