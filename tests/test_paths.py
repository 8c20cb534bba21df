"""The straight path and the time samplers against closed forms."""

import math

import pytest
import torch
from scipy import stats

from orwcfm.errors import UserError
from orwcfm.paths import LogitNormalTime, StraightPath, UniformTime, make_time_sampler


@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_path_matches_closed_form_and_its_time_derivative(sigma_min):
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(6, 3, 4, 4, generator=g), torch.randn(6, 3, 4, 4, generator=g)
    t = torch.rand(6, generator=g)
    s = StraightPath(sigma_min).sample(x0, x1, t)
    tb = t.view(-1, 1, 1, 1)
    torch.testing.assert_close(s.x_t, (1 - (1 - sigma_min) * tb) * x0 + tb * x1)
    # u_t must be the time derivative of x_t along the path: check with an independent autograd computation.
    t_req = t.clone().requires_grad_(True)
    x_t = StraightPath(sigma_min).sample(x0, x1, t_req).x_t
    (dxdt,) = torch.autograd.grad(x_t.sum(), t_req, create_graph=False)
    # every coordinate has the same derivative structure; compare the per-sample sums
    torch.testing.assert_close(dxdt, s.u_t.flatten(1).sum(1))


def test_path_endpoints():
    x0, x1 = torch.randn(4, 2), torch.randn(4, 2)
    path = StraightPath(0.0)
    torch.testing.assert_close(path.sample(x0, x1, torch.zeros(4)).x_t, x0)
    torch.testing.assert_close(path.sample(x0, x1, torch.ones(4)).x_t, x1)
    torch.testing.assert_close(path.sample(x0, x1, torch.rand(4)).u_t, x1 - x0)
    # with sigma_min the endpoint at t=1 is x1 + sigma_min * x0
    torch.testing.assert_close(StraightPath(0.2).sample(x0, x1, torch.ones(4)).x_t, x1 + 0.2 * x0)


def test_path_rejects_bad_input():
    with pytest.raises(UserError, match="sigma_min"):
        StraightPath(1.5)
    with pytest.raises(ValueError, match=r"t must have shape \(4,\)"):
        StraightPath().sample(torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="same shape"):
        StraightPath().sample(torch.zeros(4, 2), torch.zeros(4, 3), torch.zeros(4))


def test_uniform_time_is_uniform():
    t = UniformTime()(100_000, torch.Generator().manual_seed(1))
    assert t.min() >= 0 and t.max() <= 1
    assert stats.kstest(t.numpy(), "uniform").pvalue > 1e-3


def test_logit_normal_time_has_normal_logits():
    t = LogitNormalTime(mean=0.5, std=0.8)(100_000, torch.Generator().manual_seed(2))
    assert t.min() > 0 and t.max() < 1
    z = torch.logit(t.double())
    assert abs(z.mean().item() - 0.5) < 0.01
    assert abs(z.std().item() - 0.8) < 0.01
    # median of t is sigmoid(mean)
    assert abs(t.median().item() - 1 / (1 + math.exp(-0.5))) < 0.01


def test_time_sampler_lookup():
    assert isinstance(make_time_sampler("uniform"), UniformTime)
    with pytest.raises(UserError, match="did you mean 'logit-normal'"):
        make_time_sampler("logit-normall")
