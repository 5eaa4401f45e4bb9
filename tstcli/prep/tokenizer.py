"""Tokenizers: train a byte-level BPE on the corpus, or load a tokenizer.json (local path or hub repo id)."""
from __future__ import annotations

import hashlib
import heapq
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tstcli.errors import DataError

def sample_documents(documents: Iterable[str], budget_chars: int) -> list[str]:
    """A uniform, deterministic sample of documents holding at most `budget_chars` characters, in corpus order.

    Each document gets a key from a hash of its text; the sample keeps the smallest keys that fit the budget
    (a bottom-k sample under a size budget), in one streaming pass with memory bounded by the budget.
    """
    heap: list[tuple[int, int, str]] = []  # (-key, position, text): the largest key is on top
    total = 0
    for i, doc in enumerate(documents):
        key = int.from_bytes(hashlib.sha1(b"bpe-sample\0" + doc.encode("utf-8", "replace")).digest()[:8], "little")
        if total + len(doc) <= budget_chars or (heap and key < -heap[0][0]):
            heapq.heappush(heap, (-key, i, doc))
            total += len(doc)
            while total > budget_chars and heap:
                total -= len(heapq.heappop(heap)[2])
    return [doc for _, _, doc in sorted(heap, key=lambda x: x[1])]


def train_bpe(documents: Iterable[str], vocab_size: int, eot_token: str, show_progress: bool,
              budget_chars: int = 0) -> Tokenizer:
    """Byte-level BPE trained on `documents` (on a uniform sample of at most `budget_chars` characters if > 0)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[eot_token], show_progress=show_progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())

    if budget_chars > 0:
        documents = sample_documents(documents, budget_chars)
    tok.train_from_iterator(documents, trainer=trainer)
    return tok


def load_tokenizer(spec: str, local_only: bool = False) -> Tokenizer:
    """`spec` is a tokenizer.json file, a directory holding one, or a hub repo id (OWNER/NAME); with `local_only`
    a hub tokenizer comes from the local cache or not at all (no network wait)."""
    p = Path(spec).expanduser()
    try:
        if p.is_dir():
            p = p / "tokenizer.json"
        is_file = p.is_file()
    except OSError as e:  # e.g. a name too long for the file system
        raise DataError(f"data.tokenizer: {spec[:80]!r}: not a usable path ({e.strerror})") from None
    if is_file:
        try:
            return Tokenizer.from_file(str(p))
        except Exception as e:
            raise DataError(f"data.tokenizer: {p}: not a valid tokenizer.json ({e})".splitlines()[0]) from None
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        from tstcli.prep import hub
        hub.quiet()
        try:
            return Tokenizer.from_file(hf_hub_download(spec, "tokenizer.json",
                                                       local_files_only=local_only or not hub.reachable()))
        except LocalEntryNotFoundError:
            raise DataError(f"data.tokenizer: {spec}: not in the local hub cache and the hub cannot be reached "
                            "(offline?)") from None
        except Exception as e:
            raise DataError(f"data.tokenizer: {spec}: cannot load tokenizer.json from the hub: "
                            f"{type(e).__name__}: {e}".splitlines()[0]) from None
    raise DataError(f"data.tokenizer: {spec}: expected 'bpe', a tokenizer.json path or a hub repo id")


def eot_id(tok: Tokenizer, eot_token: str, where: str) -> int:
    i = tok.token_to_id(eot_token)
    if i is None:
        raise DataError(f"{where}: tokenizer has no end-of-text token {eot_token!r} (set data.eot_token)")
    return i


def tokenizer_sha256(tok: Tokenizer) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()
