"""A time-conditioned MLP velocity field for vector data ``x`` of shape ``(B, dim)``."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from orwcfm.errors import unknown_name_error
from orwcfm.models.base import broadcast_time, time_embedding

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module from its name (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise unknown_name_error("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


class MLP(nn.Module):
    """Velocity field ``v(t, x)`` for ``x`` (B, dim), ``t`` (B,) or () in [0, 1]; returns (B, dim).

    ``depth`` hidden layers of width ``hidden``. Every hidden layer receives the sinusoidal time embedding
    (``time_dim`` channels) through its own linear map added to its pre-activation, which equals
    concatenating the embedding to every layer's input: deep layers see t directly, which matters for
    velocity fields whose shape changes a lot along the path.

    >>> import torch
    >>> MLP(2, hidden=16, depth=2)(torch.rand(5), torch.randn(5, 2)).shape
    torch.Size([5, 2])
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 3,
        time_dim: int = 64,
        activation: str = "silu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("depth", depth), ("time_dim", time_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MLP {name} must be a positive integer, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLP dropout must be in [0, 1), got {dropout!r}")
        make_activation(activation)  # validate the name before building anything
        self.dim = dim
        self.time_dim = time_dim
        widths = [dim] + [hidden] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.time_proj = nn.ModuleList(nn.Linear(time_dim, hidden) for _ in range(depth))
        self.acts = nn.ModuleList(make_activation(activation) for _ in range(depth))
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, dim)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP expects x of shape (B, {self.dim}), got shape {tuple(x.shape)}")
        t = broadcast_time(t, x.shape[0]).to(x.device)
        emb = time_embedding(t, self.time_dim).to(x.dtype)
        h = x
        for layer, proj, act in zip(self.layers, self.time_proj, self.acts):
            h = self.dropout(act(layer(h) + proj(emb)))
        return self.out(h)
