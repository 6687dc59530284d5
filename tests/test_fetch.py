"""`pid-bench fetch` against a loopback Hub (tests/hub_server.py, reached through HF_ENDPOINT):
what a suite needs and nothing else, resumed downloads, checksums, gated repos, no network."""

from __future__ import annotations

import hashlib
import socket
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pid_bench.cli import app
from pid_bench.doctor import check_components, check_metric_weights, runnable_cells
from pid_bench.fetch import (
    PIPELINE_IGNORED,
    PIPELINE_PATTERNS,
    HubRepo,
    PyiqaCreated,
    fetch,
    plan,
    suite_needs,
)
from pid_bench.metrics import expand_metric_names
from pid_bench.suite import load_suite
from pid_models.caption import GEMMA_ID
from pid_models.codecs import CODEC_FILES
from pid_models.registry import resolve
from tests import hub_server
from tests.test_run import REPO, write_suite

PAPER_2K = REPO / "suites" / "paper" / "decode_2k.yaml"
FLUX_CKPT = resolve("flux", "2k").checkpoint_relpath
FLUX_VAE = CODEC_FILES["flux"][0]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The loopback Hub with every released PiD file, the encoders and pyiqa's weights, and
    empty caches; HF_ENDPOINT points at it."""
    fake = hub_server.released_hub()
    server = hub_server.start(fake)
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("PID_BENCH_CHECKPOINTS", raising=False)
    yield fake
    server.shutdown()


@pytest.fixture
def root(tmp_path):
    return tmp_path / "pid"


def flux_suite(tmp_path: Path, **overrides) -> Path:
    fields = {"backbones": ["flux"], "resolutions": [2048], "decoders": ["pid", "native"],
              "metrics": ["psnr", "niqe"], "sigmas": [0.0]}  # fmt: skip
    return write_suite(tmp_path, name="flux_fetch", **(fields | overrides))


def cli(*args: str):
    return CliRunner().invoke(app, ["fetch", *args])


def test_dry_run_of_the_paper_suite_lists_every_file_the_doctor_says_is_missing(hub, root):
    suite = load_suite(PAPER_2K)
    result = plan(suite_needs(suite, root))
    assert not result.failures
    dests = {f.dest for f in result.files}
    sources = {f.source for f in result.files}
    missing = [s for s in check_components(root) if s.status == "missing"]
    pairs = {(c.backbone, c.ckpt_type) for c in suite.cells()}
    _, blocked = runnable_cells(suite, root=root)
    assert blocked, "nothing is fetched yet: every cell is blocked"
    for status in missing:
        if (status.backbone, status.ckpt_type) not in pairs or status.component == "ldm_pipeline":
            continue
        if status.path:  # a file under the download root
            assert status.path in dests, status
        else:  # a repo in the HF cache: the caption encoder, an RAE encoder
            repo = status.hint.split("hf download ")[-1]
            assert any(source.startswith(f"{repo}:") for source in sources), status
    for weights in check_metric_weights(expand_metric_names(suite.metrics)):
        if weights.status == "missing":
            found = {Path(p).name for p in weights.searched} & {Path(d).name for d in dests}
            assert found, weights.metric
        elif weights.status == "unknown":  # pyiqa names the files: created once by fetch
            assert any(f"create_metric('{weights.metric.removeprefix('pyiqa:')}')" in s
                       for s in sources)  # fmt: skip
    # nothing else: only the suite's backbones, no sd3/sdxl/qwenimage files, no .bin
    assert not any("sdxl" in d or "qwenimage" in d.lower() for d in dests)
    assert not any(s.endswith(".bin") for s in sources)
    assert not root.exists(), "a dry run downloads nothing"

    out = cli(str(PAPER_2K), "--dry-run", "--checkpoints", str(root))
    assert out.exit_code == 0, out.output
    assert FLUX_CKPT in out.output.replace("\n", "") or "model_ema_bf16" in out.output
    assert "nothing downloaded (--dry-run)" in out.output


def test_fetch_gets_only_what_the_suite_needs_then_every_cell_is_runnable(hub, root, tmp_path):
    suite_path = flux_suite(tmp_path)
    out = cli(str(suite_path), "--checkpoints", str(root))
    assert out.exit_code == 0, out.output
    assert (root / FLUX_CKPT).read_bytes() == hub.repos["nvidia/PiD"][FLUX_CKPT]
    assert (root / FLUX_VAE).read_bytes() == hub.repos["nvidia/PiD"][FLUX_VAE]
    pid_files = {p.relative_to(root).as_posix() for p in root.rglob("*")
                 if p.is_file() and ".cache" not in p.parts}  # fmt: skip
    assert pid_files == {FLUX_CKPT, FLUX_VAE}
    gets = {p for m, p, _ in hub.requests if m == "GET" and "/resolve/" in p}
    assert not any(p.endswith("pytorch_model.bin") for p in gets)

    suite = load_suite(suite_path)
    runnable, blocked = runnable_cells(suite, root=root)
    assert blocked == [] and len(runnable) == len(suite.cells())
    assert [w.status for w in check_metric_weights(["niqe"])] == ["present"]

    hub.requests.clear()
    again = cli(str(suite_path), "--checkpoints", str(root))
    assert again.exit_code == 0 and "fetched 0 files" in again.output
    assert not [p for m, p, _ in hub.requests if m == "GET" and "/resolve/" in p]


def test_an_interrupted_download_resumes_with_a_range_request(hub, root, tmp_path):
    from huggingface_hub import constants

    # the connection drops after one whole chunk was written to the .incomplete file
    chunk = constants.DOWNLOAD_CHUNK_SIZE
    hub.add("nvidia/PiD", {FLUX_CKPT: hub_server.content(FLUX_CKPT, chunk + 5000)})
    hub.cut[FLUX_CKPT] = chunk + 1000
    out = cli(str(flux_suite(tmp_path)), "--checkpoints", str(root))
    assert out.exit_code == 0, out.output
    assert (root / FLUX_CKPT).read_bytes() == hub.repos["nvidia/PiD"][FLUX_CKPT]
    assert hub.ranges(FLUX_CKPT) == [None, f"bytes={chunk}-"]


def test_a_checksum_mismatch_is_refused_and_nothing_kept(hub, root, tmp_path):
    suite_path = flux_suite(tmp_path)
    hub.corrupt.add(FLUX_VAE)
    out = cli(str(suite_path), "--checkpoints", str(root))
    assert out.exit_code == 65, out.output
    assert "does not match its published checksum" in out.output
    assert not (root / FLUX_VAE).exists()
    assert (root / FLUX_CKPT).is_file(), "the other files are still fetched"

    hub.corrupt.clear()
    assert cli(str(suite_path), "--checkpoints", str(root)).exit_code == 0
    assert (root / FLUX_VAE).read_bytes() == hub.repos["nvidia/PiD"][FLUX_VAE]


def test_a_gated_repo_names_its_licence_page_and_the_login(hub, root, tmp_path):
    hub.gated.add(GEMMA_ID)
    out = cli(str(flux_suite(tmp_path)), "--checkpoints", str(root))
    assert out.exit_code == 77, out.output
    text = " ".join(out.output.split())
    assert f"{hub.url}/{GEMMA_ID}" in text and "hf auth login" in text
    assert (root / FLUX_CKPT).is_file()


def test_an_unreachable_endpoint_is_one_clear_error(hub, root, tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed}")
    out = cli(str(flux_suite(tmp_path)), "--checkpoints", str(root))
    assert out.exit_code == 69, out.output
    assert f"cannot reach http://127.0.0.1:{closed}" in " ".join(out.output.split())


def test_without_the_hub_a_file_already_here_still_counts(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing answers
    suite = write_suite(tmp_path, name="tiny_niqe", metrics=["psnr", "niqe"])
    assert cli(str(suite), "--dry-run").exit_code == 69
    niqe = tmp_path / "torch" / "hub" / "pyiqa" / "niqe_modelparameters.mat"
    niqe.parent.mkdir(parents=True)
    niqe.write_bytes(b"weights")
    out = cli(str(suite))
    assert out.exit_code == 0, out.output
    assert "present" in out.output and "cannot reach http://127.0.0.1:9" in out.output


def test_no_download_root_is_refused_naming_the_option(hub, tmp_path):
    out = cli(str(flux_suite(tmp_path)))
    assert out.exit_code == 2
    assert "--checkpoints" in out.output and "PID_BENCH_CHECKPOINTS" in out.output


def test_a_baseline_url_is_fetched_to_its_path_and_checked(hub, root, tmp_path):
    weights = hub_server.content("sr", 5000)
    hub.files["sr_x4-0000.pth"] = weights
    good = hashlib.sha256(weights).hexdigest()
    baseline = {"path": "weights/sr_x4.pth", "url": f"{hub.url}/files/sr_x4-0000.pth"}
    decoders = ["pid", "native", "native+esr"]
    bad = flux_suite(
        tmp_path, decoders=decoders, baselines={"esr": baseline | {"sha256": "0" * 64}}
    )
    assert cli(str(bad), "--checkpoints", str(root)).exit_code == 65
    assert not (tmp_path / "weights" / "sr_x4.pth").exists()

    fine = flux_suite(tmp_path, decoders=decoders, baselines={"esr": baseline | {"sha256": good}})
    assert cli(str(fine), "--checkpoints", str(root)).exit_code == 0
    assert (tmp_path / "weights" / "sr_x4.pth").read_bytes() == weights


def test_a_pipeline_repo_gets_its_default_weights_not_variants_or_bins(hub, tmp_path):
    files = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
             "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.bin",
             "tokenizer/vocab.json", "tokenizer/merges.txt", "base_single_file.safetensors"]  # fmt: skip
    hub.add("org/pipeline", files)
    wanted = [HubRepo("LDM x", "org/pipeline", PIPELINE_PATTERNS, PIPELINE_IGNORED)]
    listed = {f.source.split(":", 1)[1] for f in plan(wanted).files}
    assert listed == {"model_index.json", "unet/config.json", "tokenizer/vocab.json",
                      "unet/diffusion_pytorch_model.safetensors", "tokenizer/merges.txt"}  # fmt: skip
    assert not fetch(wanted).failures
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download("org/pipeline", local_files_only=True,
                                    cache_dir=tmp_path / "hf_hub"))  # fmt: skip
    assert (folder / "model_index.json").is_file()
    assert (folder / "unet/diffusion_pytorch_model.safetensors").read_bytes() == hub.repos[
        "org/pipeline"
    ]["unet/diffusion_pytorch_model.safetensors"]


def test_a_pyiqa_metric_without_declared_files_is_created_once(hub, monkeypatch):
    created = []
    fake = types.SimpleNamespace(create_metric=lambda name, device: created.append(name))
    monkeypatch.setitem(sys.modules, "pyiqa", fake)
    result = fetch([PyiqaCreated("metric pyiqa:liqe", "liqe")])
    assert created == ["liqe"] and not result.failures
