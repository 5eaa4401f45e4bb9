"""Documents as units: `train.attention = "document"` (block-causal attention, RoPE restarting per document) and
`tst.bag_boundaries = "document"` (bags cut per document, a short last bag dropped, cross-document targets not
scored). Exactness against plain references: a row of two documents against each alone, the vectorised bags
against a loop over the documents of real packed rows, the masked chunked loss against the full-logits loss."""
import json
from pathlib import Path

import pytest
import torch

from conftest import SHARED, resumed_from, run_cli, small_recipe, write_recipe
from test_resume import SHARD, assert_same_tensors, train_losses
from tstcli.data.opener import open_data
from tstcli.model import Llama
from tstcli.model import documents as docs
from tstcli.phases import PhaseSpec
from tstcli.prep.prepare import prepare
from tstcli.recipe import ModelConfig
from tstcli.tst import LossSpec, arrange, head_loss
from tstcli.tst.loss import reference_loss

KJV = Path(__file__).resolve().parents[1] / "tstcli" / "corpus" / "kjv.txt.gz"  # 1,189 chapters, one per document


def _model(**cfg) -> Llama:
    m = Llama(ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=256, **cfg), 300)
    m.init_weights(torch.Generator().manual_seed(0))
    return m.eval()


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("qk_norm", [False, True], ids=["llama", "qwen3"])
def test_a_row_of_two_documents_gives_each_its_logits_alone(compiled, qk_norm):
    """Positions restart at each document (the chosen RoPE rule), so B's logits are those of B alone from
    position 0, to fp32 rounding."""
    m = _model(qk_norm=qk_norm)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randint(1, 300, (1, 70), generator=g), torch.randint(1, 300, (1, 58), generator=g)
    documents = torch.cat([torch.zeros(1, 70), torch.ones(1, 58)], 1).long()
    run = torch.compile(m) if compiled else m
    with torch.no_grad():
        both = m.logits(run(input_ids=torch.cat([a, b], 1), documents=documents))
        alone_a, alone_b = m.logits(m(input_ids=a)), m.logits(m(input_ids=b))
        plain = m.logits(m(input_ids=torch.cat([a, b], 1)))
    assert (both[:, :70] - alone_a).abs().max() <= 1e-5
    assert (both[:, 70:] - alone_b).abs().max() <= 1e-5
    assert (plain[:, 70:] - alone_b).abs().max() > 1e-2, "causal attention does see A from B"


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_attention_block_mask_equals_the_sdpa_mask():
    """The CUDA path (flex_attention with a BlockMask) computes what the SDPA mask does; run here on the CPU."""
    m = _model()
    ids = torch.randint(1, 300, (2, 96), generator=torch.Generator().manual_seed(2))
    documents = torch.tensor([[0] * 10 + [1] * 50 + [2] * 36, [0] * 96])
    with torch.no_grad():
        sdpa = m(input_ids=ids, documents=documents)
        flex = m(input_ids=ids, positions=docs.document_positions(documents), mask=docs.block_mask(documents))
    assert (sdpa - flex).abs().max() <= 1e-5
    assert docs.document_positions(documents)[0, 8:12].tolist() == [8, 9, 0, 1]
    kept = docs.kept_pairs(documents).item()  # (10·11 + 50·51 + 36·37)/2 + 96·97/2 over 2 · 96·97/2
    assert kept == pytest.approx((55 + 1275 + 666 + 4656) / (2 * 4656))


def bags_by_loops(row: list[int], s: int, L: int, eot: int, mode: str):
    """The reference: split the row at end-of-text tokens (each ends its document), cut every document into bags
    of s from its start, drop a short last bag; position i's target is bag i+1 if of the same document."""
    stretches, cur = [], []
    for t in row:
        cur.append(t)
        if t == eot:
            stretches.append(cur)
            cur = []
    if cur:
        stretches.append(cur)
    bags = [(d, piece[i:i + s]) for d, piece in enumerate(stretches) for i in range(0, len(piece) - s + 1, s)]
    bags = bags[:L + 1]
    inputs, targets, scored = [], [], []
    for i in range(L):
        if i < len(bags):
            inputs.append(bags[i][1])
            ok = i + 1 < len(bags) and bags[i + 1][0] == bags[i][0]
            target = bags[i + 1][1] if i + 1 < len(bags) else [eot] * s
        else:
            inputs.append([eot] * s)
            ok, target = False, [eot] * s
        targets.append(target if mode == "full" else target[:1])
        scored.append(ok)
    return inputs, targets, scored, len(row) - s * len(bags)


@pytest.fixture(scope="module")
def kjv_rows(tmp_path_factory):
    """The phase-1 rows of a real corpus with many documents (KJV chapters), as the loader packs them."""
    d = tmp_path_factory.mktemp("kjv")
    r = small_recipe(d, **{"data.sources": [str(KJV)], "tst.bag_size": 4, "train.seq_len": 48,
                           "model.max_seq_len": 64, "train.steps": 40, "tst.ratio": 0.5, "train.batch_size": 8})
    prepare(r.data, d, log=lambda *_: None)
    data, _ = open_data(r, d)
    loader = data.loaders(r.plan, r.run.seed)[1]
    rows = torch.from_numpy(__import__("numpy").concatenate([loader.batch(i)[0] for i in range(20)]))
    return r, rows.long(), data.manifest["tokenizer"]["eot_id"]


@pytest.mark.parametrize("mode", ["full", "input"])
def test_document_bags_equal_the_loop_reference_on_real_rows(kjv_rows, mode):
    r, rows, eot = kjv_rows
    s, L = 4, r.train.seq_len
    spec = PhaseSpec(mode, s, L)
    a = arrange(rows, spec, eot, "document", "document")
    assert (rows == eot).sum() > 20, "the rows hold many document ends"
    dropped = 0
    for j, row in enumerate(rows.tolist()):
        inputs, targets, scored, drop = bags_by_loops(row, s, L, eot, mode)
        assert a.inputs[j].tolist() == inputs and a.scored[j].tolist() == scored
        assert [t for t, ok in zip(a.targets[j].tolist(), scored) if ok] == [t for t, ok in zip(targets, scored) if ok]
        dropped += drop
    assert a.dropped.item() == pytest.approx(dropped / rows.numel(), rel=1e-5)  # a float32 share
    # and the property itself: no input bag and no scored target holds tokens of two documents
    real = a.documents < rows.shape[1]  # padding positions (each its own document, numbered from W) aside
    for j in range(len(rows)):
        for i in range(L):
            bag = a.inputs[j, i].tolist()
            if real[j, i]:
                assert eot not in bag[:-1], "an end-of-text token only ever ends a bag"
            if a.scored[j, i]:
                assert real[j, i] and eot not in bag, "a scored bag does not end its document: the next continues it"
                assert eot not in a.targets[j, i].tolist()[:-1]


def test_output_mode_scores_no_window_past_its_document(kjv_rows):
    r, rows, eot = kjv_rows
    L, s = r.train.seq_len, 4
    wide = torch.cat([rows, rows[:, :s]], 1)[:, :L + s]  # an output-mode row covers L + s tokens
    a = arrange(wide, PhaseSpec("output", s, L), eot, "causal", "document")
    for j in range(len(wide)):
        for i in range(L):
            window = wide[j, i + 1:i + s + 1].tolist()
            crosses = wide[j, i].item() == eot or eot in window[:-1]
            assert bool(a.scored[j, i]) == (not crosses)


def test_masked_chunked_loss_equals_the_full_logits_reference():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(2, 40, 16, generator=g, dtype=torch.float64)
    W = torch.randn(50, 16, generator=g, dtype=torch.float64)
    t = torch.randint(0, 50, (2, 40, 3), generator=g)
    keep = torch.rand(2, 40, generator=g) > 0.3
    for kind in ("mce", "bce", "hinge"):
        hc, Wc = h.clone().requires_grad_(), W.clone().requires_grad_()
        hr, Wr = h.clone().requires_grad_(), W.clone().requires_grad_()
        chunked = head_loss(hc, Wc, t, LossSpec(kind, None, 7), keep)
        ref = reference_loss(kind, hr @ Wr.T, t, None, keep)
        chunked.backward()
        ref.backward()
        assert torch.allclose(chunked, ref, atol=1e-12) and torch.allclose(hc.grad, hr.grad, atol=1e-12)
        assert torch.allclose(Wc.grad, Wr.grad, atol=1e-12)
        assert hc.grad[~keep].abs().max() == 0, "an unscored position gets no gradient"
        full = reference_loss(kind, h @ W.T, t)
        per = [reference_loss(kind, (h @ W.T)[i, j][None], t[i, j][None]) for i in range(2) for j in range(40)]
        assert ref.item() == pytest.approx(sum(p for p, k in zip(per, keep.flatten()) if k).item() / 80)
        assert full.item() == pytest.approx(sum(per).item() / 80)


@pytest.fixture(scope="module")
def kjv_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("kjv-data")
    prepare(small_recipe(d, **{"data.sources": [str(KJV)]}).data, d, log=lambda *_: None)
    return d


def _rows(run, kind="train"):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if json.loads(l)["kind"] == kind]


def _train(kjv_data, tmp: Path, attention: str, bags: str):
    recipe = write_recipe(tmp / "r.toml", small_recipe(kjv_data, **{
        "data.sources": [str(KJV)], "train.attention": attention, "tst.bag_boundaries": bags}))
    r = run_cli("train", recipe, "--run-dir", tmp / "a")
    assert r.returncode == 0, r.stderr
    return attention, bags, recipe, tmp / "a"


@pytest.fixture(scope="module", params=[("document", "cross"), ("causal", "document"), ("document", "document")],
                ids=["attention", "bags", "both"])
def doc_run(kjv_data, tmp_path_factory, request):
    return _train(kjv_data, tmp_path_factory.mktemp("docrun"), *request.param)


@pytest.fixture(scope="module")
def both_run(kjv_data, tmp_path_factory):
    """Both settings in one run: what the torchrun and export tests need (each costs seconds: one run, not three)."""
    return _train(kjv_data, tmp_path_factory.mktemp("both"), "document", "document")


def test_train_rows_say_what_is_in_effect(doc_run):
    attention, bags, _, run = doc_run
    p1 = [x for x in _rows(run) if x["phase"] == 1]
    p2 = [x for x in _rows(run) if x["phase"] == 2]
    if attention == "document":
        assert all(0 < x["attention_kept"] <= 1 for x in p1 + p2) and min(x["attention_kept"] for x in p1 + p2) < 1
    else:
        assert all("attention_kept" not in x for x in p1 + p2)
    if bags == "document":
        assert all(0 <= x["bag_tokens_dropped"] < 0.5 and 0.5 < x["scored_share"] <= 1 for x in p1)
        assert max(x["bag_tokens_dropped"] for x in p1) > 0 and min(x["scored_share"] for x in p1) < 1
        assert all("scored_share" not in x for x in p2), "phase 2 scores every position"
    else:
        assert all("scored_share" not in x for x in p1)


def test_tst_eval_of_the_run_gives_its_validation_loss(doc_run):
    _, _, _, run = doc_run
    r = run_cli("eval", run, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["heldout"]["val_loss"] == _rows(run, "val")[-1]["val_loss"]


@pytest.mark.slow
def test_the_export_is_a_causal_model_and_benchmarks_score_as_before(both_run, tmp_path):
    """One document at a time at inference: the export is the ordinary model (its self-test against transformers
    passes), and benchmarks score a document-attention run like any other."""
    _, _, _, run = both_run
    r = run_cli("export", run, "--out", tmp_path / "e")
    assert r.returncode == 0, r.stderr
    for target in (run, tmp_path / "e"):
        r = run_cli("eval", target, "--bench", "arc_easy", "--limit", 8, "--data-dir", SHARED, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["results"]["arc_easy"]["n"] == 8


@pytest.mark.slow
def test_resume_in_the_document_modes_is_bitwise(doc_run, tmp_path):
    _, _, _, a = doc_run
    b = tmp_path / "b"
    r = resumed_from(a, b, 4)
    assert r.returncode == 0, r.stderr
    assert train_losses(b) == train_losses(a)
    assert_same_tensors(b / "checkpoints/step-00000012" / SHARD, a / "checkpoints/step-00000012" / SHARD)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_equal_one_in_the_document_modes(both_run, tmp_path, strategy):
    from test_distributed import assert_close_runs, torchrun
    _, _, recipe, one = both_run
    r = torchrun(2, "train", recipe, "--run-dir", tmp_path / "two", "--set", f'distributed.strategy="{strategy}"')
    assert r.returncode == 0, r.stderr[-3000:]
    assert_close_runs(one, tmp_path / "two")
