"""Worker of the two-process LoRA test (launched by torchrun): build the tiny SD3 run from the sd3-tiny preset,
take two gradient steps and save this rank's trained adapter, its prompts and its buffer to OUT/rank{R}.pt."""

import sys

import torch

from orwcfm import distributed as dist_util
from orwcfm.config import finetune_config
from orwcfm.t2i.run import build


def main(out: str, cache: str) -> None:
    ctx, device = dist_util.setup("cpu")
    config = finetune_config(config_file="sd3-tiny", savedir=out, run_name="run", prompt_dropout=0.0)
    run = build(config, device, cache=cache, progress=False)
    run.trainer.run_steps(2)
    torch.save({"adapter": run.roles.adapter_state(), "ids": run.trainer.buffer.cond.ids,
                "x": run.trainer.buffer.x}, f"{out}/rank{ctx.rank}.pt")
    dist_util.teardown(ctx)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
