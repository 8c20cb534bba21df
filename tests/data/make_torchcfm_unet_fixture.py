"""Write ``tests/data/torchcfm_unet_fixture.pt``: torchcfm's own UNet as the oracle of ``tests/test_adm_unet.py``.

orwcfm cannot depend on torchcfm (its pip install pulls torchvision, pytorch-lightning, POT, ...), so the test
reads what torchcfm itself computed, stored here once. The UNet module of torchcfm needs only torch and numpy;
the package's ``__init__`` imports POT (``ot``). This script therefore registers a bare ``torchcfm`` package that
points at the installed files, without running that ``__init__``. Exact commands (from the repository root, in a
virtual environment with torch and numpy, e.g. the project's)::

    pip install --no-deps torchcfm==1.0.7 --target /tmp/work/tcfm
    python tests/data/make_torchcfm_unet_fixture.py --torchcfm-dir /tmp/work/tcfm

(``--torchcfm-dir`` may be left out where ``import torchcfm.models.unet`` already works.) The script does not
import orwcfm. It stores, with ``torch.save`` of tensors and plain containers only (``weights_only=True`` loads it):

- ``torchcfm_version``: the version whose code produced the file;
- ``configs``: per small configuration of ``UNetModelWrapper``: ``kwargs`` (its constructor arguments),
  ``state_dict`` (seeded initial weights, every tensor then perturbed by seeded noise so that the zero-initialised
  output and attention projections do not hide the rest of the network, and rounded to float16 values: stored as
  float16 to halve the file, exactly the float32 weights the output was computed with), the input ``t``, ``x``
  (and ``y``) of a batch of 3, and torchcfm's float32 ``output`` in eval mode;
- ``readme``: the README configuration's ``kwargs``, ``shapes`` (state-dict key -> shape, in torchcfm's order;
  no weights) and ``num_parameters``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path

import torch

OUT = Path(__file__).with_name("torchcfm_unet_fixture.pt")

CONFIGS: dict[str, dict] = {
    # Every GroupNorm has 32 groups: at a width of 32 (one channel per group) it removes any per-channel constant,
    # so an *added* time or label embedding has no effect there. Each configuration therefore has either 64-channel
    # levels or the scale-shift norm, so that t (and y) change its output far beyond the test's tolerance.
    # Plain ADM: widths 32, 64, attention at 8x8 and in the middle block, 2 heads, conv resampling, added embedding.
    "plain": {"dim": [3, 16, 16], "num_channels": 32, "num_res_blocks": 1, "channel_mult": [1, 2],
              "attention_resolutions": "8", "num_heads": 2},
    # FiLM norm, residual-block resampling, channels per head, the new qkv order, learned sigma (2C outputs),
    # attention at both levels, two residual blocks per level, a scalar t (broadcast to the batch).
    "scale_shift_updown": {"dim": [3, 16, 16], "num_channels": 32, "num_res_blocks": 2, "channel_mult": [1, 1],
                           "attention_resolutions": "16,8", "num_head_channels": 16, "use_scale_shift_norm": True,
                           "resblock_updown": True, "use_new_attention_order": True, "learn_sigma": True,
                           "dropout": 0.1},
    # Class-conditional 28-pixel images (maps 28 and 14), attention at 14x14, 4 heads in the encoder and 2 in the
    # decoder; the scale-shift norm lets the label act at width 32.
    "class_cond": {"dim": [1, 28, 28], "num_channels": 32, "num_res_blocks": 1, "channel_mult": [1, 1],
                   "class_cond": True, "num_classes": 5, "attention_resolutions": "14", "num_heads": 4,
                   "num_heads_upsample": 2, "use_scale_shift_norm": True},
}

README = {"dim": [3, 32, 32], "num_channels": 128, "num_res_blocks": 2, "num_heads": 4, "num_head_channels": 64,
          "attention_resolutions": "16", "dropout": 0.1}


def import_torchcfm_unet(torchcfm_dir: str | None):
    """``torchcfm.models.unet.unet`` and the version string, without running ``torchcfm/__init__.py``."""
    if torchcfm_dir is not None:
        package = Path(torchcfm_dir) / "torchcfm"
        if not (package / "models" / "unet" / "unet.py").is_file():
            sys.exit(f"no torchcfm/models/unet/unet.py under {torchcfm_dir}")
        stub = types.ModuleType("torchcfm")
        stub.__path__ = [str(package)]
        sys.modules["torchcfm"] = stub
    unet = importlib.import_module("torchcfm.models.unet.unet")
    version = importlib.import_module("torchcfm.version").__version__
    return unet, version


def record(wrapper_cls, name: str, kwargs: dict, seed: int) -> dict:
    """One configuration: seeded, perturbed weights, an input batch of 3 and torchcfm's output for it."""
    torch.manual_seed(seed)
    model = wrapper_cls(**kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            # Noise, then rounding to float16 values: stored as float16 (half the file), exact in float32.
            p.copy_((p + 0.05 * torch.randn_like(p)).half().float())
    c, h, w = kwargs["dim"]
    t = torch.rand(()) if name == "scale_shift_updown" else torch.rand(3)
    x = torch.randn(3, c, h, w)
    entry = {"kwargs": kwargs, "t": t, "x": x}
    with torch.no_grad():
        if kwargs.get("class_cond"):
            entry["y"] = torch.tensor([0, kwargs["num_classes"] - 1, 2])
            entry["output"] = model(t, x, entry["y"])
        else:
            entry["output"] = model(t, x)
    entry["state_dict"] = {k: v.detach().half() for k, v in model.state_dict().items()}
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torchcfm-dir", help="a pip --target folder holding torchcfm (installed with --no-deps)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    torch.set_num_threads(1)
    unet, version = import_torchcfm_unet(args.torchcfm_dir)
    configs = {name: record(unet.UNetModelWrapper, name, kwargs, seed)
               for seed, (name, kwargs) in enumerate(CONFIGS.items())}
    readme_model = unet.UNetModelWrapper(**README)
    readme = {"kwargs": README,
              "shapes": {k: list(v.shape) for k, v in readme_model.state_dict().items()},
              "num_parameters": sum(p.numel() for p in readme_model.parameters())}
    torch.save({"torchcfm_version": version, "configs": configs, "readme": readme}, args.out)
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out} ({size / 1e6:.2f} MB) from torchcfm {version}: configs {', '.join(configs)}; "
          f"README configuration {readme['num_parameters']:,} parameters, {len(readme['shapes'])} tensors")


if __name__ == "__main__":
    main()
