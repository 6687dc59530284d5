"""PiD's undistilled v1.5 teacher: many steps of multistep DPM-Solver++ with text-only CFG.

Facts from upstream (nv-tlabs/PiD 2c8814c), read, not copied: `PidModel.
generate_samples_from_batch` (`pid/_src/models/pid_model.py`) runs `DPMS(model_type="flow",
schedule="FLOW", guidance_type="classifier-free")` (`pid/_src/modules/dpmsolver/dpm_solver.py`)
with `order=min(steps, 2)`, `method="multistep"`, `skip_type="time_uniform_flow"`,
`lower_order_final=True`, `solver_type="dpmsolver"`; upstream's docs run the teacher at CFG 5
and 25 steps.

- Times: t_i = shift(s_i), s = flip(1 - linspace(1, 0.001, N + 1)), shift(s) = k s / (1 + (k -
  1) s): from shift(0.999) down to exactly 0; the net sees t * 1000.
- Shift k: explicit, else dynamic 6.0 * sqrt(sqrt(H * W) / 2048) (the v1.5 teacher config).
- Flow parametrisation: alpha_t = 1 - t, sigma_t = t, lambda_t = log(alpha_t / sigma_t); the
  net predicts v = eps - x0, so eps = x + (1 - t) v and x0 = (x - t eps) / (1 - t).
- CFG on the noise prediction, eps_u + s (eps_c - eps_u), which equals guidance on v; the
  unconditional branch is the caption encoder's embedding of `NEGATIVE_PROMPT` with the same
  LQ latent and degrade sigma ("text-only CFG"), two separate batch-B calls, uncond first.
- First-order update at the first step and (lower_order_final) the last, second-order 2M in
  between; the last step to t = 0 returns the x0 prediction; N network evaluations (2N with
  CFG). Initial noise [B, 3, H, W] float32 from the generator, nothing random afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pid_models.sampler import TIMESCALE, VelocityFn

#: Upstream's `PixelDiTModel` default `negative_prompt`, the teacher's unconditional caption.
NEGATIVE_PROMPT = (
    "low quality, worst quality, over-saturated, three legs, six fingers, cartoon, anime, cgi, "
    "low res, blurry, deformed, distortion, duplicated limbs, plastic skin, jpeg artifacts, "
    "watermark"
)
TEACHER_STEPS = 25
TEACHER_CFG = 5.0
BASE_SHIFT = 6.0
BASE_SHIFT_SIZE = 2048


def dynamic_shift(height: int, width: int) -> float:
    """The v1.5 teacher's resolution-dependent shift: 6 at 2048^2, ~8.49 at 4096^2."""
    return BASE_SHIFT * math.sqrt(math.sqrt(height * width) / BASE_SHIFT_SIZE)


def teacher_schedule(steps: int, shift: float) -> torch.Tensor:
    """The N + 1 times of upstream's `time_uniform_flow` skip type, float32, 1 > t_0 > ... = 0."""
    if steps < 1:
        raise ValueError(f"steps={steps}: the teacher needs at least one step")
    betas = torch.linspace(1.0, 0.001, steps + 1)
    sigmas = 1.0 - betas
    return (shift * sigmas / (1 + (shift - 1) * sigmas)).flip(dims=[0])


def _lambda(t: torch.Tensor) -> torch.Tensor:
    return torch.log(1 - t) - torch.log(t)


def sample_teacher(
    velocity: VelocityFn,
    y: torch.Tensor,
    y_null: torch.Tensor | None,
    lq_latent: torch.Tensor,
    degrade_sigma: torch.Tensor,
    out_shape: tuple[int, int, int, int],
    steps: int = TEACHER_STEPS,
    cfg_scale: float = TEACHER_CFG,
    shift: float | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """The teacher's sample, clamped to [-1, 1]. `y_null` (the negative caption's embedding)
    is needed unless cfg_scale == 1, where the unguided velocity is used alone."""
    device = lq_latent.device
    batch, _, height, width = out_shape
    if cfg_scale != 1.0 and y_null is None:
        raise ValueError("cfg_scale != 1 needs y_null, the negative caption's embedding")
    times = teacher_schedule(steps, dynamic_shift(height, width) if shift is None else shift)
    times = times.to(device)
    if noise is None:
        draw_device = generator.device if generator is not None else device
        noise = torch.randn(out_shape, generator=generator, device=draw_device)
    x = noise.to(device, torch.float32)

    def data_prediction(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_scaled = (t * TIMESCALE).expand(batch)
        eps = _eps(velocity(x, t_scaled, y, lq_latent, degrade_sigma), x, t)
        if cfg_scale != 1.0:
            eps_null = _eps(velocity(x, t_scaled, y_null, lq_latent, degrade_sigma), x, t)
            eps = eps_null + cfg_scale * (eps - eps_null)
        return (x - t * eps) / (1 - t)

    order = min(steps, 2)
    previous = [(times[0], data_prediction(x, times[0]))]
    for step in range(1, steps + 1):
        t = times[step]
        step_order = min(order, steps + 1 - step, len(previous))
        x = _update(x, previous, t, step_order)
        previous = [*previous[-(order - 1) :], (t, None)] if order > 1 else [(t, None)]
        if step < steps:  # the last model value is never needed
            previous[-1] = (t, data_prediction(x, t))
    return x.clamp(-1, 1)


def _eps(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (1 - t) * v.float() + x


def _update(x: torch.Tensor, previous: list, t: torch.Tensor, order: int) -> torch.Tensor:
    """DPM-Solver++ first order, or multistep second order ('dpmsolver' form), from the last
    model time to t."""
    s, model_s = previous[-1]
    h = _lambda(t) - _lambda(s)
    phi_1 = torch.expm1(-h)
    alpha_t, ratio = torch.exp(torch.log(1 - t)), t / s  # upstream's marginal_alpha route
    if order == 1:
        return ratio * x - alpha_t * phi_1 * model_s
    r, model_r = previous[-2]
    r0 = (_lambda(s) - _lambda(r)) / h
    d1 = (1.0 / r0) * (model_s - model_r)
    return ratio * x - (alpha_t * phi_1) * model_s - 0.5 * (alpha_t * phi_1) * d1


def undistilled_name(backbone: str) -> str:
    return f"PiD_v1pt5_res2kto4k_sr4x_official_{backbone}_undistilled"


Loader = Callable[[], torch.nn.Module]
