"""Flow-GRPO and DiffusionNFT on a tiny random SD3 pipeline with the LoRA roles (issue 15): the same loop, the same
roles as ORW-CFM-W2. At a refresh the policy adapter is the trained one, so Flow-GRPO's stored step log-probabilities
are the trained model's (ratio 1) and DiffusionNFT's old velocity is the model's (deviation 0); the SDE and the
losses run on the pipeline's shifted schedule and under classifier-free guidance; their gradients reach the trained
adapter only; a few steps of the loop move only that adapter and leave the reference the base exactly; and the
command line runs them on builtin:tiny-sd3 and writes a LoRA that diffusers loads."""

import shutil

import pytest
import torch

pytest.importorskip("peft", reason="the t2i extra (pip install 'orwcfm[t2i]'); dev installs it, so CI runs this")

from diffusers import FlowMatchEulerDiscreteScheduler  # noqa: E402

from orwcfm.algorithms.base import LossContext  # noqa: E402
from orwcfm.cli import main  # noqa: E402
from orwcfm.t2i.lora import TRAIN  # noqa: E402
from orwcfm.t2i.sd3 import time_grid  # noqa: E402

from .test_t2i_lora import lora_trainer, perturb  # noqa: E402

SETTINGS = {
    # Flow-GRPO: every step stochastic, all 3 trained, guidance 2 (two passes: the guided field is the policy)
    "flow-grpo": {"algorithm": "flow-grpo", "sampling": {"solver": "euler", "steps": 3, "guidance": 2.0},
                  "algorithm_options": {"kl_coefficient": 0.1, "clip_range": 0.2}},
    # DiffusionNFT refuses the OT pairing (signed per-sample coefficients)
    "diffusion-nft": {"algorithm": "diffusion-nft", "coupling": "independent",
                      "sampling": {"solver": "euler", "steps": 3}, "algorithm_options": {"ref_coefficient": 0.1}},
}


def trainer_for(folder, name):
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
    grids = {}

    def grid(steps):
        if steps not in grids:
            grids[steps] = time_grid(scheduler, steps)
        return grids[steps]

    trainer, pipe, field, roles, prompts = lora_trainer(folder, time_grid=grid, **SETTINGS[name])
    return trainer, pipe, roles, prompts, grid


def adapter_grads(loss, transformer):
    named = [(n, p) for n, p in transformer.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return {n: g for (n, _), g in zip(named, grads)}


@pytest.mark.parametrize("name", ["flow-grpo", "diffusion-nft"])
def test_the_family_runs_on_tiny_sd3_with_the_lora_roles(tiny_sd3_folder, name):
    trainer, pipe, roles, prompts, grid = trainer_for(tiny_sd3_folder, name)
    assert all(".lora_" in n for n, p in pipe.transformer.named_parameters() if p.requires_grad)
    # the trained adapter off B = 0, so that the policy equals it only if the refresh copied it (and the model is
    # not the reference)
    perturb(roles, scale=0.2)
    batch = trainer._next_batch()  # step 0: refresh (policy <- trained adapter), collect on the shifted grid, score
    assert trainer.buffer is not None and len(trainer.buffer) == 8
    x0 = torch.randn(batch.x.shape, generator=torch.Generator().manual_seed(1))
    t = torch.rand(batch.x.shape[0], generator=torch.Generator().manual_seed(2))
    context = trainer._loss_context()
    out = trainer.algorithm.loss(roles.model, roles.reference(), batch, x0, t, torch.Generator().manual_seed(3),
                                 context)
    if name == "flow-grpo":
        extras = trainer.buffer.extras
        assert extras["traj"].shape == (8, 4, 4, 16, 16)  # x_0 .. x_3 of each sample
        assert torch.equal(extras["times"][0], grid(3).to(extras["times"].dtype))  # the pipeline's shifted grid
        assert not torch.allclose(grid(3), torch.linspace(0, 1, 4))
        # the policy that stored the log-probabilities is the trained model at the refresh: ratio 1, nothing clipped
        assert abs(float(out.stats["ratio_mean"]) - 1) < 1e-5 and float(out.stats["clip_fraction"]) == 0
        assert float(out.stats["kl"]) > 0  # the perturbed model is not the reference
    else:
        assert float(out.stats["old_deviation"]) == 0  # the old policy is the model at the refresh
        assert context.policy is not None
    grads = adapter_grads(out.loss, pipe.transformer)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if f".{TRAIN}." in n)
    assert all(g is None or g.abs().sum() == 0 for n, g in grads.items() if f".{TRAIN}." not in n)

    # a few steps of the loop: only the adapters move (the trained one by its steps, the policy's copy of it at the
    # refresh of step 2), the base weights do not, the reference stays the base exactly
    tt, z, cond = torch.rand(2), torch.randn(2, 4, 16, 16), prompts.spread(2)
    with torch.no_grad():
        base = roles.reference()(tt, z, cond).clone()
    before = {n: p.detach().clone() for n, p in pipe.transformer.named_parameters()}
    trainer.run_steps(3)
    changed = {n for n, p in pipe.transformer.named_parameters() if not torch.equal(before[n], p)}
    assert any(f".{TRAIN}." in n for n in changed) and all(".lora_" in n for n in changed)
    with torch.no_grad():
        assert torch.equal(roles.reference()(tt, z, cond), base)
        assert not torch.allclose(roles.model(tt, z, cond), base, atol=1e-6)
    # 8 samples per refresh: the one above, then the loop's at steps 0 and 2 (refresh_every 2; step was still 0)
    assert trainer.reward_evaluations == 24


@pytest.mark.slow
@pytest.mark.parametrize("name", ["flow-grpo", "diffusion-nft"])
def test_the_family_from_the_command_line_on_builtin_tiny_sd3(tmp_path, tiny_sd3_folder, name):
    from orwcfm.t2i.load import load_pipeline

    cache = tmp_path / "cache"
    shutil.copytree(tiny_sd3_folder, cache / "t2i" / "tiny-sd3")
    extra = ["coupling=independent"] if name == "diffusion-nft" else ["prompt_dropout=0"]  # Flow-GRPO refuses dropout
    out = tmp_path / name
    assert main(["finetune", "--config", "sd3-tiny", "--out", str(out), "--cache", str(cache), "--no-progress",
                 "--set", f"algorithm={name}", "epochs=1", *extra]) == 0
    pipe = load_pipeline(tiny_sd3_folder)
    run = dict(prompt="a red apple", num_inference_steps=2, guidance_scale=1.0, height=32, width=32,
               output_type="latent", latents=torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(3)))
    before = pipe(**run).images
    pipe.load_lora_weights(out / "lora")
    assert not torch.allclose(before, pipe(**run).images, atol=1e-6)
