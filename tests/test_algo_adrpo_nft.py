"""ADRPO, DiffusionNFT and offline RWR: losses against hand computations, minimisers against closed forms, the
regularisers' gradients, the runs through the one loop, and every bad setting.

Conventions: t = 0 noise, t = 1 data, x_t = (1 - t) x0 + t x1, u = x1 - x0. Most hand computations put every
sample at the same interpolant x_t = 1 (t = 1/2, x0 + x1 = 2) of the one-parameter field v = theta x, so that
v = theta and dv/dtheta = 1 and the numbers can be followed with a pencil.
"""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from orwcfm import ORWCFMTrainer
from orwcfm.algorithms import make_algorithm
from orwcfm.algorithms.adrpo import ADRPO, ADRPOConfig, group_advantages
from orwcfm.algorithms.base import LossContext, settings_help
from orwcfm.algorithms.diffusion_nft import DiffusionNFT, DiffusionNFTConfig
from orwcfm.algorithms.offline_rwr import OfflineRWR, OfflineRWRConfig
from orwcfm.conditions import ClassPrompts, Labels
from orwcfm.config import finetune_config
from orwcfm.couplings import independent_coupling
from orwcfm.errors import UserError
from orwcfm.finetune.buffer import Minibatch, SampleBuffer
from orwcfm.models import MLP
from orwcfm.paths import StraightPath

F64 = torch.float64


class Scale(nn.Module):
    """v(t, x) = theta x: one weight, so a gradient is one number."""

    def __init__(self, theta: float) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(theta, dtype=F64))

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.theta * x


class Table(nn.Module):
    """v_i = V_i whatever (t, x): one free velocity per sample, so the loss's minimiser is its per-sample one."""

    def __init__(self, values: torch.Tensor) -> None:
        super().__init__()
        self.values = nn.Parameter(values.clone())

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.values


def random_pairs(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise (n, 2), samples (n, 2) and times (n,), float64."""
    x0, x1 = torch.randn(n, 2, generator=g, dtype=F64), torch.randn(n, 2, generator=g, dtype=F64)
    return x0, x1, torch.rand(n, generator=g, dtype=F64)


def frozen(module: nn.Module) -> nn.Module:
    out = copy.deepcopy(module).eval()
    out.requires_grad_(False)
    return out


def adrpo(**options) -> ADRPO:
    return ADRPO(ADRPOConfig(**options), path=StraightPath(), coupling=independent_coupling)


def nft(**options) -> DiffusionNFT:
    return DiffusionNFT(DiffusionNFTConfig(**options), path=StraightPath(), coupling=independent_coupling)


# Four samples at x_t = 1 (t = 1/2): x0 + x1 = 2, so u = x1 - x0 = [2, 0, 4, -2].
X0 = torch.tensor([[0.0], [1.0], [-1.0], [2.0]], dtype=F64)
X1 = torch.tensor([[2.0], [1.0], [3.0], [0.0]], dtype=F64)
T = torch.full((4,), 0.5, dtype=F64)


def buffer_with(first_four_rewards, extra_rewards) -> SampleBuffer:
    """A buffer of six samples: the four above, then two more that only shift the buffer's mean reward."""
    x = torch.cat([X1, torch.tensor([[5.0], [-5.0]], dtype=F64)])
    r = torch.tensor(first_four_rewards + extra_rewards, dtype=F64)
    return SampleBuffer(x, r, torch.Generator().manual_seed(0))


def first_four(buffer: SampleBuffer) -> Minibatch:
    return Minibatch(x=buffer.x[:4], rewards=buffer.rewards[:4], extras={k: v[:4] for k, v in buffer.extras.items()})


# --------------------------------------------------------------------------------------------------------------
# advantages


def test_group_advantages_center_within_interleaved_groups_over_the_buffer():
    r = torch.tensor([1.0, 10.0, 3.0, 20.0, 5.0, 7.0])
    groups = torch.tensor([0, 1, 0, 1, 2, 2])  # interleaved: a "consecutive chunks" grouping would be wrong
    # group means 2, 15, 6: A = [1-2, 10-15, 3-2, 20-15, 5-6, 7-6]
    centred = torch.tensor([-1.0, -5.0, 1.0, 5.0, -1.0, 1.0])
    torch.testing.assert_close(group_advantages(r, groups, "none"), centred)
    # population stds of the groups: 1, 5, 1 (ddof 0), plus 1e-4
    group_std = torch.tensor([1.0, 5.0, 1.0, 5.0, 1.0, 1.0]) + 1e-4
    torch.testing.assert_close(group_advantages(r, groups, "group-std"), centred / group_std)
    # DiffusionNFT's global std: np.std (ddof 0) of every reward, not of the centred ones
    torch.testing.assert_close(group_advantages(r, groups, "global-std"), centred / (float(np.std(r.numpy())) + 1e-4))
    # unconditional: one group, the buffer's mean 46 / 6
    torch.testing.assert_close(group_advantages(r, None, "none"), r - 46.0 / 6.0)
    # a group of one sample has advantage 0 (not 0 / 0)
    assert group_advantages(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([0, 1, 1]), "group-std")[0].item() == 0.0


def test_refresh_groups_by_condition_and_keeps_the_advantages_with_their_samples():
    r = torch.tensor([1.0, 10.0, 3.0, 20.0, 5.0, 7.0])
    labels = Labels(torch.tensor([0, 1, 0, 1, 2, 2]), 3)
    buffer = SampleBuffer(torch.zeros(6, 2), r, torch.Generator().manual_seed(0), cond=labels)
    adrpo(advantage_scale="none").refresh(buffer)
    torch.testing.assert_close(buffer.extras["advantage"], torch.tensor([-1.0, -5.0, 1.0, 5.0, -1.0, 1.0]))
    batch = buffer.next(4)  # shuffled: each advantage still belongs to its reward
    torch.testing.assert_close(batch.extras["advantage"], group_advantages(r, labels.values, "none")[buffer.order[:4]])
    # DiffusionNFT's optimality: r = 0.5 + 0.5 clip(A / A_max, -1, 1) with A_max = 2: A = -5 and 5 are clipped
    nft(advantage_scale="none", advantage_clip=2.0).refresh(buffer)
    torch.testing.assert_close(buffer.extras["optimality"], torch.tensor([0.25, 0.0, 0.75, 1.0, 0.25, 0.75]))


# --------------------------------------------------------------------------------------------------------------
# ADRPO


def test_adrpo_loss_and_gradient_match_a_hand_computation():
    # buffer rewards [1, 2, 4, 6 | 1, 4]: mean 3 over the buffer (the four's own mean is 3.25), A = [-2, -1, 1, 3]
    buffer = buffer_with([1.0, 2.0, 4.0, 6.0], [1.0, 4.0])
    alg = adrpo(beta0=2.0, advantage_scale="none")
    alg.refresh(buffer)
    batch = first_four(buffer)
    torch.testing.assert_close(batch.extras["advantage"], torch.tensor([-2.0, -1.0, 1.0, 3.0], dtype=F64))
    model = Scale(1.0)
    out = alg.loss(model, frozen(Scale(0.5)), batch, X0, T, torch.Generator())
    # v = 1, u = [2, 0, 4, -2]: ||v - u||^2 = [1, 1, 9, 9]; v_ref = 0.5: ||v - v_ref||^2 = 0.25 each
    # coefficients beta0 - A = [4, 3, 1, -1]
    # per sample A fm + (beta0 - A) w2 = [-2 + 1, -1 + 0.75, 9 + 0.25, 27 - 0.25] = [-1, -0.25, 9.25, 26.75]
    assert out.loss.item() == 34.75 / 4  # 8.6875
    assert out.stats["fm"].item() == 33 / 4  # mean A fm = (-2 - 1 + 9 + 27) / 4
    assert out.stats["w2"].item() == 0.25
    assert out.stats["w2_term"].item() == 7 * 0.25 / 4  # (4 + 3 + 1 - 1) * 0.25 / 4
    assert out.stats["negative_w2_share"].item() == 0.25  # one sample has A > beta0
    assert out.stats["advantage_abs"].item() == 7 / 4
    assert all(not s.requires_grad and s.dim() == 0 for s in out.stats.values())
    # d/dtheta = mean [2 A (v - u) + 2 (beta0 - A)(v - v_ref)] = mean [4 + 4, -2 + 3, -6 + 1, 18 - 1] = 21 / 4
    (grad,) = torch.autograd.grad(out.loss, model.theta)
    assert grad.item() == 21 / 4


def test_adrpo_per_sample_minimiser_is_the_closed_form():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    t = torch.rand(5, generator=g, dtype=F64)
    a = torch.tensor([-1.5, -0.2, 0.0, 0.7, 2.5], dtype=F64)  # beta0 = 1.5: the last has a negative W2 coefficient
    v_ref = torch.randn(5, 3, generator=g, dtype=F64)
    u = x1 - x0
    best = (a[:, None] * u + (1.5 - a[:, None]) * v_ref) / 1.5
    alg, batch = adrpo(beta0=1.5), Minibatch(x=x1, rewards=torch.zeros(5, dtype=F64), extras={"advantage": a})
    table = Table(best)
    (grad,) = torch.autograd.grad(alg.loss(table, Table(v_ref), batch, x0, t, g).loss, table.values)
    assert grad.abs().max().item() < 1e-12  # stationary at the closed form (and the loss is convex: curvature beta0)
    table = Table(best + 0.1)
    (grad,) = torch.autograd.grad(alg.loss(table, Table(v_ref), batch, x0, t, g).loss, table.values)
    # the gradient of row i is 2 beta0 (v_i - v*_i) / (B D): the curvature is beta0 however A splits it
    torch.testing.assert_close(grad, torch.full_like(grad, 2 * 1.5 * 0.1 / 15))


def shared_interpolant(n: int, seed: int, c=(0.3, -0.4), t=0.4):
    """n samples whose interpolants all sit at x_t = c at time t: x1 = (c - (1 - t) x0) / t."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 2, generator=g)
    x1 = (torch.tensor(c) - (1 - t) * x0) / t
    return x0, x1, torch.full((n,), t), x1 - x0


def fit(model: nn.Module, loss_fn, steps: int = 600, lr: float = 1e-2) -> None:
    """Adam on a fixed loss (a fixed x_t): the model's output there goes to the loss's minimiser."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()


def test_adrpo_trains_an_mlp_at_a_fixed_interpolant_to_the_minimiser():
    torch.manual_seed(0)
    x0, x1, t, u = shared_interpolant(6, seed=1)
    model, reference = MLP(2, hidden=16, depth=1, time_dim=8), frozen(MLP(2, hidden=16, depth=1, time_dim=8))
    a = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    alg, batch = adrpo(beta0=1.0), Minibatch(x=x1, rewards=torch.zeros(6), extras={"advantage": a})
    fit(model, lambda: alg.loss(model, reference, batch, x0, t, torch.Generator()).loss)
    v_ref = reference(t[:1], x0[:1] * (1 - t[0]) + t[0] * x1[:1])[0]
    # sum_i [A_i (v - u_i) + (beta0 - A_i)(v - v_ref)] = 0  ->  v* = [sum A_i u_i + (B beta0 - sum A) v_ref] / (B beta0)
    best = ((a[:, None] * u).sum(0) + (6 * 1.0 - a.sum()) * v_ref) / 6.0
    with torch.no_grad():
        got = model(t[:1], torch.tensor([[0.3, -0.4]]))[0]
    torch.testing.assert_close(got, best, atol=2e-3, rtol=0)
    assert (best - v_ref).abs().max() > 0.3  # the minimiser is not the reference: the test can tell them apart


def test_adrpo_regulariser_gradient_reaches_the_trained_weights():
    torch.manual_seed(0)
    model = MLP(2, hidden=16, depth=1, time_dim=8).double()
    reference = frozen(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    g = torch.Generator().manual_seed(2)
    x0, x1, t = random_pairs(8, g)
    buffer = SampleBuffer(x1, torch.full((8,), 0.7, dtype=F64), g)  # equal rewards: every A = 0
    alg = adrpo(beta0=3.0)
    alg.refresh(buffer)
    out = alg.loss(model, reference, first_eight(buffer), x0, t, g)
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    # with A = 0 the loss is beta0 mean ||v - v_ref||^2 alone: its gradient, computed here independently
    x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
    hand = 3.0 * (model(t, x_t) - reference(t, x_t)).pow(2).mean(1).mean()
    expected = torch.autograd.grad(hand, list(model.parameters()))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)
    assert sum(g_.abs().sum() for g_ in grads) > 1e-3  # not zero: a term computed without a graph would give 0
    assert alg.note({"advantage_abs": 0.0}) is not None and alg.note({"advantage_abs": 0.3}) is None


def first_eight(buffer: SampleBuffer) -> Minibatch:
    return Minibatch(x=buffer.x[:8], rewards=buffer.rewards[:8], extras={k: v[:8] for k, v in buffer.extras.items()})


# --------------------------------------------------------------------------------------------------------------
# DiffusionNFT


def test_nft_loss_and_gradient_match_a_hand_computation():
    # buffer rewards [1, 4, 6, 7 | 6, 6]: mean 5 (the four's own 4.5), A = [-4, -1, 1, 2]; A_max = 2 clips the first:
    # r = 0.5 + 0.5 clip(A / 2, -1, 1) = [0, 0.25, 0.75, 1]
    buffer = buffer_with([1.0, 4.0, 6.0, 7.0], [6.0, 6.0])
    alg = nft(beta=0.5, ref_coefficient=2.0, advantage_scale="none", advantage_clip=2.0)
    alg.refresh(buffer)
    batch = first_four(buffer)
    torch.testing.assert_close(batch.extras["optimality"], torch.tensor([0.0, 0.25, 0.75, 1.0], dtype=F64))
    model = Scale(1.0)
    out = alg.loss(model, frozen(Scale(0.25)), batch, X0, T, torch.Generator(), LossContext(policy=frozen(Scale(0.5))))
    # v = 1, v_old = 0.5: v+ = 0.5 * 0.5 + 0.5 * 1 = 0.75, v- = 1.5 * 0.5 - 0.5 * 1 = 0.25; u = [2, 0, 4, -2]
    # (v+ - u)^2 = [1.5625, 0.5625, 10.5625, 7.5625], (v- - u)^2 = [3.0625, 0.0625, 14.0625, 5.0625]
    # r pos + (1 - r) neg = [3.0625, 0.140625 + 0.046875, 7.921875 + 3.515625, 7.5625]
    #                     = [3.0625, 0.1875, 11.4375, 7.5625]
    assert out.stats["policy"].item() == 22.25 / 4  # 5.5625
    assert out.stats["w2"].item() == 0.5625  # (1 - 0.25)^2
    assert out.stats["w2_term"].item() == 2.0 * 0.5625
    assert out.loss.item() == 22.25 / 4 + 1.125  # 6.6875
    assert out.stats["old_deviation"].item() == 0.25  # (1 - 0.5)^2
    assert out.stats["optimality_mean"].item() == 0.5
    assert out.stats["advantage_abs"].item() == 2.0  # (4 + 1 + 1 + 2) / 4
    # d policy_i / dv = 2 beta [r (v+ - u) - (1 - r)(v- - u)] = [1.75, 0.1875 - 0.1875, -2.4375 + 0.9375, 2.75]
    #                 = [1.75, 0, -1.5, 2.75], mean 0.75; the regulariser's: 2 * 2 * (1 - 0.25) = 3
    (grad,) = torch.autograd.grad(out.loss, model.theta)
    assert grad.item() == 0.75 + 3.0


@pytest.mark.parametrize("beta,lam", [(0.5, 0.0), (1.0, 0.0), (0.3, 0.4)])
def test_nft_per_sample_minimiser_is_the_closed_form(beta, lam):
    g = torch.Generator().manual_seed(3)
    x0, x1 = torch.randn(4, 3, generator=g, dtype=F64), torch.randn(4, 3, generator=g, dtype=F64)
    t = torch.rand(4, generator=g, dtype=F64)
    old, v_ref = torch.randn(4, 3, generator=g, dtype=F64), torch.randn(4, 3, generator=g, dtype=F64)
    r = torch.tensor([0.0, 0.3, 0.5, 1.0], dtype=F64)[:, None]
    u = x1 - x0
    if lam == 0:  # the brief's closed form: a + (2r - 1)(u - a) / beta
        best = old + (2 * r - 1) * (u - old) / beta
    else:  # with the regulariser lam ||v - v_ref||^2
        best = (beta**2 * old + beta * (2 * r - 1) * (u - old) + lam * v_ref) / (beta**2 + lam)
    alg = nft(beta=beta, ref_coefficient=lam)
    batch = Minibatch(x=x1, rewards=torch.zeros(4, dtype=F64), extras={"optimality": r[:, 0], "advantage": r[:, 0]})
    reference = Table(v_ref) if alg.uses_reference else None
    table = Table(best)
    out = alg.loss(table, reference, batch, x0, t, g, LossContext(policy=frozen(Table(old))))
    (grad,) = torch.autograd.grad(out.loss, table.values)
    assert grad.abs().max().item() < 1e-12
    # and it is a minimum: curvature 2 (beta^2 + lam) / (B D) in every direction
    table = Table(best - 0.2)
    out = alg.loss(table, reference, batch, x0, t, g, LossContext(policy=frozen(Table(old))))
    (grad,) = torch.autograd.grad(out.loss, table.values)
    torch.testing.assert_close(grad, torch.full_like(grad, -2 * (beta**2 + lam) * 0.2 / 12))


def test_nft_trains_an_mlp_at_a_fixed_interpolant_to_the_minimiser():
    torch.manual_seed(0)
    x0, x1, t, u = shared_interpolant(4, seed=4)
    model = MLP(2, hidden=16, depth=1, time_dim=8)
    old, reference = frozen(MLP(2, hidden=16, depth=1, time_dim=8)), frozen(MLP(2, hidden=16, depth=1, time_dim=8))
    r = torch.tensor([0.1, 0.4, 0.8, 1.0])
    beta, lam = 0.5, 0.25
    alg = nft(beta=beta, ref_coefficient=lam)
    batch = Minibatch(x=x1, rewards=torch.zeros(4), extras={"optimality": r, "advantage": r})
    fit(model, lambda: alg.loss(model, reference, batch, x0, t, torch.Generator(), LossContext(policy=old)).loss)
    at = torch.tensor([[0.3, -0.4]])
    a, v_ref = old(t[:1], at)[0], reference(t[:1], at)[0]
    # sum_i [beta^2 (v - a) - beta (2 r_i - 1)(u_i - a) + lam (v - v_ref)] = 0
    best = (beta**2 * a + beta * ((2 * r[:, None] - 1) * (u - a)).mean(0) + lam * v_ref) / (beta**2 + lam)
    with torch.no_grad():
        got = model(t[:1], at)[0]
    torch.testing.assert_close(got, best, atol=2e-3, rtol=0)
    assert (best - a).abs().max() > 0.2 and (best - v_ref).abs().max() > 0.2


def test_nft_old_velocity_carries_no_gradient_even_when_it_shares_the_trained_weights():
    # The old policy is the trained module itself (as adapters of one network can be): v_old = v in value, and
    # the loss must still treat it as a constant: d loss / dv = 2 beta [r (v+ - u) - (1 - r)(v- - u)] at v+ = v- = v,
    # = 2 beta (2r - 1)(v - u), where a graph through v_old would give 2 (v - u) (v+ = v- = v identically).
    torch.manual_seed(0)
    model = MLP(2, hidden=16, depth=1, time_dim=8).double()
    g = torch.Generator().manual_seed(5)
    x0, x1, t = random_pairs(6, g)
    r = torch.tensor([0.0, 0.2, 0.4, 0.6, 0.9, 1.0], dtype=F64)
    alg = nft(beta=0.7, ref_coefficient=0.0)
    batch = Minibatch(x=x1, rewards=torch.zeros(6, dtype=F64), extras={"optimality": r, "advantage": r})
    out = alg.loss(model, None, batch, x0, t, g, LossContext(policy=model))
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
    v = model(t, x_t)
    # d loss / dv per element: the per-sample derivative over D = 2 (mean over dimensions) and B = 6 (mean over rows)
    constant = (2 * 0.7 * (2 * r[:, None] - 1) * (v - (x1 - x0))).detach() / 2 / 6
    expected = torch.autograd.grad(v, list(model.parameters()), grad_outputs=constant)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)
    with_graph = torch.autograd.grad(((model(t, x_t) - (x1 - x0)) ** 2).mean(1).mean(), list(model.parameters()))
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(grads, with_graph))  # the test tells the two apart
    # and a separate old policy with trainable weights receives nothing
    old = MLP(2, hidden=16, depth=1, time_dim=8).double()
    alg.loss(model, None, batch, x0, t, g, LossContext(policy=old)).loss.backward()
    assert all(p.grad is None for p in old.parameters())


def test_nft_regulariser_gradient_reaches_the_trained_weights():
    # r = 1/2 and v_old = v (a fresh refresh): the policy term's gradient 2 beta^2 (v - v_old) is exactly 0, so the
    # whole gradient is the regulariser's, lam * d/dtheta mean ||v - v_ref||^2 (the model differs from the reference)
    torch.manual_seed(0)
    reference = frozen(MLP(2, hidden=16, depth=1, time_dim=8).double())
    model = copy.deepcopy(reference).requires_grad_(True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    old = frozen(model)
    g = torch.Generator().manual_seed(6)
    x0, x1, t = random_pairs(8, g)
    buffer = SampleBuffer(x1, torch.full((8,), 2.0, dtype=F64), g)  # equal rewards: A = 0, r = 1/2
    alg = nft(beta=0.8, ref_coefficient=0.5)
    alg.refresh(buffer)
    out = alg.loss(model, reference, first_eight(buffer), x0, t, g, LossContext(policy=old))
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
    hand = 0.5 * (model(t, x_t) - reference(t, x_t)).pow(2).mean(1).mean()
    for got, want in zip(grads, torch.autograd.grad(hand, list(model.parameters()))):
        torch.testing.assert_close(got, want)
    assert sum(g_.abs().sum() for g_ in grads) > 1e-3


# --------------------------------------------------------------------------------------------------------------
# offline RWR


def offline_rwr(temperature: float, weighting: str = "paper") -> OfflineRWR:
    return OfflineRWR(OfflineRWRConfig(temperature=temperature, weighting=weighting), path=StraightPath(),
                      coupling=independent_coupling)


def test_offline_rwr_loss_is_the_weighted_fm_loss_without_a_w2_term():
    alg = offline_rwr(temperature=float(np.log(2.0)))  # exp(tau r) = 2^r
    assert not alg.uses_reference and alg.config.w2_coefficient == 0
    buffer = SampleBuffer(X1, torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=F64), torch.Generator().manual_seed(0))
    alg.refresh(buffer)
    batch = Minibatch(x=X1, rewards=buffer.rewards)
    model = Scale(1.0)
    out = alg.loss(model, None, batch, X0, T, torch.Generator())
    # weights [1, 2, 4, 8]; ||v - u||^2 = [1, 1, 9, 9]: mean [1, 2, 36, 72] = 27.75
    assert out.loss.item() == pytest.approx(27.75, rel=1e-12)
    assert out.stats["w2"].item() == 0.0 and out.stats["w2_term"].item() == 0.0
    # d/dtheta = mean 2 w (v - u) = mean [-2, 4, -24, 48] = 6.5
    (grad,) = torch.autograd.grad(out.loss, model.theta)
    assert grad.item() == pytest.approx(6.5, rel=1e-12)
    assert alg.describe() == {"algorithm": "offline-rwr", "refresh": "offline", "temperature": float(np.log(2.0)),
                              "weighting": "paper"}


def test_offline_rwr_trains_an_mlp_at_a_fixed_interpolant_to_the_weighted_mean_velocity():
    torch.manual_seed(0)
    x0, x1, t, u = shared_interpolant(5, seed=7)
    rewards = torch.tensor([0.0, 0.5, 1.0, -1.0, 2.0])
    alg = offline_rwr(temperature=1.5)
    buffer = SampleBuffer(x1, rewards, torch.Generator().manual_seed(0))
    alg.refresh(buffer)
    batch = Minibatch(x=x1, rewards=rewards)
    model = MLP(2, hidden=16, depth=1, time_dim=8)
    fit(model, lambda: alg.loss(model, None, batch, x0, t, torch.Generator()).loss)
    w = torch.exp(1.5 * rewards)
    best = (w[:, None] * u).sum(0) / w.sum()
    with torch.no_grad():
        got = model(t[:1], torch.tensor([[0.3, -0.4]]))[0]
    torch.testing.assert_close(got, best, atol=2e-3, rtol=0)
    assert (best - u.mean(0)).abs().max() > 0.3  # not the unweighted mean


# --------------------------------------------------------------------------------------------------------------
# through the loop


def reward(x: torch.Tensor) -> torch.Tensor:
    return -(x - 1.0).square().sum(1)


def toy_trainer(algorithm: str, options=None, *, model=None, prompts=None, **settings) -> ORWCFMTrainer:
    torch.manual_seed(0)
    config = dict(algorithm=algorithm, algorithm_options=options or {}, batch_size=16, buffer_size=32,
                  learning_rate=1e-2, steps_per_epoch=2, sampling={"solver": "euler", "steps": 2}, log_every=2,
                  eval_samples=16, seed=0)
    config.update(settings)
    return ORWCFMTrainer(model or MLP(2, hidden=16, depth=1, time_dim=8), config, "cpu", reward_fn=reward,
                         event_shape=(2,), progress=False, prompts=prompts)


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("algorithm,options", [("adrpo", {"beta0": 2.0}),
                                               ("diffusion-nft", {"beta": 0.5, "ref_coefficient": 0.1})])
def test_online_algorithms_run_in_the_loop(algorithm, options):
    trainer = toy_trainer(algorithm, options)
    assert trainer.algorithm.name == algorithm and trainer.algorithm.describe()["algorithm"] == algorithm
    rows = trainer.algorithm.network_rows(16)
    assert (rows.model, rows.reference, rows.policy) == ((16, 16, 0) if algorithm == "adrpo" else (16, 16, 16))
    before = weights(trainer.model)
    trainer.run_steps(6, log=True)  # steps_per_epoch 2: refreshes at steps 0, 2, 4
    assert trainer.reward_evaluations == 3 * 32
    assert any((trainer.model.state_dict()[k] - v).abs().max() > 0 for k, v in before.items())
    # the policy was refreshed from the model at step 4 (the model has moved since, the reference never did)
    ref, pol = weights(trainer.reference), weights(trainer.policy)
    assert all(torch.equal(before[k], ref[k]) for k in before)
    assert any(not torch.equal(before[k], pol[k]) for k in before)
    assert set(trainer.buffer.extras) >= {"advantage"}


def test_offline_rwr_draws_exactly_one_buffer_from_the_reference():
    trainer = toy_trainer("offline-rwr", refresh="offline", w2_coefficient=0.0, temperature=1.0)
    assert not trainer.algorithm.uses_reference
    before = weights(trainer.model)
    for _ in range(3):  # three epochs of steps_per_epoch = 2, then more: never a second buffer
        trainer.run_steps(2, log=True)
    trainer.run_steps(3)
    assert trainer.reward_evaluations == 32
    assert all(torch.equal(before[k], v) for k, v in weights(trainer.policy).items())  # the policy stays the reference
    assert any(not torch.equal(before[k], v) for k, v in weights(trainer.model).items())
    online = toy_trainer("orw-cfm-w2", w2_coefficient=0.0, temperature=1.0)
    online.run_steps(9)
    assert online.reward_evaluations == 5 * 32  # the same run online: a buffer every epoch


class CondMLP(nn.Module):
    """A tiny class-conditional 2-D field v(t, x, labels)."""

    num_classes = 2

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(3, 4)  # two classes and the null row
        self.net = nn.Sequential(nn.Linear(7, 16), nn.SiLU(), nn.Linear(16, 2))

    def forward(self, t: torch.Tensor, x: torch.Tensor, cond: Labels) -> torch.Tensor:
        return self.net(torch.cat([t[:, None], x, self.embed(cond.embedding_index())], 1))


@pytest.mark.parametrize("algorithm", ["adrpo", "diffusion-nft"])
def test_conditional_runs_centre_the_advantages_within_each_prompt(algorithm):
    prompts = ClassPrompts(("a", "b"), samples_per_prompt=4)
    trainer = toy_trainer(algorithm, {"advantage_scale": "none"}, model=CondMLP(), prompts=prompts)
    trainer.run_steps(3, log=True)
    buffer = trainer.buffer
    a, labels = buffer.extras["advantage"], buffer.cond.values
    for k in (0, 1):
        assert a[labels == k].sum().abs().item() < 1e-4  # centred within the class
        torch.testing.assert_close(a[labels == k], buffer.rewards[labels == k] - buffer.rewards[labels == k].mean())


# --------------------------------------------------------------------------------------------------------------
# settings


BAD = [
    ({"algorithm": "adrpo", "algorithm_options": {"beta0": 0}}, "beta0 must be a number > 0, got 0"),
    ({"algorithm": "adrpo", "algorithm_options": {"beta0": True}}, "beta0 must be a number > 0, got True"),
    ({"algorithm": "adrpo", "algorithm_options": {"beta0": "1"}}, "beta0 must be a number > 0, got '1'"),
    ({"algorithm": "adrpo", "algorithm_options": {"advantage_scale": "std"}},
     "advantage_scale must be one of none, group-std, global-std, got 'std'"),
    ({"algorithm": "adrpo", "algorithm_options": {"beta": 1.0}},
     "unknown option 'beta' in algorithm_options of adrpo; its options: beta0, advantage_scale"),
    ({"algorithm": "adrpo", "coupling": "ot"}, "algorithm adrpo needs coupling: independent, got 'ot'"),
    ({"algorithm": "diffusion-nft", "algorithm_options": {"beta": -0.1}}, "beta must be a number > 0, got -0.1"),
    ({"algorithm": "diffusion-nft", "algorithm_options": {"ref_coefficient": -1}},
     "ref_coefficient must be a number >= 0, got -1"),
    ({"algorithm": "diffusion-nft", "algorithm_options": {"advantage_clip": 0.0}},
     "advantage_clip must be a number > 0, got 0.0"),
    ({"algorithm": "diffusion-nft", "algorithm_options": {"advantage_scale": "batch"}},
     "advantage_scale must be one of none, group-std, global-std, got 'batch'"),
    ({"algorithm": "diffusion-nft", "coupling": "ot"}, "algorithm diffusion-nft needs coupling: independent, got 'ot'"),
    ({"algorithm": "offline-rwr", "w2_coefficient": 0.0},
     "algorithm offline-rwr regresses one fixed buffer of reference samples: it needs refresh: offline (and "
     "buffer_size), got refresh: 'online'"),
    ({"algorithm": "offline-rwr", "refresh": "offline", "buffer_size": 256},
     "algorithm offline-rwr has no W2 term: set w2_coefficient: 0, got 1.0"),
    ({"algorithm": "offline-rwr", "refresh": "offline", "buffer_size": 256, "w2_coefficient": 0.0,
      "algorithm_options": {"temperature": 2.0}}, "algorithm_options {'temperature': 2.0} given, but offline-rwr"),
    ({"algorithm": "offline-rwr", "refresh": "offline", "buffer_size": 256, "w2_coefficient": 0.0,
      "weighting": "batch-normalized", "weight_groups": "condition"},
     "algorithm offline-rwr weights over the whole buffer: weight_groups must be batch, got 'condition'"),
]


@pytest.mark.parametrize("config,message", BAD, ids=[f"{i}-{c['algorithm']}" for i, (c, _) in enumerate(BAD)])
def test_bad_settings_are_one_line_naming_the_value(config, message):
    with pytest.raises(UserError) as err:
        finetune_config(config)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_settings_classes_check_themselves_and_document_every_field():
    cases = ((lambda: OfflineRWRConfig(temperature=-1.0), "temperature must be a number >= 0, got -1.0"),
             (lambda: OfflineRWRConfig(weighting="softmax"),
              "weighting must be one of paper, buffer-normalized, batch-normalized, got 'softmax'"),
             (lambda: ADRPOConfig(beta0=float("nan")), "beta0 must be a number > 0, got nan"))
    for make, text in cases:
        with pytest.raises(UserError) as err:
            make()
        assert str(err.value) == text
    for cls in (ADRPOConfig, DiffusionNFTConfig, OfflineRWRConfig):
        assert all(len(h) > 40 for h in settings_help(cls).values()), cls
    good = finetune_config({"algorithm": "offline-rwr", "refresh": "offline", "buffer_size": 256, "w2_coefficient": 0,
                            "temperature": 3.0, "weighting": "buffer-normalized"})
    alg = make_algorithm(good, path=StraightPath(), coupling=independent_coupling)
    assert isinstance(alg, OfflineRWR) and alg.config.temperature == 3.0 and alg.config.weighting == "buffer-normalized"


# --------------------------------------------------------------------------------------------------------------
# behaviour on a pretrained toy flow


@pytest.fixture(scope="module")
def gaussian_flow() -> dict[str, torch.Tensor]:
    """Weights of a small flow for N(0, I) in 2-D (plain flow matching, 200 Adam steps)."""
    torch.manual_seed(0)
    model = MLP(2, hidden=16, depth=2, time_dim=8)
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    for _ in range(200):
        x1, x0, t = torch.randn(128, 2), torch.randn(128, 2), torch.rand(128)
        x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
        loss = (model(t, x_t) - (x1 - x0)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def tuned(gaussian_flow, algorithm: str, options=None, **settings) -> tuple[torch.Tensor, ORWCFMTrainer]:
    """The mean of x[:, 0] (the reward) after 32 steps of ``algorithm`` from the Gaussian flow, and the trainer."""
    model = MLP(2, hidden=16, depth=2, time_dim=8)
    model.load_state_dict(gaussian_flow)
    config = dict(algorithm=algorithm, algorithm_options=options or {}, batch_size=64, buffer_size=256,
                  learning_rate=5e-3, steps_per_epoch=8, sampling={"solver": "midpoint", "steps": 4}, seed=0)
    config.update(settings)
    trainer = ORWCFMTrainer(model, config, "cpu", reward_fn=lambda x: x[:, 0], event_shape=(2,), progress=False)
    trainer.run_steps(32)
    return trainer.sample(1000, seed=1)[:, 0].mean(), trainer


def test_online_methods_raise_the_reward_and_offline_rwr_stays_within_its_buffer(gaussian_flow):
    # reward x[:, 0] on N(0, I): the reference's mean reward is 0
    for algorithm, options in (("adrpo", {"beta0": 1.0}), ("diffusion-nft", {"beta": 1.0})):
        mean, _ = tuned(gaussian_flow, algorithm, options)
        assert mean > 0.5, algorithm  # measured: 2.2 (adrpo), 1.3 (diffusion-nft); a wrong sign goes below 0
    # offline RWR can reach at most the exp(tau r)-weighted mean of the reference's one buffer (about tau = 1 for
    # N(0, 1) tilted by exp(x); measured 1.3 against 1.4); online ORW-CFM (alpha 0) re-samples and keeps going (3.8)
    mean, trainer = tuned(gaussian_flow, "offline-rwr", refresh="offline", w2_coefficient=0.0, temperature=1.0)
    w = torch.softmax(1.0 * trainer.buffer.rewards, 0)
    ceiling = (w * trainer.buffer.x[:, 0]).sum()
    assert 0.5 < mean < ceiling + 0.3
    online, _ = tuned(gaussian_flow, "orw-cfm-w2", w2_coefficient=0.0, temperature=1.0)
    assert online > ceiling + 1.0
