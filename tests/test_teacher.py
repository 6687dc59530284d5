"""PiD's undistilled teacher: upstream's DPM-Solver++ schedule, its CFG, and a decode."""

from __future__ import annotations

import math

import pytest
import torch

from pid_models.teacher import (
    NEGATIVE_PROMPT,
    dynamic_shift,
    sample_teacher,
    teacher_schedule,
)


def test_schedule_runs_from_shifted_0999_to_exactly_zero():
    times = teacher_schedule(25, 6.0)
    assert times.shape == (26,) and times.dtype == torch.float32
    assert times[0].item() == pytest.approx(6 * 0.999 / (1 + 5 * 0.999), abs=1e-6)
    assert times[-1].item() == 0.0 and bool((times[:-1] > times[1:]).all())
    unshifted = teacher_schedule(4, 1.0)
    assert torch.allclose(unshifted, torch.tensor([0.999, 0.74925, 0.4995, 0.24975, 0.0]))


def test_dynamic_shift_is_6_at_2048_and_grows_with_the_side():
    assert dynamic_shift(2048, 2048) == pytest.approx(6.0)
    assert dynamic_shift(4096, 4096) == pytest.approx(6 * math.sqrt(2))
    assert dynamic_shift(3840, 3840) == pytest.approx(6 * math.sqrt(3840 / 2048))


def _point_mass(x0: torch.Tensor):
    """The exact flow velocity of a one-point data distribution: v(x, t) = (x - x0) / t."""
    calls: list[torch.Tensor] = []

    def velocity(x, t_scaled, y, lq, sigma):
        calls.append(y)
        t = (t_scaled / 1000).view(-1, 1, 1, 1)
        return (x - x0) / t

    return velocity, calls


def test_with_the_exact_velocity_the_solver_lands_on_the_data():
    x0 = torch.rand(1, 3, 8, 8) * 1.6 - 0.8
    velocity, calls = _point_mass(x0)
    y = torch.zeros(1, 2, 4)
    out = sample_teacher(velocity, y, None, torch.zeros(1, 4, 1, 1), torch.zeros(1), (1, 3, 8, 8),
                         steps=6, cfg_scale=1.0, shift=3.0,
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.allclose(out, x0, atol=1e-4)
    assert len(calls) == 6  # one evaluation per step, none at t = 0


def test_cfg_one_is_the_unguided_velocity_and_cfg_calls_the_negative_branch_too():
    torch.manual_seed(0)
    weight = torch.randn(3, 3)

    def velocity(x, t_scaled, y, lq, sigma):
        mixed = torch.einsum("ij,bjhw->bihw", weight, x)
        return mixed * (1 + y.mean()) + t_scaled.view(-1, 1, 1, 1) / 1000

    args = (torch.zeros(1, 4, 1, 1), torch.zeros(1), (1, 3, 8, 8))
    y, y_null = torch.ones(1, 2, 4), torch.zeros(1, 2, 4)
    noise = torch.randn(1, 3, 8, 8)
    unguided = sample_teacher(velocity, y, None, *args, steps=5, cfg_scale=1.0, noise=noise)
    same_captions = sample_teacher(velocity, y, y, *args, steps=5, cfg_scale=5.0, noise=noise)
    guided = sample_teacher(velocity, y, y_null, *args, steps=5, cfg_scale=5.0, noise=noise)
    assert torch.allclose(unguided, same_captions, atol=1e-6)  # eps_u == eps_c: no guidance
    assert (guided - unguided).abs().max() > 1e-3
    with pytest.raises(ValueError, match="needs y_null"):
        sample_teacher(velocity, y, None, *args, steps=2, cfg_scale=5.0, noise=noise)


def test_the_negative_prompt_is_upstreams():
    assert NEGATIVE_PROMPT.startswith("low quality, worst quality, over-saturated")
    assert NEGATIVE_PROMPT.endswith("jpeg artifacts, watermark")


def test_pid_teacher_decodes_a_tiny_cell_with_the_documented_sampler(tmp_path):
    from pid_bench.cell import run_cell
    from pid_bench.models import load_models
    from pid_bench.settings import CellSettings
    from pid_bench.suite import load_suite
    from pid_bench.timing import TimingPolicy
    from tests.test_run import write_suite

    suite = load_suite(write_suite(
        tmp_path, decoders=["pid", "pid-teacher"], sigmas=[0.0], resolutions=[64], limit=1,
        teacher={"steps": 3, "cfg_scale": 5.0},
    ))  # fmt: skip
    settings = CellSettings(
        "r", "mini", ("pid", "pid-teacher"), ("psnr",), TimingPolicy(0, 1, 0), False,
        str(tmp_path), teacher=suite.teacher.model_dump(),
    )  # fmt: skip
    models = load_models("tiny", "2k", "cpu")
    pid, teacher = run_cell(suite.cells()[0], "t1", models, settings, "cpu")
    assert teacher["status"] == "ok", teacher.get("error")
    assert teacher["sampler"] == "DPM-Solver++(2M), 3 steps, CFG 5, shift 1.061"
    assert (teacher["decoded_height"], teacher["decoded_width"]) == (64, 64)
    assert teacher["flops"] == 6 * pid["flops"] // 4  # 3 steps x 2 CFG branches vs 4 steps
    assert pid["sampler"] == "distilled SDE, 4 steps"


def test_the_teacher_registry_lists_the_three_released_undistilled_checkpoints():
    from pid_models.registry import EXPERIMENTS, experiment_by_name, teacher

    for backbone in ("flux", "flux2", "qwenimage"):
        found = teacher(backbone, "2kto4k_v1pt5")
        assert found.name == f"PiD_v1pt5_res2kto4k_sr4x_official_{backbone}_undistilled"
        assert found.checkpoint_relpath == f"checkpoints/{found.name}/model_ema_bf16.pth"
        assert found.net_kwargs == EXPERIMENTS[(backbone, "2kto4k_v1pt5")].net_kwargs
        assert experiment_by_name(found.name) is found
    with pytest.raises(
        ValueError, match="no undistilled PiD teacher for sd3/2k: released for flux"
    ):
        teacher("sd3", "2k")
