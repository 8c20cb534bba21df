"""The SD3 adapter against diffusers itself, on a tiny random pipeline saved with ``save_pretrained``: one Euler
step equals ``FlowMatchEulerDiscreteScheduler.step``, a whole guided sampling run equals the pipeline's own output."""

import pytest
import torch

pytest.importorskip("diffusers", reason="the t2i extra (pip install 'orwcfm[t2i]'); dev installs it, so CI runs this")

from diffusers import FlowMatchEulerDiscreteScheduler  # noqa: E402

from orwcfm.errors import UserError  # noqa: E402
from orwcfm.guidance import guided  # noqa: E402
from orwcfm.sampling import integrate  # noqa: E402
from orwcfm.t2i.sd3 import LatentSpace, PromptEmbeds, SD3Field, time_grid  # noqa: E402
from orwcfm.t2i.prompts import encode_prompts  # noqa: E402


def embeds(pipe, prompts):
    return encode_prompts(pipe, prompts).embeds(torch.arange(len(prompts)))


def test_one_euler_step_is_the_schedulers_step(tiny_sd3):
    pipe = tiny_sd3
    cond = embeds(pipe, ["a red apple", "a blue car"])
    field, scheduler = SD3Field(pipe.transformer), FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    times = time_grid(scheduler, 4)
    k = 1  # a step in the middle of the shifted schedule
    z = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    sigma_t = scheduler.timesteps[k]
    with torch.no_grad():
        prediction = pipe.transformer(hidden_states=z, timestep=sigma_t.expand(2), encoder_hidden_states=cond.hidden,
                                      pooled_projections=cond.pooled, return_dict=False)[0]
        scheduler._step_index = k
        expected = scheduler.step(prediction, sigma_t, z, return_dict=False)[0]
        ours = z + (times[k + 1] - times[k]) * field(times[k].expand(2), z, cond)
    assert torch.allclose(times, 1 - scheduler.sigmas, atol=1e-6)
    assert torch.allclose(ours, expected, atol=1e-5)
    assert not torch.allclose(ours, z, atol=1e-3)  # the step moves the latents


def test_guided_sampling_is_the_pipelines_output(tiny_sd3):
    pipe = tiny_sd3
    prompts, steps, scale = ["a red apple", "a blue car"], 3, 4.0
    latents = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = pipe(prompts, num_inference_steps=steps, guidance_scale=scale, latents=latents.clone(),
                    output_type="latent", height=32, width=32).images
    cond = embeds(pipe, prompts)
    times = time_grid(FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config), steps)
    ours = integrate(guided(SD3Field(pipe.transformer), scale, cond), latents, solver="euler", steps=steps, cond=cond,
                     times=times).samples
    assert torch.allclose(ours, expected, atol=1e-4), (ours - expected).abs().max()
    unguided = integrate(SD3Field(pipe.transformer), latents, solver="euler", steps=steps, cond=cond,
                         times=times).samples
    assert not torch.allclose(unguided, expected, atol=1e-3)  # the guidance scale matters: the test can fail
    # decoding as the pipeline decodes: (z / scale + shift) through the VAE, [-1, 1] -> [0, 1]
    images = LatentSpace.of(pipe.vae).decode(pipe.vae, ours, chunk=1)
    reference = pipe.image_processor.postprocess(
        pipe.vae.decode(expected / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor,
                        return_dict=False)[0], output_type="pt")
    assert images.shape == (2, 3, 32, 32) and torch.allclose(images, reference, atol=1e-4)


def test_prompt_embeddings_follow_reordering_and_have_a_null(tiny_sd3):
    pipe = tiny_sd3
    cond = embeds(pipe, ["a", "b", "c"])
    idx = torch.tensor([2, 0, 0])
    moved = cond.index(idx)
    assert torch.equal(moved.hidden, cond.hidden[idx]) and moved.ids.tolist() == [2, 0, 0]
    null = cond.null()
    assert torch.equal(null.hidden[1], cond.null_hidden) and torch.equal(null.pooled[2], cond.null_pooled)


def test_bad_resolution_and_grid_are_one_line(tiny_sd3):
    pipe = tiny_sd3
    space = LatentSpace.of(pipe.vae)
    assert space.shape(32, 48, patch_size=1) == (4, 32, 48)
    with pytest.raises(UserError, match=r"resolution 33x32 must be a positive multiple of 2 \(VAE factor 1 x patch size 2\)"):
        space.shape(33, 32, patch_size=2)
    with pytest.raises(UserError, match=r"the time grid must increase strictly from 0 to 1"):
        integrate(lambda t, x: x, torch.zeros(1, 2), steps=2, times=torch.tensor([0.0, 0.7, 0.5]))


def test_a_pipeline_folder_is_checked_before_any_weight_is_read(tiny_sd3_folder, tmp_path, monkeypatch):
    import json
    import shutil

    from orwcfm.t2i.load import inspect_folder, load_pipeline

    checked = inspect_folder(tiny_sd3_folder)
    assert checked.transformer_class == "SD3Transformer2DModel"
    assert set(checked.absent) == {"text_encoder_3", "tokenizer_3", "image_encoder", "feature_extractor"}  # no T5
    no_vae = shutil.copytree(tiny_sd3_folder, tmp_path / "no-vae")
    shutil.rmtree(no_vae / "vae")
    with pytest.raises(UserError, match=r"lacks the component 'vae' that StableDiffusion3Pipeline needs"):
        load_pipeline(no_vae)
    other = shutil.copytree(tiny_sd3_folder, tmp_path / "other")
    index = json.loads((other / "model_index.json").read_text())
    index["transformer"] = ["diffusers", "HunyuanDiT2DModel"]
    (other / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match=r"transformer class HunyuanDiT2DModel is not supported; supported: SD3Transformer2DModel"):
        inspect_folder(other)
    with pytest.raises(UserError, match=r"is not a diffusers pipeline folder \(no model_index.json\)"):
        inspect_folder(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(UserError, match=r"hub id someone/sd3-model is not in the local Hugging Face cache, and nothing is downloaded"):
        inspect_folder("someone/sd3-model")


def test_prompt_files_and_their_bad_forms(tmp_path):
    from orwcfm.t2i.prompts import read_prompts

    (tmp_path / "p.txt").write_text("a red apple\n\n  a blue car  \n")
    assert read_prompts(tmp_path / "p.txt").prompts == ("a red apple", "a blue car")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat", "tag": "animal"}\n{"prompt": "a dog"}\n')
    jsonl = read_prompts(tmp_path / "p.jsonl")
    assert jsonl.prompts == ("a cat", "a dog") and jsonl.metadata == ({"tag": "animal"}, {})
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(UserError, match=r"empty.txt holds no prompt \(one prompt per line expected\)"):
        read_prompts(tmp_path / "empty.txt")
    (tmp_path / "bad.jsonl").write_text('{"text": "a cat"}\n')
    with pytest.raises(UserError, match=r'bad.jsonl:1: expected an object with a "prompt" string'):
        read_prompts(tmp_path / "bad.jsonl")
    with pytest.raises(UserError, match=r"the prompt set is empty"):
        read_prompts([])
