"""The TST math against plain references (docs/design.md, "The method")."""
import pytest
import torch
import torch.nn.functional as F

from tstcli.phases import PhaseSpec
from tstcli.tst import make_bags, multi_hot_ce, superposed_embeddings, target_weights


@pytest.mark.parametrize("s", [1, 2, 4, 7, 16])
@pytest.mark.parametrize("V", [11, 257, 4096])
def test_mce_equals_mean_of_s_cross_entropies(s, V):
    g = torch.Generator().manual_seed(s * 1000 + V)
    logits = torch.randn(3, 5, V, generator=g, dtype=torch.float32) * 3
    targets = torch.randint(0, V, (3, 5, s), generator=g)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    mce = multi_hot_ce(a, targets)
    ref = torch.stack([F.cross_entropy(b.reshape(-1, V), targets[..., j].reshape(-1)) for j in range(s)]).mean()
    mce.backward()
    ref.backward()
    assert abs(mce.item() - ref.item()) <= 1e-5
    assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=0)


@pytest.mark.parametrize("s,alpha", [(4, 1.0), (8, 0.5), (16, 2.0)])
def test_weighted_mce_equals_weighted_sum_of_cross_entropies(s, alpha):
    V = 97
    g = torch.Generator().manual_seed(s)
    logits = torch.randn(2, 6, V, generator=g)
    targets = torch.randint(0, V, (2, 6, s), generator=g)
    w = target_weights(s, "power", alpha)
    expected_w = torch.tensor([(j + 1) ** -alpha for j in range(s)])
    assert torch.allclose(w, expected_w / expected_w.sum())
    assert abs(w.sum().item() - 1) < 1e-6 and (w[:-1] > w[1:]).all()
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    mce = multi_hot_ce(a, targets, w)
    ref = sum(w[j] * F.cross_entropy(b.reshape(-1, V), targets[..., j].reshape(-1)) for j in range(s))
    mce.backward()
    ref.backward()
    assert abs(mce.item() - ref.item()) <= 1e-5
    assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=0)


def test_uniform_weighting_is_a_plain_mean():
    assert target_weights(4, "uniform", 1.0) is None
    assert target_weights(1, "power", 1.0) is None


def test_mce_with_one_target_is_cross_entropy():
    logits = torch.randn(4, 9, 33)
    t = torch.randint(0, 33, (4, 9, 1))
    assert torch.allclose(multi_hot_ce(logits, t), F.cross_entropy(logits.reshape(-1, 33), t.reshape(-1)), atol=1e-6)


def test_superposed_embedding_is_fp32_mean_of_bag():
    E = torch.randn(50, 8, dtype=torch.bfloat16)
    bags = torch.tensor([[[1, 2, 3], [4, 4, 5]]])
    out = superposed_embeddings(E, bags)
    assert out.dtype == torch.bfloat16
    ref = torch.stack([E[[1, 2, 3]].float().mean(0), E[[4, 4, 5]].float().mean(0)]).to(torch.bfloat16)
    assert torch.equal(out[0], ref)
    # k = 1 is an ordinary embedding lookup, bitwise
    ids = torch.randint(0, 50, (2, 7))
    assert torch.equal(superposed_embeddings(E, ids[..., None]), F.embedding(ids, E))


# Explicit index checks on x = 0, 1, 2, ... (token value == its position), s = 3, L = 4.
S, L = 3, 4
X = torch.arange(S * (L + 1)).unsqueeze(0)  # one row of s·(L+1) = 15 tokens


def test_full_mode_indices():
    inp, tgt = make_bags(X, PhaseSpec("full", S, L))
    assert inp[0].tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert tgt[0].tolist() == [[3, 4, 5], [6, 7, 8], [9, 10, 11], [12, 13, 14]]


def test_input_mode_indices():
    inp, tgt = make_bags(X, PhaseSpec("input", S, L))
    assert inp[0].tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert tgt[0].tolist() == [[3], [6], [9], [12]]  # x[(i+1)·s]


def test_output_mode_indices():
    row = torch.arange(L + S).unsqueeze(0)  # output mode needs L+s tokens
    inp, tgt = make_bags(row, PhaseSpec("output", S, L))
    assert inp[0].tolist() == [[0], [1], [2], [3]]
    assert tgt[0].tolist() == [[1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6]]  # x[i+1 .. i+s]


def test_next_token_indices_and_full_with_s1_agree():
    row = torch.arange(L + 1).unsqueeze(0)
    inp, tgt = make_bags(row, PhaseSpec.next_token(L))
    assert inp[0].tolist() == [[0], [1], [2], [3]] and tgt[0].tolist() == [[1], [2], [3], [4]]
    inp1, tgt1 = make_bags(row, PhaseSpec("full", 1, L))
    assert torch.equal(inp, inp1) and torch.equal(tgt, tgt1)
