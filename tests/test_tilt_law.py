"""The tilt law of online reward-weighted CFM (alpha = 0): p_{n+1} ∝ p_n exp(tau r), so N(0, 1) with r(x) = x
becomes N(N tau, 1) after N epochs (Fan et al., ICLR 2025). experiments/tilt_law.py measures N = 1..5 in full;
docs/reproduction.md has its table."""

import math

import pytest
import torch

from orwcfm import ORWCFMTrainer
from orwcfm.checkpoint import load_checkpoint
from orwcfm.config import pretrain_config
from orwcfm.finetune.weights import normalized_weights
from orwcfm.train import pretrain


def weighted_moments(x: torch.Tensor, w: torch.Tensor) -> tuple[float, float]:
    mean = (w * x).sum() / w.sum()
    return float(mean), float((w * (x - mean) ** 2).sum() / w.sum())


@pytest.mark.parametrize("tau", [0.25, 0.5, 1.0])
def test_one_epoch_of_weights_is_the_exponential_tilt(tau):
    # Importance-sampling identity: N(0, 1) samples weighted by B * softmax(tau * x) have the moments of
    # N(0, 1) * exp(tau x) ∝ N(tau, 1). The effective sample size is n / exp(tau^2) (>= 147,000 here), so the
    # standard errors are <= 0.003 (mean) and <= 0.005 (variance); 0.02 is over 4 of them.
    x = torch.randn(400_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = normalized_weights(x, tau)  # the reward is r(x) = x
    assert w.mean().item() == pytest.approx(1.0, abs=1e-9)
    assert len(x) / w.pow(2).mean().item() == pytest.approx(len(x) / math.exp(tau**2), rel=0.05)
    mean, var = weighted_moments(x, w)
    assert mean == pytest.approx(tau, abs=0.02)
    assert var == pytest.approx(1.0, abs=0.02)


def test_two_rounds_of_reweighting_and_resampling_give_n_two_tau():
    # The mechanism without a network: each "epoch" resamples the current samples by their weights (the fitted
    # policy of an ideal fit), then the next epoch weights those. Two epochs: N(2 tau, 1).
    tau, g = 0.5, torch.Generator().manual_seed(1)
    x = torch.randn(400_000, generator=g, dtype=torch.float64)
    for _ in range(2):
        x = x[torch.multinomial(normalized_weights(x, tau), len(x), replacement=True, generator=g)]
    # resampling duplicates points (effective size ~ n / (1 + e^{tau^2}) per round): standard errors ~ 0.003 / 0.005
    assert x.mean().item() == pytest.approx(2 * tau, abs=0.03)
    assert x.var().item() == pytest.approx(1.0, abs=0.03)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks: one torch thread is fastest, and several are much slower on a busy machine (~10x measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_gaussian_reference(tmp_path_factory, one_thread):
    """A small MLP flow for N(0, 1) (hidden 64, depth 2; ~7 s on one core): the built-in ``builtin:gaussian-1d``
    (hidden 256, depth 3) takes ~25 s to pretrain and ~3x longer per fine-tuning step."""
    cfg = pretrain_config(data={"name": "gaussian-1d"}, steps=3000, batch_size=512, learning_rate=3e-3, warmup_steps=50,
                          checkpoint_every=3000, num_samples=16, log_every=500, ema_decay=0.99,
                          model={"kind": "mlp", "options": {"hidden": 64, "depth": 2}})
    return pretrain(cfg, tmp_path_factory.mktemp("gauss-ref"), progress=False).checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("coupling", ["independent", "ot"])
def test_two_epochs_of_alpha_zero_follow_the_tilt_law(small_gaussian_reference, one_thread, tmp_path, coupling):
    # The real mechanism: ORWCFMTrainer, alpha = 0, the built-in linear reward r(x) = x, the policy refreshed and a
    # buffer of 32768 policy samples redrawn at the start of each epoch, each epoch fitted by 400 steps of weighted
    # CFM. With OT pairing the weights are applied by resampling before pairing; weighting the OT pairs instead
    # tilts the noise as much as the samples, and in 1-D the model did not move at all (mean 0 after 2 epochs).
    tau = 0.5
    config = dict(w2_coefficient=0.0, temperature=tau, reward="linear", learning_rate=1e-4, batch_size=512,
                  buffer_size=32768, coupling=coupling, sampling={"solver": "midpoint", "steps": 10},
                  eval_samples=64, log_every=100, seed=0, savedir=str(tmp_path), run_name="tilt")
    model = load_checkpoint(small_gaussian_reference).build_model("ema")
    trainer = ORWCFMTrainer(model, config, "cpu", progress=False)
    trainer.load_pretrained(small_gaussian_reference)

    def moments() -> tuple[float, float]:
        x = trainer.sample(20_000, seed=123)[:, 0].double()  # sample CI: +-0.014 (mean), +-0.02 (variance)
        return x.mean().item(), x.var().item()

    mean, var = moments()
    assert mean == pytest.approx(0.0, abs=0.05)  # 3 pretraining seeds: |mean| <= 0.004, |variance - 1| <= 0.012
    assert var == pytest.approx(1.0, abs=0.06)
    # Tolerances from 12 runs of these settings (3 pretraining seeds x 3-6 fine-tuning seeds), after N = 2:
    # mean 0.99 +- 0.028 (sd; range 0.958..1.042), variance 1.03 +- 0.025 (range 0.984..1.053). 0.1 and 0.12 are
    # ~3.5 sd from the average and 2 sd beyond the worst run, and still fail a policy that is never refreshed
    # (mean tau after 2 epochs) or OT pairing with weighted pairs (mean 0).
    for epochs in (1, 2):
        trainer.train(num_epochs=epochs, steps_per_epoch=400)
        mean, var = moments()
        assert mean == pytest.approx(epochs * tau, abs=0.1), f"after {epochs} epochs"
        assert var == pytest.approx(1.0, abs=0.12), f"after {epochs} epochs"
    assert [row["epoch"] for row in trainer.history] == [0, 1, 2]
    assert trainer.reward_evaluations == 2 * 32768  # one buffer per epoch: the policy was refreshed twice
