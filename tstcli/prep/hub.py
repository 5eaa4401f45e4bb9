"""Files of Hugging Face hub datasets, through huggingface-hub's cache: one place that turns the hub's many failure
modes (offline, not found, network) into one line naming what was asked for."""
from __future__ import annotations

import contextlib
import fnmatch
import functools
import os
import socket
from urllib.parse import urlparse

from tstcli.errors import DataError, SourceUnavailable


@functools.lru_cache(maxsize=1)
def reachable() -> bool:
    """Whether the hub can be asked at all: not in offline mode and its host name resolves. Without a network (a
    cluster node, CI) huggingface-hub retries a failed name lookup for half a minute, printing every retry; a
    failed lookup here answers at once and the cache is used instead."""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    from huggingface_hub import constants
    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
        return True
    except OSError:
        return False


def quiet() -> None:
    """huggingface-hub logs each retry as a warning; our one error line says what failed."""
    from huggingface_hub.utils import logging as hub_logging
    hub_logging.set_verbosity_error()


@contextlib.contextmanager
def _one_line(what: str, offline_line: str, action: str):
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError)
    try:
        yield
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise SourceUnavailable(f"{what}: {offline_line}") from None
    except (EntryNotFoundError, RepositoryNotFoundError) as e:
        raise DataError(f"{what}: not found on the hub ({type(e).__name__})") from None
    except Exception as e:  # network failures come in many types
        raise SourceUnavailable(f"{what}: hub {action} failed: {type(e).__name__}: {e}".splitlines()[0]) from None


def dataset_file(repo_id: str, filename: str, revision: str | None, what: str, hint: str) -> str:
    """Local path of `filename` in dataset `repo_id` (downloaded once, then read from the cache, also offline).
    `what` starts the error line (the file, key or benchmark asked for); `hint` says what to do when offline."""
    from huggingface_hub import hf_hub_download
    quiet()
    with _one_line(what, f"not in the local hub cache and the hub cannot be reached (offline?); {hint}", "download"):
        return hf_hub_download(repo_id, filename, repo_type="dataset", revision=revision or None,
                               local_files_only=not reachable())


def matching_files(repo_id: str, pattern: str, revision: str | None, what: str, hint: str) -> list[str]:
    """Names of the dataset's files matching a glob (sorted); listing them needs the hub."""
    from huggingface_hub import HfApi
    quiet()
    if not reachable():
        raise DataError(f"{what}: listing the dataset's files needs the hub, which cannot be reached (offline?); "
                        f"{hint}")
    with _one_line(what, f"listing the dataset's files needs the hub, which cannot be reached (offline?); {hint}",
                   "listing"):
        names = HfApi().list_repo_files(repo_id, repo_type="dataset", revision=revision or None)
    matched = sorted(fnmatch.filter(names, pattern))
    if not matched:
        raise DataError(f"{what}: no file of the dataset matches {pattern!r}")
    return matched


def file_sizes(repo_id: str, names: list[str], revision: str | None, what: str, hint: str) -> list[int]:
    """Sizes in bytes of dataset files, from the hub's metadata (nothing is downloaded)."""
    from huggingface_hub import HfApi
    quiet()
    if not reachable():
        raise DataError(f"{what}: streaming needs the hub, which cannot be reached (offline?); {hint}")
    with _one_line(what, f"streaming needs the hub, which cannot be reached (offline?); {hint}", "listing"):
        infos = {i.path: i for i in HfApi().get_paths_info(repo_id, names, repo_type="dataset",
                                                           revision=revision or None)}
    missing = [n for n in names if n not in infos]
    if missing:
        raise DataError(f"{what}: {missing[0]}: not found on the hub")
    return [int(infos[n].size) for n in names]


def download_to(repo_id: str, filename: str, revision: str | None, directory, what: str) -> str:
    """Download one dataset file into `directory` (outside the hub cache: the caller deletes it after use)."""
    from huggingface_hub import hf_hub_download
    quiet()
    with _one_line(what, "the hub cannot be reached (offline?) to stream it", "download"):
        return hf_hub_download(repo_id, filename, repo_type="dataset", revision=revision or None,
                               local_dir=str(directory))
