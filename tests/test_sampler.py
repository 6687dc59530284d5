"""The distilled SDE sampler: golden vector, t-list sub-sampling, seeding."""

from __future__ import annotations

import json

import pytest
import torch

from pid_bench.parity import run_sampler
from pid_models.sampler import DISTILLED_T_LIST, sample, t_schedule, velocity_to_x0
from pid_models.tiny import build_tiny_net


def test_sampler_matches_golden_vector_with_injected_noise(reference_dir):
    index = json.loads((reference_dir / "golden/INDEX.json").read_text())["files"]
    entry = next(e for e in index if e["kind"] == "sampler")
    result = run_sampler(reference_dir / "golden", entry)
    assert result.passed, result.line()


@pytest.mark.parametrize(
    "steps, expected",
    [
        (4, [0.999, 0.866, 0.634, 0.342, 0.0]),
        (3, [0.999, 0.866, 0.342, 0.0]),  # indices round(linspace(0, 4, 4)) = 0, 1, 3, 4
        (2, [0.999, 0.634, 0.0]),
    ],
)
def test_t_schedule_subsamples_the_distilled_list(steps, expected):
    schedule = t_schedule(steps)
    assert schedule.dtype == torch.float32
    assert schedule.tolist() == pytest.approx(expected)
    assert set(schedule.tolist()) <= set(torch.tensor(DISTILLED_T_LIST).tolist())


def test_one_step_starts_at_upstreams_student_timestep():
    """Upstream's single-step student uses t = 1.0 (PidInferenceConfig.student_timestep), not
    the list's 0.999: the network sees t = 1000."""
    assert t_schedule(1).tolist() == [1.0, 0.0]
    seen = []

    def velocity(x, t, y, z, s):
        seen.append(t.tolist())
        return torch.zeros_like(x)

    sample(velocity, torch.zeros(1, 2, 4), torch.zeros(1, 16, 1, 1), torch.zeros(1),
           (1, 3, 16, 16), steps=1, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert seen == [[1000.0]]


@pytest.mark.parametrize("steps", [0, 5, -1])
def test_t_schedule_refuses_step_counts_it_cannot_serve(steps):
    with pytest.raises(ValueError, match="supports 1..4 steps"):
        t_schedule(steps)


def test_velocity_to_x0_runs_in_float64():
    x = torch.tensor([1.0 + 2**-23])
    v = torch.tensor([1.0])
    t = torch.tensor(0.999)
    expected = (x.double() - t.double() * v.double()).float()
    assert torch.equal(velocity_to_x0(x, t, v), expected)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(1, 4, 24, generator=g),
        torch.randn(1, 16, 2, 2, generator=g),
        torch.tensor([0.2]),
    )


def test_generator_draws_noise_then_each_eps_in_order():
    net = build_tiny_net(0)
    y, z, s = _inputs()
    shape = (1, 3, 64, 64)
    with torch.no_grad():
        drawn = sample(net, y, z, s, shape, generator=torch.Generator().manual_seed(7))
        g = torch.Generator().manual_seed(7)
        noise = torch.randn(shape, generator=g)
        eps = [torch.randn(shape, generator=g) for _ in range(3)]
        injected = sample(net, y, z, s, shape, noise=noise, eps=eps)
    assert torch.equal(drawn.unclamped, injected.unclamped)
    assert drawn.image.min() >= -1 and drawn.image.max() <= 1


def test_same_seed_same_image_other_seed_other_image():
    net = build_tiny_net(0)
    y, z, s = _inputs()
    shape = (1, 3, 64, 64)
    with torch.no_grad():
        a, b, c = (
            sample(net, y, z, s, shape, generator=torch.Generator().manual_seed(seed)).image
            for seed in (1, 1, 2)
        )
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_recorded_steps_use_the_subsampled_t_list():
    net = build_tiny_net(0)
    y, z, s = _inputs()
    with torch.no_grad():
        out = sample(net, y, z, s, (1, 3, 64, 64), steps=2, generator=torch.Generator(),
                     record_steps=True)  # fmt: skip
    assert [st["t_scaled"].item() for st in out.steps] == pytest.approx([999.0, 634.0])


def test_wrong_number_of_injected_eps_is_refused():
    net = build_tiny_net(0)
    y, z, s = _inputs()
    with pytest.raises(ValueError, match="eps has 1 draws"):
        sample(net, y, z, s, (1, 3, 64, 64), eps=[torch.zeros(1, 3, 64, 64)])
