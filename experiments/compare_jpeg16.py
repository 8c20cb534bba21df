"""The black-box families side by side on JPEG compressibility of 16x16 photo patches (docs/baselines.md).

    .venv/bin/python experiments/compare_jpeg16.py --algorithms orw-cfm-w2,adrpo --seeds 3 --budget 2048 \\
        --out runs/baselines/patches-jpeg16 [any other orwcfm compare flag]

The 32x32 ``builtin:patches`` reference of the ``patches-jpeg`` task needs about 16 minutes of pretraining on 2
cores; this script uses the 16x16 analogue of docs/reproduction.md section 5 instead (the same reference, cached:
3000 steps of a small UNet, 2-3 minutes the first time), measures the reward's baseline (the reference's mean JPEG
size, so that r = baseline - kB starts near 0 and Z near 1) and tau = 50 per kB as there, then runs
``orwcfm compare --config patches-jpeg`` with those settings ahead of the flags given (a ``--set`` given here comes
after them and wins). JPEG size is a black box: the gradient methods are refused.
"""

from __future__ import annotations

import sys

from jpeg_patches import REFERENCE, reference_mean_kb

from orwcfm.assets import builtin_reference, reference_config
from orwcfm.cli import main as cli


def main(argv: list[str]) -> int:
    cache = argv[argv.index("--cache") + 1] if "--cache" in argv else None
    reference = builtin_reference("patches", cache, config=reference_config("patches", **REFERENCE), progress=False)
    baseline = round(reference_mean_kb(reference), 4)
    print(f"reference: {reference}; its mean JPEG size {baseline} kB is the reward's baseline", flush=True)
    settings = [f"ref_path={reference}", "temperature=50", f"reward_options.baseline_kb={baseline}"]
    if "--set" in argv:  # the script's settings first, so that the user's win
        i = argv.index("--set")
        argv = [*argv[: i + 1], *settings, *argv[i + 1 :]]
    else:
        argv = [*argv, "--set", *settings]
    return cli(["compare", "--config", "patches-jpeg", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
