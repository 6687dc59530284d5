"""Recommendations: each question answered from rows that hold the answer, and marked with its
reason where the rows do not (pid_bench.recommend, docs/recommendations.md)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pid_bench.cli import app
from pid_bench.recommend import GIB, fits, recommendations
from pid_bench.store import part_files

IMAGES = [f"img{i}" for i in range(8)]


def _rows(
    *,
    sigmas=(0.0,),
    steps=(4,),
    ckpt_types=("2k",),
    decoders=("pid", "native+bicubic"),
    ssim=None,
    latency=None,
    peak=None,
    device="cpu",
) -> pd.DataFrame:
    """One ok row per (cell, decoder); metric values from the given functions of the row."""
    rng = np.random.default_rng(0)
    records = []
    for ckpt, sigma, step, image in itertools.product(ckpt_types, sigmas, steps, IMAGES):
        cell = f"{ckpt}-{sigma}-{step}-{image}"
        for decoder in decoders:
            record = {
                "mode": "from_clean", "backbone": "flux", "ckpt_type": ckpt,
                "precision": "bf16-autocast", "compile": "eager", "out_height": 2048,
                "out_width": 2048, "sigma": sigma, "save_xt_step": None, "tile": 0,
                "pid_steps": step, "decoder": decoder, "image_id": image, "seed": 0,
                "status": "ok", "cell_id": cell, "device": device,
            }  # fmt: skip
            noise = rng.normal(0, 0.005)
            record["metric_ssim"] = (ssim or (lambda r: 0.8))(record) + noise
            record["metric_lq_color_de2000"] = 2.0 + 10 * sigma + rng.normal(0, 0.1)
            record["latency_ms_p50"] = (latency or (lambda r: 100.0))(record) * (1 + noise)
            record["peak_mem_allocated_bytes"] = peak(record) if peak else None
            records.append(record)
    return pd.DataFrame(records)


def _answers(rows: pd.DataFrame, question: str) -> list[dict]:
    found = [a for a in recommendations(rows, {})["answers"] if a["question"] == question]
    assert found, question
    return found


def test_pid_clearly_better_and_slower_is_said_with_its_interval_and_evidence():
    rows = _rows(
        ssim=lambda r: 0.9 if r["decoder"] == "pid" else 0.8,
        latency=lambda r: 300.0 if r["decoder"] == "pid" else 100.0,
    )
    (answer,) = _answers(rows, "pid_or_baseline")
    quality, latency, memory = answer["numbers"]["families"]
    assert quality["verdict"] == "PiD better" and quality["low"] > 0
    assert quality["win_rate"] == 1.0 and quality["images"] == len(IMAGES)
    assert latency["verdict"] == "PiD slower" and 2.8 < latency["ratio"] < 3.2
    assert memory["verdict"] is None and "CPU run" in memory["reason"]
    assert answer["evidence"]["images"] == len(IMAGES)
    assert "CPU figures" in answer["answer"]


def test_equal_quality_is_no_clear_difference():
    (answer,) = _answers(_rows(), "pid_or_baseline")
    assert answer["numbers"]["families"][0]["verdict"] == "no clear difference"


def test_a_run_without_baseline_or_with_one_sigma_or_one_step_says_why():
    rows = _rows(decoders=("pid", "native"))
    assert "no baseline" in _answers(rows, "pid_or_baseline")[0]["reason"]
    assert "one σ only" in _answers(rows, "sigma")[0]["reason"]
    assert "one pid_steps value" in _answers(rows, "steps")[0]["reason"]
    assert "one checkpoint type" in _answers(rows, "checkpoint")[0]["reason"]


def test_sigma_front_trades_quality_against_the_artifact():
    # quality peaks at σ=0.2 while the colour shift grows with σ: 0 and 0.2 are on the front
    peaks = {0.0: 0.80, 0.2: 0.85, 0.4: 0.82}
    rows = _rows(sigmas=tuple(peaks), ssim=lambda r: peaks[r["sigma"]])
    (answer,) = _answers(rows, "sigma")
    assert answer["numbers"]["front"] == [0.0, 0.2]
    assert "best ssim at σ=0.2" in answer["answer"]


def test_steps_names_the_smallest_count_within_the_best_interval():
    quality = {1: 0.60, 2: 0.849, 3: 0.85, 4: 0.85}
    rows = _rows(steps=(1, 2, 3, 4), ssim=lambda r: quality[r["pid_steps"]])
    (answer,) = _answers(rows, "steps")
    assert answer["numbers"]["enough"] == 2
    assert answer["answer"].startswith("2 PiD steps suffice")


def test_checkpoints_at_one_size_are_ranked_with_their_differences():
    rows = _rows(
        ckpt_types=("2k", "2kto4k_v1pt5"),
        ssim=lambda r: 0.9 if r["ckpt_type"] == "2kto4k_v1pt5" else 0.8,
    )
    (answer,) = _answers(rows, "checkpoint")
    assert answer["numbers"]["best"] == "2kto4k_v1pt5"
    assert "2k -0.1" in answer["answer"]


def test_what_fits_uses_the_memory_model_and_measured_peaks_where_the_run_has_them():
    empty = _rows(decoders=("pid",))
    modelled = fits(empty, "flux", "2k", [16, 80])
    rows = {r["gpu_gb"]: r for r in modelled.numbers["table"]}
    assert rows[16]["whole"] < rows[80]["whole"]
    assert rows[16]["whole_source"] == "memory model" and rows[16]["tile"]
    # a CUDA peak of 70 GiB at 2048² overrides the model: 2048² no longer fits 16 GiB whole
    measured = empty.assign(peak_mem_allocated_bytes=70 * GIB, device="cuda:0")
    table = {r["gpu_gb"]: r for r in fits(measured, "flux", "2k", [16, 80]).numbers["table"]}
    assert table[80]["whole"] >= 2048 and table[16]["whole"] == 1024  # the first side that fits
    assert fits(measured, "flux", "2k", [80]).evidence["measured_sizes"] == [2048]


@pytest.mark.parametrize("backbone", ["tiny"])
def test_tiny_runs_say_their_answers_are_about_the_tiny_networks(backbone):
    rows = _rows().assign(backbone=backbone)
    notes = recommendations(rows, {})["notes"]
    assert any("tiny embedded networks" in note for note in notes)
    assert any("CPU figures" in note for note in notes)


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.usefixtures("shared_local_ray")
def test_the_tiny_twin_answers_every_question_or_says_why(tmp_path):
    """suites/questions_tiny.yaml end to end: the Recommendations section at the top of both
    pages, recommendations.json with every question answered or marked with its reason."""
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["run", str(REPO / "suites" / "questions_tiny.yaml"), "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    rec = json.loads((out / "recommendations.json").read_text())
    by_question = {}
    for answer in rec["answers"]:
        assert (answer["answer"] is None) != (answer["reason"] is None), answer
        by_question.setdefault(answer["question"], []).append(answer)
    assert set(by_question) == {"pid_or_baseline", "sigma", "steps", "checkpoint", "fits"}
    baselines = {a["scope"]["baseline"] for a in by_question["pid_or_baseline"]}
    assert baselines == {"native+bicubic", "native+lanczos"}
    for question in ("pid_or_baseline", "sigma", "steps", "fits"):
        assert all(a["answer"] for a in by_question[question]), question
    assert "one checkpoint type" in by_question["checkpoint"][0]["reason"]
    assert any("tiny embedded networks" in note for note in rec["notes"])
    board = (out / "leaderboard.md").read_text()
    assert board.index("## Recommendations") < board.index("| mode |")  # above the leaderboard
    html = (out / "report.html").read_text()
    assert html.index('id="recommendations"') < html.index('id="leaderboard"')
    # the failure-mode measures are in every row; seams where the cell tiles, else a reason
    assert by_question["sigma"][0]["numbers"]["artifact_metric"] == "speck_rate"
    rows = pd.concat([pd.read_parquet(p) for p in part_files(out)], ignore_index=True)
    assert rows["metric_speck_rate"].notna().all()
    tiled = rows["tile"] > 0
    assert rows.loc[tiled, "metric_seam_score"].notna().all()
    assert rows.loc[~tiled, "metric_seam_score"].isna().all()
    assert rows.loc[~tiled, "metric_notes"].str.contains("untiled").all()


def test_fits_reports_measured_tiling_cost_against_the_whole_decode():
    """Tiled PiD rows: their seam_score beside the baselines' at the same boundaries, and the
    quality lost against the whole decode of the same images (paired)."""
    whole = _rows(ssim=lambda r: 0.8)
    tiled = _rows(ssim=lambda r: 0.7).assign(tile=1024)
    tiled["metric_seam_score"] = np.where(tiled["decoder"] == "pid", 3.0, 1.0)
    rows = pd.concat([whole.assign(metric_seam_score=np.nan), tiled], ignore_index=True)
    (answer,) = _answers(rows, "fits")
    (cost,) = answer["numbers"]["tiled"]
    assert cost["tile"] == 1024 and cost["seam_score"] == pytest.approx(3.0)
    assert cost["seam_score_baselines"] == pytest.approx(1.0)
    assert cost["quality_metric"] == "ssim" and cost["n_pairs"] == len(IMAGES)
    assert cost["diff_vs_whole"] == pytest.approx(-0.1, abs=0.01) and cost["high"] < 0
    assert "tiles of 1024: seam_score 3" in answer["answer"]
    assert _answers(whole, "fits")[0]["numbers"]["tiled"] == []  # nothing tiled, nothing said
