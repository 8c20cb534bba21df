"""LoRA roles on a tiny random SD3 transformer: the reference is the base exactly, the policy follows the trained
adapter only when refreshed, the W2 term is 0 at the start and its gradient reaches the adapter once it is non-zero,
the saved LoRA loads into a plain diffusers pipeline and changes its output."""

import pytest
import torch

pytest.importorskip("peft", reason="the t2i extra (pip install 'orwcfm[t2i]'); dev installs it, so CI runs this")

from diffusers import StableDiffusion3Pipeline  # noqa: E402

from orwcfm.errors import UserError  # noqa: E402
from orwcfm.finetune.orw import orw_cfm_w2_loss  # noqa: E402
from orwcfm.t2i.load import load_pipeline  # noqa: E402
from orwcfm.t2i.lora import POLICY, TRAIN, LoraRoles, LoraSettings  # noqa: E402
from orwcfm.t2i.prompts import encode_prompts  # noqa: E402
from orwcfm.t2i.sd3 import SD3Field  # noqa: E402


def inputs(pipe, seed=0):
    cond = encode_prompts(pipe, ["a red apple", "a blue car"]).embeds(torch.tensor([0, 1]))
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(2, generator=gen), torch.randn(2, 4, 32, 32, generator=gen), cond


def perturb(roles, adapter=TRAIN, scale=0.5, seed=0):
    """LoRA's B starts at 0, so nothing would differ: give the adapter's B matrices random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in roles.transformer.named_parameters():
            if f"lora_B.{adapter}." in name:
                p.copy_(scale * torch.randn(p.shape, generator=gen))


def test_the_roles_are_states_of_one_network(tiny_sd3_folder):
    pipe = load_pipeline(tiny_sd3_folder)
    t, z, cond = inputs(pipe)
    field = SD3Field(pipe.transformer)
    with torch.no_grad():
        base = field(t, z, cond)
        roles = LoraRoles(field, pipe.transformer, LoraSettings(rank=4))
        assert torch.equal(roles.reference()(t, z, cond), base) and torch.equal(roles.model(t, z, cond), base)
        perturb(roles)
        trained = roles.model(t, z, cond)
        assert not torch.allclose(trained, base, atol=1e-4)
        assert torch.equal(roles.reference()(t, z, cond), base)  # adapters off: the base weights exactly
        assert torch.equal(roles.policy()(t, z, cond), base)  # the policy has not been refreshed yet
        roles.refresh_policy()
        assert torch.equal(roles.policy()(t, z, cond), trained)
        assert torch.equal(roles.model(t, z, cond), trained)  # switching states back and forth changes nothing
    # one copy of the base: the roles share every base weight; only the trained adapter is trainable
    names = {n for n, p in pipe.transformer.named_parameters() if p.requires_grad}
    assert names and all(f".{TRAIN}." in n for n in names)
    assert {id(p) for p in roles.trainable_parameters()} == {id(p) for n, p in pipe.transformer.named_parameters()
                                                            if f".{TRAIN}." in n}
    assert not any(p.requires_grad for n, p in pipe.transformer.named_parameters() if f".{POLICY}." in n)


def test_w2_term_is_zero_at_start_and_its_gradient_reaches_the_adapter(tiny_sd3_folder):
    pipe = load_pipeline(tiny_sd3_folder)
    t, z, cond = inputs(pipe, seed=1)
    x1 = torch.randn_like(z)
    roles = LoraRoles(SD3Field(pipe.transformer), pipe.transformer, LoraSettings(rank=4))

    def w2_only():  # zero weights: the loss is alpha * W2 alone
        out = orw_cfm_w2_loss(roles.model, roles.reference(), x1, torch.zeros(2), z, t, alpha=1.0, cond=cond)
        pipe.transformer.zero_grad(set_to_none=True)
        out.loss.backward()
        return out, {n: p.grad for n, p in pipe.transformer.named_parameters() if p.grad is not None}

    out, grads = w2_only()
    assert out.w2.item() == 0.0 and all(g.abs().max() == 0 for g in grads.values())
    perturb(roles, scale=0.05)
    out, grads = w2_only()
    assert out.w2.item() > 0
    assert grads and all(f".{TRAIN}." in n for n in grads)  # the base and the policy adapter get nothing
    assert any(g.abs().max() > 0 for n, g in grads.items() if "lora_B" in n)
    assert any(g.abs().max() > 0 for n, g in grads.items() if "lora_A" in n)


def test_the_saved_lora_loads_into_diffusers_and_changes_its_output(tiny_sd3_folder, tmp_path):
    pipe = load_pipeline(tiny_sd3_folder)
    roles = LoraRoles(SD3Field(pipe.transformer), pipe.transformer, LoraSettings(rank=4, alpha=8))
    perturb(roles, scale=0.2)
    path = roles.save_lora(tmp_path / "lora", StableDiffusion3Pipeline)
    assert path.name == "pytorch_lora_weights.safetensors" and path.exists()

    t, z, cond = inputs(pipe, seed=2)
    with torch.no_grad():
        ours = roles.model(t, z, cond)
    fresh = load_pipeline(tiny_sd3_folder)
    run = dict(prompt="a red apple", num_inference_steps=2, guidance_scale=1.0, height=32, width=32,
               output_type="latent", latents=torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(3)))
    before = fresh(**run).images
    fresh.load_lora_weights(tmp_path / "lora")
    after = fresh(**run).images
    assert not torch.allclose(before, after, atol=1e-4)
    with torch.no_grad():  # the loaded LoRA is our trained adapter: the same velocity
        loaded = SD3Field(fresh.transformer)(t, z, cond)
    assert torch.allclose(loaded, ours, atol=1e-5)


def test_bad_lora_settings_are_one_line(tiny_sd3):
    with pytest.raises(UserError, match=r"lora target_modules \['to_nothing'\] match no linear layer of "
                                        r"SD3Transformer2DModel \(its linear layers end in e.g. "):
        LoraRoles(SD3Field(tiny_sd3.transformer), tiny_sd3.transformer, LoraSettings(target_modules=("to_q", "to_nothing")))
    with pytest.raises(UserError, match=r"lora rank must be a positive integer, got 0"):
        LoraSettings(rank=0)
    assert not any("lora" in n for n, _ in tiny_sd3.transformer.named_parameters())  # nothing was added


def brightness_for_bright_prompts(images, prompts):
    """+mean brightness for prompts with 'bright', -mean otherwise: a prompt reward fn(images, prompts)."""
    sign = torch.tensor([1.0 if "bright" in p else -1.0 for p in prompts])
    return sign * images.flatten(1).mean(1)


def lora_trainer(folder, reward=brightness_for_bright_prompts, time_grid=None, **overrides):
    """ORW-CFM-W2 with LoRA roles on the tiny SD3 (16x16 latents, 2 samples per prompt), through ORWCFMTrainer."""
    from orwcfm.finetune.trainer import ORWCFMTrainer
    from orwcfm.t2i.prompts import TextPrompts
    from orwcfm.t2i.rewards import DecodedReward

    pipe = load_pipeline(folder)
    prompts = TextPrompts(encode_prompts(pipe, ["a bright sky", "a dark night"]), samples_per_prompt=2)
    field = SD3Field(pipe.transformer)
    roles = LoraRoles(field, pipe.transformer, LoraSettings(rank=4))
    config = {"learning_rate": 1e-2, "batch_size": 4, "buffer_size": 8, "w2_coefficient": 0.1, "temperature": 1.0,
              "coupling": "ot", "sampling": {"solver": "euler", "steps": 2}, "ema_decay": None, "warmup_steps": 0,
              "refresh_every": 2, **overrides}
    trainer = ORWCFMTrainer(roles.model, config, "cpu", reward_fn=DecodedReward(reward, pipe.vae, prompts),
                            prompts=prompts, roles=roles, event_shape=(4, 16, 16), progress=False,
                            time_grid=time_grid)
    return trainer, pipe, field, roles, prompts


def test_orw_cfm_w2_trains_the_adapter_of_a_tiny_sd3_through_the_loop(tiny_sd3_folder):
    seen: list[list[str]] = []

    def reward(images, texts):
        seen.append(texts)
        assert images.shape[1:] == (3, 16, 16) and 0 <= images.min() and images.max() <= 1
        return brightness_for_bright_prompts(images, texts)

    trainer, pipe, field, roles, prompts = lora_trainer(tiny_sd3_folder, reward, refresh_every=None)
    t, z = torch.rand(2), torch.randn(2, 4, 16, 16)
    cond = prompts.spread(2)
    with torch.no_grad():
        base = field(t, z, cond)
    before = {n: p.detach().clone() for n, p in pipe.transformer.named_parameters()}
    trainer.run_steps(3)
    after = dict(pipe.transformer.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(f".{TRAIN}." in n for n in changed)  # only the trained adapter moved
    assert seen and all(len(texts) == 8 and texts[0] == texts[1] for texts in seen)  # 2 samples per drawn prompt
    with torch.no_grad():
        assert torch.equal(roles.reference()(t, z, cond), base)  # the reference is still the base exactly
        assert not torch.allclose(roles.model(t, z, cond), base, atol=1e-6)


def test_a_lora_checkpoint_holds_adapters_only_and_resumes_exactly(tiny_sd3_folder, tmp_path):
    from safetensors.torch import load_file

    trainer, pipe, *_ = lora_trainer(tiny_sd3_folder)
    trainer.run_steps(3)  # a refresh at steps 0 and 2: the policy adapter and the buffer are mid-period
    where = trainer.save_checkpoint(tmp_path / "ckpt")
    policy_at_save = trainer.roles.adapter_state(POLICY)  # refreshed at step 2: not the trained adapter of step 3
    assert any(not torch.equal(v, trainer.roles.adapter_state(TRAIN)[k]) for k, v in policy_at_save.items())
    trainer.run_steps(3)
    straight = {k: v.clone() for k, v in trainer.roles.adapter_state(TRAIN).items()}

    saved = load_file(str(where / "model.safetensors"))
    assert saved and all("lora_" in k for k in saved)  # never the base weights
    base_size = sum(v.numel() for k, v in pipe.transformer.state_dict().items() if "lora_" not in k)
    assert sum(v.numel() for v in saved.values()) < base_size / 4

    again, *_ = lora_trainer(tiny_sd3_folder)
    again.resume(where)
    restored = again.roles.adapter_state(POLICY)
    assert all(torch.equal(restored[k], v) for k, v in policy_at_save.items())  # the policy adapter came back too
    again.run_steps(3)
    resumed = again.roles.adapter_state(TRAIN)
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_the_pipelines_shifted_schedule_reaches_every_sampler_of_the_run(tiny_sd3_folder):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from orwcfm.sampling import integrate
    from orwcfm.t2i.sd3 import time_grid

    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(tiny_sd3_folder, subfolder="scheduler")

    def grid(steps):
        return time_grid(scheduler, steps)

    trainer, pipe, field, roles, prompts = lora_trainer(tiny_sd3_folder, time_grid=grid)
    seen = []
    collect = trainer.algorithm.collect
    trainer.algorithm.collect = lambda *a, **k: seen.append(a[4]) or collect(*a, **k)
    trainer.run_steps(1)
    assert len(seen) == 1 and torch.equal(seen[0], grid(2))  # the policy sampled on the shifted grid
    assert not torch.allclose(grid(2), torch.linspace(0, 1, 3))  # shift 3: not the uniform grid
    x = trainer.sample(4, seed=5)
    x0 = torch.randn((4, 4, 16, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = integrate(roles.model, x0, solver="euler", steps=2, cond=prompts.spread(4), times=grid(2)).samples
        uniform = integrate(roles.model, x0, solver="euler", steps=2, cond=prompts.spread(4)).samples
    assert torch.allclose(x, expected, atol=1e-6) and not torch.allclose(x, uniform, atol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradient_after_the_reference_pass(tiny_sd3_folder):
    # a checkpointed backward recomputes the forward in whatever adapter state the network is in at backward time;
    # the loss runs the reference (adapters off) after the model, so that state must not leak into the backward
    grads = []
    for checkpointing in (False, True):
        pipe = load_pipeline(tiny_sd3_folder)
        t, z, cond = inputs(pipe, seed=4)
        torch.manual_seed(0)  # peft draws the adapters' A from the global generator: the same A in both runs
        roles = LoraRoles(SD3Field(pipe.transformer), pipe.transformer, LoraSettings(rank=4),
                          gradient_checkpointing=checkpointing)
        perturb(roles, scale=0.05)
        out = orw_cfm_w2_loss(roles.model, roles.reference(), torch.randn_like(z), torch.ones(2), z, t, alpha=1.0,
                              cond=cond)
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in pipe.transformer.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-4) for n in grads[0])
