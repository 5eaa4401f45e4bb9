"""The export's README.md: a Hugging Face model card recording how the model was trained — the recipe, the TST
settings, raw tokens per phase and the held-out loss, from the exported checkpoint's state."""
from __future__ import annotations

from pathlib import Path

from tstcli import __version__
from tstcli.run import checkpoint, rundir
from tstcli.run.load import RunInfo


def _training_facts(ckpt: Path) -> dict:
    """From the exported checkpoint's own state: `--step` may export one before the run's last metrics row."""
    state = checkpoint.read_state(ckpt)
    return {"steps": state["step"], "tokens_phase1": state["tokens_phase"]["1"],
            "tokens_phase2": state["tokens_phase"]["2"], "final_val_loss": state.get("val_loss")}


def model_card(run: RunInfo, ckpt: Path, architecture: str) -> str:
    front = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags:", "- tst",
             "- token-superposition-training", "---", ""]
    r, facts = run.recipe, _training_facts(ckpt)
    loss = f"{facts['final_val_loss']:.4f}" if facts["final_val_loss"] is not None else "not measured"
    recipe = (run.run_dir / rundir.RECIPE).read_text()
    body = [
        f"# {r.run.name}", "",
        f"A {architecture} model pretrained with [tst](https://arxiv.org/abs/2605.06546) — Token Superposition "
        "Training: for the first part of training, bags of `s` contiguous tokens are averaged into one position and "
        "the model predicts the next bag; then plain next-token training. The result is an ordinary autoregressive "
        "model.", "",
        "| | |", "|---|---|",
        f"| TST | bag size s = {r.tst.bag_size}, ratio {r.tst.ratio}, mode `{r.tst.mode}`, loss `{r.tst.loss}`, "
        f"weighting `{r.tst.weighting}` |",
        f"| steps | {facts['steps']:,} of {r.plan.last_step:,} |",
        f"| raw tokens | {facts['tokens_phase1']:,} in phase 1 (superposition), {facts['tokens_phase2']:,} in "
        "phase 2 (next-token) |",
        f"| held-out loss | {loss} (next-token, the run's validation split, latest at this checkpoint) |",
        f"| checkpoint | `{ckpt}` |",
        f"| exported by | tst {__version__} |", "",
        "## Recipe", "", "```toml", recipe.rstrip(), "```", ""]
    return "\n".join(front + body)
