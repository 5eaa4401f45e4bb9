"""`tst sample`: greedy generation equals transformers' `generate` on the same export, sampling is seeded, and the
KV-cache path equals recomputing the whole sequence, for dense and mixture-of-experts models."""
import json
import os
import pty
import subprocess
import sys

import pytest
import torch

from conftest import run_cli, train_small
from test_cli_errors import assert_one_line_error
from tstcli.run.load import load_model
from tstcli.sample.generate import Sampling, filtered_logits, generate

PROMPT = "Call me Ishmael. Some years ago"
MOE = {"model.moe_experts": 4, "model.moe_top_k": 2, "model.moe_ffn_dim": 32, "model.qk_norm": True,
       "model.head_dim": 16, "model.tie_embeddings": False}


@pytest.fixture(scope="module", params=["dense", pytest.param("moe", marks=pytest.mark.slow)])  # moe: its own run
def exported(request, small_data, tmp_path_factory):
    if request.param == "dense":  # conftest's finished SMALL run and its export, only read here
        return request.getfixturevalue("finished_run"), request.getfixturevalue("finished_export")
    tmp = tmp_path_factory.mktemp(f"sample-{request.param}")
    _, run = train_small(small_data, tmp, **MOE)
    r = run_cli("export", run, "--out", tmp / "export")
    assert r.returncode == 0, r.stderr
    return run, tmp / "export"


def _sample(path, *args):
    r = run_cli("sample", path, "--prompt", PROMPT, "--json", *map(str, args))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.slow
def test_greedy_equals_transformers_generate(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    _, export = exported
    ours = _sample(export, "--temperature", 0, "--max-new-tokens", 40)["samples"][0]
    tok = AutoTokenizer.from_pretrained(export)
    hf = AutoModelForCausalLM.from_pretrained(export, torch_dtype=torch.float32).eval()
    ids = tok(PROMPT, add_special_tokens=False, return_tensors="pt").input_ids
    eos = hf.generation_config.eos_token_id
    out = hf.generate(ids, max_new_tokens=40, do_sample=False, eos_token_id=eos, pad_token_id=eos)[0, ids.shape[1]:]
    theirs = out.tolist()
    if theirs and theirs[-1] == eos:  # transformers keeps the end-of-text token; tst stops before it
        theirs = theirs[:-1]
    assert ours["token_ids"] == theirs and len(theirs) > 0
    assert ours["text"] == tok.decode(theirs)


@pytest.mark.slow
def test_a_run_directory_samples_like_its_export(exported):
    run, export = exported
    a = _sample(run, "--temperature", 0, "--max-new-tokens", 20)["samples"]
    b = _sample(export, "--temperature", 0, "--max-new-tokens", 20)["samples"]
    assert a[0]["token_ids"] == b[0]["token_ids"]


@pytest.mark.slow
def test_sampling_is_reproducible_for_a_seed(exported):
    _, export = exported
    args = ("--temperature", 1.0, "--top-k", 50, "--top-p", 0.9, "--max-new-tokens", 25, "--num-samples", 2)
    a = _sample(export, *args, "--seed", 7)["samples"]
    b = _sample(export, *args, "--seed", 7)["samples"]
    c = _sample(export, *args, "--seed", 8)["samples"]
    assert a == b and len(a) == 2
    assert [s["token_ids"] for s in a] != [s["token_ids"] for s in c]
    assert a[0]["token_ids"] != a[1]["token_ids"]  # the samples of one call are independent draws


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_kv_cache_equals_recomputing_the_sequence(exported, temperature):
    _, export = exported
    lm = load_model(export)
    ids = lm.encode(PROMPT)
    s = Sampling(max_new_tokens=30, temperature=temperature)
    cached = generate(lm.model, ids, s, torch.Generator().manual_seed(3), None)
    full = generate(lm.model, ids, s, torch.Generator().manual_seed(3), None, use_cache=False)
    assert cached.token_ids == full.token_ids and len(cached.token_ids) == 30 and cached.stop == "max_new_tokens"


def test_generation_stops_at_the_context_length(exported):
    _, export = exported
    lm = load_model(export)
    ids = lm.encode(PROMPT)
    out = generate(lm.model, ids, Sampling(max_new_tokens=10_000, temperature=1.0), torch.Generator(), None)
    assert out.stop == "context" and len(ids) + len(out.token_ids) == lm.max_len


def test_top_k_and_top_p_filters():
    z = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0])
    kept = lambda s: torch.isfinite(filtered_logits(z, s)).nonzero().flatten().tolist()  # noqa: E731
    assert kept(Sampling(temperature=1.0, top_k=2)) == [0, 1]
    p = torch.softmax(z, 0)
    assert p[0] < 0.7 < p[0] + p[1]
    assert kept(Sampling(temperature=1.0, top_p=0.7)) == [0, 1]  # the smallest set whose mass reaches 0.7
    assert kept(Sampling(temperature=1.0, top_p=0.01)) == [0]  # always at least one
    assert torch.allclose(torch.softmax(filtered_logits(z, Sampling(temperature=2.0)), 0), torch.softmax(z / 2, 0))
    # a temperature so small that z / T overflows: all the mass on the largest logit, never nan
    tiny = torch.softmax(filtered_logits(z, Sampling(temperature=1e-45)), 0)
    assert tiny.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


@pytest.mark.slow
def test_streams_to_a_terminal(exported):
    """On a terminal the prompt and the continuation are written as they come (a pseudo-terminal here)."""
    _, export = exported
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "tstcli", "sample", str(export), "--prompt", PROMPT,
                             "--temperature", "0", "--max-new-tokens", "20"], stdout=follower,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=os.environ.copy())
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    shown = b"".join(chunks).decode().replace("\r\n", "\n")
    expected = _sample(export, "--temperature", 0, "--max-new-tokens", 20)["samples"][0]["text"]
    assert shown == PROMPT + expected + "\n"


@pytest.mark.slow
def test_bad_options_are_one_line_errors(exported, tmp_path):
    _, export = exported
    assert_one_line_error(run_cli("sample", export, "--top-p", "0"), 2, "--top-p")
    assert_one_line_error(run_cli("sample", export, "--prompt", "a", "--prompt-file", tmp_path / "p.txt"), 2,
                          "--prompt-file")
    assert_one_line_error(run_cli("sample", export, "--prompt-file", tmp_path / "missing.txt"), 3, "missing.txt")
    assert_one_line_error(run_cli("sample", tmp_path / "nothing"), 4, "nothing")
    assert_one_line_error(run_cli("sample", export, "--prompt", "word " * 200), 2, "context holds 64")
