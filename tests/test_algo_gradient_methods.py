"""DRaFT-K, ReFL and Adjoint Matching (``orwcfm/algorithms/draft.py``, ``adjoint_matching.py``), the algorithms that
back-propagate a differentiable reward: gradients against finite differences and hand computations, the lean
adjoint against autograd through the discretised SDE, the memoryless schedule and the tilt on Gaussians, the
trainer's run, the black-box refusal and every bad setting."""

import copy
import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from orwcfm import ORWCFMTrainer
from orwcfm.algorithms import make_algorithm
from orwcfm.algorithms.adjoint_matching import (AdjointMatching, AdjointMatchingConfig, MemorylessSchedule,
                                                lean_adjoint, matching_loss, matching_rows, memoryless_schedule,
                                                memoryless_sigma, score, sde_drift, sde_trajectory, terminal_adjoint)
from orwcfm.algorithms.base import LossContext, settings_help
from orwcfm.algorithms.draft import DRaFT, DRaFTConfig, ReFL, ReFLConfig, one_step_prediction
from orwcfm.conditions import Labels
from orwcfm.config import finetune_config
from orwcfm.couplings import get_coupling
from orwcfm.errors import UserError
from orwcfm.finetune.buffer import Minibatch
from orwcfm.models import MLP
from orwcfm.paths import StraightPath
from orwcfm.rewards import DistanceReward, jpeg_compressibility
from orwcfm.runlog import RunLogger

F64 = torch.float64
P = torch.tensor([0.7, -0.3], dtype=F64)  # the peak of the quadratic reward


def quadratic(x):
    """r(x) = -||x - P||^2 (B, 2) -> (B,)."""
    return -(x - P.to(x.dtype)).pow(2).sum(1)


def zero_reward(x):
    """A differentiable reward with zero gradient: only the regulariser is left in the loss."""
    return 0.0 * x.sum(1)


def batch_of(b, d=2):
    """What the loop hands an algorithm that draws its own samples: zeros of the batch's shape."""
    return Minibatch(x=torch.zeros(b, d, dtype=F64), rewards=torch.zeros(b, dtype=F64))


def times(b, t):
    return torch.full((b,), float(t), dtype=F64)


class Tanh(nn.Module):
    """v(t, x) = W2 tanh(W1 x + c t + b1) + b2 in float64: nonlinear in x and t, small enough for finite differences."""

    def __init__(self, seed, d=2, hidden=5):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W1 = nn.Parameter(0.8 * torch.randn(hidden, d, generator=g, dtype=F64))
        self.c = nn.Parameter(torch.randn(hidden, generator=g, dtype=F64))
        self.b1 = nn.Parameter(0.3 * torch.randn(hidden, generator=g, dtype=F64))
        self.W2 = nn.Parameter(0.8 * torch.randn(d, hidden, generator=g, dtype=F64))
        self.b2 = nn.Parameter(0.3 * torch.randn(d, generator=g, dtype=F64))

    def forward(self, t, x):
        return torch.tanh(x @ self.W1.T + t[:, None] * self.c + self.b1) @ self.W2.T + self.b2


class Linear(nn.Module):
    """v(t, x) = (A0 + t A1) x + c0 + t c1 in float64: its SDE drift is linear in x, b = M(t) x + m(t)."""

    def __init__(self, seed, d=2):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A0 = nn.Parameter(0.5 * torch.randn(d, d, generator=g, dtype=F64))
        self.A1 = nn.Parameter(0.5 * torch.randn(d, d, generator=g, dtype=F64))
        self.c0 = nn.Parameter(torch.randn(d, generator=g, dtype=F64))
        self.c1 = nn.Parameter(torch.randn(d, generator=g, dtype=F64))

    def matrix(self, t):
        return self.A0 + float(t) * self.A1

    def forward(self, t, x):
        return x @ self.A0.T + t[:, None] * (x @ self.A1.T) + self.c0 + t[:, None] * self.c1


class Gaussian(nn.Module):
    """The exact velocity of the straight path to data N(mu, diag(s^2)): v = mu + (t s^2 - (1 - t)) / V_t (x - t mu),
    V_t = (1 - t)^2 + t^2 s^2 (the marginal p_t = N(t mu, V_t))."""

    def __init__(self, mu, s):
        super().__init__()
        self.mu, self.s = torch.as_tensor(mu, dtype=F64), torch.as_tensor(s, dtype=F64)

    def variance(self, t):
        tb = t[:, None]
        return (1 - tb) ** 2 + tb**2 * self.s**2

    def forward(self, t, x):
        tb = t[:, None]
        mu, s = self.mu.to(x.dtype), self.s.to(x.dtype)
        return mu + (tb * s**2 - (1 - tb)) / self.variance(t).to(x.dtype) * (x - tb * mu)


def perturbed(model, name, index, eps):
    out = copy.deepcopy(model)
    with torch.no_grad():
        getattr(out, name)[index] += eps
    return out


def finite_difference(objective, model, name, index, eps=1e-6):
    """Central difference of ``objective(model)`` in one weight."""
    return (objective(perturbed(model, name, index, eps)) - objective(perturbed(model, name, index, -eps))) / (2 * eps)


def euler(model, x, start, stop, steps):
    """Independent Euler steps start..stop-1 of the uniform grid i / steps."""
    for i in range(start, stop):
        x = x + model(times(len(x), i / steps), x) / steps
    return x


WEIGHTS = [("W1", (0, 1)), ("c", (2,)), ("b2", (1,))]


# ---------------------------------------------------------------------------------------------------------------
# DRaFT-K


def _draft_grad(model, x0, steps, k, **options):
    algo = DRaFT(DRaFTConfig(steps=steps, k=k, **options))
    model.zero_grad()
    out = algo.loss(model, None, batch_of(len(x0)), x0, times(len(x0), 0.5), torch.Generator(),
                    LossContext(reward=quadratic))
    out.loss.backward()
    return out, {name: getattr(model, name).grad[index].item() for name, index in WEIGHTS}


def test_draft_full_backprop_gradient_equals_finite_differences_of_the_sampled_objective():
    model, steps = Tanh(0), 4
    x0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    out, grads = _draft_grad(model, x0, steps, k=steps)

    def objective(m):  # -mean r(x_1) of the whole sampler: K = steps differentiates every step
        return -quadratic(euler(m, x0, 0, steps, steps)).mean().item()

    assert out.loss.item() == pytest.approx(objective(model), rel=1e-12)
    assert out.stats["reward"].item() == pytest.approx(-objective(model), rel=1e-12)
    for name, index in WEIGHTS:
        assert grads[name] == pytest.approx(finite_difference(objective, model, name, index), rel=1e-6, abs=1e-9)


def test_draft_k_differentiates_only_the_last_k_steps():
    model, steps, k = Tanh(0), 5, 2
    x0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    _, grads = _draft_grad(model, x0, steps, k=k)
    x_frozen = euler(model, x0, 0, steps - k, steps)  # the first steps - k steps: the unperturbed weights

    def truncated(m):
        return -quadratic(euler(m, x_frozen, steps - k, steps, steps)).mean().item()

    def whole(m):
        return -quadratic(euler(m, x0, 0, steps, steps)).mean().item()

    for name, index in WEIGHTS:
        assert grads[name] == pytest.approx(finite_difference(truncated, model, name, index), rel=1e-6, abs=1e-9)
    # the truncation matters: a loss that back-propagated through every step would not pass the line above
    assert any(abs(grads[n] - finite_difference(whole, model, n, i)) > 1e-3 for n, i in WEIGHTS)


def test_draft_reference_penalty_gradient_reaches_the_weights():
    model, reference, steps, k, beta = Tanh(0), Tanh(7), 4, 2, 0.7
    x0 = torch.randn(5, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    algo = DRaFT(DRaFTConfig(steps=steps, k=k, reference_penalty=beta))
    assert algo.uses_reference
    context = LossContext(reward=zero_reward)
    out = algo.loss(model, reference, batch_of(5), x0, times(5, 0.5), torch.Generator(), context)
    out.loss.backward()
    states = [euler(model, x0, 0, i, steps).detach() for i in (steps - k, steps - k + 1)]

    def penalty(m):  # beta * mean over the differentiated steps of ||v - v_ref||^2 at the (fixed) visited states
        rows = [(m(times(5, i / steps), x) - reference(times(5, i / steps), x)).pow(2).mean(1)
                for i, x in zip((steps - k, steps - k + 1), states)]
        return beta * torch.cat(rows).mean().item()

    assert out.loss.item() == pytest.approx(penalty(model), rel=1e-12)
    assert out.stats["penalty"].item() == pytest.approx(penalty(model) / beta, rel=1e-12)
    for name, index in WEIGHTS:
        fd = finite_difference(penalty, model, name, index)
        assert abs(fd) > 1e-6
        assert getattr(model, name).grad[index].item() == pytest.approx(fd, rel=1e-6, abs=1e-9)
    # at the reference the penalty and its gradient are exactly zero
    same = copy.deepcopy(reference)
    out = algo.loss(same, reference, batch_of(5), x0, times(5, 0.5), torch.Generator(), context)
    out.loss.backward()
    assert out.loss.item() == 0.0
    assert all(p.grad.abs().max().item() == 0.0 for p in same.parameters())


# ---------------------------------------------------------------------------------------------------------------
# ReFL


class LinearT(nn.Module):
    """v(t, x) = x A^T + t b: the one-step prediction and its gradient by hand."""

    def __init__(self, seed, d=2):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(torch.randn(d, d, generator=g, dtype=F64))
        self.b = nn.Parameter(torch.randn(d, generator=g, dtype=F64))

    def forward(self, t, x):
        return x @ self.A.T + t[:, None] * self.b


def test_refl_one_step_prediction_and_its_gradient_by_hand():
    model, steps, b = LinearT(0), 8, 6
    algo = ReFL(ReFLConfig(steps=steps, stop_min=0.5, stop_max=0.9))
    x0 = torch.randn(b, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    out = algo.loss(model, None, batch_of(b), x0, times(b, 0.5), torch.Generator().manual_seed(5),
                    LossContext(reward=quadratic))
    out.loss.backward()
    tk = out.stats["stop_time"].item()
    k = round(tk * steps)
    assert k / steps == tk and 4 <= k <= 7
    with torch.no_grad():
        xk = euler(model, x0, 0, k, steps)
        x1_hat = xk + (1 - tk) * (xk @ model.A.T + tk * model.b)
    # loss = mean_b ||x1_hat - P||^2; d x1_hat / dA = (1 - t_k) x_k^T, d x1_hat / db = (1 - t_k) t_k
    err = 2 * (x1_hat - P) / b
    torch.testing.assert_close(out.loss.detach(), (x1_hat - P).pow(2).sum(1).mean())
    torch.testing.assert_close(out.stats["reward"], quadratic(x1_hat).mean())
    torch.testing.assert_close(model.A.grad, (1 - tk) * err.T @ xk)
    torch.testing.assert_close(model.b.grad, (1 - tk) * tk * err.sum(0))


def test_refl_stop_step_is_uniform_over_the_grid_times_in_range():
    algo = ReFL(ReFLConfig(steps=8, stop_min=0.5, stop_max=0.875))
    g = torch.Generator().manual_seed(0)
    drawn = torch.tensor([algo.draw_stop_step(g) for _ in range(900)])
    assert set(drawn.tolist()) == {4, 5, 6}  # t = 0.5, 0.625, 0.75: [stop_min, stop_max) holds 0.5, not 0.875
    counts = torch.bincount(drawn, minlength=8)[4:7].double() / 900
    assert counts.min().item() > 0.28 and counts.max().item() < 0.39
    assert ReFLConfig(steps=40).stop_steps() == list(range(30, 40))  # ImageReward's last quarter of 40 steps


@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_one_step_prediction_recovers_x1_on_the_path(sigma_min):
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    t = torch.rand(5, generator=g, dtype=F64)
    s = StraightPath(sigma_min).sample(x0, x1, t)
    torch.testing.assert_close(one_step_prediction(s.x_t, s.u_t, t, sigma_min), x1)


def test_refl_reference_penalty_gradient_by_hand():
    model, reference, steps, b, beta = LinearT(0), LinearT(1), 8, 5, 0.5
    algo = ReFL(ReFLConfig(steps=steps, stop_min=0.5, stop_max=0.9, reference_penalty=beta))
    x0 = torch.randn(b, 2, generator=torch.Generator().manual_seed(6), dtype=F64)
    out = algo.loss(model, reference, batch_of(b), x0, times(b, 0.5), torch.Generator().manual_seed(5),
                    LossContext(reward=zero_reward))
    out.loss.backward()
    tk = out.stats["stop_time"].item()
    with torch.no_grad():
        xk = euler(model, x0, 0, round(tk * steps), steps)
        dv = xk @ (model.A - reference.A).T + tk * (model.b - reference.b)
    # beta * mean_b mean_d dv^2: d/dA = 2 beta dv^T x_k / (B D), d/db = 2 beta t_k sum_b dv / (B D)
    torch.testing.assert_close(out.loss.detach(), beta * dv.pow(2).mean())
    torch.testing.assert_close(model.A.grad, 2 * beta * dv.T @ xk / (b * 2))
    torch.testing.assert_close(model.b.grad, 2 * beta * tk * dv.sum(0) / (b * 2))
    assert model.A.grad.abs().min().item() > 0


# ---------------------------------------------------------------------------------------------------------------
# Adjoint Matching: the SDE


def test_score_of_the_straight_path_against_a_gaussian():
    field = Gaussian([0.5, -1.0], [0.4, 1.3])
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=F64, requires_grad=True)
    for t in (0.1, 0.5, 0.9):
        tt = times(6, t)
        log_p = torch.distributions.Normal(t * field.mu, field.variance(tt).sqrt()).log_prob(x).sum()
        (expected,) = torch.autograd.grad(log_p, x)
        torch.testing.assert_close(score(field(tt, x), x, tt), expected)


def test_memoryless_schedule_closed_forms():
    t = torch.tensor([0.1, 0.3, 0.5, 0.8], dtype=F64)
    torch.testing.assert_close(memoryless_sigma(t) ** 2, 2 * (1 - t) / t)  # sigma^2 = 2 eta_t, eta_t = (1 - t) / t
    x, v = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    torch.testing.assert_close(sde_drift(v, x, t, memoryless_sigma(t)), 2 * v - x / t[:, None])  # the paper's drift
    # kappa: the drifts of two fields differ by kappa (v1 - v2) at every grid time (the control is that over sigma)
    sched = memoryless_schedule(10, x)
    v2 = torch.randn(4, 3, dtype=F64)
    for k in range(10):
        tk, sk = sched.times[k], sched.sigma[k]
        torch.testing.assert_close(sde_drift(v, x, tk, sk) - sde_drift(v2, x, tk, sk), sched.kappa[k] * (v - v2))
    assert sched.sigma[0].item() == pytest.approx((2 * 1.1 / 0.1) ** 0.5)  # finite at t = 0: the shift by h


def _correlation(a, b):
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / (a.pow(2).sum(0).sqrt() * b.pow(2).sum(0).sqrt())


def test_memoryless_sde_forgets_the_noise_and_keeps_the_marginal():
    mu, s = torch.tensor([1.5, -0.5], dtype=F64), torch.tensor([0.5, 0.8], dtype=F64)
    field, n, steps = Gaussian(mu, s), 16000, 20  # 32000 numbers per tensor: under torch's parallel grain
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, 2, generator=g, dtype=F64)
    noise = torch.randn(steps, n, 2, generator=g, dtype=F64)
    sched = memoryless_schedule(steps, x0)
    x1 = sde_trajectory(field, x0, noise, sched)[-1]
    assert _correlation(x0, x1).abs().max().item() < 0.03  # X_1 independent of X_0
    torch.testing.assert_close(x1.mean(0), mu, atol=0.02, rtol=0)
    torch.testing.assert_close(x1.std(0), s, atol=0.02, rtol=0)
    # the same sampler with other noise remembers its start: the ODE is a deterministic map, sigma = 1 forgets little
    for sigma, least in ((0.0, 0.99), (1.0, 0.1)):
        other = MemorylessSchedule(sched.times, torch.full_like(sched.sigma, sigma), sched.kappa, sched.h)
        assert _correlation(x0, sde_trajectory(field, x0, noise, other)[-1]).min().item() > least


# ---------------------------------------------------------------------------------------------------------------
# Adjoint Matching: the lean adjoint and the loss


def _em_states(field, x, noise, steps, start=0):
    """An independent Euler-Maruyama loop from X_start = x with a graph through every state: sigma_k =
    sqrt(2 (1 - t + h) / (t + h)), b = v - sigma^2 / (2 (1 - t)) (x - t v); returns [X_start, .., X_N]."""
    h, states = 1.0 / steps, [x]
    for k in range(start, steps):
        t = k * h
        sig2 = 2 * (1 - t + h) / (t + h)
        v = field(times(len(x), t), x)
        x = x + h * (v - sig2 / (2 * (1 - t)) * (x - t * v)) + (h * sig2) ** 0.5 * noise[k]
        states.append(x)
    return states


@pytest.mark.parametrize("base", [Linear(0), Tanh(0)], ids=["linear", "tanh"])
def test_lean_adjoint_is_the_gradient_of_the_terminal_reward_through_the_discretised_sde(base):
    steps, lam, b = 6, 1.5, 4
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(b, 2, generator=g, dtype=F64).requires_grad_(True)
    noise = torch.randn(steps, b, 2, generator=g, dtype=F64)
    sched = memoryless_schedule(steps, x0)
    states = _em_states(base, x0, noise, steps)
    trajectory = sde_trajectory(base, x0.detach(), noise, sched)
    torch.testing.assert_close(trajectory, torch.stack(states).detach())
    expected = torch.autograd.grad(-lam * quadratic(states[-1]).sum(), states)  # a_k = -lambda d r(X_N) / d X_k
    terminal = terminal_adjoint(quadratic, trajectory[-1], None, lam)
    adjoint = lean_adjoint(base, trajectory, sched, terminal.adjoint)
    for k in range(steps + 1):
        torch.testing.assert_close(adjoint.states[k], expected[k], msg=f"a_{k}")
    for k in range(steps):
        torch.testing.assert_close(adjoint.base_velocity[k], base(times(b, k / steps), trajectory[k]).detach())


def test_lean_adjoint_uses_the_base_jacobian_along_the_fine_tuned_trajectory():
    # linear base b(x, t) = M(t) x + m(t): a_k = prod_j (I + h M(t_j))^T a_N whatever trajectory it runs along
    base, tuned, steps, lam = Linear(0), Tanh(3), 5, 2.0
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(3, 2, generator=g, dtype=F64)
    sched = memoryless_schedule(steps, x0)
    trajectory = sde_trajectory(tuned, x0, torch.randn(steps, 3, 2, generator=g, dtype=F64), sched)
    terminal = terminal_adjoint(quadratic, trajectory[-1], None, lam)
    torch.testing.assert_close(terminal.adjoint, 2 * lam * (trajectory[-1] - P))  # -lambda grad r, by hand
    adjoint = lean_adjoint(base, trajectory, sched, terminal.adjoint)
    a, h = terminal.adjoint, 1.0 / steps
    with torch.no_grad():
        for k in reversed(range(steps)):
            t, sig2 = k * h, sched.sigma[k].item() ** 2
            m = base.matrix(t) * (1 + sig2 * t / (2 * (1 - t))) - sig2 / (2 * (1 - t)) * torch.eye(2, dtype=F64)
            a = a + h * a @ m  # row vectors: (I + h M)^T a
            torch.testing.assert_close(adjoint.states[k], a, msg=f"a_{k}")


def _independent_matching_loss(model, reference, x0, noise, steps, lam, reward):
    """The Adjoint Matching loss from scratch: the test's own SDE of the model, the lean adjoint from full Jacobians
    of the reference's drift along it (a_k = (I + h J_k)^T a_{k+1}), and a loop over the times."""
    with torch.no_grad():
        xs = _em_states(model, x0, noise, steps)
    h = 1.0 / steps

    def drift(x, t):
        sig2 = 2 * (1 - t + h) / (t + h)
        v = reference(times(len(x), t), x)
        return v - sig2 / (2 * (1 - t)) * (x - t * v)

    xn = xs[-1].clone().requires_grad_(True)
    (grad_r,) = torch.autograd.grad(reward(xn).sum(), xn)
    adjoints = [-lam * grad_r]
    for k in reversed(range(steps)):  # samples are independent: the batch's Jacobian is block diagonal
        jac = torch.autograd.functional.jacobian(lambda x: drift(x, k * h).sum(0), xs[k])  # (D, B, D)
        a = adjoints[0]
        adjoints.insert(0, a + h * torch.einsum("ibj,bi->bj", jac, a))
    total = 0.0
    for k in range(steps):
        t = k * h
        sig2 = 2 * (1 - t + h) / (t + h)
        kappa = 1 + t * sig2 / (2 * (1 - t))
        v, v_ref = model(times(len(x0), t), xs[k]), reference(times(len(x0), t), xs[k]).detach()
        residual = kappa * (v - v_ref) / sig2**0.5 + sig2**0.5 * adjoints[k + 1]
        total = total + residual.pow(2).mean(1).sum()
    return total / (len(x0) * steps)


def test_adjoint_matching_loss_and_gradient_against_an_independent_computation():
    model, reference, steps, lam, b = Tanh(0), Tanh(4), 4, 1.3, 5
    x0 = torch.randn(b, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    g = torch.Generator().manual_seed(9)
    algo = AdjointMatching(AdjointMatchingConfig(reward_multiplier=lam, steps=steps))
    out = algo.loss(model, reference, batch_of(b), x0, times(b, 0.5), g, LossContext(reward=quadratic))
    out.loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    noise = torch.randn(steps, b, 2, generator=torch.Generator().manual_seed(9), dtype=F64)  # the loss's increments
    model.zero_grad()
    expected = _independent_matching_loss(model, reference, x0, noise, steps, lam, quadratic)
    expected.backward()
    torch.testing.assert_close(out.loss.detach(), expected.detach())
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, msg=name)


def test_adjoint_matching_subset_of_times_gathers_each_rows_own_state_and_adjoint():
    model, reference, steps, b = Tanh(0), Tanh(4), 6, 3
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(b, 2, generator=g, dtype=F64)
    sched = memoryless_schedule(steps, x0)
    trajectory = sde_trajectory(model, x0, torch.randn(steps, b, 2, generator=g, dtype=F64), sched)
    adjoint = lean_adjoint(reference, trajectory, sched, terminal_adjoint(quadratic, trajectory[-1], None, 1.0).adjoint)
    idx = torch.tensor([[5, 0], [2, 3], [0, 4]])
    out = matching_loss(model, matching_rows(trajectory, adjoint, sched, idx, None))
    total = 0.0
    for i in range(b):
        for k in idx[i].tolist():
            x, t = trajectory[k, i : i + 1], times(1, k / steps)
            sig, kap = sched.sigma[k], sched.kappa[k]
            residual = kap * (model(t, x) - reference(t, x)) / sig + sig * adjoint.states[k + 1, i : i + 1]
            total = total + residual.pow(2).mean()
    torch.testing.assert_close(out.loss, total / idx.numel())


def test_adjoint_matching_control_gradient_reaches_the_weights():
    reference, steps, b = Linear(0), 4, 6
    x0 = torch.randn(b, 2, generator=torch.Generator().manual_seed(5), dtype=F64)

    def run(model, reward, lam=1.0):
        algo = AdjointMatching(AdjointMatchingConfig(reward_multiplier=lam, steps=steps))
        model.zero_grad()
        out = algo.loss(model, reference, batch_of(b), x0, times(b, 0.5), torch.Generator().manual_seed(0),
                        LossContext(reward=reward))
        out.loss.backward()
        return out, [p.grad for p in model.parameters()]

    # no reward gradient: the loss is the control's ||kappa (v - v_base) / sigma||^2 alone, zero at the base
    out, grads = run(copy.deepcopy(reference), zero_reward)
    assert out.loss.item() == 0.0 and all(gr.abs().max().item() == 0.0 for gr in grads)
    assert out.stats["path_kl"].item() == 0.0
    out, grads = run(Linear(1), zero_reward)
    assert out.loss.item() > 0 and all(gr.abs().min().item() > 0 for gr in grads)
    assert out.stats["path_kl"].item() > 0
    # at the base, the reward's adjoint alone moves the weights
    out, grads = run(copy.deepcopy(reference), quadratic)
    assert all(gr.abs().max().item() > 0 for gr in grads)


class GaussianPlusTable(nn.Module):
    """The base Gaussian field plus a learned velocity offset per grid time: the exact optimum of a linear reward
    on a Gaussian (the tilted law N(mu + lambda s^2 w, s^2) differs from the base's velocity by a function of t)."""

    def __init__(self, base, steps):
        super().__init__()
        self.base, self.steps = base, steps
        self.table = nn.Parameter(torch.zeros(steps, 2, dtype=F64))

    def forward(self, t, x):
        return self.base(t, x) + self.table[(t * self.steps).round().long().clamp(max=self.steps - 1)]


def test_adjoint_matching_reaches_the_tilted_gaussian():
    mu, s, w, lam, steps = torch.tensor([0.5, -0.5], dtype=F64), 0.5, torch.tensor([1.0, 0.5], dtype=F64), 1.0, 10
    base = Gaussian(mu, torch.tensor([s, s], dtype=F64))
    model = GaussianPlusTable(base, steps)
    algo = AdjointMatching(AdjointMatchingConfig(reward_multiplier=lam, steps=steps))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        x0 = torch.randn(64, 2, generator=g, dtype=F64)
        out = algo.loss(model, base, batch_of(64), x0, times(64, 0.5), g, LossContext(reward=lambda x: x @ w))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    # p_base exp(lambda w.x) = N(mu + lambda s^2 w, s^2); KL(tilted || base) = lambda^2 s^2 |w|^2 / 2
    assert out.stats["path_kl"].item() == pytest.approx(lam**2 * s**2 * w.pow(2).sum().item() / 2, rel=0.05)
    x0 = torch.randn(16000, 2, generator=g, dtype=F64)
    sched = memoryless_schedule(steps, x0)
    with torch.no_grad():
        x1 = sde_trajectory(model, x0, torch.randn(steps, 16000, 2, generator=g, dtype=F64), sched)[-1]
    torch.testing.assert_close(x1.mean(0), mu + lam * s**2 * w, atol=0.015, rtol=0)
    torch.testing.assert_close(x1.std(0), torch.tensor([s, s], dtype=F64), atol=0.015, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Conditions, rows, the trainer


class CondField(nn.Module):
    """A conditional field that records the conditions of each call."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2, dtype=F64)
        self.emb = nn.Embedding(4, 2, dtype=F64)
        self.seen: list = []

    def forward(self, t, x, cond=None):
        self.seen.append(cond.values.clone())
        return self.lin(x) + self.emb(cond.values) * t[:, None]


@pytest.mark.parametrize("name", ["draft", "refl", "adjoint-matching"])
def test_fresh_conditions_reach_the_model_and_the_reward(name):
    labels = Labels(torch.tensor([0, 3, 1, 2]), 4)
    seen_by_reward = []

    def reward(x, cond):
        seen_by_reward.append(cond.values.clone())
        return quadratic(x) + cond.values.to(x.dtype)

    model, reference = CondField(), CondField()
    algo = {"draft": DRaFT(DRaFTConfig(steps=3, k=2, reference_penalty=0.5)),
            "refl": ReFL(ReFLConfig(steps=3, stop_min=0.0)),
            "adjoint-matching": AdjointMatching(AdjointMatchingConfig(steps=3, loss_times=2))}[name]
    out = algo.loss(model, reference, batch_of(4), torch.randn(4, 2, dtype=F64), times(4, 0.5),
                    torch.Generator().manual_seed(0), LossContext(reward=reward, cond_sampler=lambda n: labels))
    out.loss.backward()
    assert [v.tolist() for v in seen_by_reward] == [[0, 3, 1, 2]]
    for values in model.seen + reference.seen:  # every row carries its own sample's condition
        assert len(values) % 4 == 0
        if name == "adjoint-matching" and len(values) == 8:  # the regression rows: sample-major, 2 times each
            assert values.tolist() == [0, 0, 3, 3, 1, 1, 2, 2]
        else:
            assert values.tolist() == [0, 3, 1, 2] * (len(values) // 4)


class RowCounter(nn.Module):
    def __init__(self, seed):
        super().__init__()
        self.net = Tanh(seed)
        self.rows: list[int] = []
        self.graph_rows: list[int] = []  # forwards that build a graph (to the weights, or to x for a VJP)
        self.input_grad_rows: list[int] = []  # forwards whose input requires grad (the lean adjoint's VJP)

    def forward(self, t, x):
        self.rows.append(x.shape[0])
        if torch.is_grad_enabled():
            self.graph_rows.append(x.shape[0])
            if x.requires_grad:
                self.input_grad_rows.append(x.shape[0])
        return self.net(t, x)


@pytest.mark.parametrize("name, options", [
    ("draft", {"steps": 5, "k": 1}),
    ("draft", {"steps": 5, "k": 3, "reference_penalty": 0.1}),
    ("refl", {"steps": 8, "stop_min": 0.75, "stop_max": 0.8}),  # one stop step: k = 6
    ("refl", {"steps": 8, "reference_penalty": 0.1, "stop_min": 0.5, "stop_max": 0.6}),
    ("adjoint-matching", {"steps": 4}),
    ("adjoint-matching", {"steps": 4, "loss_times": 2}),
])
def test_network_rows_are_the_rows_the_loss_sends_through_each_network(name, options):
    cfg = finetune_config({"algorithm": name, "algorithm_options": options})
    algo = make_algorithm(cfg, path=StraightPath(), coupling=get_coupling("independent"))
    model, reference = RowCounter(0), RowCounter(1)
    algo.loss(model, reference if algo.uses_reference else None, batch_of(6), torch.randn(6, 2, dtype=F64),
              times(6, 0.5), torch.Generator().manual_seed(0), LossContext(reward=quadratic)).loss.backward()
    rows = algo.network_rows(6)
    assert (sum(model.rows), sum(reference.rows)) == (rows.model, rows.reference)
    assert sum(model.graph_rows) == rows.model_graph  # the rest ran without a graph
    assert sum(reference.input_grad_rows) == rows.reference_vjp == sum(reference.graph_rows)
    assert rows.reward_grad == 6 and algo.reward_evaluations(6) == 6


def _trainer(name, options, reward_fn, **config):
    torch.manual_seed(0)
    model = MLP(2, hidden=16, depth=2, time_dim=8)
    cfg = {"algorithm": name, "algorithm_options": options, "batch_size": 16, "learning_rate": 1e-2,
           "log_every": 1, **config}
    return ORWCFMTrainer(model, cfg, "cpu", reward_fn=reward_fn, event_shape=(2,), progress=False)


RUNS = [("draft", {"steps": 4, "k": 2, "reference_penalty": 0.1}), ("draft", {"steps": 4}),
        ("refl", {"steps": 4, "stop_min": 0.5}), ("adjoint-matching", {"steps": 4, "loss_times": 2})]


@pytest.mark.parametrize("name, options", RUNS)
def test_trainer_runs_two_steps_on_a_differentiable_reward(name, options, tmp_path):
    trainer = _trainer(name, options, DistanceReward([1.0, 1.0]))
    before = copy.deepcopy(trainer.model.state_dict())
    with RunLogger(tmp_path, tensorboard=False) as logger:
        trainer.run_steps(2, logger=logger)  # log_every 1: the algorithm's stats through the loop's log row
    assert trainer.step == 2
    assert trainer.reward_evaluations == 2 * 16  # the loss's own reward calls, counted by reward_evaluations()
    assert any((trainer.model.state_dict()[k] - v).abs().max() > 0 for k, v in before.items())
    assert trainer.algorithm.describe() == {"algorithm": name, **dataclasses.asdict(trainer.algorithm.config)}
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in trainer.algorithm.stat_keys:
        assert all(math.isfinite(r[f"train/{key}"]) for r in rows), key
    assert all(r["train/reward"] < 0 for r in rows)  # -||x - (1, 1)||: the samples' own reward, not a placeholder


class ConvField(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, t, x):
        return self.conv(x) * t[:, None, None, None]


def through_numpy(x):
    """A black box like jpeg-compressibility: computed off the graph."""
    return torch.from_numpy(-(x.detach().cpu().numpy() ** 2).sum(1))


through_numpy.name = "numpy-box"


@pytest.mark.parametrize("name, reward, shape", [
    ("draft", through_numpy, (2,)), ("refl", through_numpy, (2,)), ("adjoint-matching", through_numpy, (2,)),
    ("draft", jpeg_compressibility, (1, 8, 8)), ("adjoint-matching", jpeg_compressibility, (1, 8, 8)),
])
def test_a_black_box_reward_is_refused_before_any_step(name, reward, shape):
    model = MLP(2, hidden=8, depth=1) if shape == (2,) else ConvField()
    trainer = ORWCFMTrainer(model, {"algorithm": name, "batch_size": 4}, "cpu", reward_fn=reward, event_shape=shape,
                            progress=False)
    before = copy.deepcopy(trainer.model.state_dict())
    with pytest.raises(UserError) as err:
        trainer.run_steps(1)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"algorithm {name} back-propagates through the reward, but reward {reward.name} is not "
                              "differentiable")
    assert "orw-cfm-w2" in message  # it names the algorithms that take a black box
    assert trainer.step == 0 and trainer.reward_evaluations == 0
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize("name, options, match", [
    ("draft", {"steps": 0}, r"option 'steps' of draft must be an integer >= 1, got 0"),
    ("draft", {"steps": 2.5}, r"option 'steps' of draft must be an integer >= 1, got 2.5"),
    ("draft", {"steps": 4, "k": 5}, r"option 'k' of draft must be an integer in \[1, 4\], got 5"),
    ("draft", {"k": 0}, r"option 'k' of draft must be an integer in \[1, 20\], got 0"),
    ("draft", {"reward_scale": 0}, r"option 'reward_scale' of draft must be a finite number > 0, got 0"),
    ("draft", {"reference_penalty": -1.0},
     r"option 'reference_penalty' of draft must be a finite number >= 0, got -1.0$"),
    ("draft", {"reference_penalty": "big"},
     r"option 'reference_penalty' of draft must be a finite number >= 0, got 'big'"),
    ("draft", {"kl": 1.0}, r"unknown option 'kl' in algorithm_options of draft; its options: steps, k, reward_scale"),
    ("refl", {"stop_min": 0.9, "stop_max": 0.5}, r"stop_min < stop_max, got 0.9 and 0.5"),
    ("refl", {"stop_max": 1.5}, r"option 'stop_max' of refl must be a number in \[0, 1\], got 1.5"),
    ("refl", {"steps": 4, "stop_min": 0.8, "stop_max": 0.9}, r"no grid time i / 4 of refl lies in \[stop_min, stop_m"),
    ("refl", {"reward_scale": -2}, r"option 'reward_scale' of refl must be a finite number > 0, got -2"),
    ("adjoint-matching", {"reward_multiplier": 0},
     r"option 'reward_multiplier' of adjoint-matching must be a finite number > 0, got 0"),
    ("adjoint-matching", {"reward_multiplier": float("inf")}, r"must be a finite number > 0, got inf"),
    ("adjoint-matching", {"steps": 4, "loss_times": 5},
     r"option 'loss_times' of adjoint-matching must be an integer in \[1, 4\], got 5"),
    ("adjoint-matching", {"loss_times": 0},
     r"option 'loss_times' of adjoint-matching must be an integer in \[1, 20\], got 0"),
    ("adjoint-matching", {"steps": True}, r"option 'steps' of adjoint-matching must be an integer >= 1, got True"),
])
def test_bad_settings_are_one_line_naming_the_value(name, options, match):
    with pytest.raises(UserError, match=match) as err:
        finetune_config({"algorithm": name, "algorithm_options": options})
    assert "\n" not in str(err.value)


def test_adjoint_matching_refuses_a_path_with_sigma_min():
    expected = r"^adjoint-matching needs the straight path with sigma_min 0 .*, got sigma_min 0.1$"
    with pytest.raises(UserError, match=expected):
        finetune_config({"algorithm": "adjoint-matching", "sigma_min": 0.1})


@pytest.mark.parametrize("settings", [DRaFTConfig, ReFLConfig, AdjointMatchingConfig])
def test_every_setting_has_help(settings):
    helps = settings_help(settings)
    assert helps and all(len(text) > 40 for text in helps.values())


@pytest.mark.parametrize("name", ["draft", "adjoint-matching"])
def test_a_conditional_run_with_prompt_groups_passes_the_gradient_probe_and_trains(name, tmp_path):
    # the probe before the run draws conditions too: with samples_per_prompt 4 it must draw a whole group (a probe
    # of 2 samples was refused by the prompt set, so DRaFT could not run on digits-align)
    torch.manual_seed(0)
    model = CondField().float()

    def reward(x, cond):
        return quadratic(x) + cond.values.to(x.dtype)

    cfg = {"algorithm": name, "algorithm_options": {"steps": 3}, "batch_size": 8, "learning_rate": 1e-2,
           "prompts": ["a", "b", "c", "d"], "samples_per_prompt": 4, "eval_samples": 8, "log_every": 1,
           "savedir": str(tmp_path), "run_name": "run", "ema_decay": None}
    trainer = ORWCFMTrainer(model, cfg, "cpu", reward_fn=reward, event_shape=(2,), progress=False)
    before = copy.deepcopy(trainer.model.state_dict())
    trainer.train(1, 2)
    assert trainer.step == 2 and (tmp_path / "run" / "summary.json").is_file()
    assert any((trainer.model.state_dict()[k] - v).abs().max() > 0 for k, v in before.items())
