"""Loading released-format checkpoints key-exact, with errors that name keys and files."""

from __future__ import annotations

import pytest
import torch

from pid_models import checkpoints
from pid_models.checkpoints import (
    CheckpointError,
    checkpoint_path,
    load_pid_net,
    load_weights,
    read_state_dict,
)
from pid_models.registry import Experiment, resolve
from pid_models.tiny import TINY_NET_KWARGS, build_tiny_net


def released_format(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What the conversion script writes: `net.` prefix, every tensor bfloat16."""
    return {f"net.{k}": v.to(torch.bfloat16) for k, v in net.state_dict().items()}


@pytest.fixture
def tiny_release(tmp_path, monkeypatch):
    """A download root holding a tiny net under flux/2k's real experiment path."""
    real = resolve("flux", "2k")
    tiny = Experiment(real.name, real.backbone, real.ckpt_type, TINY_NET_KWARGS)
    monkeypatch.setattr(checkpoints, "resolve", lambda b, c: tiny)
    source = build_tiny_net(seed=5)
    path = tmp_path / tiny.checkpoint_relpath
    path.parent.mkdir(parents=True)
    torch.save(released_format(source), path)
    return tmp_path, path, source


def test_released_format_loads_upcast_into_float32(tiny_release):
    root, _, source = tiny_release
    net = load_pid_net("flux", "2k", root=root)
    for key, value in net.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, source.state_dict()[key].to(torch.bfloat16).float()), key


def test_root_comes_from_the_environment_or_the_checkpoints_folder(tiny_release, monkeypatch):
    root, path, _ = tiny_release
    monkeypatch.setenv("PID_BENCH_CHECKPOINTS", str(root))
    assert load_pid_net("zimage", "2k") is not None
    experiment = resolve("flux", "2k")
    assert checkpoint_path(experiment, root / "checkpoints") == path


def test_no_root_at_all_says_how_to_set_one(monkeypatch):
    monkeypatch.delenv("PID_BENCH_CHECKPOINTS", raising=False)
    with pytest.raises(CheckpointError, match="PID_BENCH_CHECKPOINTS"):
        checkpoint_path(resolve("flux", "2k"))


def test_missing_file_names_the_expected_path_and_the_download_command(tmp_path):
    experiment = resolve("sd3", "2kto4k")
    with pytest.raises(CheckpointError) as info:
        checkpoint_path(experiment, tmp_path)
    message = str(info.value)
    assert str(tmp_path / experiment.checkpoint_relpath) in message
    assert f'hf download nvidia/PiD --include "{experiment.checkpoint_relpath}"' in message


def test_ema_critic_and_discriminator_keys_are_ignored():
    net = build_tiny_net(seed=1)
    state = released_format(net)
    state |= {"net_ema.final_layer.linear.bias": torch.zeros(3),
              "fake_score.anything": torch.zeros(2), "discriminator.head.weight": torch.zeros(1)}  # fmt: skip
    load_weights(build_tiny_net(seed=2), state, "ckpt.pth")


def test_unprefixed_keys_load_as_upstream_allows():
    net = build_tiny_net(seed=1)
    target = build_tiny_net(seed=2)
    load_weights(target, net.state_dict(), "plain.pth")
    assert torch.equal(target.final_layer.linear.weight, net.final_layer.linear.weight)


def test_missing_key_is_named_with_the_file():
    state = released_format(build_tiny_net(seed=1))
    del state["net.lq_proj.output_heads.1.weight"]
    with pytest.raises(
        CheckpointError, match=r"ckpt\.pth .*missing keys: lq_proj\.output_heads\.1\.weight"
    ):
        load_weights(build_tiny_net(seed=2), state, "ckpt.pth")


def test_unexpected_key_is_named_with_the_file():
    state = released_format(build_tiny_net(seed=1))
    state["net.extra_head.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"ckpt\.pth .*unexpected keys: extra_head\.weight"):
        load_weights(build_tiny_net(seed=2), state, "ckpt.pth")


def test_shape_mismatch_names_key_and_both_shapes():
    state = released_format(build_tiny_net(seed=1, lq_latent_channels=4))
    with pytest.raises(CheckpointError) as info:
        load_weights(build_tiny_net(seed=2), state, "sdxl.pth")
    assert "lq_proj.latent_proj.0.weight (file (16, 4, 3, 3), model (16, 16, 3, 3))" in str(
        info.value
    )


def test_a_failed_load_changes_no_parameter():
    target = build_tiny_net(seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    state = released_format(build_tiny_net(seed=1))
    del state["net.y_pos_embedding"]
    with pytest.raises(CheckpointError):
        load_weights(target, state, "ckpt.pth")
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


class TrainingState:
    """A custom class: unpickling it would run arbitrary code, so weights_only refuses."""


def test_pickled_objects_are_refused_under_weights_only(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"net.x": torch.zeros(1), "state": TrainingState()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_state_dict(path)


def test_a_file_that_is_not_a_tensor_dict_is_refused(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="expected a dict of str -> tensor, got list"):
        read_state_dict(path)


def test_a_truncated_file_is_refused_with_its_path(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save(released_format(build_tiny_net(seed=1)), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cut.pth"):
        read_state_dict(path)


def test_legacy_non_zip_files_still_load(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"net.a": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(read_state_dict(path)["net.a"], torch.ones(2))
