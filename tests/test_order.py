"""The row order without materialised permutations: a seeded bijection evaluated per index, row sets that map
indices to offsets, and a packer and loader whose memory does not grow with the corpus."""
import tracemalloc

import numpy as np
import pytest

from conftest import small_recipe
from tstcli.data import packing
from tstcli.data.loader import batch_offsets
from tstcli.data.order import Bijection
from tstcli.data.rows import Chunks, Drawn, materialise


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 63, 64, 65, 100, 1000, 4097, 65_537])
def test_bijection_is_a_permutation_exhaustively(n):
    for key in [(0,), (1, 2), (7, 1, 3)]:
        assert np.array_equal(np.sort(Bijection(n, key)(np.arange(n))), np.arange(n))


def test_bijection_on_a_huge_domain_stays_in_range_without_collisions():
    n = 2 * 10 ** 12 // 33  # rows of L+1 = 33 tokens in 2T tokens
    b = Bijection(n, (5, 2, 0))
    idx = np.random.default_rng(0).choice(n, size=200_000, replace=False)
    out = b(idx)
    assert out.min() >= 0 and out.max() < n and len(np.unique(out)) == len(idx)
    assert np.array_equal(b(idx[:10]), out[:10]) and b(int(idx[0])) == out[0]  # a pure function, any shape


def test_order_changes_with_seed_phase_and_epoch_and_spreads_neighbours():
    n = 10_000
    orders = [Bijection(n, key)(np.arange(n)) for key in [(0, 1, 0), (1, 1, 0), (0, 2, 0), (0, 1, 1)]]
    for i in range(len(orders)):
        for j in range(i + 1, len(orders)):
            assert np.mean(orders[i] == orders[j]) < 0.01
    # consecutive positions land far apart: a batch is drawn from across the corpus
    gaps = np.abs(np.diff(orders[0]))
    assert np.median(gaps) > n / 10


def test_a_batch_mixes_the_corpus_and_ranks_partition_it():
    chunks = Chunks([1 << 20] * 8, 33)
    rows = packing._phase_rows(chunks, 1000, (3, 0x7057), 1, 33)[2]  # phase 2 of a synthetic corpus
    a, _ = batch_offsets(rows, seed=3, phase=2, step_in_phase=7, batch_size=64)
    assert np.ptp(a) > 0.5 * 8 * (1 << 20) and len(np.unique(a)) == 64
    parts = [batch_offsets(rows, 3, 2, 7, 64, rank=k, world=4)[0] for k in range(4)]
    assert np.array_equal(np.concatenate(parts), a)


def test_drawn_rows_are_copies_then_a_seeded_subset():
    base = np.arange(10) * 100
    drawn = materialise(Drawn(base, 25, (1,)))
    assert np.array_equal(drawn[:20], np.concatenate([base, base]))
    assert len(set(drawn[20:])) == 5 and set(drawn[20:]) <= set(base)
    assert len(set(materialise(Drawn(base, 4, (1,))))) == 4  # fewer than available: distinct rows


def test_packing_2t_tokens_allocates_no_array_of_the_corpus(tmp_path):
    """A synthetic manifest of 2 x 10^12 tokens (shards of 2^30 tokens, nothing on disk): the phase split and a batch
    at the last step allocate a few MB at most, where one offsets array would be ~8 GB."""
    shard = 1 << 30
    count = 2 * 10 ** 12 // shard
    manifest = {"splits": {"train": {"tokens": count * shard, "shards": [{"tokens": shard}] * count}}}
    r = small_recipe(tmp_path, **{"train.steps": 50_000, "train.batch_size": 2048, "train.seq_len": 4096,
                                  "model.max_seq_len": 4096, "tst.bag_size": 16, "tst.ratio": 0.25})
    tracemalloc.start()
    info, rows = packing.split_phases(r.plan, r.run.seed, r.data.mix, manifest)
    last = r.train.steps - r.plan.phase1_steps - 1
    offsets, _ = batch_offsets(rows[2], r.run.seed, 2, last, r.train.batch_size, rank=63, world=64)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 * 2 ** 20, peak
    assert len(rows[2]) > 5 * 10 ** 7 and len(offsets) == 32 and offsets.max() < count * shard
    assert info["covered_without_repetition"]


@pytest.mark.slow
def test_resuming_a_run_whose_row_order_changed_is_refused(finished_run_copy):
    """A run started by a tst whose row order differs (its pack key in run.json) would read other rows from the
    resume on: refused (exit 4) unless --allow-changed-data, which then goes on and records the new key."""
    import json
    from conftest import run_cli
    run = finished_run_copy  # the SMALL run: 12 steps, checkpoints every 2
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "pack": "0" * 16, "tst_version": "0.0.9"}))
    for ckpt in (run / "checkpoints").iterdir():
        if ckpt.name.endswith("12"):  # steps 11 and 12 are left to do
            __import__("shutil").rmtree(ckpt)
    r = run_cli("resume", run)
    assert r.returncode == 4 and "row order" in r.stderr and "0.0.9" in r.stderr, r.stderr
    r = run_cli("resume", run, "--allow-changed-data")
    assert r.returncode == 0 and "row order changes" in r.stderr, r.stderr
    assert json.loads((run / "run.json").read_text())["pack"] == info["pack"]
