"""The Flux.1 adapter against diffusers itself, on a tiny random FluxPipeline saved with ``save_pretrained``: the
packing and ids are the pipeline's, one Euler step equals ``FlowMatchEulerDiscreteScheduler.step``, the time grid
is the pipeline's dynamically shifted schedule, a whole sampling run (embedded guidance, classifier-free guidance)
equals the pipeline's own output, decoding is the pipeline's, LoRA roles and prompt encoding work on Flux."""

import pytest
import torch

pytest.importorskip("diffusers", reason="the t2i extra (pip install 'orwcfm[t2i]'); dev installs it, so CI runs this")

from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel  # noqa: E402

from orwcfm.errors import UserError  # noqa: E402
from orwcfm.guidance import guided  # noqa: E402
from orwcfm.sampling import integrate  # noqa: E402
from orwcfm.t2i.family import family_of  # noqa: E402
from orwcfm.t2i.flux import FluxField, image_ids, pack, unpack  # noqa: E402
from orwcfm.t2i.prompts import encode_prompts  # noqa: E402
from orwcfm.t2i.sd3 import LatentSpace, time_grid  # noqa: E402

PROMPTS = ["a red apple", "a blue car"]
SIZE = 32  # image pixels per side; the tiny VAE has one block (factor 1): 32 x 32 latents, 16 x 16 = 256 tokens
TOKENS = (SIZE // 2) ** 2


def embeds(pipe, prompts):
    return encode_prompts(pipe, prompts).embeds(torch.arange(len(prompts)))


def noise(seed, batch=2, h=SIZE, w=SIZE):
    return torch.randn(batch, 4, h, w, generator=torch.Generator().manual_seed(seed))


def pipe_pack(z):
    """The pipeline's own packing of (B, C, h, w) latents."""
    return FluxPipeline._pack_latents(z, *z.shape)


def pipe_unpack(pipe, tokens, height=SIZE, width=SIZE):
    """The pipeline's own unpacking of the tokens of a ``height`` x ``width`` image."""
    return FluxPipeline._unpack_latents(tokens, height, width, pipe.vae_scale_factor)


def grid(pipe, steps, image_seq_len=TOKENS, **kwargs):
    return time_grid(FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config), steps,
                     image_seq_len=image_seq_len, **kwargs)


def run_pipe(pipe, latents, steps=3, **kwargs):
    """The pipeline's sampling from (unpacked) ``latents``, unpacked."""
    out = pipe(PROMPTS, num_inference_steps=steps, latents=pipe_pack(latents), output_type="latent", height=SIZE,
               width=SIZE, **kwargs).images
    return pipe_unpack(pipe, out)


def test_the_folder_loads_and_a_missing_t5_is_refused(tiny_flux_folder, tmp_path):
    import shutil

    from orwcfm.t2i.load import inspect_folder, load_pipeline

    checked = inspect_folder(tiny_flux_folder)
    assert (checked.transformer_class, checked.pipeline_class) == ("FluxTransformer2DModel", "FluxPipeline")
    assert set(checked.absent) == {"image_encoder", "feature_extractor"}
    pipe = load_pipeline(tiny_flux_folder)
    assert isinstance(pipe, FluxPipeline) and pipe.transformer.config.guidance_embeds
    assert family_of(pipe).name == "flux"
    no_t5 = shutil.copytree(tiny_flux_folder, tmp_path / "no-t5")
    shutil.rmtree(no_t5 / "text_encoder_2")
    with pytest.raises(UserError, match=r"lacks the component 'text_encoder_2' that FluxPipeline needs"):
        load_pipeline(no_t5)


def test_packing_and_ids_are_the_pipelines(tiny_flux):
    z = noise(0, batch=3, h=4, w=6)  # not square: rows and columns must not be swapped
    tokens = pack(z)
    assert tokens.shape == (3, 2 * 3, 16) and torch.equal(tokens, pipe_pack(z))
    assert torch.equal(unpack(tokens, 4, 6), z)
    assert torch.equal(unpack(tokens, 4, 6), FluxPipeline._unpack_latents(tokens, 4, 6, 1))
    expected = FluxPipeline._prepare_latent_image_ids(3, 2, 3, torch.device("cpu"), torch.float32)
    assert torch.equal(image_ids(4, 6, torch.device("cpu"), torch.float32), expected)
    family, space = family_of(tiny_flux), LatentSpace.of(tiny_flux.vae)
    config = tiny_flux.transformer.config
    assert family.latent_shape(space, config, SIZE, 48) == (4, SIZE, 48)
    assert family.image_seq_len(config, SIZE, 48) == 16 * 24
    with pytest.raises(UserError, match=r"Flux latents must have an even height and width .* got 5x6"):
        pack(noise(0, h=5, w=6))


def test_one_euler_step_is_the_schedulers_step(tiny_flux):
    pipe = tiny_flux
    cond = embeds(pipe, PROMPTS)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    times = time_grid(scheduler, 4, image_seq_len=TOKENS)
    k = 1  # a step in the middle of the shifted schedule
    z = noise(0)
    sigma_t = scheduler.timesteps[k]
    with torch.no_grad():
        # the pipeline's own call of the transformer: timestep / 1000, the guidance in float32, zero text ids
        prediction = pipe.transformer(
            hidden_states=pipe_pack(z), timestep=sigma_t.expand(2) / 1000, guidance=torch.full((2,), 3.5),
            pooled_projections=cond.pooled, encoder_hidden_states=cond.hidden,
            txt_ids=torch.zeros(cond.hidden.shape[1], 3),
            img_ids=FluxPipeline._prepare_latent_image_ids(2, SIZE // 2, SIZE // 2, z.device, z.dtype),
            return_dict=False)[0]
        scheduler._step_index = k
        expected = pipe_unpack(pipe, scheduler.step(prediction, sigma_t, pipe_pack(z), return_dict=False)[0])
        ours = z + (times[k + 1] - times[k]) * FluxField(pipe.transformer, guidance=3.5)(times[k].expand(2), z, cond)
    assert torch.allclose(times, 1 - scheduler.sigmas, atol=1e-6)
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()
    assert not torch.allclose(ours, z, atol=1e-3)  # the step moves the latents


@pytest.mark.parametrize("height, width", [(SIZE, SIZE), (64, 48)])
def test_the_time_grid_is_the_pipelines_schedule(tiny_flux, height, width):
    pipe = tiny_flux
    steps = 3
    tokens = (height // 2) * (width // 2)
    latents = FluxPipeline._pack_latents(noise(2, batch=1, h=height, w=width), 1, 4, height, width)
    pipe(PROMPTS[:1], num_inference_steps=steps, latents=latents, output_type="latent", height=height, width=width)
    used = pipe.scheduler.sigmas  # the schedule the pipeline has just run
    assert torch.allclose(grid(pipe, steps, tokens), 1 - used, atol=1e-6)
    # the grid depends on the image size (mu) and on FluxPipeline's spacing of the sigmas: the test can fail
    assert not torch.allclose(grid(pipe, steps, 4 * tokens), 1 - used, atol=1e-3)
    assert not torch.allclose(grid(pipe, steps, tokens, flux_spacing=False), 1 - used, atol=1e-3)
    with pytest.raises(UserError, match=r"this scheduler shifts its schedule by the image size: pass image_seq_len"):
        grid(pipe, steps, None)


def test_sampling_is_the_pipelines_output_and_the_guidance_matters(tiny_flux):
    pipe = tiny_flux
    steps, latents = 3, noise(1)
    cond, times = embeds(pipe, PROMPTS), grid(pipe, steps)

    def ours(field):
        return integrate(field, latents, solver="euler", steps=steps, cond=cond, times=times).samples

    expected = run_pipe(pipe, latents, guidance_scale=5.0)
    assert torch.allclose(ours(FluxField(pipe.transformer, guidance=5.0)), expected, atol=1e-4)
    default = run_pipe(pipe, latents)  # FluxPipeline's default guidance_scale, 3.5
    assert torch.allclose(ours(FluxField(pipe.transformer)), default, atol=1e-4)
    assert not torch.allclose(default, expected, atol=1e-3)  # the guidance value matters: the test can fail
    # classifier-free guidance with the empty prompt is the pipeline's "true CFG" with negative prompt ""
    true_cfg = run_pipe(pipe, latents, guidance_scale=5.0, negative_prompt=["", ""], true_cfg_scale=2.0)
    field = guided(FluxField(pipe.transformer, guidance=5.0), 2.0, cond)
    assert torch.allclose(ours(field), true_cfg, atol=1e-4)
    assert not torch.allclose(true_cfg, expected, atol=1e-3)


def test_decoding_is_the_pipelines(tiny_flux):
    pipe = tiny_flux
    latents = noise(3)
    z = run_pipe(pipe, latents, steps=2)
    images = pipe(PROMPTS, num_inference_steps=2, latents=pipe_pack(latents), output_type="pt", height=SIZE,
                  width=SIZE).images
    ours = LatentSpace.of(pipe.vae).decode(pipe.vae, z, chunk=1)
    assert ours.shape == (2, 3, SIZE, SIZE) and torch.allclose(ours, images, atol=1e-4)
    # Flux's shift and scale are applied: decoding the raw latents instead would differ
    raw = (pipe.vae.decode(z, return_dict=False)[0] / 2 + 0.5).clamp(0, 1)
    assert not torch.allclose(raw, images, atol=1e-3)


FLUX_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


def test_lora_roles_work_on_flux(tiny_flux_folder):
    from orwcfm.t2i.load import load_pipeline
    from orwcfm.t2i.lora import TRAIN, LoraRoles, LoraSettings

    pipe = load_pipeline(tiny_flux_folder)  # its own: the adapters change the transformer
    cond = embeds(pipe, PROMPTS)
    t, z = torch.rand(2, generator=torch.Generator().manual_seed(4)), noise(4)
    field = FluxField(pipe.transformer)
    with torch.no_grad():
        base = field(t, z, cond)
        roles = LoraRoles(field, pipe.transformer, LoraSettings(rank=2, target_modules=FLUX_ATTENTION))
        # the double block's image and text projections, and the single block's q, k, v (it has no to_out)
        adapted = {n.rsplit(".", 1)[-1] if not n.endswith("to_out.0") else "to_out.0"
                   for n, m in pipe.transformer.named_modules() if hasattr(m, "lora_A")}
        assert adapted == set(FLUX_ATTENTION)
        assert torch.equal(roles.reference()(t, z, cond), base) and torch.equal(roles.model(t, z, cond), base)
        gen = torch.Generator().manual_seed(0)
        for name, p in pipe.transformer.named_parameters():
            if f"lora_B.{TRAIN}." in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
        assert not torch.allclose(roles.model(t, z, cond), base, atol=1e-4)
        assert torch.equal(roles.reference()(t, z, cond), base)  # adapters off: the base weights exactly
    with pytest.raises(UserError, match=r"target_modules \['qkv'\] match no linear layer of FluxTransformer2DModel"):
        LoraRoles(FluxField(pipe.transformer), pipe.transformer, LoraSettings(rank=2, target_modules=("qkv",)))


def test_encoded_prompts_are_the_pipelines(tiny_flux):
    pipe = tiny_flux
    table = encode_prompts(pipe, ["a cat", "a dog"])
    with torch.no_grad():  # as the pipeline encodes (T5 takes another kernel path with autograd on: not bitwise)
        hidden, pooled, _ = pipe.encode_prompt(["a cat", "a dog"], None)
        null_hidden, null_pooled, _ = pipe.encode_prompt([""], None)
    assert table.hidden.shape == (2, 512, 32) and table.pooled.shape == (2, 32)  # T5 tokens, CLIP pooled
    assert torch.equal(table.hidden, hidden) and torch.equal(table.pooled, pooled)
    assert torch.equal(table.null_hidden, null_hidden[0]) and torch.equal(table.null_pooled, null_pooled[0])
    assert not torch.allclose(table.pooled[0], table.pooled[1])  # the prompts are told apart


def test_bad_guidance_and_missing_conditions_are_one_line(tiny_flux):
    schnell = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                     attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                     pooled_projection_dim=32, guidance_embeds=False, axes_dims_rope=(4, 4, 8))
    with pytest.raises(UserError, match=r"guidance 3.5 was given, but this Flux transformer has no guidance embedding"):
        FluxField(schnell, guidance=3.5)
    cond = embeds(tiny_flux, PROMPTS)
    with torch.no_grad():  # without guidance embeds, the field runs with no guidance value
        assert FluxField(schnell)(torch.full((2,), 0.5), noise(5, h=4, w=4), cond).shape == (2, 4, 4, 4)
    with pytest.raises(UserError, match=r"Flux guidance must be a number >= 0, got 'high'"):
        FluxField(tiny_flux.transformer, guidance="high")
    with pytest.raises(UserError, match=r"the Flux transformer needs prompt embeddings"):
        FluxField(tiny_flux.transformer)(torch.zeros(2), noise(5), None)


def test_a_bf16_base_takes_fp32_latents_and_returns_them_in_fp32(tiny_flux_folder, tiny_flux):
    from orwcfm.t2i.load import load_pipeline

    bf16 = load_pipeline(tiny_flux_folder, dtype=torch.bfloat16)
    cond, t, z = embeds(tiny_flux, PROMPTS), torch.full((2,), 0.3), noise(6)
    with torch.no_grad():
        v16, v32 = FluxField(bf16.transformer)(t, z, cond), FluxField(tiny_flux.transformer)(t, z, cond)
    assert v16.dtype == torch.float32 and v16.shape == z.shape
    assert (v16 - v32).abs().max() < 0.1 * v32.abs().max()  # the same field up to bf16 rounding
