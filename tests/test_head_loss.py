"""The chunked head loss (tstcli/tst/head_loss.py) against the full-logits reference: equal loss and gradients,
and never more than one chunk of logits alive."""
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from tstcli.phases import PhaseSpec
from tstcli.tst import LossSpec, head_loss, make_bags, target_weights

D = 8  # a small model width: the vocabulary is what these tests are about


def _case(V, spec: PhaseSpec, seed, dtype=torch.float32):
    """Hidden states, head and targets of a batch of 2 rows bagged as `spec` does it."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, V, (2, spec.row_width), generator=g)
    _, targets = make_bags(rows, spec)
    hidden = torch.randn(2, spec.seq_len, D, generator=g, dtype=dtype)
    head = (torch.randn(V, D, generator=g) * 0.5).to(dtype)
    return hidden, head, targets


def _loss_and_grads(hidden, head, targets, spec: LossSpec):
    h, w = hidden.clone().requires_grad_(), head.clone().requires_grad_()
    loss = head_loss(h, w, targets, spec)
    gh, gw = torch.autograd.grad(loss, (h, w))
    return loss.detach(), gh, gw


def assert_matches(got, ref, tol, rel=1e-4, absolute=True):
    """Loss and every gradient entry within `tol` (the issue's bound), and — gradients being O(1/N), so an absolute
    bound alone says little — within `rel` of the reference gradient's largest entry. Not tighter: an fp32 dot
    product over V = 50k-128k terms is itself only ~1e-5 accurate (measured against fp64: dL/dh off by 1.8e-5 of its
    largest entry on the full-logits path, 3.2e-5 chunked, V = 50,257)."""
    (loss, gh, gw), (rloss, rgh, rgw) = got, ref
    assert abs(loss.double().item() - rloss.double().item()) <= tol * max(1.0, abs(rloss.item())), (loss, rloss)
    for g, r, name in ((gh, rgh, "hidden"), (gw, rgw, "head")):
        assert g.dtype == r.dtype, name
        err = (g.double() - r.double()).abs().max().item()
        assert (err <= tol or not absolute) and err <= rel * r.abs().max().item(), (name, err, r.abs().max().item())


MODES = [("full", s) for s in (1, 2, 6, 16)] + [("input", 6), ("output", 2), ("output", 6), ("output", 16),
                                                 ("ntp", 1)]


@pytest.mark.parametrize("mode,s", MODES, ids=[f"{m}-s{s}" for m, s in MODES])
@pytest.mark.parametrize("V", [50_257, 128_256])
def test_chunked_multi_hot_ce_equals_full_logits(mode, s, V):
    """fp32, uniform and power weights, chunks that do (8, 24) and do not (7, 100 > N) divide the 24 positions."""
    spec = PhaseSpec(mode, s, 12)
    hidden, head, targets = _case(V, spec, seed=s * 7 + V)
    m = targets.shape[-1]
    for weights in (None, target_weights(m, "power", 1.0)):
        ref = _loss_and_grads(hidden, head, targets, LossSpec("mce", weights, 0))
        for chunk in (7, 8, 24, 100):
            assert_matches(_loss_and_grads(hidden, head, targets, LossSpec("mce", weights, chunk)), ref, 1e-5)


@pytest.mark.parametrize("kind", ["bce", "hinge"])
@pytest.mark.parametrize("s", [1, 6, 16])
def test_chunked_ablation_losses_equal_torch_functions(kind, s):
    """bce and hinge chunked in fp32 against torch's own binary_cross_entropy_with_logits / multilabel_margin_loss
    on the full logits in fp64 (torch's fp32 multilabel_margin_loss is itself only ~1e-4 accurate at V = 50k)."""
    spec = PhaseSpec("full", s, 12)
    hidden, head, targets = _case(50_257, spec, seed=s)
    targets[:, :, -1] = targets[:, :, 0]  # a token twice in one bag
    ref = _loss_and_grads(hidden.double(), head.double(), targets, LossSpec(kind, None, 0))
    for chunk in (7, 24):
        got = _loss_and_grads(hidden, head, targets, LossSpec(kind, None, chunk))
        # against the fp64 truth, relative to the gradient's scale (BCE's is O(V): summed over the vocabulary)
        assert_matches(got, tuple(x.float() for x in ref), 1e-5, rel=1e-5, absolute=False)


@pytest.mark.parametrize("kind", ["mce", "bce", "hinge"])
def test_fp64_inputs_run_the_chunked_path_in_fp64(kind):
    """The tests' references are fp64; the chunked path keeps that dtype (power weights included) and agrees with
    the full logits to fp64 rounding."""
    spec = PhaseSpec("full", 6, 12)
    hidden, head, targets = _case(5003, spec, seed=3, dtype=torch.float64)
    weights = target_weights(6, "power", 1.0) if kind == "mce" else None
    ref = _loss_and_grads(hidden, head, targets, LossSpec(kind, weights, 0))
    got = _loss_and_grads(hidden, head, targets, LossSpec(kind, weights, 7))
    assert got[0].dtype == torch.float64
    assert_matches(got, ref, 1e-12, rel=1e-10)


def test_ablation_references_are_the_documented_formulas():
    """bce: Σ_v BCE(z_v, y_v) over the vocabulary, y the bag's indicator; hinge: the mean over the bag's targets of
    Σ_{v ∉ bag} max(0, 1 − z[t] + z[v]) / V — written out by hand on a tiny vocabulary."""
    z = torch.tensor([[0.5, -1.0, 2.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[2, 0, 2]])
    y = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    bce = sum(-(y[v] * F.logsigmoid(z[0, v]) + (1 - y[v]) * F.logsigmoid(-z[0, v])) for v in range(4))
    hinge = sum(max(0.0, 1 - z[0, j].item() + z[0, v].item()) for j in (2, 0, 2) for v in (1, 3)) / 4 / 3
    h = torch.tensor([[1.0, 0.0]], dtype=torch.float64)  # z = h @ headᵀ: the head's first column is z
    head = torch.stack([z[0], torch.zeros(4, dtype=torch.float64)], dim=1)
    for chunk in (0, 1):
        assert abs(head_loss(h, head, t, LossSpec("bce", None, chunk)).item() - bce.item()) < 1e-12
        assert abs(head_loss(h, head, t, LossSpec("hinge", None, chunk)).item() - hinge) < 1e-12


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("kind", ["mce", "bce", "hinge"])
def test_no_more_than_one_chunk_of_logits_exists(kind):
    """Forward and backward: no tensor larger than chunk x V (the full path makes N x V ones)."""
    V, n, chunk = 5003, 96, 16
    hidden, head = torch.randn(n, D, requires_grad=True), torch.randn(V, D, requires_grad=True)
    targets = torch.randint(0, V, (n, 4))
    sizes = {}
    for c in (0, chunk):
        with _LargestTensor() as probe:
            head_loss(hidden, head, targets, LossSpec(kind, None, c)).backward()
        sizes[c] = probe.largest
    assert sizes[0] >= n * V
    assert sizes[chunk] <= chunk * V, sizes


class _LiveChunkBuffers(TorchDispatchMode):
    """The most bytes held at once by tensors at least `floor` elements large (chunk-of-logits-sized ones), counted
    from creation until their storage is freed."""

    def __init__(self, floor):
        super().__init__()
        self.floor, self.live, self.peak = floor, 0, 0

    def _freed(self, nbytes):
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() >= self.floor and t._base is None:
                storage = t.untyped_storage()
                if not getattr(storage, "_counted", False) and func is not torch.ops.aten.detach.default:
                    storage._counted = True
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._freed, storage.nbytes())
        return out


@pytest.mark.parametrize("kind", ["mce", "bce", "hinge"])
def test_memory_is_bounded_by_the_chunk_not_the_positions(kind):
    """Forward and backward: the vocabulary-sized buffers alive at once are the same for 96 and 384 positions (none
    is kept per chunk), and MCE, the default, holds one chunk of fp32 logits at a time (the ablations up to four)."""
    V, chunk, peaks = 5003, 16, {}
    for n in (96, 384):
        hidden, head = torch.randn(n, D, requires_grad=True), torch.randn(V, D, requires_grad=True)
        targets = torch.randint(0, V, (n, 4))
        with _LiveChunkBuffers(floor=chunk * V) as probe:  # (V, D) gradients are smaller: D < chunk
            head_loss(hidden, head, targets, LossSpec(kind, None, chunk)).backward()
        peaks[n] = probe.peak
    assert peaks[96] == peaks[384], peaks
    # MCE: the logits, turned into their gradient in place; the ablations: logits, gradient, a work buffer, masks
    assert peaks[96] <= (1 if kind == "mce" else 4) * chunk * V * 4, peaks


def test_without_gradients_only_the_loss_is_computed():
    V, n = 5003, 40
    hidden, head, targets = torch.randn(n, D), torch.randn(V, D), torch.randint(0, V, (n, 3))
    with torch.no_grad(), _LargestTensor() as probe:
        loss = head_loss(hidden, head, targets, LossSpec("mce", None, 16))
    assert probe.largest <= 16 * V  # and no (V, D) fp32 gradient buffer either: V·D < 16·V, so check the ops
    assert abs(loss.item() - head_loss(hidden, head, targets, LossSpec("mce", None, 0)).item()) < 1e-5


def test_bf16_autocast_matmul_in_bf16_loss_in_fp32_gradients_in_input_dtype():
    """Under autocast the chunked path does what nn.Linear + the fp32 loss do: the same logits (bf16 matmul), so
    the loss agrees to bf16 rounding of the gradient's accumulation order (1e-2 of the largest gradient entry)."""
    V, n = 50_257, 48
    g = torch.Generator().manual_seed(0)
    hidden, head = torch.randn(n, D, generator=g), torch.randn(V, D, generator=g) * 0.5
    targets = torch.randint(0, V, (n, 6), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _loss_and_grads(hidden, head, targets, LossSpec("mce", None, 0))
        got = _loss_and_grads(hidden, head, targets, LossSpec("mce", None, 16))
    assert got[1].dtype == got[2].dtype == torch.float32
    assert abs(got[0].item() - ref[0].item()) < 1e-5 * ref[0].item()  # identical bf16 logits, fp32 loss
    for g_, r in zip(got[1:], ref[1:]):
        assert (g_ - r).abs().max() <= 1e-2 * r.abs().max()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mce", "hinge"])
def test_compiled_whole_graph_equals_eager(kind):
    """torch.compile traces the chunked loss without a graph break (fullgraph) and gives the eager numbers."""
    V, n = 5003, 60
    lin = torch.nn.Linear(D, D)
    x, head, targets = torch.randn(n, D), torch.randn(V, D, requires_grad=True), torch.randint(0, V, (n, 4))
    spec = LossSpec(kind, None, 16)

    def f(x):
        return head_loss(lin(x), head, targets, spec)

    out = []
    for fn in (f, torch.compile(f, dynamic=False, fullgraph=True)):
        lin.zero_grad()
        head.grad = None
        loss = fn(x)
        loss.backward()
        out.append((loss.detach(), lin.weight.grad.clone(), head.grad.clone()))
    (a, *ga), (b, *gb) = out
    assert abs(a.item() - b.item()) <= 1e-6 * abs(a.item())  # fp32: a few ulps of reordering
    assert all(torch.allclose(p, q, atol=1e-6, rtol=1e-5) for p, q in zip(ga, gb))
