"""Flow-GRPO: the SDE against the Gaussian path's closed form, the step log-probabilities against
torch.distributions, the clipped objective's gradient against autograd of the hand-written policy gradient, the
KL's gradient, a short run and its resume, and the settings' one-line errors.

Conventions: t = 0 noise, t = 1 data, x_t = (1 - t) x0 + t x1, v regresses x1 - x0, so that the score of the
marginal is s = -(x - t v) / (1 - t) (checked below on a Gaussian). The SDE is dx = [v + g^2/2 s] dt + g dW with
g = a sqrt((1 - t) / t), its first step's t taken as t_1 (t = 0 diverges).
"""

import copy
import math

import pytest
import torch
from torch import nn

from orwcfm import ORWCFMTrainer
from orwcfm.algorithms import ALGORITHMS, make_algorithm
from orwcfm.algorithms.base import settings_help
from orwcfm.algorithms.flow_grpo import FlowGRPO, FlowGRPOConfig, FlowGRPORunConfig
from orwcfm.conditions import Labels
from orwcfm.config import finetune_config
from orwcfm.config.sampling import SamplingConfig
from orwcfm.errors import UserError
from orwcfm.finetune.buffer import Minibatch, SampleBuffer
from orwcfm.models import MLP
from orwcfm.paths import StraightPath


class GaussianFlow(nn.Module):
    """The exact velocity of the straight path from N(0, I) to N(mu, s^2 I): x_t ~ N(t mu, var_t I) with
    var_t = (1 - t)^2 + t^2 s^2, and E[x1 - x0 | x_t = x] = mu + (t s^2 - (1 - t)) / var_t (x - t mu)."""

    def __init__(self, mu, s):
        super().__init__()
        self.mu, self.s2 = torch.tensor(mu, dtype=torch.float64), s * s

    def var(self, t):
        return (1 - t) ** 2 + t**2 * self.s2

    def forward(self, t, x):
        t = t[:, None]
        return self.mu + (t * self.s2 - (1 - t)) / self.var(t) * (x - t * self.mu)


class Linear(nn.Module):
    """v(t, x[, c]) = x A^T + t b (+ e_c; the null class has no embedding): small, float64, differentiable by hand."""

    def __init__(self, d=2, classes=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(0.5 * torch.randn(d, d, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(d, generator=g, dtype=torch.float64))
        self.e = nn.Parameter(torch.randn(classes + 1, d, generator=g, dtype=torch.float64))
        self.num_classes, self.rows = classes, []

    def forward(self, t, x, cond=None):
        self.rows.append(x.shape[0])
        v = x @ self.A.T + t[:, None] * self.b
        if cond is None:
            return v
        emb = self.e * (torch.arange(self.num_classes + 1) < self.num_classes)[:, None]  # the null row is 0
        return v + emb[cond.embedding_index()]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one torch thread is fastest, and several are much slower on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sampler(steps, guidance=1.0, batch_size=None):
    return SamplingConfig(solver="euler", steps=steps, guidance=guidance, batch_size=batch_size)


def algo(**options):
    options.setdefault("sampling_steps", 4)
    return FlowGRPO(FlowGRPORunConfig(**options))


def hand_step(field, x, t, t_next, t1, a):
    """The brief's Euler-Maruyama step, written from the SDE (not from the module's simplified drift):
    mean = x + h [v + g^2/2 s], s = -(x - t v)/(1 - t), std = g sqrt(h), g = a sqrt((1 - t)/t), t -> t1 at 0."""
    v = field(t, x)
    h = (t_next - t)[:, None]
    tt = torch.where(t > 0, t, t1)[:, None]
    g = a * torch.sqrt((1 - t[:, None]) / tt)
    score = -(x - t[:, None] * v) / (1 - t[:, None])
    return x + h * (v + g**2 / 2 * score), (g * torch.sqrt(h))[:, 0]


def guided_field(model, cond, scale):
    if cond is None:
        return lambda t, x: model(t, x)
    return lambda t, x: model(t, x, cond.null()) + scale * (model(t, x, cond) - model(t, x, cond.null()))


# ---------------------------------------------------------------------------------------------------------------
# (1) the SDE keeps the ODE's marginals


def test_the_score_of_the_straight_path_is_minus_x_minus_t_v_over_one_minus_t():
    flow = GaussianFlow([1.5, -0.5], 0.5)
    t = torch.tensor([0.1, 0.4, 0.9], dtype=torch.float64)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # the Gaussian's own score, -(x - t mu) / var_t, against the formula in terms of the velocity
    exact = -(x - t[:, None] * flow.mu) / flow.var(t)[:, None]
    torch.testing.assert_close(-(x - t[:, None] * flow(t, x)) / (1 - t[:, None]), exact)


def test_the_sde_keeps_the_gaussian_marginals_of_the_ode():
    mu, s, k = [1.5, -0.5], 0.5, 200
    x0 = torch.randn(40_000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = algo(sampling_steps=k).collect(GaussianFlow(mu, s), x0, None, sampler(k))
    assert out.extras["logp"].isfinite().all()
    # final marginal: the data N(mu, s^2); intermediate (t = 1/2): x_t ~ N(mu / 2, (1/4 + s^2/4) I). The
    # tolerances hold the Monte Carlo error (0.7 %) and the scheme's own O(1/log K) bias of the first step
    # (moments propagated exactly: +0.4 % and +2.1 % in the variance); no score correction gives variances 1.17
    # and 1.35, g instead of g^2 / 2 in the drift 0.23 and 0.51, a std of g h instead of g sqrt(h) 0.006 and 0.011.
    for x, mean, var, rel in ((out.x, mu, s * s, 0.03), (out.extras["traj"][:, k // 2], [m / 2 for m in mu],
                                                        0.25 + 0.25 * s * s, 0.04)):
        torch.testing.assert_close(x.mean(0), torch.tensor(mean, dtype=torch.float64), atol=0.015, rtol=0)
        assert torch.allclose(x.var(0), torch.full((2,), var, dtype=torch.float64), rtol=rel, atol=0), x.var(0)


# ---------------------------------------------------------------------------------------------------------------
# (2) each step's log-probability is its Gaussian's


@pytest.mark.parametrize("conditional", [False, True])
def test_step_log_probabilities_are_the_normal_densities_of_the_stored_transitions(conditional):
    grid = torch.tensor([0.0, 0.1, 0.3, 0.6, 0.85, 1.0], dtype=torch.float64)
    a, n, guidance = 0.7, 6, 2.5
    model = Linear()
    cond = Labels(torch.tensor([0, 0, 1, 1, 2, 2]), 3) if conditional else None
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = algo(sampling_steps=5, noise_level=a).collect(model, x0, cond, sampler(5, guidance, batch_size=4), grid)
    traj, logp = out.extras["traj"], out.extras["logp"]
    assert traj.shape == (n, 6, 2) and logp.shape == (n, 5)
    torch.testing.assert_close(traj[:, 0], x0, rtol=0, atol=0)
    torch.testing.assert_close(out.x, traj[:, -1], rtol=0, atol=0)
    torch.testing.assert_close(out.extras["times"], grid.expand(n, -1), rtol=0, atol=0)
    field = guided_field(model, cond, guidance)
    with torch.no_grad():
        for k in range(5):
            t = grid[k].expand(n)
            mean, std = hand_step(field, traj[:, k], t, grid[k + 1].expand(n), grid[1].expand(n), a)
            expected = torch.distributions.Normal(mean, std[:, None]).log_prob(traj[:, k + 1]).sum(1)
            torch.testing.assert_close(logp[:, k], expected, rtol=1e-12, atol=1e-12)
    # the same noise gives the same samples (collect has no generator: its noise is a function of x0)
    again = algo(sampling_steps=5, noise_level=a).collect(model, x0, cond, sampler(5, guidance, batch_size=4), grid)
    torch.testing.assert_close(again.extras["traj"], traj, rtol=0, atol=0)


def test_the_stored_transitions_are_drawn_from_the_gaussians_whose_log_probabilities_are_stored():
    # a log-probability of the right formula, but of another std than the noise was drawn with, would pass above
    k, a = 4, 0.7
    model = Linear()
    x0 = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = algo(sampling_steps=k, noise_level=a).collect(model, x0, None, sampler(k))
    grid, traj = torch.linspace(0, 1, k + 1, dtype=torch.float64), out.extras["traj"]
    with torch.no_grad():
        for j in range(k):
            n = len(x0)
            mean, std = hand_step(model, traj[:, j], grid[j].expand(n), grid[j + 1].expand(n), grid[1].expand(n), a)
            z = (traj[:, j + 1] - mean) / std[:, None]
            assert abs(z.mean().item()) < 0.02 and z.var().item() == pytest.approx(1.0, abs=0.03), (j, z.var())


def test_an_sde_window_keeps_the_other_steps_deterministic_and_trains_only_the_window():
    k, n = 8, 16
    model = Linear()
    cfg = dict(sampling_steps=k, sde_window=2, sde_window_range=[1, 5], train_steps=1)
    alg = algo(**cfg)
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = alg.collect(model, x0, None, sampler(k))
    sde, traj, logp = out.extras["sde"], out.extras["traj"], out.extras["logp"]
    starts = sde.float().argmax(1)
    assert (sde.sum(1) == 2).all() and (starts >= 1).all() and (starts + 2 <= 5).all()
    assert (sde[torch.arange(n), starts + 1]).all()  # consecutive
    assert len(set(starts.tolist())) > 1  # one window per sample
    grid = torch.linspace(0, 1, k + 1, dtype=torch.float64)
    with torch.no_grad():
        for j in range(k):
            ode = ~sde[:, j]
            step = traj[ode, j] + (grid[j + 1] - grid[j]) * model(grid[j].expand(int(ode.sum())), traj[ode, j])
            torch.testing.assert_close(traj[ode, j + 1], step, rtol=0, atol=1e-14)
            assert (logp[ode, j] == 0).all() and (logp[~ode, j] != 0).all()
    buffer = SampleBuffer(out.x, torch.randn(n, generator=torch.Generator().manual_seed(4)), torch.Generator())
    buffer.extras.update(out.extras)
    alg.refresh(buffer)
    seen = []

    class Spy(nn.Module):
        def forward(self, t, x):
            seen.append(t.clone())
            return model(t, x)

    alg.loss(Spy(), None, buffer.next(n), None, None, torch.Generator().manual_seed(0))
    window_times = grid[:-1][None, :].expand(n, -1)[sde]  # (2n,) the times of the window steps, sample by sample
    trained = seen[0]
    assert trained.shape == (n,)  # one step per sample: train_steps 1
    order = buffer.order[:n]  # the minibatch's samples
    for row, i in enumerate(order.tolist()):
        assert trained[row].item() in window_times[2 * i : 2 * i + 2].tolist()


# ---------------------------------------------------------------------------------------------------------------
# (3), (4) the clipped objective


def _on_policy_batch(alg, model, cond=None, guidance=1.0, n=6, k=4, seed=5):
    """A buffer drawn by ``model`` itself (the policy), refreshed, handed over whole in its own order."""
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = alg.collect(model, x0, cond, sampler(k, guidance))
    rewards = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    buffer = SampleBuffer(out.x, rewards, torch.Generator(), cond=cond)
    buffer.extras.update(out.extras)
    alg.refresh(buffer)
    return Minibatch(x=buffer.x, rewards=rewards, cond=cond, extras=dict(buffer.extras))


def _hand_advantages(rewards, groups):
    adv = torch.empty_like(rewards)
    for g in groups.unique():
        r = rewards[groups == g]
        adv[groups == g] = (r - r.mean()) / (r.std(correction=0) + 1e-4)
    return adv.clamp(-5, 5)


def _hand_log_probs(model, batch, cond, guidance, a, k=4):
    """(n, k) log-probabilities of the stored steps under ``model``, with the graph, from torch.distributions."""
    traj, grid = batch.extras["traj"], batch.extras["times"][0]
    n = traj.shape[0]
    field = guided_field(model, cond, guidance)
    out = []
    for j in range(k):
        mean, std = hand_step(field, traj[:, j], grid[j].expand(n), grid[j + 1].expand(n), grid[1].expand(n), a)
        out.append(torch.distributions.Normal(mean, std[:, None]).log_prob(traj[:, j + 1]).sum(1))
    return torch.stack(out, 1)


def _grads(model, loss):
    return torch.autograd.grad(loss, [model.A, model.b, model.e], allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("reduction, conditional", [("mean", False), ("sum", False), ("mean", True)])
def test_on_policy_the_ratio_is_one_and_the_clipped_gradient_is_the_policy_gradient(reduction, conditional):
    guidance = 2.5 if conditional else 1.0
    cond = Labels(torch.tensor([0, 0, 0, 1, 1, 1]), 3) if conditional else None
    model = Linear()
    alg = algo(log_prob_reduction=reduction, guidance=guidance)
    batch = _on_policy_batch(alg, model, cond, guidance)
    groups = cond.group_ids() if conditional else torch.zeros(6, dtype=torch.long)
    adv = _hand_advantages(batch.rewards, groups)
    torch.testing.assert_close(batch.extras["advantages"], adv)
    out = alg.loss(model, None, batch, None, None, torch.Generator().manual_seed(0))
    assert out.stats["ratio_mean"].item() == pytest.approx(1.0, abs=1e-12)
    assert out.stats["clip_fraction"].item() == 0.0
    assert out.loss.item() == pytest.approx(-adv.mean().item(), abs=1e-12)  # ratio 1: -mean(A)
    # the plain policy gradient, -mean_(i,k) A_i grad log p_ik (per dimension under mean), by autograd
    log_probs = _hand_log_probs(model, batch, cond, guidance, 0.7)
    torch.testing.assert_close(log_probs.detach(), batch.extras["logp"], rtol=0, atol=1e-12)
    d = 2 if reduction == "mean" else 1
    expected = _grads(model, -(adv[:, None] * log_probs).mean() / d)
    for got, want in zip(_grads(model, out.loss), expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert any(g.abs().max() > 1e-3 for g in expected)


@pytest.mark.parametrize("side", ["clipped", "unclipped"])
def test_off_policy_the_clipped_rows_have_no_gradient(side):
    model = Linear()
    alg = algo(clip_range=0.2)
    batch = _on_policy_batch(alg, model)
    adv = batch.extras["advantages"]
    assert (adv > 0).any() and (adv < 0).any()
    # log-ratio +-1 per dimension (ratio e or 1/e, far outside [0.8, 1.2]): toward the advantage's sign the
    # clipped term is the constant (1 +- eps) A, away from it the unclipped ratio A is the smaller one
    toward = torch.sign(adv) if side == "clipped" else -torch.sign(adv)
    shifted = dict(batch.extras, logp=batch.extras["logp"] - 2 * toward[:, None])
    off = Minibatch(x=batch.x, rewards=batch.rewards, extras=shifted)
    out = alg.loss(model, None, off, None, None, torch.Generator().manual_seed(0))
    assert out.stats["clip_fraction"].item() == 1.0
    got = _grads(model, out.loss)
    if side == "clipped":
        assert all((g == 0).all() for g in got)
        return
    log_probs = _hand_log_probs(model, batch, None, 1.0, 0.7)
    ratio = torch.exp((log_probs - shifted["logp"]) / 2)
    torch.testing.assert_close(ratio.detach(), torch.exp(toward)[:, None].expand(-1, 4), rtol=1e-10, atol=0)
    expected = _grads(model, -(adv[:, None] * ratio).mean())
    for g, want in zip(got, expected):
        torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-12)
    assert any(g.abs().max() > 1e-3 for g in got)


# ---------------------------------------------------------------------------------------------------------------
# (5) the KL to the reference


def test_the_kl_gradient_reaches_the_weights_and_is_zero_at_the_reference():
    model = Linear()
    beta = 0.3
    plain, with_kl = algo(), algo(kl_coefficient=beta)
    assert not plain.uses_reference and with_kl.uses_reference
    batch = _on_policy_batch(with_kl, model)

    def grads(alg, reference):
        out = alg.loss(model, reference, batch, None, None, torch.Generator().manual_seed(0))
        return out, _grads(model, out.loss)

    base, g0 = grads(plain, None)
    same, g_same = grads(with_kl, copy.deepcopy(model))
    assert same.stats["kl"].item() == 0.0
    for a, b in zip(g_same, g0):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference.A.add_(0.2)
        reference.b.sub_(0.1)
    moved, g_moved = grads(with_kl, reference)
    # the exact KL of the step Gaussians, ||mean - mean_ref||^2 / (2 std^2), per dimension, over every step
    traj, grid = batch.extras["traj"], batch.extras["times"][0]
    n, kls = traj.shape[0], []
    for j in range(4):
        args = (traj[:, j], grid[j].expand(n), grid[j + 1].expand(n), grid[1].expand(n), 0.7)
        mean, std = hand_step(model, *args)
        with torch.no_grad():
            mean_ref, _ = hand_step(reference, *args)
        kls.append(((mean - mean_ref) ** 2).sum(1) / (2 * std.detach() ** 2) / 2)
    kl = torch.stack(kls, 1).mean()
    assert moved.stats["kl"].item() == pytest.approx(kl.item(), rel=1e-10)
    assert moved.stats["kl_term"].item() == pytest.approx(beta * kl.item(), rel=1e-10)
    for got, base_g, kl_g in zip(g_moved, g0, _grads(model, beta * kl)):
        torch.testing.assert_close(got - base_g, kl_g, rtol=1e-8, atol=1e-12)
    assert max((got - base_g).abs().max().item() for got, base_g in zip(g_moved, g0)) > 1e-3


@pytest.mark.parametrize("guidance, kl, conditional", [(1.0, 0.0, False), (2.5, 0.1, True), (2.5, 0.1, False)])
def test_network_rows_are_the_rows_the_loss_sends_through_each_network(guidance, kl, conditional):
    model, reference = Linear(), Linear(seed=1)
    cond = Labels(torch.tensor([0, 0, 1, 1, 2, 2]), 3) if conditional else None
    alg = algo(train_steps=3, kl_coefficient=kl, guidance=guidance)
    batch = _on_policy_batch(alg, model, cond, guidance)
    model.rows.clear()
    alg.loss(model, reference if alg.uses_reference else None, batch, None, None, torch.Generator().manual_seed(0))
    rows = alg.network_rows(6)
    assert rows.model == sum(model.rows) == 6 * 3 * (2 if conditional and guidance != 1 else 1)
    assert rows.reference == sum(reference.rows) == (rows.model if kl > 0 else 0)


# ---------------------------------------------------------------------------------------------------------------
# advantages


def test_advantages_are_normalised_within_each_condition_group():
    rewards = torch.tensor([1.0, 2.0, 4.0, 10.0, 10.0, 13.0, 0.0, 7.0])
    cond = Labels(torch.tensor([0, 0, 0, 1, 1, 1, 2, 0]), 3)
    for std, expected in (("group", _hand_advantages(rewards, cond.group_ids())),
                          ("global", None)):
        buffer = SampleBuffer(torch.zeros(8, 2), rewards, torch.Generator(), cond=cond)
        buffer.extras.update({k: torch.zeros(8, 1) for k in ("traj", "logp", "times", "sde")})
        algo(advantage_std=std).refresh(buffer)
        if expected is None:  # group means, the std of every reward
            means = torch.tensor([rewards[cond.values == c].mean() for c in cond.values.tolist()])
            expected = ((rewards - means) / (rewards.std(correction=0) + 1e-4)).clamp(-5, 5)
        torch.testing.assert_close(buffer.extras["advantages"], expected)
    assert buffer.extras["advantages"][6] == 0  # a group of one has nothing to compare with
    plain = SampleBuffer(torch.zeros(8, 2), rewards, torch.Generator())
    plain.extras.update({k: torch.zeros(8, 1) for k in ("traj", "logp", "times", "sde")})
    algo(advantage_clip=1.0).refresh(plain)  # unconditional: the whole buffer is one group
    torch.testing.assert_close(plain.extras["advantages"],
                               ((rewards - rewards.mean()) / (rewards.std(correction=0) + 1e-4)).clamp(-1, 1))


# ---------------------------------------------------------------------------------------------------------------
# (6) the loop: a short run, its checkpoint and resume


def _trainer(tmp_path):
    torch.manual_seed(0)
    model = MLP(2, hidden=16, depth=2, time_dim=8)
    config = {"algorithm": "flow-grpo", "algorithm_options": {"train_steps": 2, "clip_range": 0.2},
              "batch_size": 8, "buffer_size": 16, "refresh_every": 2, "learning_rate": 1e-2, "warmup_steps": 0,
              "sampling": {"solver": "euler", "steps": 4}, "savedir": str(tmp_path), "log_every": 1}
    return ORWCFMTrainer(model, config, "cpu", reward_fn=lambda x: -((x - torch.tensor([1.0, 0.0])) ** 2).sum(1),
                         event_shape=(2,), progress=False)


def test_a_short_run_trains_and_resumes_with_the_buffers_extras(tmp_path):
    assert ALGORITHMS["flow-grpo"] == (FlowGRPO, FlowGRPOConfig)
    run = _trainer(tmp_path / "a")
    before = copy.deepcopy(run.model.state_dict())
    run.run_steps(2)
    moved = max((run.model.state_dict()[k] - v).abs().max().item() for k, v in before.items())
    assert moved > 1e-4
    run.run_steps(1)  # step 3 of 6: mid-buffer of the second refresh
    saved = {k: v.clone() for k, v in run.buffer.extras.items()}
    assert set(saved) == {"traj", "logp", "times", "sde", "advantages"} and saved["traj"].shape == (16, 5, 2)
    path = run.save_checkpoint(tmp_path / "ckpt")
    run.run_steps(3)  # the buffer's second half, then a new refresh
    resumed = _trainer(tmp_path / "b")
    resumed.resume(path)
    assert resumed.step == 3
    assert set(resumed.buffer.extras) == set(saved)
    for key, value in saved.items():
        torch.testing.assert_close(resumed.buffer.extras[key], value, rtol=0, atol=0)
    resumed.run_steps(3)
    for key, value in run.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# (7) bad settings: one line each, naming the value


@pytest.mark.parametrize("settings, message", [
    ({"algorithm_options": {"noise_level": 0}}, "noise_level must be a number > 0, got 0"),
    ({"algorithm_options": {"clip_range": -0.1}}, "clip_range must be a number > 0, got -0.1"),
    ({"algorithm_options": {"kl_coefficient": -1}}, "kl_coefficient must be a number >= 0, got -1"),
    ({"algorithm_options": {"advantage_clip": "big"}}, "advantage_clip must be a number > 0, got 'big'"),
    ({"algorithm_options": {"train_steps": 0}}, "train_steps must be a positive integer or null, got 0"),
    ({"algorithm_options": {"sde_window": 2.5}}, "sde_window must be a positive integer or null, got 2.5"),
    ({"algorithm_options": {"train_steps": 11}}, r"train_steps must be .*\[1, 10\] \(sampling.steps = 10\)"),
    ({"algorithm_options": {"sde_window": 3, "train_steps": 4}}, r"in \[1, 3\] \(sde_window = 3\) or null, got 4"),
    ({"algorithm_options": {"sde_window": 12}}, r"sde_window must be an integer in \[1, sampling.steps = 10\]"),
    ({"algorithm_options": {"sde_window": 3, "sde_window_range": [2, 4]}}, r"sde_window_range must be .*got \[2, 4\]"),
    ({"algorithm_options": {"sde_window_range": [0, 4]}}, r"sde_window_range \[0, 4\] needs sde_window"),
    ({"algorithm_options": {"advantage_std": "batch"}}, "advantage_std must be one of group, global, got 'batch'"),
    ({"algorithm_options": {"log_prob_reduction": "max"}}, "log_prob_reduction must be one of mean, sum, got 'max'"),
    ({"algorithm_options": {"eta": 0.7}}, "unknown option 'eta' in algorithm_options of flow-grpo"),
    ({"algorithm_options": {"guidance": 2.0}}, "takes guidance from the top-level sampling.guidance"),
    ({"prompts": ["a", "b"], "prompt_dropout": 0.1}, "prompt_dropout is 0.1: set prompt_dropout 0"),
    ({"sigma_min": 0.01}, "sigma_min 0.01: set sigma_min 0"),
])
def test_bad_settings_are_one_line(settings, message):
    with pytest.raises(UserError, match=message) as err:
        finetune_config({"algorithm": "flow-grpo", "sampling": {"steps": 10}, **settings})
    assert "\n" not in str(err.value)


def test_settings_come_from_the_options_and_the_sampler():
    cfg = finetune_config({"algorithm": "flow-grpo", "sampling": {"steps": 12, "guidance": 3.0},
                           "algorithm_options": {"sde_window": 2, "kl_coefficient": 0.04}})
    alg = make_algorithm(cfg, path=StraightPath(), coupling=None)
    assert alg.config.sampling_steps == 12 and alg.config.guidance == 3.0 and alg.uses_reference
    assert alg.config.sde_window_range == (0, 6)  # the first half, as Flow-GRPO-Fast
    assert alg.config.trained_steps == 2
    assert alg.describe()["noise_level"] == 0.7 and math.isclose(alg.describe()["clip_range"], 1e-4)
    # the options (orwcfm algorithms lists them) are the algorithm_options alone, each with its help sentence
    helps = settings_help(FlowGRPOConfig)
    assert "guidance" not in helps and "sampling_steps" not in helps and all(helps.values())
