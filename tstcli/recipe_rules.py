"""The rules that tie recipe keys together (a single key's type, values and bounds are declared with the key and
checked as it is read: `tstcli/keys.py`), and the advisories: settings that are valid but probably not meant."""
from __future__ import annotations

from tstcli.errors import UsageError
from tstcli.files import plain_name
from tstcli.schedule import wsd_decay_start

NAME_CHARS = "letters, digits, '_', '-' and '.'"


def _require(cond: bool, where: str, key_name: str, expected: str, got) -> None:
    if not cond:
        raise UsageError(f"{where}: key '{key_name}' must be {expected}; got {got!r}")


def check(r, where: str) -> None:
    """The rules between keys (a single key's type, values and bounds are checked as it is read)."""
    t, m, s, d = r.train, r.model, r.tst, r.data
    if s.loss != "mce":
        _require(s.weighting == "uniform", where, "tst.weighting", f"uniform with tst.loss = {s.loss!r} (a bag is a "
                 "set for bce and hinge: only the multi-hot CE weights its targets)", s.weighting)
    _require(t.batch_size % (t.micro_batch_size or t.batch_size) == 0, where, "train.micro_batch_size",
             f"a divisor of train.batch_size ({t.batch_size})", t.micro_batch_size)
    _require(t.seq_len <= m.max_seq_len, where, "train.seq_len",
             f"<= model.max_seq_len ({m.max_seq_len}), the longest context the model supports", t.seq_len)
    if s.mode == "output":
        _require(s.bag_size <= t.seq_len + 2, where, "tst.bag_size", "<= train.seq_len + 2 in output mode", s.bag_size)
    _require(1 <= m.n_heads <= m.dim * 64 and (m.head_dim or m.dim % m.n_heads == 0), where, "model.n_heads",
             f"a divisor of model.dim ({m.dim}) unless model.head_dim is set", m.n_heads)
    _require(m.head_size % 2 == 0 and m.head_size > 0, where, "model.n_heads",
             "such that the head size (model.head_dim, or dim/n_heads) is even (RoPE)", m.n_heads)
    if m.moe_experts:
        _require(1 <= m.moe_top_k <= m.moe_experts, where, "model.moe_top_k", f"in [1, {m.moe_experts}]",
                 m.moe_top_k)
    _require(0 <= m.n_kv_heads <= m.n_heads and m.n_heads % m.kv_heads == 0, where, "model.n_kv_heads",
             f"a divisor of model.n_heads ({m.n_heads})", m.n_kv_heads)
    _require(1 <= len(d.sources) <= 100_000, where, "data.sources", "a non-empty list", d.sources)
    _require(all(x.strip() for x in d.sources), where, "data.sources", "a list of non-empty paths", d.sources)
    _require(d.tokenizer.strip() != "", where, "data.tokenizer", "'bpe', a tokenizer.json path or a hub repo id",
             d.tokenizer)
    _require(d.eot_token != "", where, "data.eot_token", "a non-empty token", d.eot_token)
    _require(d.text_field != "", where, "data.text_field", "a non-empty field name", d.text_field)
    _require(r.log.wandb_project.strip() != "", where, "log.wandb_project", "a non-empty project name",
             r.log.wandb_project)
    _require(not d.token_files or d.tokenizer != "bpe", where, "data.tokenizer",
             "the tokenizer that made data.token_files (a tokenizer.json path or a hub repo id), not 'bpe'",
             d.tokenizer)
    _require(not d.token_val_files or bool(d.token_files), where, "data.token_val_files",
             "empty unless data.token_files is set", d.token_val_files)
    _require(plain_name(r.run.name) and len(r.run.name) <= 200, where, "run.name",  # runs/<name>: never above it
             "one plain path component (not '.' or '..', no '/' or '\\'), at most 200 characters", r.run.name)
    p = t.profile_steps
    _require(p == [] or (len(p) == 2 and 1 <= p[0] <= p[1] <= t.steps), where, "train.profile_steps",
             f"[] or [first, last] with 1 <= first <= last <= train.steps ({t.steps})", p)
    _require(all(x.strip() for x in r.eval.bench), where, "eval.bench", "a list of benchmark names", r.eval.bench)
    _require(t.decay_shape == "linear" or t.schedule == "wsd", where, "train.decay_shape",
             "'linear' with train.schedule = 'cosine' (the shape is the wsd decay's)", t.decay_shape)
    problem = anneal_problem(r.train, r.tst.restart_schedule, r.anneal.step, r.anneal.decay_steps)
    if r.anneal.step and problem:
        raise UsageError(f"{where}: key 'anneal.step': {problem}")
    _require(bool(r.anneal.step) or r.anneal.decay_steps == 0, where, "anneal.decay_steps",
             "0 unless anneal.step is set", r.anneal.decay_steps)
    _check_mix(r, where)


def anneal_problem(t, restart_schedule: bool, step: int, decay_steps: int) -> str | None:
    """Why a run with train `t` cannot be annealed from `step` over `decay_steps` steps, or None: the one rule
    `tst anneal` and a recipe's [anneal] table share."""
    if t.schedule != "wsd":
        return f"train.schedule is {t.schedule!r}: only a wsd run has a stable phase to decay from"
    if restart_schedule:
        return "tst.restart_schedule restarts the schedule at the switch: anneal a run without the ablation"
    if decay_steps < 1:
        return f"the decay needs at least 1 step; got {decay_steps}"
    start = wsd_decay_start(t)
    if not t.warmup_steps <= step <= start:
        where = "inside the warmup" if step < t.warmup_steps else "inside the decay"
        return (f"step {step} is {where}: anneal from the stable phase, steps {t.warmup_steps} to {start} "
                f"(train.warmup_steps = {t.warmup_steps}, decay from step {start + 1} of {t.steps})")
    if step + decay_steps > t.steps:
        return (f"step {step} + {decay_steps} decay steps ends past train.steps ({t.steps}), where the run's data "
                "plan ends")
    return None


def _check_mix(r, where: str) -> None:
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


def advisories(r) -> list[str]:
    """Settings that are valid but probably not meant (printed as warnings by `tst train`)."""
    out = []
    if r.train.warmup_steps >= r.train.steps:
        out.append(f"train.warmup_steps ({r.train.warmup_steps}) >= train.steps ({r.train.steps}): the learning "
                   "rate never leaves its warmup (no stable phase, no decay); lower train.warmup_steps")
    return out
