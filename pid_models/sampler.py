"""The distilled few-step SDE sampler of PiD (pid_reference README section 7).

Flow convention x_t = (1 - t) x0 + t eps, t in [0, 1]; the network predicts v = eps - x0 and
sees t * 1000. Per step: x0 = x - t v (in float64), then re-noise to the next t with fresh eps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

#: The released 4-step student schedule (float32 values).
DISTILLED_T_LIST: tuple[float, ...] = (0.999, 0.866, 0.634, 0.342, 0.0)
#: A single step starts here, not at the list's first entry: upstream's `student_timestep`
#: (PidInferenceConfig, pid_distill_model_infer.py), which no released config overrides.
STUDENT_TIMESTEP = 1.0
TIMESCALE = 1000.0

#: (x, t_scaled [B], y, lq_latent, degrade_sigma) -> velocity, same shape as x.
VelocityFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor
]


def t_schedule(steps: int = 4, t_list: Sequence[float] = DISTILLED_T_LIST) -> torch.Tensor:
    """The t list for `steps` network evaluations, float32 [steps + 1].

    One step runs from `STUDENT_TIMESTEP` (1.0) to the list's last entry, as upstream's
    student does. Other step counts sub-sample the distilled list at
    round(linspace(0, n, steps + 1)), so they always start at the first and end at the last
    entry. More steps than the list has intervals would repeat t values, so they are refused.
    """
    full = torch.tensor(list(t_list), dtype=torch.float32)
    intervals = len(full) - 1
    if not 1 <= steps <= intervals:
        raise ValueError(
            f"steps={steps}: the distilled t list {list(t_list)} supports 1..{intervals} steps"
        )
    if steps == intervals:
        return full
    if steps == 1:
        return torch.tensor([STUDENT_TIMESTEP, float(full[-1])], dtype=torch.float32)
    return full[torch.linspace(0, intervals, steps + 1).round().long()]


def velocity_to_x0(x: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """x0 = x - t v, computed in float64 and cast back to x's dtype."""
    return (x.double() - t.double() * v.double()).to(x.dtype)


@dataclass
class SampleOutput:
    image: torch.Tensor  # clamped to [-1, 1]
    unclamped: torch.Tensor
    steps: list[dict[str, torch.Tensor]] = field(default_factory=list)  # if record_steps


def sample(
    velocity: VelocityFn,
    y: torch.Tensor,
    lq_latent: torch.Tensor,
    degrade_sigma: torch.Tensor,
    out_shape: tuple[int, int, int, int],
    steps: int = 4,
    generator: torch.Generator | None = None,
    t_list: Sequence[float] = DISTILLED_T_LIST,
    noise: torch.Tensor | None = None,
    eps: Sequence[torch.Tensor] | None = None,
    record_steps: bool = False,
) -> SampleOutput:
    """Run the SDE sampler.

    Args:
        velocity: the network call, e.g. `lambda x, t, y, z, s: net(x, t, y, z, s)`.
        y, lq_latent, degrade_sigma: conditioning, the same at every step.
        out_shape: (B, 3, H, W) of the image.
        steps: network evaluations (sub-samples `t_list`, see `t_schedule`).
        generator: draws the initial noise, then each re-noising eps in order, float32 on the
            generator's own device (upstream's order and dtype, so a generator seeded like
            upstream's reproduces its samples).
        noise, eps: inject the initial noise and the per-step re-noising draws instead of
            drawing them (`len(eps) == steps - 1`); used to replay the golden vectors.
        record_steps: keep t_scaled, v_pred and x0_pred of every step in `SampleOutput.steps`.
    """
    schedule = t_schedule(steps, t_list)
    device = lq_latent.device
    if eps is not None and len(eps) != steps - 1:
        raise ValueError(f"eps has {len(eps)} draws; {steps} steps need {steps - 1}")

    # Drawn where the generator lives, then moved: a CUDA generator gives upstream's stream
    # whatever the decode device.
    draw_device = generator.device if generator is not None else device

    def draw() -> torch.Tensor:
        fresh = torch.randn(out_shape, generator=generator, device=draw_device, dtype=torch.float32)
        return fresh.to(device)

    x = noise.to(device, torch.float32) if noise is not None else draw()
    batch = out_shape[0]
    record: list[dict[str, torch.Tensor]] = []
    for k in range(steps):
        t_cur, t_next = schedule[k].to(device), schedule[k + 1].to(device)
        t_scaled = (t_cur * TIMESCALE).expand(batch)
        v = velocity(x, t_scaled, y, lq_latent, degrade_sigma)
        x0 = velocity_to_x0(x, t_cur, v)
        if record_steps:
            record.append({"t_scaled": t_scaled.clone(), "v_pred": v.float(), "x0_pred": x0})
        if t_next > 0:
            fresh = eps[k].to(device, torch.float32) if eps is not None else draw()
            x = (1 - t_next) * x0 + t_next * fresh
        else:
            x = x0
    return SampleOutput(image=x.clamp(-1, 1), unclamped=x, steps=record)
