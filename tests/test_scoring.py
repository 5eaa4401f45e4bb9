"""Log-likelihood scoring with shared contexts: each request's score equals scoring it alone, in a sequence of its
own (the harness's way), to fp32 precision; rows are laid out as documented."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from tstcli.eval import scoring
from tstcli.eval.scoring import batches_of, loglikelihoods, rows_of
from tstcli.model import Llama, llama
from tstcli.recipe import ModelConfig

MAX_LEN = 48
EPS = torch.finfo(torch.float32).eps


def _model(**overrides) -> Llama:
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=MAX_LEN, **overrides)
    model = Llama(cfg, 97)
    model.init_weights(torch.Generator().manual_seed(0))
    return model.eval()


def _requests(rnd: random.Random) -> list[tuple[list[int], list[int]]]:
    """Shared contexts with 1–5 continuations each (some one token, some repeated), contexts the window cuts,
    an empty context, and requests alone."""
    def toks(n):
        return [rnd.randrange(97) for _ in range(n)]
    out = []
    for _ in range(12):
        ctx = toks(rnd.randrange(1, 30))
        conts = [toks(rnd.randrange(1, 9)) for _ in range(rnd.randrange(1, 6))]
        out += [(ctx, c) for c in conts + conts[:1]]  # the first continuation twice: two requests, one branch
    out += [(toks(MAX_LEN + 5), toks(3)), (toks(MAX_LEN - 2), toks(4)), ([], toks(5)), (toks(3), toks(MAX_LEN + 9))]
    rnd.shuffle(out)
    return out


@torch.no_grad()
def _alone(model: Llama, ctx: list[int], cont: list[int]) -> float:
    """The harness's way: the request's own window, causal, the continuation's last positions."""
    whole = (ctx + cont)[-(MAX_LEN + 1):]
    inp = torch.tensor([whole[:-1]])
    n = min(len(cont), inp.shape[1])
    logp = F.log_softmax(model.logits(model(input_ids=inp))[0, -n:], dim=-1)
    return logp.gather(-1, torch.tensor(cont[-n:])[:, None]).sum().item()


@pytest.mark.parametrize("overrides", [{}, {"qk_norm": True, "moe_experts": 4, "moe_top_k": 2}],
                         ids=["dense", "moe"])
@pytest.mark.parametrize("chunk_rows", [None, 7], ids=["one-chunk", "7-position-chunks"])
@pytest.mark.parametrize("query_chunk", [64, 5], ids=["rows-in-one-attention-call", "5-query-attention-calls"])
def test_shared_contexts_score_as_if_alone(overrides, chunk_rows, query_chunk, monkeypatch):
    if chunk_rows:  # the output head and log-softmax a few positions at a time
        monkeypatch.setattr(scoring, "logits_per_chunk", lambda device: 97 * chunk_rows)
    monkeypatch.setattr(llama, "QUERY_CHUNK", query_chunk)  # rows here are <= 48 positions: 5 splits them
    model, requests = _model(**overrides), _requests(random.Random(1))
    got = loglikelihoods(model, requests, MAX_LEN, batch_size=5)
    for (ctx, cont), ll in zip(requests, got):
        ref = _alone(model, ctx, cont)
        # fp32: a sum of len(cont) log-probabilities, each off by a few ulps of the logits it came from
        assert abs(ll - ref) <= 64 * EPS * (abs(ref) + len(cont)), (ctx, cont, ll, ref)


@pytest.mark.parametrize("cached", [0, 40], ids=["no-cache", "after-40-cached-positions"])
def test_attention_in_query_chunks_equals_one_call(cached):
    """Under an explicit mask, inference computes QUERY_CHUNK queries at a time against the keys up to the last
    of them: a mask never lets a query see a later key, so the outputs are one call's over every key."""
    g = torch.Generator().manual_seed(0)
    B, H, T, d = 3, 4, 150, 16
    q = torch.randn(B, H, T, d, generator=g)
    k, v = (torch.randn(B, H, cached + T, d, generator=g) for _ in range(2))
    segment = torch.randint(0, 3, (B, cached + T), generator=g).sort(dim=1).values  # documents in a row
    seen = (segment[:, cached:, None] == segment[:, None, :]) & torch.ones(T, cached + T).tril(cached).bool()
    mask = torch.zeros(seen.shape).masked_fill_(~seen, float("-inf"))[:, None]
    full = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    chunked = llama.causal_chunks(q, k, v, mask).transpose(1, 2)  # (B, T, H, d): the layout wo reads
    assert torch.allclose(chunked, full, rtol=0, atol=16 * EPS), (chunked - full).abs().max()


def test_each_scored_position_goes_through_the_head_once():
    """A question's choices all start at its context's last position: the head and log-softmax see it once."""
    model, seen = _model(), []
    head = model.logits
    model.logits = lambda h: seen.append(len(h)) or head(h)
    ctx, conts = list(range(1, 11)), [[20, 21, 22], [30, 31], [40], [50, 51, 52, 53]]
    got = loglikelihoods(model, [(ctx, c) for c in conts], MAX_LEN, batch_size=8)
    assert sum(seen) == 1 + sum(len(c) - 1 for c in conts)  # the context's last position, then each branch's
    for c, ll in zip(conts, got):
        ref = _alone(model, ctx, c)
        assert abs(ll - ref) <= 64 * EPS * (abs(ref) + len(c))


def test_rows_hold_each_context_once_and_never_pass_the_window():
    ctx, conts = list(range(10)), [[20, 21, 22], [30], [40, 41], [20, 21, 22]]
    rows = rows_of([(ctx, c) for c in conts], MAX_LEN)
    assert len(rows) == 1 and rows[0].prefix == tuple(ctx)
    assert list(rows[0].branches) == [(20, 21), (), (40,)]  # a continuation's inputs: all but its last token
    assert len(rows[0]) == 10 + 2 + 0 + 1 and not rows[0].plain
    assert [i for reqs in rows[0].branches.values() for _, i in reqs] == [0, 3, 1, 2]
    # more continuations than the window holds: the same prefix again in another row, each within the window
    many = rows_of([(ctx, [50 + k] * 12) for k in range(10)], MAX_LEN)
    assert len(many) > 1 and all(r.prefix == tuple(ctx) and len(r) <= MAX_LEN for r in many)
    assert sum(len(r.branches) for r in many) == 10
    # a context the window cuts is its own plain input; MMLU-like one-token choices are one plain row
    cut = rows_of([(list(range(MAX_LEN + 3)), [7, 8])], MAX_LEN)
    assert cut[0].plain and len(cut[0]) == MAX_LEN
    mmlu = rows_of([(ctx, [c]) for c in (1, 2, 3, 4)], MAX_LEN)
    assert len(mmlu) == 1 and mmlu[0].plain and list(mmlu[0].branches) == [()]


def test_batches_are_longest_first():
    requests = _requests(random.Random(2))
    lengths = [len(r) for b in batches_of(requests, MAX_LEN, 4) for r in b]
    assert lengths == sorted(lengths, reverse=True)


def test_scoring_runs_fp32_linear_layers_through_onednn_with_the_same_numbers():
    """In fp32 on a CPU scoring sends `F.linear` to oneDNN (`cpu_linear.py`): the profiler sees oneDNN's linear
    and no MKL `mm`, the scores equal the plain path's to fp32 precision, and other dtypes are left alone."""
    from torch.profiler import ProfilerActivity, profile

    from tstcli.eval.cpu_linear import cpu_linear
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN: scoring keeps F.linear")
    model, requests = _model(), _requests(random.Random(2))
    with profile(activities=[ProfilerActivity.CPU]) as p:
        fast = loglikelihoods(model, requests, MAX_LEN, batch_size=5)
    ops = {e.key for e in p.key_averages()}
    assert "mkldnn::_linear_pointwise" in ops and "aten::mm" not in ops, sorted(ops)
    with torch.no_grad():
        x, w = torch.randn(7, 64), torch.randn(32, 64)
        with cpu_linear(torch.device("cpu"), torch.float32):
            onednn = F.linear(x, w)
        assert torch.allclose(onednn, F.linear(x, w), rtol=0, atol=64 * EPS * F.linear(x, w).abs().max().item())
        with profile(activities=[ProfilerActivity.CPU]) as p, cpu_linear(torch.device("cpu"), torch.bfloat16):
            F.linear(x.bfloat16(), w.bfloat16())
        assert "mkldnn::_linear_pointwise" not in {e.key for e in p.key_averages()}
    for (ctx, cont), ll in zip(requests, fast):
        ref = _alone(model, ctx, cont)
        assert abs(ll - ref) <= 64 * EPS * (abs(ref) + len(cont)), (ctx, cont, ll, ref)
