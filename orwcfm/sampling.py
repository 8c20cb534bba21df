"""Sampling: integrate dx/dt = v(t, x) from t = 0 (noise) to t = 1 (data).

Fixed-step solvers (Euler, midpoint, Heun, RK4) are written out here: they are a few lines each and their
cost is exactly ``steps * stages`` network evaluations, which is what the benchmarks count. The adaptive
solver is torchdiffeq's Dormand-Prince (``dopri5``).

Gradients flow through the solver only with ``enable_grad=True``; otherwise everything runs under
``torch.no_grad`` and no autograd graph is kept (sampling a training batch must not hold the memory of
``steps`` network evaluations).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from . import longwork
from .conditions import Cond, check_cond, chunk_cond
from .errors import UserError, unknown_name_error
from .models.base import call_field

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Network evaluations per step of each fixed-step solver.
FIXED_STEP_STAGES = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}
SOLVERS = (*FIXED_STEP_STAGES, "dopri5")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class ODEResult:
    """The outcome of one integration.

    Attributes:
        samples: (B, *shape) the state at t = 1.
        trajectory: (T, B, *shape) the states at ``times`` (``times[0]`` = 0, ``times[-1]`` = 1), or ``None``
            when the trajectory was not requested.
        times: (T,) the time grid of the trajectory (for fixed-step solvers, the solver's own grid).
        nfe: number of network evaluations spent.
    """

    samples: torch.Tensor
    trajectory: torch.Tensor | None
    times: torch.Tensor
    nfe: int


def _step(solver: str, f: VelocityFn, t: torch.Tensor, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """One step of a fixed-step solver from (t, x) with step size h."""
    if solver == "euler":
        return x + h * f(t, x)
    if solver == "midpoint":
        return x + h * f(t + h / 2, x + (h / 2) * f(t, x))
    if solver == "heun":
        k1 = f(t, x)
        k2 = f(t + h, x + h * k1)
        return x + (h / 2) * (k1 + k2)
    if solver == "rk4":
        k1 = f(t, x)
        k2 = f(t + h / 2, x + (h / 2) * k1)
        k3 = f(t + h / 2, x + (h / 2) * k2)
        k4 = f(t + h, x + h * k3)
        return x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
    raise AssertionError(solver)  # validated by the caller


def check_solver(solver: str, steps: int) -> None:
    """Raise :class:`UserError` for an unknown solver or a non-positive step count."""
    if solver not in SOLVERS:
        raise unknown_name_error("ODE solver", solver, SOLVERS)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
        raise UserError(f"sampling steps must be a positive integer, got {steps!r}")


def integrate(
    model: nn.Module | VelocityFn,
    x0: torch.Tensor,
    *,
    solver: str = "euler",
    steps: int = 100,
    enable_grad: bool = False,
    return_trajectory: bool = False,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    cond: Cond | None = None,
    times: torch.Tensor | None = None,
) -> ODEResult:
    """Integrate dx/dt = model(t, x) (``model(t, x, cond)`` for a conditional field) from t = 0 to t = 1 from ``x0``.

    Args:
        model: velocity field called as ``model(t, x)`` with ``t`` of shape (B,) and ``x`` of shape (B, *shape).
        x0: (B, *shape) initial state (noise).
        solver: ``euler``, ``midpoint``, ``heun``, ``rk4`` or ``dopri5`` (adaptive, torchdiffeq).
        steps: number of steps of a fixed-step solver; for ``dopri5``, the number of intervals of the returned
            trajectory grid (the solver picks its own steps).
        enable_grad: let gradients flow through the integration (to ``x0`` and the model's parameters).
        return_trajectory: also return the states at every grid time.
        atol, rtol: tolerances of the adaptive solver.
        cond: the conditions of the B samples, or None for an unconditional field.
        times: (steps + 1,) the time grid of a fixed-step solver, increasing from 0 to 1 (e.g. a diffusers
            scheduler's shifted schedule, ``t = 1 - sigma``); default: uniform.
    """
    check_solver(solver, steps)
    batch = x0.shape[0]
    check_cond(cond, batch)
    if times is None:
        times = torch.linspace(0.0, 1.0, steps + 1, device=x0.device, dtype=x0.dtype)
    else:
        times = check_time_grid(times, steps, solver).to(device=x0.device, dtype=x0.dtype)
    nfe = 0

    def f(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        nonlocal nfe
        nfe += 1
        return call_field(model, t.expand(batch), x, cond)

    with torch.set_grad_enabled(enable_grad):
        if solver == "dopri5":
            from torchdiffeq import odeint

            grid = times if return_trajectory else times[[0, -1]]
            states = odeint(f, x0, grid, method="dopri5", atol=atol, rtol=rtol)
            longwork.tick(batch)
            trajectory = states if return_trajectory else None
            return ODEResult(samples=states[-1], trajectory=trajectory, times=grid, nfe=nfe)

        x = x0
        states = [x0] if return_trajectory else []
        for i in range(steps):
            x = _step(solver, f, times[i], x, times[i + 1] - times[i])
            longwork.tick(batch / steps)  # a progress bar's count, and a requested stop honoured here
            if return_trajectory:
                states.append(x)
    trajectory = torch.stack(states) if return_trajectory else None
    return ODEResult(samples=x, trajectory=trajectory, times=times, nfe=nfe)


def check_time_grid(times: torch.Tensor, steps: int, solver: str) -> torch.Tensor:
    """``times`` unless it is not a strictly increasing (steps + 1,) grid from 0 to 1 for a fixed-step solver."""
    if solver == "dopri5":
        raise UserError("a time grid is for the fixed-step solvers; dopri5 chooses its own steps")
    if not isinstance(times, torch.Tensor) or times.shape != (steps + 1,):
        got = tuple(times.shape) if isinstance(times, torch.Tensor) else type(times).__name__
        raise UserError(f"the time grid must be a tensor of shape ({steps + 1},) for {steps} steps, got {got}")
    if float(times[0]) != 0.0 or float(times[-1]) != 1.0 or not bool((times[1:] > times[:-1]).all()):
        raise UserError(f"the time grid must increase strictly from 0 to 1, got {times.tolist()}")
    return times


def autocast(device: torch.device | str, precision: str) -> AbstractContextManager:
    """The context that runs network passes at ``precision``: ``fp32`` (nothing changes) or ``bf16`` (autocast:
    convolutions and matrix products in bfloat16, reductions and the ODE state in float32), on CPU or CUDA."""
    if precision not in PRECISIONS:
        raise unknown_name_error("precision", precision, PRECISIONS)
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


@torch.no_grad()
def generate(
    model: nn.Module | VelocityFn,
    noise: torch.Tensor,
    *,
    solver: str = "euler",
    steps: int = 100,
    batch_size: int | None = None,
    precision: str = "fp32",
    cond: Cond | None = None,
    times: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integrate ``model`` from ``noise`` (N, *shape) to t = 1 without gradients, ``batch_size`` samples at a time
    (``times``: a fixed-step solver's grid, see :func:`integrate`).

    Chunking bounds memory (on a CPU it is not faster: chunks of 512 against one batch of 1024 measured
    0.93-1.04x, ``benchmarks/finetune_speed.py``). ``precision="bf16"`` runs the network under bfloat16
    autocast; the ODE state and the returned samples stay in ``noise.dtype``.
    Returns (N, *shape).
    """
    chunk = batch_size or len(noise)
    check_cond(cond, len(noise))
    with autocast(noise.device, precision):
        parts = [integrate(model, noise[i : i + chunk], solver=solver, steps=steps, cond=chunk_cond(cond, i, i + chunk),
                           times=times).samples for i in range(0, len(noise), chunk)]
    return torch.cat(parts).to(noise.dtype)


def sample(
    model: nn.Module | VelocityFn,
    n: int,
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    solver: str = "euler",
    steps: int = 100,
    batch_size: int | None = None,
    enable_grad: bool = False,
    cond: Cond | None = None,
) -> torch.Tensor:
    """Draw ``n`` samples: x0 ~ N(0, I) of shape (n, *shape), integrated to t = 1 (under conditions ``cond``, one
    per sample, for a conditional field).

    Noise is drawn on the CPU from ``generator`` (so a seed gives the same samples on every device) and the
    integration runs in chunks of ``batch_size`` to bound memory. Returns (n, *shape).
    """
    if n <= 0:
        raise UserError(f"number of samples must be positive, got {n}")
    check_cond(cond, n)
    x0 = torch.randn((n, *shape), generator=generator).to(device)
    if not enable_grad:
        return generate(model, x0, solver=solver, steps=steps, batch_size=batch_size, cond=cond)
    chunk = batch_size or n
    return torch.cat([integrate(model, x0[i : i + chunk], solver=solver, steps=steps, enable_grad=True,
                                cond=chunk_cond(cond, i, i + chunk)).samples for i in range(0, n, chunk)])
