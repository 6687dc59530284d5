"""The checkpoint registry: released pairs, aliases, errors that list the valid pairs."""

from __future__ import annotations

import pytest

from pid_models.registry import (
    BACKBONE_ALIASES,
    EXPERIMENTS,
    UnknownCheckpointError,
    registry_keys,
    released_pairs,
    resolve,
)


def test_nineteen_registry_keys_map_to_ten_experiments():
    assert len(released_pairs()) == 19
    assert len(EXPERIMENTS) == 10
    assert len({resolve(*pair).name for pair in released_pairs()}) == 10


@pytest.mark.parametrize("alias, target", sorted(BACKBONE_ALIASES.items()))
def test_aliases_share_their_targets_checkpoints(alias, target):
    for ckpt_type in ("2k", "2kto4k", "2kto4k_v1pt5"):
        try:
            expected = resolve(target, ckpt_type)
        except UnknownCheckpointError:
            with pytest.raises(UnknownCheckpointError):
                resolve(alias, ckpt_type)
            continue
        assert resolve(alias, ckpt_type) is expected


@pytest.mark.parametrize(
    "backbone, ckpt_type, experiment",
    [
        ("flux", "2k", "PiD_res2k_sr4x_official_flux_distill_4step"),
        ("zimage-turbo", "2kto4k_v1pt5", "PiD_v1pt5_res2kto4k_sr4x_official_flux_distill_4step"),
        ("siglip", "2k", "PiD_res2k_sr8x_official_siglip_distill_4step"),
        ("sdxl", "2kto4k", "PiD_res2kto4k_sr4x_official_sdxl_distill_4step"),
        ("flux2-klein-9b", "2k", "PiD_res2k_sr4x_official_flux2_distill_4step"),
        (
            "qwenimage-2512",
            "2kto4k_v1pt5",
            "PiD_v1pt5_res2kto4k_sr4x_official_qwenimage_distill_4step",
        ),
    ],
)
def test_resolve_names_the_experiment_and_its_file(backbone, ckpt_type, experiment):
    found = resolve(backbone, ckpt_type)
    assert found.name == experiment
    assert found.checkpoint_relpath == f"checkpoints/{experiment}/model_ema_bf16.pth"


@pytest.mark.parametrize(
    "backbone, ckpt_type, reason",
    [
        ("sdxl", "2k", "released no '2k' checkpoint for 'sdxl'"),
        ("qwenimage", "2k", "released no '2k' checkpoint"),
        ("dinov2", "2kto4k_v1pt5", "released no"),
        ("flux", "4k", "unknown ckpt_type '4k'"),
        ("fluxx", "2k", "unknown backbone 'fluxx'"),
    ],
)
def test_unreleased_or_unknown_pairs_list_every_valid_pair(backbone, ckpt_type, reason):
    with pytest.raises(UnknownCheckpointError) as info:
        resolve(backbone, ckpt_type)
    message = str(info.value)
    assert reason in message
    assert all(f"{b}/{c}" in message for b, c in released_pairs())


def test_registry_keys_include_aliases():
    assert registry_keys(resolve("flux2", "2k")) == [
        ("flux2", "2k"), ("flux2-klein-4b", "2k"), ("flux2-klein-9b", "2k"),
    ]  # fmt: skip


def test_pid_scale_is_eight_only_for_siglip():
    scales = {e.backbone: e.pid_scale for e in EXPERIMENTS.values()}
    assert scales.pop("siglip") == 8
    assert set(scales.values()) == {4}


def test_the_trained_envelope_is_the_largest_trained_shape_and_16_to_9():
    from pid_models.registry import outside_envelope

    for shape in [(2048, 2048), (2304, 1728), (1728, 2304), (2688, 1536), (1536, 2688)]:
        assert not outside_envelope("2k", shape), shape  # upstream's 2k shapes
    assert outside_envelope("2k", (4096, 4096)) and not outside_envelope(
        "2kto4k_v1pt5", (4096, 4096)
    )
    assert outside_envelope("2kto4k", (4096, 1024))  # 4:1
    assert not outside_envelope("2k", (256, 384))  # smaller outputs are not flagged
