"""`tst sample RUN_DIR|EXPORT_DIR`: generate text with the native model (KV cache; no transformers needed)."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Optional

import typer

from tstcli.cli.common import DeviceOption, DtypeOption, JsonOption, emit, log
from tstcli.errors import DataError, UsageError


def _prompt_text(prompt: Optional[str], prompt_file: Optional[Path]) -> str:
    if prompt is not None and prompt_file is not None:
        raise UsageError("--prompt and --prompt-file: give one of them")
    if prompt_file is None:
        return prompt or ""
    try:
        return prompt_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"--prompt-file {prompt_file}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                        f"{e.start})") from None
    except OSError as e:
        raise DataError(f"--prompt-file {prompt_file}: cannot read ({e.strerror or e})") from None


def sample(
    path: Path = typer.Argument(..., help="run directory or export directory"),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="text to continue (default: a new document)"),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file", help="read the prompt from this file"),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens", help="tokens to generate at most per sample"),
    temperature: float = typer.Option(0.8, "--temperature", help="softmax temperature; 0 is greedy"),
    top_k: int = typer.Option(0, "--top-k", help="sample among the k most likely tokens (0: all)"),
    top_p: float = typer.Option(1.0, "--top-p", help="sample among the most likely tokens whose mass reaches p"),
    seed: int = typer.Option(0, "--seed", help="random seed: the same seed gives the same samples"),
    num_samples: int = typer.Option(1, "--num-samples", help="independent continuations of the prompt"),
    step: Optional[int] = typer.Option(None, "--step", help="checkpoint step of a run directory (default: latest)"),
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    json_: bool = JsonOption,
):
    """Generate text: continue a prompt until the end-of-text token or --max-new-tokens."""
    if max_new_tokens < 1 or num_samples < 1 or not 0 <= temperature < math.inf or top_k < 0 or not 0 < top_p <= 1:
        raise UsageError("--max-new-tokens and --num-samples must be >= 1, --temperature a finite number >= 0, "
                         "--top-k >= 0, --top-p in (0, 1]")
    if not 0 <= seed < 2**64:
        raise UsageError(f"--seed {seed}: expected 0 to 2**64 - 1")
    text = _prompt_text(prompt, prompt_file)  # options and prompt checked before torch is imported (~1 s)
    import torch

    from tstcli.run import placement
    from tstcli.run.load import load_model
    from tstcli.sample.generate import Sampling, generate

    where = placement.resolve(device, dtype)
    lm = load_model(path, step, where)
    ids = lm.encode(text) if text else [lm.eot_id]  # no prompt: continue from a document boundary
    if len(ids) >= lm.max_len:
        raise UsageError(f"the prompt is {len(ids)} tokens; the model's context holds {lm.max_len}")
    settings = Sampling(max_new_tokens, temperature, top_k, top_p)
    generator = torch.Generator().manual_seed(seed)
    stream = sys.stdout.isatty() and not json_
    samples = []
    for i in range(num_samples):
        if stream and num_samples > 1:
            print(f"--- sample {i + 1} ---", flush=True)
        printer = _Printer(lm.tokenizer, text) if stream else None
        out = generate(lm.model, ids, settings, generator, lm.eot_id, printer)
        if printer:
            printer.finish()
        samples.append({"text": lm.tokenizer.decode(out.token_ids), "token_ids": out.token_ids, "stop": out.stop})
        if out.stop == "context" and not json_:  # else a short sample looks like the model's own choice to stop
            log(f"sample: stopped at the model's context ({lm.max_len} tokens, the prompt's included)")
    result = {"model": lm.source, "prompt": text, "prompt_tokens": len(ids) if text else 0, "seed": seed,
              "temperature": temperature, "top_k": top_k, "top_p": top_p, **where.describe(), "samples": samples}
    if stream:
        return
    lines = []
    for i, s in enumerate(samples):
        if num_samples > 1:
            lines.append(f"--- sample {i + 1} ---")
        lines.append(text + s["text"])
    emit(result, json_, lines)


class _Printer:
    """Streams a continuation to the terminal as its tokens arrive. Decodes the whole continuation each time and
    prints what is new, holding back a trailing partial UTF-8 character (byte-level BPE splits characters)."""

    def __init__(self, tokenizer, prompt: str):
        self.tokenizer, self.ids, self.shown = tokenizer, [], 0
        print(prompt, end="", flush=True)

    def __call__(self, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if not text.endswith("\ufffd") and len(text) > self.shown:
            print(text[self.shown:], end="", flush=True)
            self.shown = len(text)

    def finish(self) -> None:
        text = self.tokenizer.decode(self.ids)
        print(text[self.shown:], flush=True)
