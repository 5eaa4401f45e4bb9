"""Tokenizers: train a byte-level BPE on the corpus, or load a tokenizer.json (local path or hub repo id)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tstcli.errors import DataError

# Cap on the text a BPE is trained on: merges stabilise long before, and this bounds prepare's first pass.
BPE_TRAIN_CHARS = 200_000_000


def train_bpe(documents: Iterable[str], vocab_size: int, eot_token: str, show_progress: bool) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[eot_token], show_progress=show_progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())

    def capped():
        seen = 0
        for doc in documents:
            yield doc
            seen += len(doc)
            if seen >= BPE_TRAIN_CHARS:
                return

    tok.train_from_iterator(capped(), trainer=trainer)
    return tok


def load_tokenizer(spec: str) -> Tokenizer:
    """`spec` is a tokenizer.json file, a directory holding one, or a hub repo id (OWNER/NAME)."""
    p = Path(spec).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
    if p.is_file():
        try:
            return Tokenizer.from_file(str(p))
        except Exception as e:
            raise DataError(f"data.tokenizer: {p}: not a valid tokenizer.json ({e})".splitlines()[0]) from None
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Tokenizer.from_file(hf_hub_download(spec, "tokenizer.json"))
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
