"""The recipe: a TOML file parsed once into frozen dataclasses. Every key is declared here, once, with its type,
default, meaning, values, bounds and resume-neutrality (`keys.key`): the key table of recipes/README.md, the checks
of single values and the keys a resume may change derive from it (`tstcli/keys.py`); `tstcli/binder.py` reads and
writes the TOML, `tstcli/recipe_rules.py` ties keys together. Nothing below the CLI reads TOML."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import ClassVar

from tstcli import binder, keys, recipe_rules
from tstcli.keys import Range, key
from tstcli.phases import PhasePlan
from tstcli.recipe_rules import NAME_CHARS


@dataclass(frozen=True)
class RunConfig:
    name: str = key("run", "run name; the default run directory is runs/<name>")
    seed: int = key(0, "seed for initialisation, the phase split of the data and the row order", within=(0, 2**63 - 1))
    device: str = key("auto", "auto (cuda when available, else cpu), cpu or cuda", ("auto", "cpu", "cuda"))


@dataclass(frozen=True)
class MixEntry:
    """One `[[data.mix]]` table: a named group of sources and its share of each phase's tokens."""
    REQUIRED: ClassVar[tuple] = ("name", "sources", "weight")
    name: str = key("", "the entry's name: in shard file names, the coverage report and `mix_tokens` ("
                    + NAME_CHARS + ")")
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
                          "`train --dry-run` assumes when that tokenizer is not available locally",
                          within=(256, 1 << 22))
    tokenizer_train_chars: int = key(10_000_000, "train the BPE on a uniform sample of the training documents "
                                     "holding at most this many characters; 0 uses them all", within=(0, 1 << 40))
    eot_token: str = key("<|endoftext|>", "end-of-text token separating documents (must exist in a loaded tokenizer)")
    val_fraction: float = key(0.02, "fraction of documents held out for validation (split by document)",
                              within=Range(0, 1, lo_open=True, hi_open=True))
    shard_tokens: int = key(1 << 26, "tokens per shard file", within=(1024, 1 << 36))
    token_files: list = key([], "already tokenized training data: flat token files (nanoGPT's train.bin: raw "
                            "uint16/uint32 ids, documents separated by data.eot_token; datatrove's X.ds, documents "
                            "ended by its X.ds.index), registered without "
                            "re-tokenizing; needs data.tokenizer (not bpe); data.sources is then unused")
    token_val_files: list = key([], "with data.token_files: the validation split's token files (nanoGPT's val.bin); "
                                "empty takes the last data.val_fraction of data.token_files, cut at a document end")
    token_dtype: str = key("uint16", "with data.token_files: the files' token type", ("uint16", "uint32"))
    repeat: bool = key(True, "allow a phase to re-read its rows (new epoch, new order) when the corpus is too short")
    unit_mb: int = key(256, "tst prepare's work units: consecutive files of about this many MB together, a large "
                       "Parquet file cut into row groups of about this size; each unit is tokenized into its own "
                       "shards", within=(1, 1 << 20))
    stream: bool = key(False, "hub sources: download, tokenize and delete one file at a time (disk: the files being "
                       "read plus the shards) instead of keeping every file in the hub cache; the data is the same")
    mix: list = key([], "weighted mixture: [[data.mix]] tables (keys below), each a named group of sources with a "
                    "share of every phase's tokens; data.sources is then unused", item=MixEntry)


@dataclass(frozen=True)
class ModelConfig:
    dim: int = key(128, "hidden size", within=(1, 1 << 17))
    n_layers: int = key(4, "transformer blocks", within=(1, 4096))
    n_heads: int = key(4, "attention heads")
    n_kv_heads: int = key(0, "key/value heads for grouped-query attention; 0 means n_heads")
    ffn_dim: int = key(0, "SwiGLU intermediate size; 0 means 8/3·dim rounded up to a multiple of 64",
                       within=(0, 1 << 20))
    max_seq_len: int = key(2048, "longest context the model supports (RoPE positions)", within=(1, 1 << 22))
    rope_theta: float = key(10000.0, "RoPE base", within=Range(0, 1e12, lo_open=True))
    norm_eps: float = key(1e-5, "RMSNorm epsilon", within=Range(0, 1, lo_open=True))
    tie_embeddings: bool = key(True, "share the input embedding and the output head")
    init_std: float = key(0.02, "standard deviation of the initial weights", within=Range(0, 10, lo_open=True))
    head_dim: int = key(0, "attention head size; 0 means dim / n_heads (Qwen3 uses 128 whatever the width)",
                        within=(0, 1 << 14))
    qk_norm: bool = key(False, "RMSNorm on each head's queries and keys before RoPE (Qwen3)")
    moe_experts: int = key(0, "mixture of experts: routed SwiGLU experts per block (Qwen3-MoE style); 0 is dense",
                           within=(0, 1 << 14))
    moe_top_k: int = key(2, "experts each token is routed to (softmax router, top-k)")
    moe_ffn_dim: int = key(0, "intermediate size of one expert; 0 means model.ffn_dim's rule", within=(0, 1 << 20))
    moe_norm_topk: bool = key(True, "renormalise the top-k routing weights to sum to 1 (Qwen3's norm_topk_prob)")
    moe_shared_ffn_dim: int = key(0, "intermediate size of a shared expert every token also goes through; 0: none",
                                  within=(0, 1 << 20))
    moe_aux_loss_coef: float = key(0.001, "weight of the load-balancing loss E·Σ f_e·P_e (Switch/Qwen3 form)",
                                   within=(0, 100))
    moe_z_loss_coef: float = key(0.0, "weight of the router z-loss mean(logsumexp(router logits)^2)", within=(0, 100))
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
    steps: int = key(300, "optimizer steps in all (phase 1 + phase 2)", within=(1, 10 ** 9))
    batch_size: int = key(16, "rows per optimizer step (global batch); each row is seq_len latent positions",
                          within=(1, 1 << 24))
    micro_batch_size: int = key(0, "rows per forward/backward on one device; 0 means all of the device's share of "
                                "batch_size (no gradient accumulation)", within=(0, 1 << 24))
    seq_len: int = key(128, "latent positions per row (L)", within=(1, 1 << 22))
    lr: float = key(3e-3, "peak learning rate", within=Range(0, 1e3, lo_open=True))
    min_lr_ratio: float = key(0.0, "learning rate at the end of the decay, as a fraction of lr", within=(0, 1))
    schedule: str = key("wsd", "wsd (warmup-stable-decay) or cosine (warmup then cosine decay)", ("wsd", "cosine"))
    warmup_steps: int = key(30, "linear warmup steps", within=(0, 10 ** 9))
    decay_fraction: float = key(0.1, "wsd: fraction of steps in the final decay", within=(0, 1))
    decay_shape: str = key("linear", "wsd: decay shape: linear, sqrt (1 - √t) or cosine", ("linear", "sqrt", "cosine"))
    optimizer: str = key("adamw", "adamw, or muon: Muon for the blocks' weight matrices (an MoE expert one matrix), "
                         "AdamW for embeddings, head, norms and the MoE router", ("adamw", "muon"))
    muon_lr: float = key(0.02, "muon: peak learning rate of the Muon matrices", within=Range(0, 1e3, lo_open=True))
    muon_momentum: float = key(0.95, "muon: Nesterov momentum of the Muon matrices", within=Range(0, 1, hi_open=True))
    muon_weight_decay: float = key(0.0, "muon: decoupled weight decay of the Muon matrices", within=(0, 1e3))
    weight_decay: float = key(0.1, "AdamW decoupled weight decay (matrices only)", within=(0, 1e3))
    beta1: float = key(0.9, "AdamW beta1", within=Range(0, 1, hi_open=True))
    beta2: float = key(0.95, "AdamW beta2", within=Range(0, 1, hi_open=True))
    eps: float = key(1e-8, "AdamW epsilon", within=Range(0, 1, lo_open=True))
    grad_clip: float = key(1.0, "clip the global gradient norm to this; 0 disables clipping", within=(0, 1e9))
    skip_nonfinite_steps: int = key(0, "skip up to this many steps whose loss or gradient norm is not finite "
                                    "(logged as kind=skip); 0 stops the run at the first (exit 5)", within=(0, 10 ** 9))
    dtype: str = key("auto", "compute dtype: bf16 autocast over fp32 weights, or fp32; auto: bf16 where the device "
                             "computes bf16 natively (CUDA with bf16, a CPU with AVX512-BF16 or AMX), fp32 elsewhere, "
                             "resolved once by tst train and written into the run's recipe", ("auto", "bf16", "fp32"))
    compile: bool = key(True, "torch.compile the training and evaluation steps")
    attention: str = key("causal", "causal, or document: attend only to earlier positions of the same document, RoPE "
                         "positions restarting per document (training, held-out loss)", ("causal", "document"))
    float8: bool = key(False, "float8 matmuls in the blocks' linear layers through torchao (tst[float8]; NVIDIA GPUs "
                       "of compute capability 8.9+: H100/H200); the LM head and the TST embedding mean stay bf16/fp32")
    loss_chunk_size: int = key(512, "positions whose logits exist at once in the chunked loss (never all B x L x V); "
                               "0: the full logits (the reference path)", within=(0, 1 << 20))
    log_every: int = key(10, "steps between reads of the steps' losses and gradient norms from the device (the "
                         "only time the host waits for it; each step keeps its row) and between progress lines when "
                         "not on a terminal", within=(1, 10 ** 9), neutral=True)
    threads: int = key(0, "CPU threads for torch; 0 leaves torch's default", within=(0, 4096))
    profile_steps: list = key([], "[first, last]: record steps first..last with torch.profiler and write a Chrome "
                              "trace (Perfetto, TensorBoard) to profile/ in the run directory; [] records nothing",
                              item=int, neutral=True)

    def rows_per_micro_batch(self, world_size: int) -> int:
        """Rows per forward/backward on each of `world_size` devices (train.batch_size is the global batch)."""
        return self.micro_batch_size or self.batch_size // world_size


@dataclass(frozen=True)
class TstConfig:
    bag_size: int = key(4, "s: tokens per bag in phase 1; 1 is plain next-token training", within=(1, 4096))
    ratio: float = key(0.3, "fraction of steps in phase 1 (superposition), in [0, 1)", within=Range(0, 1, hi_open=True))
    mode: str = key("full", "full: bag input + next-bag target; input: bag input + next token; "
                    "output: token input + next-s-tokens target", ("full", "input", "output"))
    weighting: str = key("uniform", "multi-hot target weights: uniform 1/s, or power (j+1)^-alpha normalised",
                         ("uniform", "power"))
    alpha: float = key(1.0, "exponent of the power weighting", within=(0, 100))
    loss: str = key("mce", "phase-1 loss: mce (multi-hot cross-entropy); bce (binary CE over the vocabulary) and hinge "
                    "(multi-label margin) are the paper's negative ablations; phase 2 is always cross-entropy",
                    ("mce", "bce", "hinge"))
    reinit_embedding: bool = key(False, "ablation: re-initialise the input embedding at the switch")
    reinit_head: bool = key(False, "ablation: re-initialise the output head at the switch")
    reset_optimizer: bool = key(False, "ablation: reset the optimizer state at the switch (patch-level training)")
    restart_schedule: bool = key(False, "ablation: restart the learning-rate schedule (warmup included) at the switch")
    bag_boundaries: str = key("cross", "cross: bags run across end-of-text tokens (the paper's); document: each "
                              "document cut into bags on its own, a short last bag dropped", ("cross", "document"))


@dataclass(frozen=True)
class AnnealConfig:
    step: int = key(0, "0: not an anneal; N (written by `tst anneal`): continue a wsd run's stable phase from step N, "
                    "decay over anneal.decay_steps steps and end there", within=(0, 10 ** 9))
    decay_steps: int = key(0, "steps of an anneal's decay (train.decay_shape, to min_lr_ratio)", within=(0, 10 ** 9))


@dataclass(frozen=True)
class EvalConfig:
    every: int = key(100, "steps between held-out evaluations (also at step 0, at the switch and at the end)",
                     within=(1, 10 ** 9), neutral=True)
    batches: int = key(8, "held-out loss scores batches x train.batch_size rows of seq_len+1 tokens drawn evenly "
                          "across the validation split (in training and in `tst eval`)", within=(1, 1 << 20),
                       neutral=True)
    bench: list = key([], "benchmarks to score during training, as `tst eval --bench` names them (e.g. "
                          "[\"hellaswag\", \"arc_easy\"]); written as kind=bench rows", neutral=True)
    bench_limit: int = key(0, "items per benchmark task (each MMLU subject) in training; 0 scores them all",
                           within=(0, 1 << 24), neutral=True)
    bench_every: int = key(1000, "steps between in-loop benchmark evaluations (also at the end)",
                           within=(1, 10 ** 9), neutral=True)
    bench_data_dir: str = key("", "benchmark files for eval.bench; empty: as `tst eval` finds them ($TST_EVAL_DATA "
                                  "or ~/.cache/tst/eval, then the Hugging Face hub)", neutral=True)


@dataclass(frozen=True)
class LogConfig:
    tensorboard: bool = key(False, "write every train/val/bench row to TensorBoard event files in tensorboard/ of "
                                   "the run directory (needs tst[tensorboard])", neutral=True)
    wandb: bool = key(False, "log every train/val/bench row to Weights & Biases (needs tst[wandb]; WANDB_MODE="
                             "offline works without network); a resume continues the same W&B run", neutral=True)
    wandb_project: str = key("tst", "W&B project name", neutral=True)


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = key(100, "steps between checkpoints (also at the end)", within=(1, 10 ** 9), neutral=True)
    keep: int = key(2, "complete checkpoints to keep (older ones are deleted); 0 keeps all",
                    within=(0, 1 << 20), neutral=True)
    async_: bool = key(True, "write checkpoints in the background: training stops only to copy the state to host "
                       "memory (doubling the host memory a checkpoint takes); the last save of a run is waited for",
                       toml="async", neutral=True)


@dataclass(frozen=True)
class DistributedConfig:
    strategy: str = key("ddp", "under torchrun: ddp replicates the model on every rank; fsdp shards parameters, "
                        "gradients and optimizer state per block (FSDP2); a single process ignores it",
                        ("ddp", "fsdp"), neutral=True)
    activation_checkpointing: str = key("none", "recompute block activations in the backward pass: none, "
                                        "selective (every other block) or full (every block)",
                                        ("none", "selective", "full"), neutral=True)
    backend: str = key("auto", "process-group backend: auto (nccl on GPUs, gloo on CPUs), nccl or gloo",
                       ("auto", "nccl", "gloo"), neutral=True)
    timeout_s: int = key(600, "seconds a collective may wait for the other ranks before the job fails",
                         within=(1, 10 ** 7), neutral=True)


@dataclass(frozen=True)
class Recipe:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tst: TstConfig = field(default_factory=TstConfig)
    anneal: AnnealConfig = field(default_factory=AnnealConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    @functools.cached_property
    def plan(self) -> PhasePlan:
        """The phase plan (steps per phase, row geometry, held-out rows), built once per recipe."""
        return PhasePlan.of(self)


def from_dict(table: dict, where: str) -> Recipe:
    recipe = binder.bind(table, Recipe, where)
    recipe_rules.check(recipe, where)
    return recipe


def load(path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe file, apply `--set` overrides, validate; every failure is one UsageError line."""
    return from_dict(binder.read(path, overrides), f"recipe {path}")


def to_dict(r: Recipe) -> dict:
    """The recipe as its TOML tables (keys named as in recipes)."""
    return binder.to_dict(r)


def to_toml(r: Recipe) -> str:
    """The resolved recipe as TOML (every key, defaults included), loadable by `load`."""
    return binder.to_toml(r)


def key_table() -> str:
    """Markdown table of every recipe key (recipes/README.md; a test checks it is current)."""
    return keys.table(Recipe)


NEUTRAL_KEYS = keys.neutral(Recipe)  # the keys a resume may change (declared `neutral=True` above)


if __name__ == "__main__":  # regenerate the key table of recipes/README.md
    print(key_table())
