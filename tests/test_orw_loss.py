"""The ORW-CFM-W2 objective: weights, the W2 term and the coupling trap, against hand computations.

The weightings and what alpha is measured against are in tests/test_weighting.py."""

import copy

import pytest
import torch
from torch import nn

from orwcfm.couplings import ot_coupling
from orwcfm.finetune.orw import orw_cfm_w2_loss
from orwcfm.finetune.weights import normalized_weights
from orwcfm.models import MLP


def test_weights_constant_reward_gives_ones():
    torch.testing.assert_close(normalized_weights(torch.full((7,), 3.2), 10.0), torch.ones(7))


def test_weights_shift_invariant_and_normalised():
    r = torch.randn(16, dtype=torch.float64)
    w = normalized_weights(r, 2.5)
    assert w.dtype == torch.float64
    torch.testing.assert_close(w, normalized_weights(r + 1000.0, 2.5))
    torch.testing.assert_close(normalized_weights(r.float(), 2.5), normalized_weights(r.float() + 10.0, 2.5), rtol=1e-5, atol=1e-6)
    assert w.mean().item() == pytest.approx(1.0, abs=1e-6)
    # closed form: exp(tau r_i) / mean_j exp(tau r_j)
    e = torch.exp(2.5 * r.double())
    torch.testing.assert_close(w.double(), e / e.mean(), rtol=1e-5, atol=1e-6)


def test_weights_finite_for_huge_tau_r():
    w = normalized_weights(torch.tensor([1e4, 0.0, -1e4, 1e4]), 1.0)
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w, torch.tensor([2.0, 0.0, 0.0, 2.0]))
    assert torch.isfinite(normalized_weights(torch.tensor([1e6, 1e6 - 1]), 1.0)).all()


def test_weights_reject_bad_shape():
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        normalized_weights(torch.zeros(3, 1), 1.0)


class Linear(nn.Module):
    """v(t, x) = A x + b t: small enough to differentiate the loss by hand."""

    def __init__(self, d=2):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.A = nn.Parameter(torch.randn(d, d, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(d, generator=g, dtype=torch.float64))

    def forward(self, t, x):
        return x @ self.A.T + t[:, None] * self.b


def test_gradient_equals_hand_computed_weighted_loss():
    g = torch.Generator().manual_seed(1)
    x1, x0 = torch.randn(4, 2, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64)
    t = torch.rand(4, generator=g, dtype=torch.float64)
    r = torch.tensor([0.0, 1.0, 2.0, -1.0], dtype=torch.float64)
    model, reference = Linear(), Linear()
    with torch.no_grad():
        reference.A.add_(0.3)
    out = orw_cfm_w2_loss(model, reference, x1, normalized_weights(r, 0.7), x0, t, alpha=0.5)
    out.loss.backward()

    # independent computation: explicit weights exp(0.7 r)/mean, explicit interpolant and target
    w = torch.exp(0.7 * r) / torch.exp(0.7 * r).mean()
    A, b = model.A.detach().clone().requires_grad_(True), model.b.detach().clone().requires_grad_(True)
    xt = (1 - t[:, None]) * x0 + t[:, None] * x1
    v = xt @ A.T + t[:, None] * b
    v_ref = xt @ reference.A.T + t[:, None] * reference.b
    hand = (w * ((v - (x1 - x0)) ** 2).mean(1) + 0.5 * ((v - v_ref.detach()) ** 2).mean(1)).mean()
    hand.backward()
    assert out.loss.item() == pytest.approx(hand.item(), rel=1e-12)
    torch.testing.assert_close(model.A.grad, A.grad)
    torch.testing.assert_close(model.b.grad, b.grad)


def test_w2_term_is_zero_at_step_zero_even_with_dropout_and_reaches_the_model():
    torch.manual_seed(0)
    model = MLP(dim=3, hidden=32, depth=2, dropout=0.3)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    model.eval()  # the trainer trains with the reference's dropout setting (off)
    x1, x0, t = torch.randn(8, 3), torch.randn(8, 3), torch.rand(8)
    out = orw_cfm_w2_loss(model, reference, x1, torch.ones(8), x0, t, alpha=1.0)
    assert out.w2.item() == 0.0
    # with dropout left on, the term would not be zero: the trap the trainer avoids
    model.train()
    assert orw_cfm_w2_loss(model, reference, x1, torch.ones(8), x0, t, alpha=1.0).w2.item() > 0
    # after the model moves away from the reference, the W2 term has a gradient that reaches the model
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = orw_cfm_w2_loss(model, reference, x1, torch.zeros(8), x0, t, alpha=1.0)  # zero weights: only the W2 term
    assert out.w2.item() > 0
    out.loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(gr is not None for gr in grads) and sum(gr.abs().sum() for gr in grads) > 0
    assert all(p.grad is None for p in reference.parameters())


def test_ot_coupling_keeps_each_weight_with_its_sample():
    # Two data points far apart with very different weights; the OT pairing swaps them relative to x0.
    x1 = torch.tensor([[10.0, 0.0], [-10.0, 0.0]], dtype=torch.float64)
    x0 = torch.tensor([[-9.0, 0.0], [9.0, 0.0]], dtype=torch.float64)
    weights = torch.tensor([2.0, 0.0], dtype=torch.float64)  # only x1[0] counts
    t = torch.tensor([0.5, 0.5], dtype=torch.float64)
    model = Linear()
    # resample=False: weights on pairs (the default resamples before OT, see the next tests); when weights are
    # kept as weights they must travel with their samples through the permutation.
    out = orw_cfm_w2_loss(model, None, x1, weights, x0, t, alpha=0.0, coupling=ot_coupling, resample=False)
    # OT pairs x1[0] = (10, 0) with x0[1] = (9, 0): the loss must be 2 * err of that pair / 2 samples
    pair_x0, pair_x1 = x0[1:2], x1[0:1]
    xt = 0.5 * pair_x0 + 0.5 * pair_x1
    v = model(t[:1], xt)
    expected = (2.0 * ((v - (pair_x1 - pair_x0)) ** 2).mean()) / 2
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-12)
    # the scrambled version (weights left in the old order) gives a different loss
    xt_wrong = 0.5 * x0[0:1] + 0.5 * x1[1:2]
    wrong = (2.0 * ((model(t[:1], xt_wrong) - (x1[1:2] - x0[0:1])) ** 2).mean()) / 2
    assert abs(wrong.item() - expected.item()) > 1.0


def test_alpha_zero_needs_no_reference_and_alpha_positive_does():
    m = Linear()
    x = torch.randn(2, 2, dtype=torch.float64)
    t = torch.rand(2, dtype=torch.float64)
    assert orw_cfm_w2_loss(m, None, x, torch.ones(2, dtype=torch.float64), x, t, alpha=0.0).w2.item() == 0.0
    with pytest.raises(ValueError, match="needs a reference"):
        orw_cfm_w2_loss(m, None, x, torch.ones(2, dtype=torch.float64), x, t, alpha=1.0)


def test_systematic_resample_draws_each_sample_floor_or_ceil_of_its_share():
    from orwcfm.finetune.orw import systematic_resample

    g = torch.Generator().manual_seed(0)
    w = torch.tensor([0.0, 5.0, 0.5, 2.5, 0.0, 0.0, 0.0, 0.0])  # B = 8, shares B * w / sum = w
    total = torch.zeros(8)
    for _ in range(2000):
        counts = torch.bincount(systematic_resample(w, g), minlength=8).float()
        assert torch.all(counts >= torch.floor(w)) and torch.all(counts <= torch.ceil(w))
        total += counts
    assert torch.allclose(total / 2000, w, atol=0.05)  # unbiased: E[count] = share


def test_ot_pairing_applies_the_weights_by_resampling_before_pairing():
    # A sample with weight 0 must not reach the loss at all under OT pairing (weighting the pairs instead would
    # also weight the noise it is paired with).
    from orwcfm.couplings import ot_coupling

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, t, x):
            self.seen = x.detach().clone()
            return x * 0 + self.p

    x1 = torch.tensor([[100.0], [1.0], [2.0], [3.0]])
    w = torch.tensor([0.0, 4 / 3, 4 / 3, 4 / 3])
    model = Recorder()
    t = torch.ones(4)  # x_t = x1: what the model sees is the (resampled, paired) data
    out = orw_cfm_w2_loss(model, None, x1, w, torch.zeros(4, 1), t, alpha=0.0, coupling=ot_coupling,
                          generator=torch.Generator().manual_seed(0))
    assert 100.0 not in model.seen.flatten().tolist()
    # with unit weights after resampling, the loss is the plain mean over the resampled pairs
    assert out.loss.item() == pytest.approx(model.seen.pow(2).mean().item())
    # independent pairing keeps the weights as weights (the paper's estimator): the zero-weight sample is seen
    orw_cfm_w2_loss(model, None, x1, w, torch.zeros(4, 1), t, alpha=0.0)
    assert 100.0 in model.seen.flatten().tolist()


class _RowCounter(nn.Module):
    """A velocity field that records how many rows each call sees."""

    def __init__(self) -> None:
        super().__init__()
        self.net = MLP(dim=2, hidden=8)
        self.rows: list[int] = []

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(x.shape[0])
        return self.net(t, x)


@pytest.mark.parametrize("coupling, alpha, model_rows, reference_rows", [
    ("independent", 0.5, 16, 16),  # the FM term's interpolants serve the W2 term
    ("ot", 0.5, 32, 16),  # resampled and re-paired: the W2 term has interpolants of its own, batched with them
    ("ot", 0.0, 16, 0),  # ORW-CFM: no reference, no second set
])
def test_network_rows_are_the_rows_the_loss_sends_through_each_network(coupling, alpha, model_rows, reference_rows):
    # the step-anatomy benchmark times the passes network_rows declares; a loss that sent more would hide there
    from orwcfm.algorithms import make_algorithm
    from orwcfm.config import finetune_config
    from orwcfm.couplings import get_coupling
    from orwcfm.finetune.buffer import SampleBuffer
    from orwcfm.paths import StraightPath

    cfg = finetune_config(config_file="toy-2d", w2_coefficient=alpha, coupling=coupling)
    algo = make_algorithm(cfg, path=StraightPath(), coupling=get_coupling(coupling))
    gen = torch.Generator().manual_seed(0)
    buffer = SampleBuffer(torch.randn(64, 2, generator=gen), torch.randn(64, generator=gen), gen)
    algo.refresh(buffer)
    model, reference = _RowCounter(), _RowCounter()
    algo.loss(model, reference if algo.uses_reference else None, buffer.next(16), torch.randn(16, 2, generator=gen),
              torch.rand(16, generator=gen), gen).loss.backward()
    rows = algo.network_rows(16)
    assert (rows.model, rows.reference) == (model_rows, reference_rows)
    assert sum(model.rows) == rows.model and sum(reference.rows) == rows.reference
