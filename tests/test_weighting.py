"""What alpha and tau mean: the paper's unnormalised weights (the default), the normalised options, the float-range
rescaling, and the W2 term's estimator under minibatch-OT resampling; against hand computations and closed forms."""

import math

import pytest
import torch
from scipy.special import lambertw
from torch import nn

from orwcfm.config import finetune_config
from orwcfm.couplings import independent_coupling, ot_coupling
from orwcfm.errors import UserError
from orwcfm.finetune.orw import orw_cfm_w2_loss, systematic_resample
from orwcfm.finetune.weights import LOG_RANGE, loss_weights, paper_weights, refresh_scale

DT = torch.float64


class Linear(nn.Module):
    """v(t, x) = A x + b t: small enough to differentiate the loss by hand."""

    def __init__(self, d=2, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(torch.randn(d, d, generator=g, dtype=DT))
        self.b = nn.Parameter(torch.randn(d, generator=g, dtype=DT))

    def forward(self, t, x):
        return x @ self.A.T + t[:, None] * self.b


class Translation(nn.Module):
    """v(t, x) = b: the flow moves N(0, I) to N(b, I); its loss has a closed-form minimiser."""

    def __init__(self, b, dim=1):
        super().__init__()
        self.b = nn.Parameter(torch.full((dim,), float(b), dtype=torch.float32))
        self.dim = dim

    def forward(self, t, x):
        return self.b.to(x.dtype).expand_as(x)


def tiny_batch(seed=1, b=4, d=2):
    g = torch.Generator().manual_seed(seed)
    x1, x0 = torch.randn(b, d, generator=g, dtype=DT), torch.randn(b, d, generator=g, dtype=DT)
    return x1, x0, torch.rand(b, generator=g, dtype=DT)


def hand_loss(model, reference, x1, x0, t, w, alpha):
    """The paper's formula written out: mean_i [w_i ||v - u||^2 + alpha ||v - v_ref||^2] (norms averaged over D)."""
    xt = (1 - t[:, None]) * x0 + t[:, None] * x1
    v = model(t, xt)
    v_ref = reference(t, xt).detach()
    return (w * ((v - (x1 - x0)) ** 2).mean(1) + alpha * ((v - v_ref) ** 2).mean(1)).mean()


def test_paper_weights_are_exp_tau_r_not_normalised():
    r = torch.tensor([0.0, 1.0, 2.0], dtype=DT)
    torch.testing.assert_close(paper_weights(r, 0.7), torch.exp(0.7 * r))
    # shifting every reward scales every weight: the paper's alpha is measured against exp(tau r) itself
    torch.testing.assert_close(paper_weights(r + 1.0, 0.7), math.exp(0.7) * paper_weights(r, 0.7))


@pytest.mark.parametrize("weighting", ["paper", "buffer-normalized", "batch-normalized"])
def test_loss_and_gradient_equal_the_hand_computed_formula_for_every_weighting(weighting):
    x1, x0, t = tiny_batch()
    r = torch.tensor([0.0, 1.0, 2.0, -1.0], dtype=DT)
    buffer_r = torch.cat([r, torch.tensor([3.0, -2.0, 0.5, 1.5], dtype=DT)])  # the refresh's samples: a superset
    tau, alpha = 0.7, 0.5
    model, reference = Linear(), Linear(seed=1)
    scale = refresh_scale(buffer_r, tau, alpha)
    lw = loss_weights(r, tau, alpha, weighting, scale)
    out = orw_cfm_w2_loss(model, reference, x1, lw.weights, x0, t, alpha=lw.w2_coefficient)
    out.loss.backward()

    e = torch.exp(tau * r)
    w = {"paper": e, "buffer-normalized": e / torch.exp(tau * buffer_r).mean(), "batch-normalized": e / e.mean()}[weighting]
    twin = Linear()
    hand = hand_loss(twin, reference, x1, x0, t, w, alpha)
    hand.backward()
    assert scale.shift.item() == 0.0  # tau r is small: the exact formula, no rescaling
    assert out.loss.item() == pytest.approx(hand.item(), rel=1e-12)
    torch.testing.assert_close(model.A.grad, twin.A.grad)
    torch.testing.assert_close(model.b.grad, twin.b.grad)
    # the logged scale: log Z of the minibatch, and alpha relative to the weights' mean
    assert lw.log_z.item() == pytest.approx(math.log(e.mean().item()), rel=1e-12)
    assert lw.alpha_relative.item() == pytest.approx(alpha / w.mean().item(), rel=1e-12)


@pytest.mark.parametrize("offset", [200.0, -200.0])
def test_outside_float_range_the_loss_is_the_papers_divided_by_a_constant(offset):
    # tau r = 200 overflows float32's exp (and float64's gradients would reach 1e87); tau r = -200 underflows it,
    # which would leave only the W2 term (alpha = 0: no gradient at all). Either way the loss becomes the paper's
    # loss / exp(c), c = max(max tau r, log alpha): the same minimiser, computed here in float64 as the reference.
    x1, x0, t = (v.float() for v in tiny_batch())
    r = torch.tensor([0.0, 1.0, 2.0, -1.0]) + offset
    tau = 1.0
    for alpha in (0.0, 0.5):
        model, reference = Linear(), Linear(seed=1)
        model.float(), reference.float()
        scale = refresh_scale(r, tau, alpha)
        largest = max(r.max().item() * tau, math.log(alpha) if alpha > 0 else -math.inf)
        # -200 with alpha = 0.5: the W2 coefficient is the largest and representable, so the formula stays exact
        # (the weights underflow to 0, as their true values e^-198 relative to alpha would round to anyway)
        c = largest if abs(largest) > LOG_RANGE else 0.0
        assert (c != 0.0) == (offset > 0 or alpha == 0.0) and scale.shift.item() == pytest.approx(c)
        lw = loss_weights(r, tau, alpha, "paper", scale)
        out = orw_cfm_w2_loss(model, reference, x1, lw.weights, x0, t, alpha=lw.w2_coefficient)
        out.loss.backward()
        assert torch.isfinite(out.loss) and model.A.grad.abs().sum() > 0 and out.fm.item() >= 0
        if alpha == 0.0:
            assert out.fm.item() > 0  # the reward term still trains: without the rescaling it would be exactly 0

        twin, ref64 = Linear().double(), Linear(seed=1).double()
        w_scaled = torch.exp(tau * r.double() - c)  # exp(tau r) / exp(c), exactly, in float64
        hand = hand_loss(twin, ref64, x1.double(), x0.double(), t.double(), w_scaled, alpha * math.exp(-c))
        hand.backward()
        assert out.loss.item() == pytest.approx(hand.item(), rel=1e-5)
        torch.testing.assert_close(model.A.grad.double(), twin.A.grad, rtol=1e-4, atol=1e-7)


def test_shift_is_zero_inside_the_range_and_counts_alpha():
    r = torch.tensor([10.0, 20.0])
    assert refresh_scale(r, 1.0, 1.0).shift.item() == 0.0
    assert refresh_scale(r, 2.0, 1.0).shift.item() == pytest.approx(40.0)  # max tau r = 40 > LOG_RANGE
    # all weights tiny but alpha = 1: the W2 coefficient is the largest, and it is representable: exact formula
    assert refresh_scale(-r, 2.0, 1.0).shift.item() == 0.0
    assert refresh_scale(-r, 2.0, 0.0).shift.item() == 0.0  # max tau r = -20: representable
    assert refresh_scale(-r, 4.0, 0.0).shift.item() == pytest.approx(-40.0)  # max tau r = -40 and no W2 term
    assert refresh_scale(-r, 2.0, math.exp(35.0)).shift.item() == pytest.approx(35.0)


@pytest.mark.parametrize("weighting,z_of", [("paper", "batch"), ("buffer-normalized", "one")])
def test_the_fitted_velocity_sits_alpha_over_z_of_the_way_to_the_reference(weighting, z_of):
    # For a constant field v = b the loss mean_i [w_i ||b - u_i||^2 + alpha ||b - b_ref||^2] is minimised at
    # b* = (sum w_i u_i + alpha B b_ref) / (sum w_i + alpha B): the fraction of the way from the reward-tilted fit
    # b_fm = sum w u / sum w to the reference is alpha / (Z + alpha), Z = mean(w). Under the paper's weights Z is
    # exp(tau r)'s scale, so "a large alpha keeps the model at the reference" only relative to Z.
    g = torch.Generator().manual_seed(3)
    x1, x0 = torch.randn(64, 1, generator=g, dtype=DT) + 1.0, torch.randn(64, 1, generator=g, dtype=DT)
    t = torch.rand(64, generator=g, dtype=DT)
    r = x1[:, 0] + 4.0  # tau r around 5: Z = mean(exp(tau r)) is about e^5 under the paper's weights
    tau, b_ref = 1.0, -1.0
    lw0 = loss_weights(r, tau, 0.0, weighting, refresh_scale(r, tau, 0.0))
    z = lw0.weights.mean().item()
    assert z == pytest.approx(math.exp(1.0 * 4.0) * torch.exp(x1[:, 0]).mean().item() if z_of == "batch" else 1.0, rel=1e-9)
    u = (x1 - x0)[:, 0]
    b_fm = ((lw0.weights * u).sum() / lw0.weights.sum()).item()
    for alpha in (1.0, 10.0 * z, 100.0 * z):
        model, reference = Translation(0.0).double(), Translation(b_ref).double()
        lw = loss_weights(r, tau, alpha, weighting, refresh_scale(r, tau, alpha))
        opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=100, tolerance_grad=1e-14, tolerance_change=1e-16)

        def closure():
            opt.zero_grad()
            loss = orw_cfm_w2_loss(model, reference, x1, lw.weights, x0, t, alpha=lw.w2_coefficient).loss
            loss.backward()
            return loss

        opt.step(closure)
        fraction = (b_fm - model.b.item()) / (b_fm - b_ref)
        assert fraction == pytest.approx(alpha / (z + alpha), rel=1e-6)
    if weighting == "paper":
        assert 1.0 / (z + 1.0) < 0.01  # the paper's alpha = 1 barely regularises here: Z ~ 150


def test_monte_carlo_resampled_estimator_is_unbiased_for_both_terms_of_the_papers_loss():
    # Strongly unequal weights, alpha > 0, and a model away from the reference. Over many draws of (x0, t) and of
    # the resampling, the resampled estimator (weights applied by resampling, then pairing) must have the
    # expectation of the paper's independent-pairing estimator in *both* terms. The old estimator evaluated the W2
    # term on the resampled batch, i.e. mean_i w_i w2_i / mean(w): computed here too, it must be far off.
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    d, b, draws = 2, 16, 3000
    x1 = torch.randn(b, d, generator=g, dtype=DT) * 2.0
    r = x1[:, 0]
    weights = paper_weights(r, 1.5)  # max/min ~ e^(1.5 * 8)
    assert weights.max() / weights.min() > 1e3
    model, reference = Linear(d, seed=0), Linear(d, seed=5)
    fm_i, w2_i, fm_r, w2_r, w2_old = [], [], [], [], []
    with torch.no_grad():
        for _ in range(draws):
            x0, t = torch.randn(b, d, generator=g, dtype=DT), torch.rand(b, generator=g, dtype=DT)
            plain = orw_cfm_w2_loss(model, reference, x1, weights, x0, t, alpha=1.0)
            res = orw_cfm_w2_loss(model, reference, x1, weights, x0, t, alpha=1.0, resample=True, generator=g)
            fm_i.append(plain.fm), w2_i.append(plain.w2), fm_r.append(res.fm), w2_r.append(res.w2)
            xr = x1[systematic_resample(weights, g)]  # the W2 term of the old estimator
            xt = (1 - t[:, None]) * x0 + t[:, None] * xr
            w2_old.append(((model(t, xt) - reference(t, xt)) ** 2).mean(1).mean())
    for a, c in ((fm_i, fm_r), (w2_i, w2_r)):
        a, c = torch.stack(a), torch.stack(c)
        se = math.sqrt(a.var().item() / draws + c.var().item() / draws)
        assert abs(a.mean().item() - c.mean().item()) < 4 * se
    w2_old_t, w2_i_t = torch.stack(w2_old), torch.stack(w2_i)
    se = math.sqrt(w2_old_t.var().item() / draws + w2_i_t.var().item() / draws)
    assert abs(w2_old_t.mean().item() - w2_i_t.mean().item()) > 10 * se  # the test can see the old bias


def test_w2_term_under_ot_pairing_is_the_independent_estimator_on_the_same_noise():
    # With OT pairing the W2 term is evaluated on the un-resampled batch paired independently with the same x0 and t:
    # its value equals the plain independent estimator's exactly, whatever the weights.
    x1, x0, t = tiny_batch(b=8)
    weights = torch.tensor([0.0, 0.0, 5.0, 0.1, 0.0, 2.0, 0.9, 0.0], dtype=DT)
    model, reference = Linear(), Linear(seed=1)
    ot = orw_cfm_w2_loss(model, reference, x1, weights, x0, t, alpha=2.0, coupling=ot_coupling,
                         generator=torch.Generator().manual_seed(0))
    plain = orw_cfm_w2_loss(model, reference, x1, weights, x0, t, alpha=2.0, coupling=independent_coupling)
    assert ot.w2.item() == pytest.approx(plain.w2.item(), rel=1e-12)
    assert ot.loss.item() == pytest.approx(ot.fm.item() + 2.0 * ot.w2.item(), rel=1e-12)
    # and its gradient reaches the model (a W2 term computed without a graph would train nothing)
    model.zero_grad()
    only_w2 = orw_cfm_w2_loss(model, reference, x1, torch.zeros(8, dtype=DT), x0, t, alpha=1.0, coupling=ot_coupling,
                              generator=torch.Generator().manual_seed(0))
    only_w2.loss.backward()
    assert only_w2.fm.item() == 0.0 and model.A.grad.abs().sum() > 0


def test_all_weights_underflowed_leaves_only_the_w2_term_under_resampling():
    x1, x0, t = tiny_batch(b=8)
    model, reference = Linear(), Linear(seed=1)
    out = orw_cfm_w2_loss(model, reference, x1, torch.zeros(8, dtype=DT), x0, t, alpha=1.0, coupling=ot_coupling,
                          generator=torch.Generator().manual_seed(0))
    assert out.fm.item() == 0.0 and math.isfinite(out.loss.item()) and out.loss.item() == pytest.approx(out.w2.item())


# ---------------------------------------------------------------------------------------------------------------
# The whole trainer: the alpha > 0 fixed point against its closed form, the logs, and the bad inputs.


@pytest.fixture
def one_thread():
    """A one-parameter model: one torch thread is fastest; restored after, so later tests run as configured."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fixed_point(mu: float, tau: float, alpha: float, weighting: str) -> float:
    """The fixed point b* of fitted epochs for v = b, reference b = mu, r(x) = x, x1 ~ N(b, 1).

    One fitted epoch maps b to (Z (b + tau) + alpha mu) / (Z + alpha), Z = E[w]. Paper weights: Z = exp(tau b + tau^2/2),
    so b* - mu = (tau / alpha) exp(tau b* + tau^2/2), solved by the principal branch of Lambert's W:
    b* = mu - W(-(tau^2 / alpha) exp(tau mu + tau^2/2)) / tau. Buffer-normalized weights: Z = 1, b* = mu + tau / alpha.
    """
    if weighting == "paper":
        return mu - lambertw(-(tau**2 / alpha) * math.exp(tau * mu + tau**2 / 2)).real / tau
    return mu + tau / alpha


@pytest.mark.slow
@pytest.mark.parametrize("weighting", ["paper", "buffer-normalized"])
def test_trainer_reaches_the_closed_form_alpha_fixed_point(weighting, tmp_path, one_thread):
    from orwcfm import ORWCFMTrainer

    mu, tau, alpha = 0.0, 0.5, 1.0
    expected = fixed_point(mu, tau, alpha, weighting)
    assert expected == pytest.approx({"paper": 0.8798, "buffer-normalized": 0.5}[weighting], abs=1e-3)
    model = Translation(mu)
    cfg = finetune_config({
        "w2_coefficient": alpha, "temperature": tau, "weighting": weighting, "learning_rate": 0.05, "grad_clip": None,
        "batch_size": 512, "buffer_size": 4096, "eval_samples": 64, "log_every": 50, "savedir": str(tmp_path),
        "sampling": {"solver": "euler", "steps": 1}, "eval_sampling": {"solver": "euler", "steps": 1},
    })
    trainer = ORWCFMTrainer(model, cfg, reward_fn=lambda x: x[:, 0], event_shape=(1,), progress=False)
    trainer.train(num_epochs=14, steps_per_epoch=60)
    # each epoch is fitted (60 Adam steps on a 1-parameter model), so b follows the map to its fixed point
    assert model.b.item() == pytest.approx(expected, abs=0.03)
    log = [row for row in map(eval_json, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "train/log_z" in row]
    last = log[-1]
    # logged scale at the fixed point: log Z = tau b + tau^2 / 2 for x1 ~ N(b, 1); alpha_relative = alpha / Z or alpha
    assert last["train/log_z"] == pytest.approx(tau * expected + tau**2 / 2, abs=0.05)
    z = math.exp(tau * expected + tau**2 / 2)
    assert last["train/alpha_relative"] == pytest.approx(alpha / z if weighting == "paper" else alpha, rel=0.06)
    assert 0.0 < last["train/w2_share"] < 1.0 and last["train/loss_log_scale"] == 0.0


def eval_json(line):
    import json

    return json.loads(line)


def test_trainer_logs_the_scale_and_says_once_that_it_rescaled(tmp_path):
    from orwcfm import ORWCFMTrainer

    c, tau, alpha = 40.0, 1.0, 2.0  # constant reward: log Z = tau c = 40 exactly, beyond LOG_RANGE
    cfg = finetune_config({
        "w2_coefficient": alpha, "temperature": tau, "learning_rate": 1e-3, "batch_size": 16, "eval_samples": 8,
        "log_every": 1, "savedir": str(tmp_path), "sampling": {"solver": "euler", "steps": 1},
        "eval_sampling": {"solver": "euler", "steps": 1},
    })
    trainer = ORWCFMTrainer(Translation(0.3), cfg, reward_fn=lambda x: torch.full((x.shape[0],), c),
                            event_shape=(1,), progress=False)
    trainer.train(num_epochs=1, steps_per_epoch=3)
    rows = [r for r in map(eval_json, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "train/log_z" in r]
    assert len(rows) == 3
    for row in rows:
        assert row["train/log_z"] == pytest.approx(tau * c)
        assert row["train/loss_log_scale"] == pytest.approx(-tau * c)
        assert row["train/alpha_relative"] == pytest.approx(alpha * math.exp(-tau * c), rel=1e-5)
        assert row["train/max_weight"] == pytest.approx(1.0)
    notes = (tmp_path / "notes.txt").read_text().splitlines()
    assert len(notes) == 1 and "divided by exp(40.0)" in notes[0] and "keeps its minimiser" in notes[0]


def test_bad_weighting_settings_stop_before_any_step():
    with pytest.raises(UserError, match=r"'weighting': 'softmax' is not accepted.*accepted values: paper, "
                                        r"buffer-normalized, batch-normalized"):
        finetune_config({"weighting": "softmax"})
    with pytest.raises(UserError, match=r"'buffer-normalized' normalises over the samples of one refresh, which "
                                        r"needs 'buffer_size'.*but buffer_size is null"):
        finetune_config({"weighting": "buffer-normalized", "buffer_size": None})
    assert finetune_config({}).weighting == "paper"  # the paper's method unless asked otherwise
