"""The tiny-backbone training script keeps working: a few steps of both stages, fixtures with
their checksums, and a resume that continues where it stopped (slow: it builds and trains)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from pid_models.tiny_training import META_FILE, TrainConfig, sha256, train

pytestmark = pytest.mark.slow

FEW = TrainConfig(
    codec_steps=2, codec_batch=2, codec_crop=32, pid_steps=2, pid_batch=4, pid_crop=64,
    checkpoint_every=1,
)  # fmt: skip


def test_training_writes_checksummed_fixtures_and_resumes(tmp_path):
    out, work, lines = tmp_path / "out", tmp_path / "work", []
    meta = train(FEW, out, work, log=lines.append)
    assert json.loads((out / META_FILE).read_text()) == meta
    for name, digest in meta["sha256"].items():
        assert sha256(out / name) == digest
    assert meta["codec_scaling_factor"] > 0 and set(meta["held_out_psnr_db"]) == set(
        meta["held_out"]
    )
    assert any(line.startswith("codec step 2/2") for line in lines)

    lines.clear()
    train(replace(FEW, codec_steps=3, pid_steps=3), out, work, resume=True, log=lines.append)
    steps = [line.split(" loss")[0] for line in lines if " step " in line]
    assert steps == ["codec step 3/3", "pid step 3/3"]  # resumed at 2, not started over
