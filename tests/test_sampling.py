"""ODE solvers against the exact solution of linear ODEs, with their orders of convergence."""

import math

import pytest
import torch
from torch import nn

from orwcfm.errors import UserError
from orwcfm.sampling import FIXED_STEP_STAGES, integrate, sample

ORDERS = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}

# dx/dt = A x with a rotation-plus-decay matrix: x(1) = expm(A) x(0).
A = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=torch.float64)


def linear_field(t, x):
    assert t.shape == (x.shape[0],)  # the (B,) time convention
    return x @ A.T


def exact(x0):
    return x0 @ torch.linalg.matrix_exp(A).T


def time_dependent_field(t, x):
    # dx/dt = 2 t x  ->  x(1) = e * x(0): checks that solvers evaluate at the right intermediate times
    return 2 * t[:, None] * x


@pytest.mark.parametrize("solver", list(ORDERS))
def test_fixed_step_solvers_converge_at_their_order(solver):
    x0 = torch.tensor([[1.0, 0.0], [0.3, -0.7]], dtype=torch.float64)
    errors = [(integrate(linear_field, x0, solver=solver, steps=n).samples - exact(x0)).abs().max().item() for n in (16, 32, 64)]
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    for order in orders:
        assert order == pytest.approx(ORDERS[solver], abs=0.25), (solver, errors)


@pytest.mark.parametrize("solver", list(ORDERS))
def test_fixed_step_solvers_handle_time_dependence(solver):
    x0 = torch.ones(3, 1, dtype=torch.float64)
    err = (integrate(time_dependent_field, x0, solver=solver, steps=200).samples - math.e).abs().max().item()
    assert err < {1: 3e-2, 2: 1e-4, 4: 1e-9}[ORDERS[solver]]


def test_dopri5_is_accurate():
    x0 = torch.tensor([[1.0, 0.0], [0.3, -0.7]], dtype=torch.float64)
    result = integrate(linear_field, x0, solver="dopri5", atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(result.samples, exact(x0), atol=1e-7, rtol=0)
    assert result.nfe > 6


@pytest.mark.parametrize("solver", [*ORDERS, "dopri5"])
def test_trajectory_and_nfe(solver):
    x0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    result = integrate(linear_field, x0, solver=solver, steps=10, return_trajectory=True)
    assert result.trajectory.shape == (11, 1, 2)
    torch.testing.assert_close(result.trajectory[0], x0)
    torch.testing.assert_close(result.trajectory[-1], result.samples)
    torch.testing.assert_close(result.times, torch.linspace(0, 1, 11, dtype=torch.float64))
    if solver != "dopri5":
        assert result.nfe == 10 * FIXED_STEP_STAGES[solver]
    # the trajectory follows the exact flow at the grid times
    mid = x0 @ torch.linalg.matrix_exp(0.5 * A).T
    assert (result.trajectory[5] - mid).abs().max() < (0.1 if solver == "euler" else 0.01)
    assert integrate(linear_field, x0, solver=solver, steps=10).trajectory is None


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.7))

    def forward(self, t, x):
        return self.a * x


def test_no_graph_without_enable_grad_and_exact_gradient_with_it():
    model = Scale()
    x0 = torch.ones(4, 2)
    out = integrate(model, x0, solver="rk4", steps=8)
    assert not out.samples.requires_grad and out.samples.grad_fn is None
    out = integrate(model, x0, solver="rk4", steps=50, enable_grad=True)
    out.samples.sum().backward()
    # x(1) = exp(a) x0  ->  d/da sum x(1) = exp(a) * sum(x0) = 8 e^0.7
    assert model.a.grad.item() == pytest.approx(8 * math.exp(0.7), rel=1e-5)


def test_sample_is_seeded_and_chunked():
    model = Scale()
    a = sample(model, 10, (3,), generator=torch.Generator().manual_seed(0), steps=5)
    b = sample(model, 10, (3,), generator=torch.Generator().manual_seed(0), steps=5, batch_size=3)
    torch.testing.assert_close(a, b)
    assert a.shape == (10, 3)


def test_bad_solver_and_steps():
    with pytest.raises(UserError, match="unknown ODE solver 'rk45'"):
        integrate(linear_field, torch.zeros(1, 2), solver="rk45")
    with pytest.raises(UserError, match="positive integer, got 0"):
        integrate(linear_field, torch.zeros(1, 2), steps=0)
