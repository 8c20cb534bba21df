"""The text-to-image run from the command line (``orwcfm finetune --config sd3-tiny``) on a tiny random SD3
pipeline: two epochs, their resume (bit for bit), the LoRA loading into plain diffusers and changing its output;
held-out prompts, prompt dropout, the decoded reward's CLIP diversity; every bad input one line with nothing written."""

import json
import shutil

import pytest
import torch

pytest.importorskip("peft", reason="the t2i extra (pip install 'orwcfm[t2i]'); dev installs it, so CI runs this")

from safetensors.torch import load_file  # noqa: E402

from orwcfm.cli import main  # noqa: E402
from orwcfm.conditions import Labels  # noqa: E402
from orwcfm.config import finetune_config  # noqa: E402
from orwcfm.errors import UserError  # noqa: E402
from orwcfm.finetune.buffer import Minibatch  # noqa: E402
from orwcfm.prompt_files import PromptSet  # noqa: E402
from orwcfm.t2i.load import load_pipeline  # noqa: E402
from orwcfm.t2i.prompt_rewards import ClipScore  # noqa: E402
from orwcfm.t2i.prompts import TextPrompts  # noqa: E402
from orwcfm.t2i.rewards import DecodedReward, load_prompt_reward  # noqa: E402

from .tinyclip import tiny_clip  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_sd3_folder):
    """An orwcfm cache whose builtin:tiny-sd3 is the session's tiny pipeline (written once)."""
    folder = tmp_path_factory.mktemp("cache")
    shutil.copytree(tiny_sd3_folder, folder / "t2i" / "tiny-sd3")
    return folder


def finetune(out, cache, *extra):
    return main(["finetune", "--config", "sd3-tiny", "--out", str(out), "--cache", str(cache), "--no-progress", *extra])


def adapters(checkpoint):
    return load_file(str(checkpoint / "model.safetensors"))


@pytest.mark.slow
def test_two_epochs_resume_exactly_and_the_lora_loads_into_diffusers(tmp_path, cache, tiny_sd3_folder):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert finetune(straight, cache) == 0
    assert finetune(split, cache, "--set", "epochs=1") == 0
    assert finetune(split, cache, "--resume") == 0  # the preset's 2 epochs: continues from step 4
    # the resumed run is the uninterrupted one, bit for bit: adapters, policy and every evaluation
    for a, b in ((straight / "checkpoints" / "step_0000008", split / "checkpoints" / "step_0000008"),):
        for name in ("model.safetensors", "policy.safetensors"):
            sa, sb = load_file(str(a / name)), load_file(str(b / name))
            assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    history = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    evals = lambda rows: [r for r in rows if any(k.startswith("eval/") for k in r)]  # noqa: E731
    assert [r.get("eval/reward_mean") for r in evals(history)] == [r.get("eval/reward_mean") for r in evals(resumed)]
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["steps"] == 8
    # checkpoints hold the adapters, never the base weights
    trained = adapters(straight / "checkpoints" / "step_0000008")
    assert trained and all("lora_" in k for k in trained)
    assert any(v.abs().max() > 0 for k, v in trained.items() if "lora_B" in k)  # the adapter moved off B = 0
    # the LoRA in diffusers' format: a fresh pipeline loads it and its output changes
    lora = straight / "lora" / "pytorch_lora_weights.safetensors"
    saved = load_file(str(lora))
    assert len(saved) == len(trained) and all(k.startswith("transformer.") for k in saved)
    pipe = load_pipeline(tiny_sd3_folder)
    run = dict(prompt="a red apple", num_inference_steps=2, guidance_scale=1.0, height=32, width=32,
               output_type="latent", latents=torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(3)))
    before = pipe(**run).images
    pipe.load_lora_weights(straight / "lora")
    assert not torch.allclose(before, pipe(**run).images, atol=1e-6)
    # the evaluation sample grid is one captioned row per held-out prompt
    assert (straight / "samples" / "epoch_002.png").is_file()


def bad(tmp_path, capsys, cache, *sets, config="sd3-tiny"):
    out = tmp_path / "out"
    args = ["finetune", "--config", config, "--out", str(out), "--cache", str(cache), "--no-progress"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert not out.exists(), "nothing is written"
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    return err


def test_bad_inputs_are_one_line_and_write_nothing(tmp_path, capsys, cache, tiny_sd3_folder):
    # a pipeline folder without a needed component
    no_vae = tmp_path / "no-vae"
    shutil.copytree(tiny_sd3_folder, no_vae)
    shutil.rmtree(no_vae / "vae")
    assert "lacks the component 'vae' that StableDiffusion3Pipeline needs" in bad(tmp_path, capsys, cache, f"model={no_vae}")
    # an unsupported transformer class (the supported ones listed)
    unet = tmp_path / "unet"
    shutil.copytree(tiny_sd3_folder, unet)
    index = json.loads((unet / "model_index.json").read_text())
    index["transformer"] = ["diffusers", "UNet2DConditionModel"]
    (unet / "model_index.json").write_text(json.dumps(index))
    err = bad(tmp_path, capsys, cache, f"model={unet}")
    assert "transformer class UNet2DConditionModel is not supported; supported: SD3Transformer2DModel, " \
           "FluxTransformer2DModel" in err
    # an empty prompt file
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert f"prompt file {empty} holds no prompt" in bad(tmp_path, capsys, cache, f"prompts={empty}")
    # a reward that does not take prompts
    reward_file = tmp_path / "my_reward.py"
    reward_file.write_text("def brightness(images):\n    return images.mean((1, 2, 3))\n")
    err = bad(tmp_path, capsys, cache, f"reward={reward_file}:brightness")
    assert f"reward {reward_file}:brightness cannot be called as fn(images, prompts)" in err
    # a resolution the VAE factor and the patch size do not divide (a copy whose transformer has patch 2)
    patched = tmp_path / "patch2"
    shutil.copytree(tiny_sd3_folder, patched)
    config = json.loads((patched / "transformer" / "config.json").read_text())
    (patched / "transformer" / "config.json").write_text(json.dumps({**config, "patch_size": 2}))
    err = bad(tmp_path, capsys, cache, f"model={patched}", "t2i.resolution=33")
    assert "resolution 33x33 must be a positive multiple of 2 (VAE factor 1 x patch size 2)" in err
    # LoRA target modules that match nothing
    err = bad(tmp_path, capsys, cache, "t2i.lora.target_modules=[to_q, to_nothing]")
    assert "lora target_modules ['to_nothing'] match no linear layer of SD3Transformer2DModel" in err
    # and the config-level ones
    assert "unknown built-in pipeline builtin:tiny-sdx; built-in: builtin:tiny-sd3" in bad(
        tmp_path, capsys, cache, "model=builtin:tiny-sdx")
    assert "both name the model to start from" in bad(tmp_path, capsys, cache, "ref_path=builtin:digits")
    assert "needs 'prompts'" in bad(tmp_path, capsys, cache, "prompts=null", "eval_prompts=null")
    assert "unknown reward 'nonexistent-reward' for a text-to-image run; prompt rewards: clip-score, pickscore, " \
           "aesthetic, clip; image rewards: " in bad(tmp_path, capsys, cache, "reward=nonexistent-reward")


def test_held_out_prompts_are_never_trained_on_and_are_what_evaluations_see(tiny_sd3):
    prompts = TextPrompts.encode(tiny_sd3, PromptSet(("a red apple", "a blue car", "a green tree")),
                                 PromptSet(("a white cat", "a black dog")), samples_per_prompt=2)
    assert prompts.train_prompts == ("a red apple", "a blue car", "a green tree")
    assert prompts.eval_prompts == ("a white cat", "a black dog")
    drawn = prompts.draw(400, torch.Generator().manual_seed(0))
    assert set(drawn.ids.tolist()) == {0, 1, 2}  # every training prompt, no held-out one
    assert torch.equal(drawn.ids[0::2], drawn.ids[1::2])  # k = 2 consecutive samples per drawn prompt
    spread = prompts.spread(5)
    assert spread.ids.tolist() == [3, 4, 3, 4, 3] and prompts.texts(spread)[:2] == ["a white cat", "a black dog"]
    alone = TextPrompts.encode(tiny_sd3, PromptSet(("a red apple", "a blue car")))
    assert alone.spread(3).ids.tolist() == [0, 1, 0] and alone.eval_prompts == alone.train_prompts
    # the embeddings of a held-out prompt are the pipeline's own encoding of it
    hidden, _, pooled, _ = tiny_sd3.encode_prompt(["a black dog"], None, None, do_classifier_free_guidance=False)
    assert torch.allclose(spread.hidden[1], hidden[0]) and torch.allclose(spread.pooled[1], pooled[0])


def test_prompt_dropout_replaces_the_condition_by_the_empty_prompt_for_the_loss_only(tiny_sd3):
    prompts = TextPrompts.encode(tiny_sd3, PromptSet(("a red apple", "a blue car")))
    cond = prompts.spread(6)
    mask = torch.tensor([True, False, False, True, False, False])
    dropped = cond.drop(mask)
    assert torch.equal(dropped.hidden[0], cond.null_hidden) and torch.equal(dropped.pooled[3], cond.null_pooled)
    assert torch.equal(dropped.hidden[~mask], cond.hidden[~mask]) and torch.equal(dropped.ids, cond.ids)
    with pytest.raises(UserError, match=r"a prompt-dropout mask must be a bool tensor of shape \(6,\)"):
        cond.drop(torch.ones(5, dtype=torch.bool))

    # the loop's dropout: about p of the samples, drawn from the run's generator; none drawn at p = 0
    from orwcfm.finetune.loop import FinetuneLoop

    class Loop:
        _drop_prompts = FinetuneLoop._drop_prompts

        def __init__(self, p):
            self.config, self.generator = finetune_config(prompt_dropout=p, prompts=["a", "b"]), torch.Generator()

    labels = Labels(torch.arange(4000) % 10, 10)
    batch = Minibatch(x=torch.zeros(4000, 2), rewards=torch.zeros(4000), cond=labels)
    loop = Loop(0.25)
    loop.generator.manual_seed(0)
    out = loop._drop_prompts(batch)
    assert abs(out.cond.dropped.float().mean().item() - 0.25) < 0.03
    assert torch.equal(out.cond.values, labels.values) and out.rewards is batch.rewards
    off = Loop(0.0)
    state = off.generator.get_state()
    assert off._drop_prompts(batch) is batch and torch.equal(off.generator.get_state(), state)
    with pytest.raises(UserError, match=r"'prompt_dropout' \(0.1\) needs a conditional run: 'prompts' is null"):
        finetune_config(prompt_dropout=0.1)


def test_decoded_reward_sees_images_and_prompts_and_measures_clip_diversity_within_a_prompt(tiny_sd3, tmp_path):
    prompts = TextPrompts.encode(tiny_sd3, PromptSet(("a red apple", "a blue car")))
    seen = {}

    def fn(images, texts):
        seen["images"], seen["texts"] = images, texts
        return images.mean((1, 2, 3))

    reward = DecodedReward(fn, tiny_sd3.vae, prompts, chunk=3)
    z = torch.randn(4, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    cond = prompts.spread(4)
    r = reward(z, cond)
    assert seen["texts"] == ["a red apple", "a blue car", "a red apple", "a blue car"]
    assert seen["images"].shape == (4, 3, 32, 32) and 0 <= seen["images"].min() and seen["images"].max() <= 1
    assert torch.allclose(r, seen["images"].mean((1, 2, 3)))
    assert reward.metrics(z, cond) == {}  # no CLIP in this reward: no feature diversity
    clip_dir = tmp_path / "clip"
    clip_dir.mkdir()
    tiny_clip(clip_dir)
    score = ClipScore(str(clip_dir))
    scored = DecodedReward(score, tiny_sd3.vae, prompts)
    f = score.image_features(reward.images(z))
    by_hand = [1 - float(f[0] @ f[2]), 1 - float(f[1] @ f[3])]  # prompt 0: samples 0, 2; prompt 1: samples 1, 3
    assert scored.metrics(z, cond)["clip_diversity_per_prompt"] == pytest.approx(sum(by_hand) / 2, abs=1e-6)


def test_prompt_rewards_by_name(tmp_path):
    with pytest.raises(UserError, match=r"reward 'pickscore' needs reward_options.model"):
        load_prompt_reward("pickscore", {})
    with pytest.raises(UserError, match=r"unknown option 'modle' for reward 'clip-score'; accepted options: model"):
        load_prompt_reward("clip-score", {"modle": "x"})
    fn, name = load_prompt_reward("jpeg-compressibility", {})
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    from orwcfm.rewards import jpeg_compressibility

    assert name == "jpeg-compressibility" and torch.equal(fn(images, ["a", "b"]), jpeg_compressibility(images * 2 - 1))
    # the public README's CLIP prompt-pair margin, on decoded images: p(prompt 0 | x) - p(prompt 1 | x)
    clip_dir = tmp_path / "clip"
    clip_dir.mkdir()
    tiny_clip(clip_dir)
    from orwcfm.rewards.clip import ClipReward

    pair = ("An image of dog", "Not an image of dog")
    fn, name = load_prompt_reward(None, {"model_path": str(clip_dir)}, text_prompts=pair)
    margin = ClipReward(list(pair), model_path=str(clip_dir))(images * 2 - 1)
    assert name == "clip" and torch.allclose(fn(images, ["a", "b"]), margin) and margin.abs().max() > 0
    user = tmp_path / "r.py"
    user.write_text("def longer(images, prompts):\n    import torch\n    return torch.tensor([float(len(p)) for p in prompts])\n")
    fn, name = load_prompt_reward(f"{user}:longer", {})
    assert fn(images, ["ab", "abcd"]).tolist() == [2.0, 4.0]


@pytest.mark.slow
def test_a_flux_run_from_the_command_line_and_its_lora_loads_into_diffusers(tmp_path, tiny_flux_folder):
    from diffusers import FluxPipeline

    cache = tmp_path / "cache"
    shutil.copytree(tiny_flux_folder, cache / "t2i" / "tiny-flux")
    out = tmp_path / "flux"
    assert finetune(out, cache, "--set", "model=builtin:tiny-flux", "--set", "epochs=1") == 0
    pipe = FluxPipeline.from_pretrained(tiny_flux_folder, local_files_only=True)
    run = dict(prompt="a red apple", num_inference_steps=2, guidance_scale=3.5, height=32, width=32,
               output_type="latent", latents=torch.randn(1, 256, 16, generator=torch.Generator().manual_seed(3)))
    before = pipe(**run).images
    pipe.load_lora_weights(out / "lora")
    assert not torch.allclose(before, pipe(**run).images, atol=1e-6)
    trained = adapters(out / "checkpoints" / "step_0000004")
    assert len(load_file(str(out / "lora" / "pytorch_lora_weights.safetensors"))) == len(trained)


@pytest.mark.slow
def test_two_processes_average_the_adapters_gradients_and_draw_their_own_prompts(tmp_path, cache):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from . import t2i_dist_worker

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(t2i_dist_worker.__file__)), str(tmp_path), str(cache)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    # each rank sampled its own half of the buffer, under prompts of its own draw
    assert r0["x"].shape == r1["x"].shape == (8, 4, 32, 32) and not torch.equal(r0["x"], r1["x"])
    assert not torch.equal(r0["ids"], r1["ids"])
    # DDP averaged the adapter's gradients: both ranks hold the same adapter after two steps, and it moved
    assert r0["adapter"].keys() == r1["adapter"].keys()
    assert all(torch.allclose(r0["adapter"][k], r1["adapter"][k], atol=1e-6) for k in r0["adapter"])
    assert any(v.abs().max() > 0 for k, v in r0["adapter"].items() if "lora_B" in k)


@pytest.mark.slow
def test_the_t2i_benchmark_runs_and_its_numbers_add_up(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import t2i_step

    out = tmp_path / "t2i.json"
    assert t2i_step.main(["--quick", "--json", str(out)]) == 0
    numbers = json.loads(out.read_text())
    a = numbers["anatomy"]
    parts = a["sampling"] + a["decoding"] + a["reward"] + a["reference"] + a["model"]
    assert a["passes"] == pytest.approx(parts) and a["overhead"] == pytest.approx(a["step"] / parts)
    m = numbers["memory"]
    for run in (m["plain"], m["ours"]):
        assert run["peak_mib"] >= run["before_mib"] > 0
    assert m["ratio"] == pytest.approx(m["ours"]["peak_mib"] / m["plain"]["peak_mib"])
    assert m["ours"]["adapter_weights_mib"] > 0 and m["ours"]["base_weights_mib"] > m["ours"]["adapter_weights_mib"]


def test_the_runs_guided_sampler_is_the_pipelines_own_and_bf16_keeps_the_adapter_in_fp32(tmp_path, cache,
                                                                                          tiny_sd3_folder):
    from orwcfm.t2i.run import build

    config = finetune_config(config_file="sd3-tiny", savedir=str(tmp_path), run_name="run",
                             sampling={"solver": "euler", "steps": 3, "guidance": 4.0})
    run = build(config, "cpu", cache=cache, progress=False)
    assert run.pipe.text_encoder is None and run.pipe.text_encoder_2 is None  # freed after encoding
    ids = torch.tensor([0, 1])  # "a red apple", "a blue car"
    ours = run.trainer.sample(2, seed=5, cond=run.prompts.table.embeds(ids))
    latents = torch.randn((2, 4, 32, 32), generator=torch.Generator().manual_seed(5))
    pipe = load_pipeline(tiny_sd3_folder)
    expected = pipe(["a red apple", "a blue car"], num_inference_steps=3, guidance_scale=4.0, latents=latents,
                    output_type="latent", height=32, width=32).images
    assert torch.allclose(ours, expected, atol=1e-4), (ours - expected).abs().max()  # B = 0: the base, guided
    # a frozen base in bf16: the transformer's weights bf16, the adapters and Adam's state fp32, the step runs
    bf16 = build(finetune_config(config_file="sd3-tiny", savedir=str(tmp_path), run_name="bf16",
                                 t2i={"base_precision": "bf16", "lora": {"rank": 4, "alpha": 4.0}}),
                 "cpu", cache=cache, progress=False)
    params = dict(bf16.roles.transformer.named_parameters())
    assert {p.dtype for n, p in params.items() if "lora_" not in n} == {torch.bfloat16}
    assert {p.dtype for n, p in params.items() if "lora_" in n} == {torch.float32}
    bf16.trainer.run_steps(2)
    states = [s for s in bf16.trainer.optimizer.state.values()]
    assert states and all(s["exp_avg"].dtype == torch.float32 for s in states)
    assert any(p.abs().max() > 0 for n, p in params.items() if "lora_B.default" in n)


def signal_command(out, cache, *extra):
    """sd3-tiny with a fresh batch every step: each step samples, so that a signal lands mid-epoch."""
    import sys

    return [sys.executable, "-m", "orwcfm.cli", "finetune", "--config", "sd3-tiny", "--out", str(out), "--cache",
            str(cache), "--no-progress", "--set", "buffer_size=null", "steps_per_epoch=8", "keep_checkpoints=5",
            "log_every=1", *extra]


@pytest.fixture(scope="module")
def uninterrupted(cache, tmp_path_factory):
    import os
    import subprocess

    whole = tmp_path_factory.mktemp("whole") / "run"
    done = subprocess.run(signal_command(whole, cache), capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return whole


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_a_signal_mid_epoch_then_resume_equals_the_uninterrupted_lora_run(tmp_path, cache, uninterrupted, sig):
    """SIGKILL loses the epoch's steps since the last checkpoint; SIGTERM writes the exact step; either way the
    resumed run ends with the uninterrupted run's adapters and LoRA, bit for bit."""
    import os
    import signal
    import subprocess
    import time

    from orwcfm.checkpoint import load_checkpoint

    env, run = {**os.environ, "OMP_NUM_THREADS": "1"}, tmp_path / "run"
    proc = subprocess.Popen(signal_command(run, cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)

    def last_logged_step() -> int:
        """The newest step in metrics.jsonl (line-buffered, one row per step with log_every=1)."""
        path = run / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return max((json.loads(line)["step"] for line in lines if line.endswith("}")), default=0)

    # wait for a whole step of epoch 2, not a fixed time: under load the epoch-1 evaluation after the step-8
    # checkpoint can outlast any sleep, and a SIGTERM there (rightly) keeps step 8 (CI failed that way once)
    deadline = time.monotonic() + 240
    while last_logged_step() < 9:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    if sig == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL and load_checkpoint(run).meta["step"] == 8
    else:
        assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
        assert 8 < load_checkpoint(run).meta["step"] < 16 and "Traceback" not in err
    resumed = subprocess.run(signal_command(run, cache, "--resume"), capture_output=True, text=True, timeout=300,
                             env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (adapters(r / "checkpoints" / "step_0000016") for r in (uninterrupted, run))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la, lb = (load_file(str(r / "lora" / "pytorch_lora_weights.safetensors")) for r in (uninterrupted, run))
    assert la.keys() == lb.keys() and all(torch.equal(la[k], lb[k]) for k in la)


@pytest.mark.slow
def test_full_fine_tuning_of_a_small_transformer_through_the_copy_roles(tmp_path, cache, tiny_sd3_folder):
    from diffusers import SD3Transformer2DModel

    out = tmp_path / "full"
    assert finetune(out, cache, "--set", "t2i.adapter=full", "--set", "epochs=1") == 0
    weights = load_file(str(out / "checkpoints" / "step_0000004" / "model.safetensors"))
    assert weights and not any("lora_" in k for k in weights)  # the whole transformer, trained
    base = SD3Transformer2DModel.from_pretrained(tiny_sd3_folder, subfolder="transformer")
    tuned = SD3Transformer2DModel.from_pretrained(out / "transformer")
    moved = [k for k, v in tuned.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert moved  # the saved transformer is the trained one, not the base
    pipe = load_pipeline(tiny_sd3_folder)
    run = dict(prompt="a red apple", num_inference_steps=2, guidance_scale=1.0, height=32, width=32,
               output_type="latent", latents=torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(3)))
    before = pipe(**run).images
    pipe.transformer = tuned
    assert not torch.allclose(before, pipe(**run).images, atol=1e-6)


def test_settings_that_contradict_the_model_are_one_line(tmp_path, capsys, cache):
    assert "full fine-tuning trains the base weights themselves, which need t2i.base_precision fp32" in bad(
        tmp_path, capsys, cache, "t2i.adapter=full", "t2i.base_precision=bf16")
    assert "SD3 has no guidance input: use sampling.guidance" in bad(tmp_path, capsys, cache, "t2i.guidance_embed=3.5")
