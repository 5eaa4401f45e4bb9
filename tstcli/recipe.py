"""The recipe: a TOML file parsed once into frozen dataclasses.

Every key is declared here with its type, default and meaning (the README's key table is generated from these
declarations, and a test keeps it current). Unknown keys, wrong types and out-of-range values are `RecipeError`s
naming the file and the key. Nothing below the CLI reads TOML.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from tstcli.errors import RecipeError
from tstcli.phases import PhasePlan


def key(default, doc: str, choices: tuple | None = None, item: type = str, toml: str | None = None):
    """A recipe key: default value, one-line meaning, optional closed set of values; a list's items are `item`s;
    `toml`: its name in recipes when that is not a Python name (`checkpoint.async`)."""
    meta = {"doc": doc, "choices": choices, "item": item, "toml": toml}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunConfig:
    name: str = key("run", "run name; the default run directory is runs/<name>")
    seed: int = key(0, "seed for initialisation, the phase split of the data and the row order")
    device: str = key("auto", "auto (cuda when available, else cpu), cpu or cuda", ("auto", "cpu", "cuda"))


NAME_CHARS = "letters, digits, '_', '-' and '.'"


@dataclass(frozen=True)
class MixEntry:
    """One `[[data.mix]]` table: a named group of sources and its share of each phase's tokens."""
    REQUIRED: ClassVar[tuple] = ("name", "sources", "weight")
    name: str = key("", "the entry's name: in shard file names, the coverage report and `mix_tokens` (" + NAME_CHARS + ")")
    sources: list = key([], "this entry's corpus sources, as data.sources takes them")
    weight: float = key(1.0, "share of every phase's tokens (weights are normalised over the entries; > 0)")
    phase1_weight: float | None = key(None, "share of phase 1's tokens instead of weight (>= 0; 0 leaves the entry "
                                      "out of phase 1)")
    phase2_weight: float | None = key(None, "share of phase 2's tokens instead of weight (>= 0)")

    def weight_in(self, phase: int) -> float:
        w = self.phase1_weight if phase == 1 else self.phase2_weight
        return self.weight if w is None else w


@dataclass(frozen=True)
class DataConfig:
    sources: list = key(["builtin:sample"], "corpus sources: files (.txt[.gz], .jsonl[.gz|.zst], .json[.gz|.zst], "
                        ".parquet), directories of them, hf://datasets/OWNER/NAME/PATH hub files and globs, or "
                        "builtin:sample (shipped with tst; builtin:sample/FILE one of its files)")
    text_field: str = key("text", "JSON field (or Parquet column) holding a document's text")
    txt_documents: str = key("blank_line", "how .txt sources split into documents: at blank lines, or one per file",
                             ("blank_line", "file"))
    dir: str = key("", "where prepared shards live; empty means data/<run.name>-<hash of the other data keys>")
    tokenizer: str = key("bpe", "bpe (train a byte-level BPE on the corpus), a tokenizer.json path, or a hub repo id")
    vocab_size: int = key(4096, "vocabulary size of a trained BPE tokenizer; with a loaded tokenizer, the size "
                          "`train --dry-run` assumes when that tokenizer is not available locally")
    tokenizer_train_chars: int = key(10_000_000, "train the BPE on a uniform sample of the training documents "
                                     "holding at most this many characters; 0 uses them all")
    eot_token: str = key("<|endoftext|>", "end-of-text token separating documents (must exist in a loaded tokenizer)")
    val_fraction: float = key(0.02, "fraction of documents held out for validation (split by document)")
    shard_tokens: int = key(1 << 26, "tokens per shard file")
    token_files: list = key([], "already tokenized training data: flat token files (nanoGPT's train.bin: raw "
                            "uint16/uint32 ids, documents separated by data.eot_token; datatrove's X.ds, documents "
                            "ended by its X.ds.index), registered without "
                            "re-tokenizing; needs data.tokenizer (not bpe); data.sources is then unused")
    token_val_files: list = key([], "with data.token_files: the validation split's token files (nanoGPT's val.bin); "
                                "empty takes the last data.val_fraction of data.token_files, cut at a document end")
    token_dtype: str = key("uint16", "with data.token_files: the files' token type", ("uint16", "uint32"))
    repeat: bool = key(True, "allow a phase to re-read its rows (new epoch, new order) when the corpus is too short")
    unit_mb: int = key(256, "tst prepare's work units: consecutive files of about this many MB together, a large "
                       "Parquet file cut into row groups of about this size; each unit is tokenized into its own shards")
    stream: bool = key(False, "hub sources: download, tokenize and delete one file at a time (disk: the files being "
                       "read plus the shards) instead of keeping every file in the hub cache; the data is the same")
    mix: list = key([], "weighted mixture: [[data.mix]] tables (keys below), each a named group of sources with a "
                    "share of every phase's tokens; data.sources is then unused", item=MixEntry)


@dataclass(frozen=True)
class ModelConfig:
    dim: int = key(128, "hidden size")
    n_layers: int = key(4, "transformer blocks")
    n_heads: int = key(4, "attention heads")
    n_kv_heads: int = key(0, "key/value heads for grouped-query attention; 0 means n_heads")
    ffn_dim: int = key(0, "SwiGLU intermediate size; 0 means 8/3·dim rounded up to a multiple of 64")
    max_seq_len: int = key(2048, "longest context the model supports (RoPE positions)")
    rope_theta: float = key(10000.0, "RoPE base")
    norm_eps: float = key(1e-5, "RMSNorm epsilon")
    tie_embeddings: bool = key(True, "share the input embedding and the output head")
    init_std: float = key(0.02, "standard deviation of the initial weights")
    head_dim: int = key(0, "attention head size; 0 means dim / n_heads (Qwen3 uses 128 whatever the width)")
    qk_norm: bool = key(False, "RMSNorm on each head's queries and keys before RoPE (Qwen3)")
    moe_experts: int = key(0, "mixture of experts: routed SwiGLU experts per block (Qwen3-MoE style); 0 is dense")
    moe_top_k: int = key(2, "experts each token is routed to (softmax router, top-k)")
    moe_ffn_dim: int = key(0, "intermediate size of one expert; 0 means model.ffn_dim's rule")
    moe_norm_topk: bool = key(True, "renormalise the top-k routing weights to sum to 1 (Qwen3's norm_topk_prob)")
    moe_shared_ffn_dim: int = key(0, "intermediate size of a shared expert every token also goes through; 0: none")
    moe_aux_loss_coef: float = key(0.001, "weight of the load-balancing loss E·Σ f_e·P_e (Switch/Qwen3 form)")
    moe_z_loss_coef: float = key(0.0, "weight of the router z-loss mean(logsumexp(router logits)^2)")
    init_from: str = key("", "start from this checkpoint's weights instead of random ones: a Hugging Face Llama / "
                         "Qwen3 / Qwen3-MoE directory, a tst run or export directory, or a hub repo id; its shape "
                         "must be the recipe's and its tokenizer the data's")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.dim // self.n_heads

    @property
    def expert_intermediate(self) -> int:
        return self.moe_ffn_dim or self.intermediate

    @property
    def intermediate(self) -> int:
        return self.ffn_dim or 64 * math.ceil(8 * self.dim / 3 / 64)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = key(300, "optimizer steps in all (phase 1 + phase 2)")
    batch_size: int = key(16, "rows per optimizer step (global batch); each row is seq_len latent positions")
    micro_batch_size: int = key(0, "rows per forward/backward on one device; 0 means all of the device's share of "
                                "batch_size (no gradient accumulation)")
    seq_len: int = key(128, "latent positions per row (L)")
    lr: float = key(3e-3, "peak learning rate")
    min_lr_ratio: float = key(0.0, "learning rate at the end of the decay, as a fraction of lr")
    schedule: str = key("wsd", "wsd (warmup-stable-decay) or cosine (warmup then cosine decay)", ("wsd", "cosine"))
    warmup_steps: int = key(30, "linear warmup steps")
    decay_fraction: float = key(0.1, "wsd: fraction of steps in the final linear decay")
    weight_decay: float = key(0.1, "AdamW decoupled weight decay (matrices only)")
    beta1: float = key(0.9, "AdamW beta1")
    beta2: float = key(0.95, "AdamW beta2")
    eps: float = key(1e-8, "AdamW epsilon")
    grad_clip: float = key(1.0, "clip the global gradient norm to this; 0 disables clipping")
    skip_nonfinite_steps: int = key(0, "skip up to this many steps whose loss or gradient norm is not finite "
                                    "(logged as kind=skip); 0 stops the run at the first (exit 5)")
    dtype: str = key("bf16", "compute dtype: bf16 autocast over fp32 weights, or fp32", ("bf16", "fp32"))
    compile: bool = key(True, "torch.compile the training and evaluation steps")
    float8: bool = key(False, "float8 matmuls in the blocks' linear layers through torchao (tst[float8]; NVIDIA GPUs "
                       "of compute capability 8.9+: H100/H200); the LM head and the TST embedding mean stay bf16/fp32")
    loss_chunk_size: int = key(512, "positions whose logits exist at once in the loss (the head's matmul and the "
                               "loss run chunk by chunk, never materialising all B x L x V logits); 0 computes the "
                               "full logits (the reference path)")
    log_every: int = key(10, "steps between reads of the steps' losses and gradient norms from the device (the "
                         "only time the host waits for it; each step keeps its row) and between progress lines when "
                         "not on a terminal")
    threads: int = key(0, "CPU threads for torch; 0 leaves torch's default")
    profile_steps: list = key([], "[first, last]: record steps first..last with torch.profiler and write a Chrome "
                              "trace (Perfetto, TensorBoard) to profile/ in the run directory; [] records nothing",
                              item=int)

    def rows_per_micro_batch(self, world_size: int) -> int:
        """Rows per forward/backward on each of `world_size` devices (train.batch_size is the global batch)."""
        return self.micro_batch_size or self.batch_size // world_size


@dataclass(frozen=True)
class TstConfig:
    bag_size: int = key(4, "s: tokens per bag in phase 1; 1 is plain next-token training")
    ratio: float = key(0.3, "fraction of steps in phase 1 (superposition), in [0, 1)")
    mode: str = key("full", "full: bag input + next-bag target; input: bag input + next token; "
                    "output: token input + next-s-tokens target", ("full", "input", "output"))
    weighting: str = key("uniform", "multi-hot target weights: uniform 1/s, or power (j+1)^-alpha normalised",
                         ("uniform", "power"))
    alpha: float = key(1.0, "exponent of the power weighting")
    loss: str = key("mce", "phase-1 loss: mce (multi-hot cross-entropy); bce (binary CE over the vocabulary) and hinge "
                    "(multi-label margin) are the paper's negative ablations; phase 2 is always cross-entropy",
                    ("mce", "bce", "hinge"))
    reinit_embedding: bool = key(False, "ablation: re-initialise the input embedding at the switch")
    reinit_head: bool = key(False, "ablation: re-initialise the output head at the switch")
    reset_optimizer: bool = key(False, "ablation: reset the optimizer state at the switch (patch-level training)")
    restart_schedule: bool = key(False, "ablation: restart the learning-rate schedule (warmup included) at the switch")


@dataclass(frozen=True)
class EvalConfig:
    every: int = key(100, "steps between held-out evaluations (also at step 0, at the switch and at the end)")
    batches: int = key(8, "held-out loss scores batches x train.batch_size rows of seq_len+1 tokens from the start "
                          "of the validation split (in training and in `tst eval`)")
    bench: list = key([], "benchmarks to score during training, as `tst eval --bench` names them (e.g. "
                          "[\"hellaswag\", \"arc_easy\"]); written as kind=bench rows")
    bench_limit: int = key(0, "items per benchmark task (each MMLU subject) in training; 0 scores them all")
    bench_every: int = key(1000, "steps between in-loop benchmark evaluations (also at the end)")
    bench_data_dir: str = key("", "benchmark files for eval.bench; empty: as `tst eval` finds them ($TST_EVAL_DATA "
                                  "or ~/.cache/tst/eval, then the Hugging Face hub)")


@dataclass(frozen=True)
class LogConfig:
    tensorboard: bool = key(False, "write every train/val/bench row to TensorBoard event files in tensorboard/ of "
                                   "the run directory (needs tst[tensorboard])")
    wandb: bool = key(False, "log every train/val/bench row to Weights & Biases (needs tst[wandb]; WANDB_MODE="
                             "offline works without network); a resume continues the same W&B run")
    wandb_project: str = key("tst", "W&B project name")


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = key(100, "steps between checkpoints (also at the end)")
    keep: int = key(2, "complete checkpoints to keep (older ones are deleted); 0 keeps all")
    async_: bool = key(True, "write checkpoints in the background: training stops only to copy the state to host "
                       "memory (doubling the host memory a checkpoint takes); the last save of a run is waited for",
                       toml="async")


@dataclass(frozen=True)
class DistributedConfig:
    strategy: str = key("ddp", "under torchrun: ddp replicates the model on every rank; fsdp shards parameters, "
                        "gradients and optimizer state per block (FSDP2); a single process ignores it",
                        ("ddp", "fsdp"))
    activation_checkpointing: str = key("none", "recompute block activations in the backward pass: none, "
                                        "selective (every other block) or full (every block)",
                                        ("none", "selective", "full"))
    backend: str = key("auto", "process-group backend: auto (nccl on GPUs, gloo on CPUs), nccl or gloo",
                       ("auto", "nccl", "gloo"))
    timeout_s: int = key(600, "seconds a collective may wait for the other ranks before the job fails")


@dataclass(frozen=True)
class Recipe:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tst: TstConfig = field(default_factory=TstConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    @functools.cached_property
    def plan(self) -> PhasePlan:
        """The phase plan (steps per phase, row geometry, held-out rows), built once per recipe."""
        return PhasePlan.of(self)

    @property
    def data_dir(self) -> str:
        """data.dir, or data/<run.name>-<8 hex digits of the keys that decide what is prepared>: recipes with other
        sources or another tokenizer never share (and so never replace) each other's prepared data."""
        if self.data.dir:
            return self.data.dir
        # Only keys that differ from their defaults: a later tst adding a data key keeps today's directories.
        defaults = dataclasses.asdict(DataConfig())
        keys = {k: v for k, v in dataclasses.asdict(self.data).items()
                if k not in ("dir", "repeat", "stream") and v != defaults[k]}
        if "mix" in keys:  # weights decide the packing, not what is tokenized: a new weight re-packs the same data
            keys["mix"] = [{"name": e["name"], "sources": e["sources"]} for e in keys["mix"]]
        digest = hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:8]
        return f"data/{self.run.name}-{digest}"


SECTIONS = {f.name: f.type for f in dataclasses.fields(Recipe)}
_SECTION_CLASSES = {f.name: f.default_factory().__class__ for f in dataclasses.fields(Recipe)}


_TABLE_LISTS = {name: {f.name for f in dataclasses.fields(cls) if dataclasses.is_dataclass(f.metadata.get("item"))}
                for name, cls in _SECTION_CLASSES.items()}


def _name(f: dataclasses.Field) -> str:
    """A key's name in recipes: the field's, unless it declares another (a Python keyword such as `async`)."""
    return f.metadata.get("toml") or f.name


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {_name(f): f for f in dataclasses.fields(cls)}


def _type_name(t, item=str) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            list: f"a list of {'strings' if item is str else 'integers'}"}[t]


def _tables(where: str, name: str, cls: type, value: Any) -> list:
    """A list of TOML tables (`[[data.mix]]`), each parsed into a `cls`; keys without a default are required."""
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise RecipeError(f"{where}: key '{name}' must be a list of [[{name}]] tables, got {value!r}")
    if not value:
        raise RecipeError(f"{where}: key '{name}' is empty: give at least one [[{name}]] table ("
                          f"{', '.join(cls.REQUIRED)}) or leave {name} out")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = []
    for i, table in enumerate(value):
        for k in table:
            if k not in fields:
                raise RecipeError(f"{where}: unknown key '{name}[{i}].{k}' (known keys in [[{name}]]: "
                                  f"{', '.join(fields)})")
        for k in cls.REQUIRED:
            if k not in table:
                raise RecipeError(f"{where}: [[{name}]] table {i} ({table.get('name', 'unnamed')!r}) lacks key "
                                  f"'{name}[{i}].{k}'")
        out.append(cls(**{k: _coerce(where, f"{name}[{i}].{k}", fields[k], v) for k, v in table.items()}))
    return out


def _coerce(where: str, name: str, f: dataclasses.Field, value: Any) -> Any:
    item = f.metadata.get("item", str)
    if dataclasses.is_dataclass(item):
        return _tables(where, name, item, value)
    t = {"int": int, "float": float, "bool": bool, "str": str, "list": list}[f.type.removesuffix(" | None")]
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    ok = (isinstance(value, bool) if t is bool else
          is_int(value) if t is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) if t is float else
          isinstance(value, list) and all(is_int(v) if item is int else isinstance(v, str) for v in value)
          if t is list else isinstance(value, str))
    if not ok:
        raise RecipeError(f"{where}: key '{name}' must be {_type_name(t, item)}, got {value!r}")
    if t is float:
        value = float(value)
        if not math.isfinite(value):
            raise RecipeError(f"{where}: key '{name}' must be a finite number, got {value!r}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise RecipeError(f"{where}: key '{name}' must be one of {', '.join(choices)}; got {value!r}")
    return value


def parse_set(item: str) -> tuple[str, Any]:
    """`key.path=value` with TOML value syntax; a bare word is taken as a string."""
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected key.path=value, e.g. --set train.steps=100")
    path, raw = item.split("=", 1)
    path, raw = path.strip(), raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return path, value


def _apply_override(table: dict, path: str, value: Any, where: str) -> None:
    parts = path.split(".")
    if len(parts) != 2 or not all(parts):
        raise RecipeError(f"{where}: override key {path!r} must be section.key, e.g. train.steps")
    table.setdefault(parts[0], {})
    if not isinstance(table[parts[0]], dict):
        raise RecipeError(f"{where}: '{parts[0]}' must be a table")
    table[parts[0]][parts[1]] = value


def from_dict(table: dict, where: str) -> Recipe:
    sections = {}
    for name, value in table.items():
        if name not in _SECTION_CLASSES:
            raise RecipeError(f"{where}: unknown table [{name}] (known: {', '.join(_SECTION_CLASSES)})")
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: '{name}' must be a table [{name}], got {value!r}")
        cls = _SECTION_CLASSES[name]
        fields = _fields(cls)
        kwargs = {}
        for k, v in value.items():
            if k not in fields:
                raise RecipeError(f"{where}: unknown key '{name}.{k}' (known keys in [{name}]: {', '.join(fields)})")
            kwargs[fields[k].name] = _coerce(where, f"{name}.{k}", fields[k], v)
        sections[name] = cls(**kwargs)
    recipe = Recipe(**sections)
    check_values(recipe, where)
    return recipe


def _require(cond: bool, where: str, key_name: str, expected: str, got: Any) -> None:
    if not cond:
        raise RecipeError(f"{where}: key '{key_name}' must be {expected}; got {got!r}")


def check_values(r: Recipe, where: str) -> None:
    t, m, s, d = r.train, r.model, r.tst, r.data
    big = 1 << 40  # far above any real setting, far below what overflows a tensor size or a step counter

    def within(key_name: str, value, lo, hi, lo_open: bool = False, hi_open: bool = False) -> None:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
        _require(ok, where, key_name, f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}", value)

    within("tst.ratio", s.ratio, 0, 1, hi_open=True)
    within("tst.bag_size", s.bag_size, 1, 4096)
    within("tst.alpha", s.alpha, 0, 100)
    if s.loss != "mce":
        _require(s.weighting == "uniform", where, "tst.weighting", f"uniform with tst.loss = {s.loss!r} (a bag is a "
                 "set for bce and hinge: only the multi-hot CE weights its targets)", s.weighting)
    within("train.loss_chunk_size", t.loss_chunk_size, 0, 1 << 20)
    within("train.steps", t.steps, 1, 10 ** 9)
    within("train.batch_size", t.batch_size, 1, 1 << 24)
    within("train.micro_batch_size", t.micro_batch_size, 0, 1 << 24)
    _require(t.batch_size % (t.micro_batch_size or t.batch_size) == 0, where, "train.micro_batch_size",
             f"a divisor of train.batch_size ({t.batch_size})", t.micro_batch_size)
    within("model.max_seq_len", m.max_seq_len, 1, 1 << 22)
    within("train.seq_len", t.seq_len, 1, 1 << 22)
    _require(t.seq_len <= m.max_seq_len, where, "train.seq_len",
             f"<= model.max_seq_len ({m.max_seq_len}), the longest context the model supports", t.seq_len)
    if s.mode == "output":
        _require(s.bag_size <= t.seq_len + 2, where, "tst.bag_size", "<= train.seq_len + 2 in output mode", s.bag_size)
    within("train.lr", t.lr, 0, 1e3, lo_open=True)
    within("train.min_lr_ratio", t.min_lr_ratio, 0, 1)
    within("train.warmup_steps", t.warmup_steps, 0, 10 ** 9)
    within("train.decay_fraction", t.decay_fraction, 0, 1)
    within("train.weight_decay", t.weight_decay, 0, 1e3)
    within("train.beta1", t.beta1, 0, 1, hi_open=True)
    within("train.beta2", t.beta2, 0, 1, hi_open=True)
    within("train.eps", t.eps, 0, 1, lo_open=True)
    within("train.grad_clip", t.grad_clip, 0, 1e9)
    within("train.skip_nonfinite_steps", t.skip_nonfinite_steps, 0, 10 ** 9)
    within("train.log_every", t.log_every, 1, 10 ** 9)
    within("train.threads", t.threads, 0, 4096)
    within("model.dim", m.dim, 1, 1 << 17)
    within("model.n_layers", m.n_layers, 1, 4096)
    within("model.head_dim", m.head_dim, 0, 1 << 14)
    _require(1 <= m.n_heads <= m.dim * 64 and (m.head_dim or m.dim % m.n_heads == 0), where, "model.n_heads",
             f"a divisor of model.dim ({m.dim}) unless model.head_dim is set", m.n_heads)
    _require(m.head_size % 2 == 0 and m.head_size > 0, where, "model.n_heads",
             "such that the head size (model.head_dim, or dim/n_heads) is even (RoPE)", m.n_heads)
    within("model.moe_experts", m.moe_experts, 0, 1 << 14)
    if m.moe_experts:
        within("model.moe_top_k", m.moe_top_k, 1, m.moe_experts)
    within("model.moe_ffn_dim", m.moe_ffn_dim, 0, 1 << 20)
    within("model.moe_shared_ffn_dim", m.moe_shared_ffn_dim, 0, 1 << 20)
    within("model.moe_aux_loss_coef", m.moe_aux_loss_coef, 0, 100)
    within("model.moe_z_loss_coef", m.moe_z_loss_coef, 0, 100)
    _require(0 <= m.n_kv_heads <= m.n_heads and m.n_heads % m.kv_heads == 0, where, "model.n_kv_heads",
             f"a divisor of model.n_heads ({m.n_heads})", m.n_kv_heads)
    within("model.ffn_dim", m.ffn_dim, 0, 1 << 20)
    within("model.rope_theta", m.rope_theta, 0, 1e12, lo_open=True)
    within("model.norm_eps", m.norm_eps, 0, 1, lo_open=True)
    within("model.init_std", m.init_std, 0, 10, lo_open=True)
    _require(1 <= len(d.sources) <= 100_000, where, "data.sources", "a non-empty list", d.sources)
    _require(d.tokenizer.strip() != "", where, "data.tokenizer", "'bpe', a tokenizer.json path or a hub repo id",
             d.tokenizer)
    _require(d.eot_token != "", where, "data.eot_token", "a non-empty token", d.eot_token)
    _require(d.text_field != "", where, "data.text_field", "a non-empty field name", d.text_field)
    _require(all(x.strip() for x in d.sources), where, "data.sources", "a list of non-empty paths", d.sources)
    _require(not d.token_files or d.tokenizer != "bpe", where, "data.tokenizer",
             "the tokenizer that made data.token_files (a tokenizer.json path or a hub repo id), not 'bpe'",
             d.tokenizer)
    _require(not d.token_val_files or bool(d.token_files), where, "data.token_val_files",
             "empty unless data.token_files is set", d.token_val_files)
    within("data.vocab_size", d.vocab_size, 256, 1 << 22)
    within("data.tokenizer_train_chars", d.tokenizer_train_chars, 0, big)
    within("data.val_fraction", d.val_fraction, 0, 1, lo_open=True, hi_open=True)
    within("data.shard_tokens", d.shard_tokens, 1024, 1 << 36)
    within("data.unit_mb", d.unit_mb, 1, 1 << 20)
    _check_mix(r, where)
    within("eval.every", r.eval.every, 1, 10 ** 9)
    within("eval.batches", r.eval.batches, 1, 1 << 20)
    within("checkpoint.every", r.checkpoint.every, 1, 10 ** 9)
    within("checkpoint.keep", r.checkpoint.keep, 0, 1 << 20)
    _require(r.run.name != "" and "/" not in r.run.name and len(r.run.name) <= 200, where, "run.name",
             "a non-empty name without '/', at most 200 characters", r.run.name)
    within("run.seed", r.run.seed, 0, (1 << 63) - 1)
    within("distributed.timeout_s", r.distributed.timeout_s, 1, 10 ** 7)
    _check_side_jobs(r, where)


def _check_mix(r: Recipe, where: str) -> None:
    mix = r.data.mix
    if not mix:
        return
    _require(not r.data.token_files, where, "data.mix", "left out with data.token_files (a mixture tokenizes its "
             "sources)", "[[data.mix]] tables")
    names = [e.name for e in mix]
    for i, e in enumerate(mix):
        k = f"data.mix[{i}]"
        _require(e.name != "" and e.name[0].isalnum() and all(c.isalnum() and c.isascii() or c in "_-." for c in e.name)
                 and len(e.name) <= 64, where, f"{k}.name", f"a name of at most 64 {NAME_CHARS}, starting with a "
                 "letter or digit", e.name)
        _require(names.count(e.name) == 1, where, f"{k}.name", "unique among the [[data.mix]] tables", e.name)
        _require(1 <= len(e.sources) <= 100_000 and all(x.strip() for x in e.sources), where, f"{k}.sources",
                 "a non-empty list of sources", e.sources)
        _require(e.weight > 0, where, f"{k}.weight", "a number > 0", e.weight)
        for p in (1, 2):
            w = getattr(e, f"phase{p}_weight")
            _require(w is None or w >= 0, where, f"{k}.phase{p}_weight", "a number >= 0", w)
    for p, steps in r.plan.phase_steps.items():
        _require(steps == 0 or sum(e.weight_in(p) for e in mix) > 0, where, f"data.mix[].phase{p}_weight",
                 f"> 0 for at least one entry (phase {p} has {steps} steps to fill)", [e.weight_in(p) for e in mix])


def _check_side_jobs(r: Recipe, where: str) -> None:
    e, p = r.eval, r.train.profile_steps
    _require(p == [] or (len(p) == 2 and 1 <= p[0] <= p[1] <= r.train.steps), where, "train.profile_steps",
             f"[] or [first, last] with 1 <= first <= last <= train.steps ({r.train.steps})", p)
    _require(0 <= e.bench_limit <= 1 << 24, where, "eval.bench_limit", "in [0, 16777216]", e.bench_limit)
    _require(1 <= e.bench_every <= 10 ** 9, where, "eval.bench_every", "in [1, 1000000000]", e.bench_every)
    _require(all(x.strip() for x in e.bench), where, "eval.bench", "a list of benchmark names", e.bench)
    _require(r.log.wandb_project.strip() != "", where, "log.wandb_project", "a non-empty project name",
             r.log.wandb_project)


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe file, apply `--set` overrides, validate; every failure is one RecipeError line."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe {path}: no such file")
    try:
        table = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"recipe {path}: invalid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"recipe {path}: cannot read: {e}") from None
    for item in overrides:
        k, v = parse_set(item)
        _apply_override(table, k, v, f"recipe {path} (--set {item})")
    return from_dict(table, f"recipe {path}")


def advisories(r: Recipe) -> list[str]:
    """Settings that are valid but probably not meant (printed as warnings by `tst train`)."""
    out = []
    if r.train.warmup_steps >= r.train.steps:
        out.append(f"train.warmup_steps ({r.train.warmup_steps}) >= train.steps ({r.train.steps}): the learning "
                   "rate never leaves its warmup (no stable phase, no decay); lower train.warmup_steps")
    return out


def to_dict(r: Recipe) -> dict:
    """The recipe as its TOML tables (keys named as in recipes)."""
    return {section: {_name(f): v for f, v in zip(dataclasses.fields(_SECTION_CLASSES[section]), values.values())}
            for section, values in dataclasses.asdict(r).items()}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table; None means "not set"
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise TypeError(v)


def to_toml(r: Recipe) -> str:
    """The resolved recipe as TOML (every key, defaults included), loadable by `load`."""
    out = []
    for section, values in to_dict(r).items():
        out.append(f"[{section}]")
        # An unset list of tables is left out: written as [], it would read as an empty mixture.
        out += [f"{k} = {_toml_value(v)}" for k, v in values.items() if not (k in _TABLE_LISTS.get(section, ()) and
                                                                               v == [])]
        out.append("")
    return "\n".join(out)


def key_table() -> str:
    """Markdown table of every recipe key (kept in the README; a test checks it is current)."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for section, cls in _SECTION_CLASSES.items():
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            doc = f.metadata["doc"]
            if f.metadata.get("choices"):
                doc += f" (one of: {', '.join(f.metadata['choices'])})"
            cells = [f"`{section}.{_name(f)}`", f.type, f"`{_toml_value(default)}`", doc]
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
            item = f.metadata.get("item")
            if dataclasses.is_dataclass(item):  # the keys of each table in the list
                for g in dataclasses.fields(item):
                    need = ("required" if g.name in item.REQUIRED else "`weight`" if g.default is None else
                            f"`{_toml_value(g.default)}`")
                    cells = [f"`{section}.{f.name}[].{g.name}`", g.type, need, g.metadata["doc"]]
                    rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":  # regenerate the key table of recipes/README.md
    print(key_table())
