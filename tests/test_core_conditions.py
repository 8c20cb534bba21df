"""Conditions through the fine-tuning core: the loss's reorderings, the buffer, grouped weights, prompt sets, the
loop (collect -> score -> minibatch -> loss under conditions) and the conditional reward's checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from orwcfm.conditions import ClassPrompts, Labels, cond_from_state, cond_state
from orwcfm.couplings import independent_coupling, ot_coupling
from orwcfm.errors import UserError
from orwcfm.finetune.buffer import SampleBuffer
from orwcfm.finetune.orw import orw_cfm_w2_loss
from orwcfm.finetune.weights import RefreshScale, group_logmeanexp, grouped_log_z, loss_weights
from orwcfm.paths import StraightPath


class Recorder(nn.Module):
    """A conditional field that remembers every (x, labels) it is called with; v = x + label."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, t: torch.Tensor, x: torch.Tensor, cond: Labels) -> torch.Tensor:
        self.calls.append((x.detach().clone(), cond.values.clone()))
        return self.scale * x + cond.values[:, None].float()


def labelled_batch(n: int = 12, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, Labels]:
    """x1 whose first coordinate *is* its label (the other is noise): a reordering that forgets the conditions
    shows up as a row whose first coordinate differs from the label it was called with."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (n,), generator=gen)
    x1 = torch.stack([labels.float(), torch.randn(n, generator=gen)], 1)
    return x1, Labels(labels, classes)


@pytest.mark.parametrize("coupling", [independent_coupling, ot_coupling])
@pytest.mark.parametrize("resample", [False, True])
def test_every_network_call_sees_each_sample_with_its_own_condition(coupling, resample):
    x1, cond = labelled_batch()
    weights = torch.linspace(0.1, 3.0, len(x1))  # uneven: resampling repeats some rows and drops others
    model, reference = Recorder(), Recorder()
    t = torch.ones(len(x1))  # at t = 1 the straight path's x_t is x1 itself: the label can be read off x_t
    x0 = torch.randn(x1.shape, generator=torch.Generator().manual_seed(1))
    orw_cfm_w2_loss(model, reference, x1, weights, x0, t, alpha=0.5, coupling=coupling, resample=resample,
                    generator=torch.Generator().manual_seed(2), cond=cond, path=StraightPath(0.0))
    assert model.calls and reference.calls
    for x, labels in model.calls + reference.calls:
        assert torch.equal(x[:, 0], labels.float())


def test_ot_pairs_only_within_a_condition():
    x1, cond = labelled_batch(n=16, classes=2)
    x0 = torch.randn(x1.shape, generator=torch.Generator().manual_seed(3))
    pair = ot_coupling(x0, x1, groups=cond.group_ids())
    # every noise row keeps a sample of the condition that was drawn beside it
    assert torch.equal(cond.values[pair.index], cond.values)


def test_the_loss_with_conditions_equals_a_hand_computation():
    x1, cond = labelled_batch(n=6)
    weights = torch.tensor([1.0, 2.0, 0.5, 1.5, 1.0, 3.0])
    model, reference = Recorder(), Recorder()
    with torch.no_grad():
        reference.scale.fill_(0.5)
    gen = torch.Generator().manual_seed(4)
    x0, t = torch.randn(x1.shape, generator=gen), torch.rand(6, generator=gen)
    out = orw_cfm_w2_loss(model, reference, x1, weights, x0, t, alpha=0.3, cond=cond)
    x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
    v = x_t + cond.values[:, None].float()
    v_ref = 0.5 * x_t + cond.values[:, None].float()
    fm = (weights * (v - (x1 - x0)).pow(2).mean(1)).mean()
    w2 = (v - v_ref).pow(2).mean(1).mean()
    torch.testing.assert_close(out.loss, fm + 0.3 * w2)


def test_the_buffer_shuffles_conditions_with_their_samples():
    x1, cond = labelled_batch(n=10)
    buffer = SampleBuffer(x1, x1[:, 1], torch.Generator().manual_seed(0), cond=cond)
    for _ in range(7):  # crosses passes, i.e. reshuffles
        batch = buffer.next(4)
        assert torch.equal(batch.x[:, 0], batch.cond.values.float())
        assert torch.equal(batch.rewards, batch.x[:, 1])
    with pytest.raises(UserError, match="got 9 conditions for 10 buffer samples"):
        SampleBuffer(x1, x1[:, 1], torch.Generator(), cond=Labels(cond.values[:9], 3))


def test_saved_conditions_come_back_equal():
    cond = Labels(torch.tensor([2, 0, 1]), 3).drop(torch.tensor([False, True, False]))
    back = cond_from_state(cond_state(cond))
    assert torch.equal(back.values, cond.values) and torch.equal(back.dropped, cond.dropped) and back.num_classes == 3
    assert cond_state(None) is None and cond_from_state(None) is None


def test_group_logmeanexp_against_a_loop():
    s = torch.tensor([0.3, -1.0, 2.0, 5.0, 0.0, 1.0])
    groups = torch.tensor([4, 1, 4, 9, 1, 4])
    got = group_logmeanexp(s, groups)
    for i in range(len(s)):
        members = s[groups == groups[i]]
        assert got[i].item() == pytest.approx(math.log(members.exp().mean().item()), rel=1e-6)


def test_grouped_weights_average_one_within_every_condition():
    rewards = torch.tensor([0.0, 1.0, 2.0, 10.0, 11.0, 12.0])  # condition 1's rewards are all far larger
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    scale = RefreshScale(log_z=torch.tensor(0.0), shift=torch.tensor(0.0))
    batch = loss_weights(rewards, 1.0, 0.1, "batch-normalized", scale, groups=groups).weights
    buffer = loss_weights(rewards, 1.0, 0.1, "buffer-normalized", scale,
                          sample_log_z=grouped_log_z(rewards, groups, 1.0)).weights
    for w in (batch, buffer):
        torch.testing.assert_close(w[:3].mean(), torch.tensor(1.0))
        torch.testing.assert_close(w[3:].mean(), torch.tensor(1.0))
        # within a group the ratios are the paper's exp(tau (r_i - r_j))
        torch.testing.assert_close(w[1] / w[0], torch.tensor(math.e))
    ungrouped = loss_weights(rewards, 1.0, 0.1, "batch-normalized", scale).weights
    assert ungrouped[:3].mean() < 0.01  # over the batch, condition 0 would get almost no weight
    with pytest.raises(ValueError, match="unnormalised"):
        loss_weights(rewards, 1.0, 0.1, "paper", scale, groups=groups)


def test_weight_groups_condition_is_refused_with_the_papers_weights():
    from orwcfm.algorithms import ORWConfig

    with pytest.raises(UserError, match="weighting 'paper' is unnormalised"):
        ORWConfig(weighting="paper", weight_groups="condition")
    with pytest.raises(UserError, match="weight_groups must be one of batch, condition, got 'prompt'"):
        ORWConfig(weighting="batch-normalized", weight_groups="prompt")


def test_prompt_sets_draw_groups_and_spread_evenly():
    prompts = ClassPrompts(("a", "b", "c"), samples_per_prompt=4)
    drawn = prompts.draw(12, torch.Generator().manual_seed(0))
    assert drawn.num_classes == 3
    assert all(len(set(drawn.values[i : i + 4].tolist())) == 1 for i in range(0, 12, 4))
    assert prompts.spread(7).values.tolist() == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(UserError, match=r"samples_per_prompt 4 must divide the number of samples drawn per refresh \(10\)"):
        prompts.draw(10, torch.Generator())
    with pytest.raises(UserError, match="the prompt set is empty"):
        ClassPrompts(())
    with pytest.raises(UserError, match="every prompt must be a non-empty string, got ''"):
        ClassPrompts(("a", ""))


def test_digits_align_is_the_log_probability_of_the_prompted_digit():
    from orwcfm.models import DigitsClassifier
    from orwcfm.rewards.base import RewardError, call_reward
    from orwcfm.rewards.digits import DigitsAlignReward

    torch.manual_seed(0)
    classifier = DigitsClassifier()
    reward = DigitsAlignReward(classifier)
    x = torch.randn(5, 1, 8, 8)
    cond = Labels(torch.tensor([3, 0, 9, 3, 1]), 10)
    with torch.no_grad():
        expected = classifier.eval()(x).log_softmax(-1)[torch.arange(5), cond.values].clamp_min(math.log(1e-6))
    torch.testing.assert_close(reward(x, cond), expected)
    hits = (classifier(x).argmax(-1) == cond.values).float()
    assert reward.metrics(x, cond)["alignment"] == pytest.approx(hits.mean().item())
    with pytest.raises(UserError, match=r"digits-align needs the prompted digit of every sample"):
        reward(x)
    with pytest.raises(RewardError, match=r"returned shape \(5, 1\); expected shape \(5,\), one value per sample"):
        call_reward(lambda x, cond: reward(x, cond)[:, None], x, name="r", step=0, cond=cond)


def test_the_judge_is_chosen_by_configuration_not_by_shape():
    from orwcfm.finetune.evaluate import judge_dataset

    class DigitsOnMnist:  # a reward that says whose classifier it is
        dataset = "mnist5k"

    assert judge_dataset("auto", DigitsOnMnist(), reference_data="digits") == "mnist5k"  # the reward's, first
    assert judge_dataset("auto", lambda x: x, reference_data="digits") == "digits"  # then the reference's data
    assert judge_dataset("auto", lambda x: x, reference_data="8gaussians") is None  # not a labelled digit set
    assert judge_dataset("none", DigitsOnMnist()) is None
    assert judge_dataset("digits", None) == "digits"
    with pytest.raises(UserError, match="judge must be one of auto, none, digits, mnist5k, got 'shape'"):
        judge_dataset("shape", None)


class CondMLP(nn.Module):
    """A tiny class-conditional 2-D field v(t, x, labels): the label's embedding joins t and x."""

    num_classes = 2

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(3, 8)  # two classes and the null row
        self.net = nn.Sequential(nn.Linear(11, 32), nn.SiLU(), nn.Linear(32, 2))

    def forward(self, t: torch.Tensor, x: torch.Tensor, cond: Labels) -> torch.Tensor:
        return self.net(torch.cat([t[:, None], x, self.embed(cond.embedding_index())], 1))


CENTRES = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])


def toward_prompted_centre(x: torch.Tensor, cond: Labels) -> torch.Tensor:
    """reward(x, cond): closeness to the centre of the prompted class (left for 0, right for 1)."""
    return -(x - CENTRES[cond.values]).pow(2).sum(1)


def conditional_trainer(tmp_path, **overrides):
    from orwcfm.finetune.trainer import ORWCFMTrainer

    torch.manual_seed(0)
    config = {"prompts": ["left", "right"], "samples_per_prompt": 4, "batch_size": 16, "buffer_size": 32,
              "learning_rate": 1e-2, "temperature": 1.0, "w2_coefficient": 0.0, "eval_samples": 64, "log_every": 5,
              "savedir": str(tmp_path), "sampling": {"solver": "euler", "steps": 4},
              "eval_sampling": {"solver": "euler", "steps": 4}, "event_shape": [2], **overrides}
    return ORWCFMTrainer(CondMLP(), config, reward_fn=toward_prompted_centre, progress=False)


def test_a_conditional_run_learns_each_prompt_its_own_reward(tmp_path):
    trainer = conditional_trainer(tmp_path / "run")
    summary = trainer.train(3, 20)
    x = trainer.sample(200, seed=1)  # spread over the two prompts: 0, 1, 0, 1, ...
    left, right = x[0::2, 0].mean().item(), x[1::2, 0].mean().item()
    assert left > 1.0 and right < -1.0  # each prompt's samples moved toward its own centre
    assert summary.reward_mean_after > summary.reward_mean_before + 2.0
    assert summary.diversity_per_prompt_before is not None and summary.diversity_per_prompt_after is not None
    assert trainer.reward_evaluations == 3 * 32  # one refresh of 32 samples per epoch


def test_a_conditional_run_resumes_exactly_with_its_buffer(tmp_path):
    straight = conditional_trainer(tmp_path / "a", refresh_every=7)
    straight.train(2, 5)
    first = conditional_trainer(tmp_path / "b", refresh_every=7)
    first.train(1, 5)
    resumed = conditional_trainer(tmp_path / "b", refresh_every=7)
    resumed.resume(tmp_path / "b")
    assert resumed.buffer is not None and resumed.buffer.cond is not None  # the buffer came back with its prompts
    resumed.train(2, 5)
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_conditional_bad_input_is_one_line(tmp_path):
    with pytest.raises(UserError, match="3 prompts for a model of 2 classes"):
        conditional_trainer(tmp_path, prompts=["a", "b", "c"])
    with pytest.raises(UserError, match=r"samples_per_prompt 5 must divide the samples drawn per refresh \(buffer_size 32\)"):
        conditional_trainer(tmp_path, samples_per_prompt=5)
    with pytest.raises(UserError, match=r"config key 'prompts' must be a non-empty list"):
        conditional_trainer(tmp_path, prompts=[])
    with pytest.raises(UserError, match=r"config key 'sampling.guidance' must be a number >= 0 \(1 = no guidance\), got -1.0"):
        conditional_trainer(tmp_path, sampling={"guidance": -1.0})
    trainer = conditional_trainer(tmp_path)
    trainer.reward_fn = lambda x, cond: toward_prompted_centre(x, cond)[:8]
    with pytest.raises(UserError, match=r"returned shape \(8,\); expected shape \(32,\), one value per sample"):
        trainer.run_steps(1)


def test_the_judge_measures_alignment_with_the_gold_classifier():
    from orwcfm.finetune.evaluate import DigitsJudge
    from orwcfm.models import DigitsClassifier

    torch.manual_seed(0)
    reward_net, gold_net = DigitsClassifier(), DigitsClassifier()
    data = torch.randn(40, 1, 8, 8)
    judge = DigitsJudge(reward_net, gold_net, data)
    x = torch.randn(12, 1, 8, 8)
    with torch.no_grad():
        predicted = gold_net.eval()(x).argmax(-1)
    cond = Labels(torch.cat([predicted[:9], (predicted[9:] + 1) % 10]), 10)  # 9 of 12 agree with the gold net
    assert judge(x, None, cond)["gold_alignment"] == pytest.approx(9 / 12)
    assert "gold_alignment" not in judge(x, None)


def test_offline_rwr_is_a_refresh_schedule(tmp_path):
    offline = conditional_trainer(tmp_path / "off", refresh="offline")
    start = {k: v.clone() for k, v in offline.policy.state_dict().items()}
    offline.train(3, 5)
    assert offline.reward_evaluations == 32  # one buffer, drawn once
    for k, v in offline.policy.state_dict().items():  # the policy stayed the reference
        assert torch.equal(v, start[k])
    trick = conditional_trainer(tmp_path / "trick", refresh_every=16)  # the former way: a period past the run
    trick.train(3, 5)
    for a, b in zip(offline.model.state_dict().values(), trick.model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(UserError, match="'offline' draws one buffer from the reference and never refreshes"):
        conditional_trainer(tmp_path, refresh="offline", buffer_size=None)


def test_diversity_within_a_condition_against_a_hand_computation():
    from orwcfm.finetune.evaluate import per_condition_diversity

    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0], [10.0, 1.0], [50.0, 50.0]])
    cond = Labels(torch.tensor([0, 0, 2, 2, 1]), 3)  # pairs at distance 5 and 1; class 1 has no pair
    assert per_condition_diversity(x, cond) == pytest.approx([5.0, 1.0])


def test_digits_align_per_prompt_alignment():
    from orwcfm.models import DigitsClassifier
    from orwcfm.rewards.digits import DigitsAlignReward

    torch.manual_seed(1)
    classifier = DigitsClassifier().eval()
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        pred = classifier(x).argmax(-1)
    prompted = torch.tensor([pred[0], pred[1], (pred[2] + 1) % 10, pred[3], (pred[4] + 1) % 10, (pred[5] + 1) % 10])
    out = DigitsAlignReward(classifier).metrics(x, Labels(prompted, 10))
    assert out["alignment"] == pytest.approx(0.5)
    per = torch.tensor(out["alignment_per_prompt"])
    for k in range(10):
        members = prompted == k
        if members.any():
            assert per[k].item() == pytest.approx((pred[members] == k).float().mean().item())
        else:
            assert torch.isnan(per[k])
