"""LoRA roles: the trained model, the sampling policy and the reference as three states of one network (peft).

    trained     adapter ``default`` (the one saved, in diffusers' LoRA format)
    policy      adapter ``policy``, a frozen copy of ``default`` refreshed by the loop
    reference   the adapters disabled: the base weights exactly

One copy of the base weights is in memory (frozen; bf16 where asked), the adapters' weights and Adam's state in
fp32 (peft keeps adapter weights in float32 by default). Each role is a view that switches the adapter state of
the shared network for its own forward (when it is not already in that state), so the loop calls the roles as it
calls today's copies (:class:`~orwcfm.finetune.roles.CopyRoles`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config.t2i import LoraSettings
from ..errors import UserError

TRAIN, POLICY = "default", "policy"


def check_targets(transformer: nn.Module, targets: tuple[str, ...]) -> None:
    """One line unless every target name matches at least one linear layer of ``transformer``."""
    names = [n for n, m in transformer.named_modules() if isinstance(m, nn.Linear)]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        examples = sorted({n.rsplit(".", 1)[-1] for n in names})[:12]
        raise UserError(f"lora target_modules {missing} match no linear layer of {type(transformer).__name__} "
                        f"(its linear layers end in e.g. {', '.join(examples)})")


class _RoleView(nn.Module):
    """A role of the shared network: ``field`` run with ``adapter`` active (None: adapters disabled)."""

    def __init__(self, roles: LoraRoles, adapter: str | None) -> None:
        super().__init__()
        self.field = roles.field
        self._roles = [roles]  # a list, so that nn.Module does not register the roles object as a child
        self.adapter = adapter

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        # The reference pass sits between the model's forward and its backward: it hands the network back in the
        # trained state, or a checkpointed backward would recompute the model's forward with the adapters off.
        with self._roles[0].state(self.adapter, restore=self.adapter is None):
            return self.field(*args, **kwargs)

    # A role's weights are its adapter's (so checkpoints hold adapters, never the base); the reference's are the base.
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        roles = self._roles[0]
        if self.adapter is None:
            return {k: v for k, v in roles.transformer.state_dict().items() if "lora_" not in k}
        return roles.adapter_state(self.adapter)

    def load_state_dict(self, state: Any, strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        if self.adapter is None:
            raise UserError("the reference role is the base weights: it is never loaded")
        from peft.utils import set_peft_model_state_dict

        with torch.no_grad():
            return set_peft_model_state_dict(self._roles[0].transformer, dict(state), adapter_name=self.adapter)


class LoraRoles:
    """Trained adapter, policy adapter and reference (adapters off) of one transformer.

    Args:
        field: the velocity field wrapping ``transformer`` (e.g. :class:`~orwcfm.t2i.sd3.SD3Field`).
        transformer: a diffusers transformer (``PeftAdapterMixin``: ``add_adapter``, ``set_adapter``).
        settings: rank, alpha, target modules, dropout.
        gradient_checkpointing: recompute the transformer's activations in backward (memory for time).
        dist: several processes: the trained forward is wrapped in DDP, whose reducer holds only the parameters
            that need gradients, the trained adapter's: gradients of the adapter alone are averaged over ranks.
    """

    def __init__(self, field: nn.Module, transformer: nn.Module, settings: LoraSettings = LoraSettings(), *,
                 gradient_checkpointing: bool = False, dist: Any = None) -> None:
        from .. import distributed as dist_util
        from ..runtime import wrap_ddp

        from peft.tuners.tuners_utils import BaseTunerLayer

        check_targets(transformer, settings.target_modules)
        self.field, self.transformer, self.settings = field, transformer, settings
        transformer.requires_grad_(False)  # the base is frozen; peft makes the active adapter trainable
        transformer.add_adapter(settings.peft_config(), adapter_name=TRAIN)
        with warnings.catch_warnings():  # peft warns that a second adapter is being added: that is the design
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            transformer.add_adapter(settings.peft_config(), adapter_name=POLICY)
        # the adapters (and so Adam's state) in fp32 whatever the base's dtype: a bf16 base would give bf16 adapters,
        # whose small updates bf16 rounds away (peft's layers cast their input to the adapter's dtype and back)
        for name, p in transformer.named_parameters():
            if "lora_" in name and p.dtype != torch.float32:
                p.data = p.data.float()
        self._layers = [m for m in transformer.modules() if isinstance(m, BaseTunerLayer)]
        self._train_params = [p for n, p in transformer.named_parameters() if f".{TRAIN}." in n]
        self._policy_params = [p for n, p in transformer.named_parameters() if f".{POLICY}." in n]
        self._activate(TRAIN)
        if gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        self.model = _RoleView(self, TRAIN)
        device = next(transformer.parameters()).device
        self.train_net = wrap_ddp(self.model, dist or dist_util.DistContext(), device)
        self.ema = None  # an EMA of the adapter weights is not offered yet
        self._policy, self._reference = _RoleView(self, POLICY), _RoleView(self, None)
        self.refresh_policy()

    # -- adapter state --------------------------------------------------------------------------------------------

    def _activate(self, adapter: str | None) -> None:
        for layer in self._layers:
            layer.enable_adapters(adapter is not None)
            if adapter is not None:
                layer.set_adapter(adapter)
        # peft's set_adapter makes the active adapter trainable and the others not: the trained adapter stays
        # trainable whatever is active (the optimizer holds it), the policy adapter never is
        for p in self._train_params:
            p.requires_grad_(True)
        for p in self._policy_params:
            p.requires_grad_(False)
        self._active = adapter

    @contextmanager
    def state(self, adapter: str | None, restore: bool = False) -> Iterator[None]:
        """The shared network with ``adapter`` active (None: every adapter off) inside the block. The state is
        switched only when it differs from the last one (a sampling run of the policy switches once, not at every
        step); every role enters its own state, so none can see another's. ``restore``: back to the trained
        adapter on leaving."""
        if adapter != self._active:
            self._activate(adapter)
        try:
            yield
        finally:
            if restore and self._active != TRAIN:
                self._activate(TRAIN)

    # -- the roles (ModelRoles) ---------------------------------------------------------------------------------

    def policy(self) -> nn.Module:
        return self._policy

    def policy_net(self) -> nn.Module:
        return self._policy

    def reference(self) -> nn.Module:
        return self._reference

    def current(self) -> nn.Module:
        return self.model

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The trained adapter's weights (what the optimizer holds)."""
        return list(self._train_params)

    def adapter_state(self, adapter: str = TRAIN) -> dict[str, torch.Tensor]:
        """The weights of ``adapter`` under peft's names without the adapter name (the LoRA file's keys), copies."""
        from peft.utils import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.transformer, adapter_name=adapter).items()}

    def refresh_policy(self) -> None:
        """policy adapter <- trained adapter."""
        from peft.utils import set_peft_model_state_dict

        with torch.no_grad():
            set_peft_model_state_dict(self.transformer, self.adapter_state(TRAIN), adapter_name=POLICY)

    def reset_to_model(self) -> None:
        """Nothing to reset: the reference is the base itself; the policy follows the trained adapter."""
        self.refresh_policy()

    def save_lora(self, folder: str | Path, pipeline_class: Callable[..., Any]) -> Path:
        """The trained adapter in diffusers' LoRA format: ``folder/pytorch_lora_weights.safetensors``, which
        ``pipe.load_lora_weights(folder)`` reads."""
        folder = Path(folder)
        # the adapter's config travels in the file's metadata: without it diffusers assumes alpha = rank
        pipeline_class.save_lora_weights(folder, transformer_lora_layers=self.adapter_state(TRAIN),
                                         transformer_lora_adapter_metadata=self.transformer.peft_config[TRAIN].to_dict())
        return folder / "pytorch_lora_weights.safetensors"
