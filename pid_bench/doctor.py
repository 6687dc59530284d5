"""`pid-bench doctor`: which weights are on this machine, and which cells of a suite can run.

Looks only at local files (the PiD download root and the HF cache); never touches the network.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from pid_models.caption import GEMMA_ID
from pid_models.codecs import CODEC_FILES
from pid_models.registry import EMBEDDED_PAIRS, canonical_backbone, released_pairs, resolve

COMPONENTS = ("pid_checkpoint", "codec", "caption_encoder", "ldm_pipeline")


@dataclass(frozen=True)
class ComponentStatus:
    backbone: str
    ckpt_type: str
    component: str
    status: str  # present | missing | embedded | not implemented | not available
    path: str | None = None
    hint: str | None = None

    @property
    def usable(self) -> bool:
        return self.status in ("present", "embedded")


def check_environment() -> dict:
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("diffusers", "transformers", "ray", "pyiqa", "torchmetrics"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # an absent or broken package is reported, not raised
            versions[name] = None
    cuda = torch.cuda.is_available()
    return {
        **versions,
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda
        else ["cpu"],
        "driver": _driver_version(),
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE"),
        "hf_cache": _hf_cache(),
        "PID_BENCH_CHECKPOINTS": os.environ.get("PID_BENCH_CHECKPOINTS"),
    }


def _driver_version() -> str | None:
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def _hf_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _cached_snapshot(repo_id: str) -> Path | None:
    """The HF-cache snapshot of `repo_id` if one is on disk (offline lookup)."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / "main"
    if ref.is_file():
        snapshot = repo / "snapshots" / ref.read_text().strip()
        if snapshot.is_dir():
            return snapshot
    snapshots = sorted((repo / "snapshots").glob("*")) if (repo / "snapshots").is_dir() else []
    return snapshots[-1] if snapshots else None


def _root(root: Path | None) -> Path | None:
    chosen = root or os.environ.get("PID_BENCH_CHECKPOINTS")
    return Path(chosen).expanduser() if chosen else None


def _file_status(pair: tuple[str, str], component: str, root: Path | None, rel: str, hint: str):
    if root is None:
        return ComponentStatus(
            *pair, component, "missing", None, f"set PID_BENCH_CHECKPOINTS ({hint})"
        )
    path = root / rel
    status = "present" if path.is_file() else "missing"
    return ComponentStatus(*pair, component, status, str(path), None if path.is_file() else hint)


def check_components(root: Path | None = None) -> list[ComponentStatus]:
    """One status per (backbone, ckpt_type, component), the embedded tiny pair included."""
    root = _root(root)
    rows = [
        ComponentStatus(*pair, c, "embedded")
        if c != "ldm_pipeline"
        else ComponentStatus(*pair, c, "not available", None, "the tiny backbone has no LDM")
        for pair in EMBEDDED_PAIRS
        for c in COMPONENTS
    ]
    gemma = _cached_snapshot(GEMMA_ID)
    for pair in released_pairs():
        backbone, _ = pair
        rel = resolve(*pair).checkpoint_relpath
        rows.append(
            _file_status(
                pair, "pid_checkpoint", root, rel, f'hf download nvidia/PiD --include "{rel}"'
            )
        )
        canonical = canonical_backbone(backbone)
        if canonical in CODEC_FILES:
            rows.append(
                _file_status(
                    pair, "codec", root, CODEC_FILES[canonical], f"place {CODEC_FILES[canonical]}"
                )
            )
        else:
            rows.append(ComponentStatus(*pair, "codec", "not implemented"))
        rows.append(
            ComponentStatus(*pair, "caption_encoder", "present", str(gemma))
            if gemma
            else ComponentStatus(
                *pair, "caption_encoder", "missing", None, f"hf download {GEMMA_ID}"
            )
        )
        rows.append(_pipeline_status(pair))
    return rows


def _pipeline_status(pair: tuple[str, str]) -> ComponentStatus:
    from pid_models.ldm import LdmUnavailable, pipeline_spec

    try:
        repo = pipeline_spec(pair[0]).repo_id
    except LdmUnavailable:
        return ComponentStatus(
            *pair, "ldm_pipeline", "not available", None, "supply the RAE LDM pipeline"
        )
    snapshot = _cached_snapshot(repo)
    if snapshot:
        return ComponentStatus(*pair, "ldm_pipeline", "present", str(snapshot))
    return ComponentStatus(*pair, "ldm_pipeline", "missing", None, f"hf download {repo}")


def runnable_cells(suite, statuses: list[ComponentStatus]) -> tuple[list, list]:
    """(runnable cells, [(cell, missing components)]) of a suite given component statuses."""
    usable = {(s.backbone, s.ckpt_type, s.component): s.usable for s in statuses}
    runnable, blocked = [], []
    for cell in suite.cells():
        needed = ["pid_checkpoint", "codec", "caption_encoder"]
        if cell.mode == "from_ldm":
            needed.append("ldm_pipeline")
        missing = [c for c in needed if not usable.get((cell.backbone, cell.ckpt_type, c), False)]
        (blocked.append((cell, missing)) if missing else runnable.append(cell))
    return runnable, blocked


def print_doctor(suite_path: Path | None, root: Path | None, console) -> int:
    """Print the tables; exit code 1 when a suite is given and some of its cells cannot run."""
    from rich.table import Table

    env = Table(title="environment", show_header=False)
    for key, value in check_environment().items():
        env.add_row(key, str(value))
    console.print(env)
    statuses = check_components(root)
    table = Table(title="components")
    for column in ("backbone", "ckpt_type", "component", "status", "path / fix"):
        table.add_column(column)
    for s in statuses:
        mark = "[green]✓[/green]" if s.usable else "[red]✗[/red]"
        table.add_row(
            s.backbone, s.ckpt_type, s.component, f"{mark} {s.status}", s.path or s.hint or ""
        )
    console.print(table)
    if suite_path is None:
        return 0
    from pid_bench.suite import load_suite

    suite = load_suite(suite_path)
    runnable, blocked = runnable_cells(suite, statuses)
    console.print(f"{suite.name}: {len(runnable)} of {len(runnable) + len(blocked)} cells can run")
    for cell, missing in blocked[:20]:
        console.print(
            f"  blocked {cell.backbone}/{cell.ckpt_type} {cell.item.id}: missing {', '.join(missing)}"
        )
    return 0 if not blocked else 1
