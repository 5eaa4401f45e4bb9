"""User-facing errors and their exit codes (the table users read: docs/reliability.md, tested against these).

Anything raised as a `TstError` is a user or environment problem: the CLI prints its one-line message and exits
with its code. Any other exception is a bug (exit 1, traceback to a log file).
"""
import errno

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


class UsageError(TstError):
    """Bad usage, bad recipe file, bad key or value."""

    exit_code = EXIT_USAGE


class DataError(TstError):
    """Missing, corrupt or mismatched corpus, shards or tokenizer."""

    exit_code = EXIT_DATA


class SourceUnavailable(DataError):
    """A source that could not be fetched (offline, hub or network failure): nothing is wrong with the data, and an
    interrupted preparation keeps its finished work for the re-run."""


class CheckpointError(TstError):
    """Missing, corrupt or incompatible checkpoint or run directory."""

    exit_code = EXIT_CHECKPOINT


class DivergedError(TstError):
    """Non-finite loss or gradient."""

    exit_code = EXIT_DIVERGED


class Terminated(BaseException):
    """SIGTERM outside the training loop: unwinds like Ctrl-C (a BaseException, so no `except Exception` swallows it)
    and every `finally` removes its temporary files; exit 128 + 15."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


# errno values that mean the environment, not tst, is at fault: a one-line error naming the path, never a traceback.
ENVIRONMENT_ERRNOS = frozenset(getattr(errno, n) for n in ("EROFS", "ENOSPC", "EACCES", "EPERM", "EDQUOT", "ENOTDIR",
                                                          "EISDIR", "EIO", "EFBIG", "ENAMETOOLONG", "EMFILE")
                               if hasattr(errno, n))


def environment_fault(e: BaseException) -> OSError | None:
    """The OSError behind `e` (itself, or its cause/context) when it is an environment fault, else None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
            return e
        e = e.__cause__ or e.__context__
    return None


def describe_os_error(e: OSError, path=None) -> str:
    """`PATH: reason` in one line (the path first, as every other error line names its file); `path` stands in
    when the error carries none (a failed write() names no file)."""
    where = e.filename if e.filename is not None else (str(path) if path is not None else "")
    if e.filename2 is not None:
        where = f"{where} -> {e.filename2}"
    reason = e.strerror or str(e)
    return f"{where}: {reason}" if where else reason


def as_error(e: OSError, cls: type[TstError], what: str = "", path=None) -> TstError:
    """An environment fault as a TstError of `cls` naming the path (`what` adds context, e.g. 'writing the export')."""
    return cls(f"{describe_os_error(e, path)}{f' ({what})' if what else ''}")


class Stopped(Exception):
    """Training stopped by a signal after saving a checkpoint; exit 128 + signum."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by signal {signum} at step {step}")
        self.signum = signum
        self.step = step
