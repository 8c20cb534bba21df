"""The CLIP reward, on a tiny randomly initialised CLIP saved to a temporary folder (nothing is downloaded)."""

from __future__ import annotations

import json
import string
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from orwcfm.errors import UserError
from orwcfm.rewards import ClipReward, RewardError, call_reward, load_reward
from orwcfm.rewards.clip import CLIP_MEAN, CLIP_STD

from .tinyclip import tiny_clip

PROMPTS = ["an image of dog", "not an image of dog"]
SIZE = 16


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-clip")
    tiny_clip(folder, size=SIZE)
    return folder


def _pixels(x: torch.Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """Independent preprocessing of square images in [-1, 1]: [0, 1], 3 channels, SIZE x SIZE, normalised."""
    img = ((x + 1) / 2).clamp(0, 1)
    if img.shape[1] == 1:
        img = img.repeat(1, 3, 1, 1)
    if img.shape[-1] != SIZE:
        img = F.interpolate(img, size=(SIZE, SIZE), mode="bicubic", antialias=True).clamp(0, 1)
    return (img - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _expected(folder, x, prompts=PROMPTS, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    model = CLIPModel.from_pretrained(str(folder)).eval()
    tokens = CLIPTokenizer.from_pretrained(str(folder))(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                    pixel_values=_pixels(x, mean, std))
    probs = out.logits_per_image.softmax(dim=-1)
    return probs[:, 0] - probs[:, 1]


def _images(channels: int, size: int, n: int = 6, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, channels, size, size, generator=gen) * 2 - 1) * torch.linspace(0.1, 1.0, n).view(n, 1, 1, 1)


@pytest.mark.parametrize("channels, size", [(3, SIZE), (3, 12), (1, SIZE), (1, 8)])
def test_clip_reward_equals_p0_minus_p1(clip_dir, channels, size):
    reward = ClipReward(PROMPTS, model_path=str(clip_dir))
    x = _images(channels, size)
    r = reward(x)
    assert r.shape == (6,) and r.dtype == torch.float32
    assert ((r >= -1) & (r <= 1)).all()
    torch.testing.assert_close(r, _expected(clip_dir, x), atol=1e-5, rtol=1e-4)
    assert r.std() > 0  # the images are told apart, so the comparison above is not vacuous


def test_swapping_the_prompts_negates_the_reward(clip_dir):
    x = _images(3, SIZE)
    forward = ClipReward(PROMPTS, model_path=str(clip_dir))(x)
    backward = ClipReward(PROMPTS[::-1], model_path=str(clip_dir))(x)
    torch.testing.assert_close(backward, -forward, atol=1e-6, rtol=1e-5)


def test_more_prompts_share_the_softmax(clip_dir):
    prompts = [*PROMPTS, "a dog"]
    reward = ClipReward(prompts, model_path=str(clip_dir))
    x = _images(3, SIZE)
    probs = reward.probabilities(x)
    assert probs.shape == (6, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(6))
    torch.testing.assert_close(reward(x), _expected(clip_dir, x, prompts), atol=1e-5, rtol=1e-4)
    metrics = reward.metrics(x)
    assert len(metrics["prompt_probabilities"]) == 3
    assert sum(metrics["prompt_probabilities"]) == pytest.approx(1.0, abs=1e-5)


def test_saved_preprocessor_statistics_are_used(tmp_path):
    folder = tmp_path / "clip-with-processor"
    tiny_clip(folder, seed=1)
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.3, 0.35]
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": mean, "image_std": std}))
    x = _images(3, SIZE)
    r = ClipReward(PROMPTS, model_path=str(folder))(x)
    torch.testing.assert_close(r, _expected(folder, x, mean=mean, std=std), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(_expected(folder, x), _expected(folder, x, mean=mean, std=std))


def test_non_square_images_are_centre_cropped(clip_dir):
    reward = ClipReward(PROMPTS, model_path=str(clip_dir))
    x = _images(3, 12)[:, :, :8, :]  # (6, 3, 8, 12): shorter side -> 16, i.e. 16 x 24, then the middle 16 columns
    img = F.interpolate((x + 1) / 2, size=(16, 24), mode="bicubic", antialias=True).clamp(0, 1)[:, :, :, 4:20]
    torch.testing.assert_close(reward(x), _expected(clip_dir, img * 2 - 1), atol=1e-5, rtol=1e-4)


def test_registry_and_call_reward(clip_dir):
    reward = load_reward("clip", prompts=PROMPTS, model_path=str(clip_dir))
    x = _images(3, SIZE)
    out = call_reward(reward, x, name="clip", step=0)
    torch.testing.assert_close(out.values, _expected(clip_dir, x), atol=1e-5, rtol=1e-4)
    with pytest.raises(RewardError, match=r"reward 'clip' raised ValueError: .*C = 1 or 3, got \(6, 2, 16, 16\) at step 1"):
        call_reward(reward, torch.zeros(6, 2, SIZE, SIZE), name="clip", step=1)


def test_missing_model_folder(tmp_path):
    missing = tmp_path / "no-clip-here"
    with pytest.raises(UserError, match=f"no CLIP model found at '{missing}'.*nothing is downloaded at run time"):
        ClipReward(PROMPTS, model_path=str(missing))


@pytest.mark.parametrize("prompts", [["only one"], [], "an image of dog", [1, 2]])
def test_bad_prompts(clip_dir, prompts):
    with pytest.raises(UserError, match="prompts"):
        ClipReward(prompts, model_path=str(clip_dir))


def test_missing_transformers_names_the_extra(monkeypatch, clip_dir):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` raise ImportError
    with pytest.raises(UserError, match=r"pip install 'orwcfm\[clip\]'"):
        ClipReward(PROMPTS, model_path=str(clip_dir))


@pytest.mark.parametrize("scale", ["cosine", "logit"])
def test_clip_score_is_the_models_own_image_text_logit_of_each_samples_prompt(clip_dir, scale):
    from orwcfm.t2i.prompt_rewards import ClipScore

    score = ClipScore(str(clip_dir), scale=scale)
    x = (_images(3, SIZE) + 1) / 2  # images in [0, 1]
    prompts = ["a dog", "an image of dog", "a dog", "not a dog", "an image of dog", "not a dog"]
    got = score(x, prompts)
    # independently: CLIPModel's own logits_per_image over the distinct prompts, each sample's own column
    texts = sorted(set(prompts))
    model = CLIPModel.from_pretrained(str(clip_dir)).eval()
    tokens = CLIPTokenizer.from_pretrained(str(clip_dir))(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                       pixel_values=_pixels(x * 2 - 1)).logits_per_image  # (B, T) = logit_scale * cos
    expected = logits[torch.arange(6), torch.tensor([texts.index(p) for p in prompts])]
    if scale == "cosine":
        expected = expected / model.logit_scale.exp()
    assert torch.allclose(got, expected, atol=1e-5)
    assert sorted(score._text) == texts  # each distinct prompt encoded once
    with pytest.raises(UserError, match=r"5 prompts for 6 images: one prompt per image expected"):
        score(x, prompts[:5])
    with pytest.raises(UserError, match=r"clip score scale must be one of cosine, logit, got 'raw'"):
        ClipScore(str(clip_dir), scale="raw")


def test_aesthetic_head_is_laions_mlp_on_normalised_clip_image_embeddings(clip_dir, tmp_path):
    from orwcfm.t2i.prompt_rewards import AestheticScore

    gen = torch.Generator().manual_seed(0)
    # the improved aesthetic predictor's layout: linears at layers.0, .2, .4 (dropout between), no activations
    state = {"layers.0.weight": torch.randn(8, 16, generator=gen), "layers.0.bias": torch.randn(8, generator=gen),
             "layers.2.weight": torch.randn(4, 8, generator=gen), "layers.2.bias": torch.randn(4, generator=gen),
             "layers.4.weight": torch.randn(1, 4, generator=gen), "layers.4.bias": torch.randn(1, generator=gen)}
    torch.save(state, tmp_path / "head.pth")
    x = (_images(3, SIZE) + 1) / 2
    got = AestheticScore(str(clip_dir), tmp_path / "head.pth")(x, ["ignored"] * 6)
    model = CLIPModel.from_pretrained(str(clip_dir)).eval()
    tokens = CLIPTokenizer.from_pretrained(str(clip_dir))(["a"], return_tensors="pt")
    with torch.no_grad():  # CLIPModel's own normalised image embeddings, then the three linears by hand
        e = model(input_ids=tokens["input_ids"], pixel_values=_pixels(x * 2 - 1)).image_embeds
    for i in (0, 2, 4):
        e = e @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    assert torch.allclose(got, e.squeeze(-1), atol=1e-5)
    torch.save({"weight": torch.randn(1, 12), "bias": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(UserError, match=r"wrong.pth takes 12 features; this CLIP gives 16"):
        AestheticScore(str(clip_dir), tmp_path / "wrong.pth")
    torch.save({"layers.0.weight": torch.randn(3, 16), "layers.1.weight": torch.randn(1, 4)}, tmp_path / "gap.pth")
    with pytest.raises(UserError, match=r"layer layers.1.weight takes 4 inputs after 3 outputs"):
        AestheticScore(str(clip_dir), tmp_path / "gap.pth")


def test_an_image_reward_as_a_prompt_reward_sees_images_in_its_own_range():
    from orwcfm.rewards.jpeg import jpeg_compressibility
    from orwcfm.t2i.prompt_rewards import ImageOnly

    x = (_images(3, SIZE) + 1) / 2  # [0, 1]
    assert torch.equal(ImageOnly(jpeg_compressibility)(x, ["p"] * 6), jpeg_compressibility(x * 2 - 1))
    assert not torch.equal(jpeg_compressibility(x), jpeg_compressibility(x * 2 - 1))  # the mapping matters
