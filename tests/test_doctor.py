"""`pid-bench doctor`: presence of every component from local files only, and runnable cells."""

from __future__ import annotations

import socket

import pytest
from rich.console import Console

from pid_bench.doctor import (
    COMPONENTS,
    build_report,
    check_components,
    check_environment,
    check_metric_weights,
    doctor_exit_code,
    print_doctor,
    runnable_cells,
)
from pid_bench.suite import load_suite
from pid_models.caption import GEMMA_ID
from pid_models.codecs import CODEC_FILES, RAE_ENCODERS
from pid_models.registry import EMBEDDED_PAIRS, released_pairs, resolve
from tests.test_run import REPO, write_suite

try:
    from pid_models.ldm import PIPELINES

    FLUX_PIPELINE = PIPELINES["flux"].repo_id
except Exception:  # ldm.py not there yet: the doctor's own fallback table
    from pid_bench.doctor import _FALLBACK_PIPELINE_REPOS

    FLUX_PIPELINE = _FALLBACK_PIPELINE_REPOS["flux"]


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """An empty HF cache and torch hub, no checkpoints env, and any socket use is an error."""
    hub = tmp_path / "hf_hub"
    hub.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("PID_BENCH_CHECKPOINTS", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("the doctor must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    return hub


@pytest.fixture
def root(tmp_path):
    """A download root with the flux 2k PiD checkpoint and the FLUX.1 VAE (empty placeholders)."""
    root = tmp_path / "pid"
    pid = root / resolve("flux", "2k").checkpoint_relpath
    pid.parent.mkdir(parents=True)
    pid.write_bytes(b"")
    (root / CODEC_FILES["flux"][0]).write_bytes(b"")
    return root


def cache_snapshot(hub, repo_id, files=(), revision="abc123", ref=True):
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name in files:
        (snapshot / name).write_text("{}")
    if ref:
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(revision)
    return snapshot


def status(rows, backbone, ckpt_type, component):
    return next(
        r
        for r in rows
        if (r.backbone, r.ckpt_type, r.component) == (backbone, ckpt_type, component)
    )


def test_one_row_per_pair_and_component():
    rows = check_components(None)
    pairs = [*EMBEDDED_PAIRS, *released_pairs()]
    assert [(r.backbone, r.ckpt_type) for r in rows][:: len(COMPONENTS)] == pairs
    assert len(rows) == len(pairs) * len(COMPONENTS)


def test_present_and_missing_files_with_the_exact_fix(root):
    rows = check_components(root)
    flux = status(rows, "flux", "2k", "pid_checkpoint")
    assert flux.status == "present" and flux.usable and flux.hint is None
    assert flux.path == str(root / resolve("flux", "2k").checkpoint_relpath)
    vae = status(rows, "zimage-turbo", "2k", "codec")  # an alias reads the flux VAE
    assert (vae.status, vae.path) == ("present", str(root / CODEC_FILES["flux"][0]))

    rel = resolve("sd3", "2kto4k").checkpoint_relpath
    missing = status(rows, "sd3", "2kto4k", "pid_checkpoint")
    assert (missing.status, missing.path) == ("missing", str(root / rel))
    assert missing.hint == f'hf download nvidia/PiD --include "{rel}" --local-dir {root}'
    codec = status(rows, "sd3", "2k", "codec")
    (sd3_vae,) = CODEC_FILES["sd3"]
    assert codec.path == str(root / sd3_vae)
    assert codec.hint == f'hf download nvidia/PiD --include "{sd3_vae}" --local-dir {root}'
    for backbone in ("dinov2", "siglip"):
        rae = status(rows, backbone, "2k", "codec")
        assert (rae.status, rae.path) == ("missing", str(root / CODEC_FILES[backbone][0]))
        for rel in CODEC_FILES[backbone]:  # one command per missing file
            assert f'hf download nvidia/PiD --include "{rel}" --local-dir {root}' in rae.hint
        assert status(rows, backbone, "2k", "ldm_pipeline").status == "not implemented"


def test_rae_codec_needs_its_files_and_its_encoder_in_the_hf_cache(root, offline):
    for rel in CODEC_FILES["dinov2"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    (root / CODEC_FILES["siglip"][0]).parent.mkdir(parents=True)
    (root / CODEC_FILES["siglip"][0]).write_bytes(b"")  # its config is missing
    rows = check_components(root)
    dinov2 = status(rows, "dinov2", "2k", "codec")
    assert (dinov2.status, dinov2.hint) == ("missing", f"hf download {RAE_ENCODERS['dinov2']}")
    siglip = status(rows, "siglip", "2k", "codec")
    assert (siglip.status, siglip.path) == ("missing", str(root / CODEC_FILES["siglip"][1]))
    assert siglip.hint.count("hf download") == 1
    cache_snapshot(offline, RAE_ENCODERS["dinov2"], ["config.json"])
    dinov2 = status(check_components(root), "dinov2", "2k", "codec")
    assert (dinov2.status, dinov2.path) == ("present", str(root / CODEC_FILES["dinov2"][0]))


def test_root_may_be_the_checkpoints_folder_or_come_from_the_env(root, monkeypatch):
    inner = check_components(root / "checkpoints")
    assert status(inner, "flux", "2k", "pid_checkpoint").status == "present"
    assert status(inner, "flux", "2k", "codec").status == "present"
    unset = status(check_components(None), "flux", "2k", "pid_checkpoint")
    assert unset.status == "missing" and "PID_BENCH_CHECKPOINTS" in unset.hint
    monkeypatch.setenv("PID_BENCH_CHECKPOINTS", str(root))
    assert status(check_components(None), "flux", "2k", "pid_checkpoint").status == "present"


def test_tiny_is_embedded():
    tiny = [r for r in check_components(None) if r.backbone == "tiny"]
    assert {r.component for r in tiny if r.status == "embedded"} >= {
        "pid_checkpoint",
        "codec",
        "caption_encoder",
    }
    assert all(r.usable for r in tiny if r.component != "ldm_pipeline")


def test_an_empty_hf_cache_misses_gemma_and_pipelines(root):
    rows = check_components(root)
    gemma = status(rows, "flux", "2k", "caption_encoder")
    assert (gemma.status, gemma.hint) == ("missing", f"hf download {GEMMA_ID}")
    pipe = status(rows, "flux", "2k", "ldm_pipeline")
    assert (pipe.status, pipe.hint) == ("missing", f"hf download {FLUX_PIPELINE}")


def test_a_cached_snapshot_counts_as_present(root, offline):
    snapshot = cache_snapshot(offline, GEMMA_ID)
    gemma = status(check_components(root), "sd3", "2kto4k", "caption_encoder")
    assert (gemma.status, gemma.path) == ("present", str(snapshot))


def test_a_pipeline_snapshot_needs_its_model_index(root, offline):
    snapshot = cache_snapshot(offline, FLUX_PIPELINE)
    pipe = status(check_components(root), "flux", "2k", "ldm_pipeline")
    assert pipe.status == "missing" and "model_index.json" in pipe.hint
    (snapshot / "model_index.json").write_text("{}")
    pipe = status(check_components(root), "flux", "2k", "ldm_pipeline")
    assert (pipe.status, pipe.path) == ("present", str(snapshot))


def test_a_snapshot_without_refs_is_reported_not_trusted(root, offline):
    cache_snapshot(offline, GEMMA_ID, ref=False)
    gemma = status(check_components(root), "flux", "2k", "caption_encoder")
    assert gemma.status == "missing"
    assert "refs/main" in gemma.hint and gemma.hint.endswith(f"hf download {GEMMA_ID}")


def test_suite_cells_runnable_or_blocked_by_named_components(tmp_path, root, offline):
    suite = load_suite(write_suite(tmp_path, backbones=["tiny", "flux", "sd3"]))
    runnable, blocked = runnable_cells(suite, root=root)
    per_backbone = len(suite.cells()) // 3
    assert {c.backbone for c in runnable} == {"tiny"} and len(runnable) == per_backbone
    reasons = {summary.split()[1]: missing for summary, missing in blocked}
    assert reasons == {
        "flux/2k": ["caption_encoder"],
        "sd3/2k": ["pid_checkpoint", "codec", "caption_encoder"],
    }
    assert all(summary.startswith("from_clean ") for summary, _ in blocked)

    cache_snapshot(offline, GEMMA_ID)
    runnable, blocked = runnable_cells(suite, root=root)
    assert len(runnable) == 2 * per_backbone
    assert {summary.split()[1] for summary, _ in blocked} == {"sd3/2k"}


def test_from_ldm_cells_also_need_the_pipeline(tmp_path, root, offline):
    cache_snapshot(offline, GEMMA_ID)
    path = write_suite(
        tmp_path,
        mode="from_ldm",
        backbones=["flux"],
        sigmas=[0.0],
        decoders=["pid", "native"],
        metrics=[],
        source=str(REPO / "manifests" / "prompts_smoke.txt"),
    )
    _, blocked = runnable_cells(load_suite(path), root=root)
    assert blocked and all(missing == ["ldm_pipeline"] for _, missing in blocked)


def test_exit_code_and_rendered_tables(tmp_path, root):
    tiny = build_report(write_suite(tmp_path, name="t"), root)
    assert doctor_exit_code(tiny) == 0 and tiny.total_cells == len(tiny.runnable) > 0
    mixed = write_suite(tmp_path, name="m", backbones=["tiny", "flux"])
    assert doctor_exit_code(build_report(mixed, root)) == 1
    assert doctor_exit_code(build_report(None, root)) == 0  # no suite: always 0

    console = Console(record=True, width=1000)  # no folding of long paths
    assert print_doctor(mixed, root, console) == 1
    text = console.export_text()
    half = len(load_suite(mixed).cells()) // 2
    assert f"suite m: {half} of {2 * half} cells can run" in text
    assert "caption_encoder (missing)" in text and f"hf download {GEMMA_ID}" in text
    assert str(root / resolve("flux", "2k").checkpoint_relpath) in text


def test_metric_weights_by_file_name(tmp_path):
    pyiqa = tmp_path / "torch" / "hub" / "pyiqa"
    pyiqa.mkdir(parents=True)
    (pyiqa / "LPIPS_v0.1_alex-df73285e.pth").write_bytes(b"")
    found = {m.metric: m for m in check_metric_weights()}
    assert found["psnr"].status == found["ssim"].status == "no weights needed"
    assert found["lpips"].status == "missing"  # needs AlexNet's torchvision weights too
    assert found["lpips"].files == (str(pyiqa / "LPIPS_v0.1_alex-df73285e.pth"),)
    checkpoints = pyiqa.parent / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "alexnet-owt-7be5be79.pth").write_bytes(b"")
    assert {m.metric: m for m in check_metric_weights()}["lpips"].status == "present"
    assert found["dists"].status == "missing"
    assert str(pyiqa / "DISTS_weights-f5e65c96.pth") in found["dists"].searched
    assert f"to {pyiqa / 'DISTS_weights-f5e65c96.pth'}" in found["dists"].hint


def test_environment_lists_device_versions_and_caches(offline):
    env = check_environment()
    keys = {"python", "torch", "cuda_available", "cuda_version", "driver", "devices"}
    keys |= {"diffusers", "transformers", "ray", "pyiqa", "torchmetrics"}
    keys |= {"HF_HUB_OFFLINE", "hf_cache", "PID_BENCH_CHECKPOINTS"}
    assert keys <= set(env)
    assert env["hf_cache"] == str(offline) and env["HF_HUB_OFFLINE"] == "1"
    assert isinstance(env["devices"], list) and env["torch"]


def test_a_suite_named_pipeline_folder_counts_for_from_ldm_cells(tmp_path, root, offline):
    pipe = tmp_path / "tiny_pipe"
    pipe.mkdir()
    path = write_suite(
        tmp_path, mode="from_ldm", backbones=["tiny"], sigmas=[0.0], decoders=["pid"],
        metrics=[], source=str(REPO / "manifests" / "prompts_smoke.txt"),
        ldm={"pipelines": {"tiny": str(pipe)}},
    )  # fmt: skip
    report = build_report(path, root)
    assert not report.runnable and all(m == ["ldm_pipeline"] for _, m in report.blocked)
    assert "lacks model_index.json" in status(report.components, "tiny", "2k", "ldm_pipeline").hint
    (pipe / "model_index.json").write_text("{}")
    report = build_report(path, root)
    assert report.runnable and not report.blocked
    assert status(report.components, "tiny", "2k", "ldm_pipeline").path == str(pipe)


def test_each_baseline_file_is_listed_and_a_missing_one_fails_the_suite(tmp_path, root):
    (tmp_path / "sr_x4.pth").write_bytes(b"weights")
    baselines = {"esrgan": {"path": "sr_x4.pth"}, "swinir": {"path": "gone.safetensors"}}
    path = write_suite(
        tmp_path, name="b", decoders=["pid", "native+esrgan", "native+swinir"], baselines=baselines
    )
    report = build_report(path, root)
    assert report.baselines == [
        ("native+esrgan", str(tmp_path / "sr_x4.pth"), True),
        ("native+swinir", str(tmp_path / "gone.safetensors"), False),
    ]
    console = Console(record=True, width=1000)
    assert print_doctor(path, root, console) == 1
    text = console.export_text()
    assert "baselines (learned SR" in text and "fix baselines.<name>.path" in text


def test_doctor_fits_80_columns_and_prints_each_fix_whole(tmp_path, root, monkeypatch):
    from typer.testing import CliRunner

    from pid_bench.cli import app

    monkeypatch.setenv("COLUMNS", "80")
    path = write_suite(
        tmp_path, name="wide", backbones=["tiny", "flux", "sd3"],
        decoders=["pid", "native+esrgan"], baselines={"esrgan": {"path": "gone.safetensors"}},
    )  # fmt: skip
    result = CliRunner().invoke(app, ["doctor", str(path), "--checkpoints", str(root)])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    tables = [line for line in lines if line[:1] in "┃│┏┡└┌┗╇┠┣━"]
    for title in ("components", "where each component", "metric weights", "blocked cells",
                  "baselines"):  # fmt: skip
        assert any(line.startswith(title) for line in lines), title
    assert tables and max(len(line) for line in tables) <= 80
    # a fix is cited in the tables and printed once, whole, on its own line
    rel = resolve("sd3", "2k").checkpoint_relpath
    command = f'hf download nvidia/PiD --include "{rel}" --local-dir {root}'
    (fix,) = [line for line in lines if line.endswith(command)]
    number = fix.split("]")[0] + "]"
    assert any(f"fix {number}" in line for line in tables)
    # a long path folds inside its (last) column, all of it kept: the folded pieces join up
    cells = "".join(line.strip("│ ") for line in tables)
    assert str(root / resolve("flux", "2k").checkpoint_relpath) in cells
