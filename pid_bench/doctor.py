"""`pid-bench doctor`: what this machine has, and which cells of a suite can run on it.

Everything here reads local files only: the PiD download root, the Hugging Face cache (offline
lookups, `local_files_only=True`) and torch's hub folder. Nothing is downloaded and no network
call is made, so the doctor is safe on an air-gapped node and fast enough to run before a sweep.

Public API:

- `check_environment()`: Python / torch / CUDA / driver / library versions and the cache settings.
- `check_components(root)`: one `ComponentStatus` per (backbone, ckpt_type, component) for every
  released pair plus the embedded `tiny` one; a missing component carries the command that fixes it.
- `check_metric_weights()`: pyiqa weight files in `$TORCH_HOME/hub` per metric.
- `runnable_cells(suite)`: which cells of a suite have all they need.
- `build_report` / `render` / `print_doctor` / `doctor_exit_code`: the CLI's view of the above.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pid_bench.paths import hf_cache_dir, torch_hub_dir
from pid_models.caption import GEMMA_ID
from pid_models.checkpoints import CHECKPOINTS_ENV, PID_REPO
from pid_models.codecs import CODEC_FILES, RAE_ENCODERS
from pid_models.registry import EMBEDDED_PAIRS, canonical_backbone, released_pairs, resolve

__all__ = [
    "COMPONENTS",
    "ComponentStatus",
    "DoctorReport",
    "MetricWeightStatus",
    "build_report",
    "check_components",
    "check_environment",
    "check_metric_weights",
    "doctor_exit_code",
    "hf_cache_dir",
    "print_doctor",
    "render",
    "runnable_cells",
]

COMPONENTS = ("pid_checkpoint", "codec", "caption_encoder", "ldm_pipeline")
#: Statuses a cell can run with.
USABLE = ("present", "embedded")

_LIBRARIES = ("diffusers", "transformers", "huggingface_hub", "ray", "pyiqa", "torchmetrics")


# --------------------------------------------------------------------------- environment


def check_environment() -> dict[str, Any]:
    """The machine as a run would record it; absent pieces are None, never an exception."""
    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch

        env["torch"] = torch.__version__
        cuda = bool(torch.cuda.is_available())
        env["cuda_available"] = cuda
        env["cuda_version"] = torch.version.cuda
        env["devices"] = (
            [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if cuda
            else []
        )
    except Exception:  # a broken torch install is itself the finding
        env |= {"torch": None, "cuda_available": False, "cuda_version": None, "devices": []}
    env["driver"] = _driver_version()
    for name in _LIBRARIES:
        env[name] = _version(name)
    env["HF_HUB_OFFLINE"] = os.environ.get("HF_HUB_OFFLINE")
    env["hf_cache"] = str(hf_cache_dir())
    env[CHECKPOINTS_ENV] = os.environ.get(CHECKPOINTS_ENV)
    env["torch_hub"] = str(torch_hub_dir())
    return env


def _version(distribution: str) -> str | None:
    """Installed version from package metadata (no import: pyiqa and ray are slow to import)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _driver_version() -> str | None:
    """NVIDIA driver version from nvidia-smi, or None where there is none (CPU machines)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out else None


# --------------------------------------------------------------------------- components


@dataclass(frozen=True)
class ComponentStatus:
    """One component of one (backbone, ckpt_type) pair on this machine."""

    backbone: str
    ckpt_type: str
    component: str  # one of COMPONENTS
    status: str  # present | missing | embedded | not implemented
    path: str | None = None  # where it is, or where it is expected
    hint: str | None = None  # the command or action that fixes a missing component

    @property
    def usable(self) -> bool:
        return self.status in USABLE


def _download_root(root: str | os.PathLike | None) -> Path | None:
    chosen = root if root is not None else os.environ.get(CHECKPOINTS_ENV)
    return Path(chosen).expanduser() if chosen else None


def _root_file(root: Path | None, rel: str) -> tuple[str, str | None, str | None]:
    """(status, path, hint) of a file under the PiD download root; `checkpoint_path`'s rules:
    the root may be DIR or DIR/checkpoints, and the expected path is ROOT/rel."""
    include = f'hf download {PID_REPO} --include "{rel}"'
    if root is None:
        return (
            "missing",
            None,
            f"set {CHECKPOINTS_ENV} (or --checkpoints DIR), then: {include} --local-dir DIR",
        )
    candidates = [root / rel]
    if root.name == "checkpoints":
        candidates.append(root.parent / rel)
    for path in candidates:
        if path.is_file():
            return "present", str(path), None
    return "missing", str(candidates[0]), f"{include} --local-dir {root}"


def _codec_files(root: Path | None, canonical: str, snapshot) -> tuple[str, str | None, str | None]:
    """(status, path, hint) of a codec: every file of `CODEC_FILES[canonical]` under the root
    (the first missing one is reported, the hint fetches all missing ones), then for the RAE
    codecs their encoder in the HF cache. Present: the path of the decoder weights."""
    found = [_root_file(root, rel) for rel in CODEC_FILES[canonical]]
    missing = [f for f in found if f[0] != "present"]
    if missing:
        status, path, hint = missing[0]
        if root is not None and len(missing) > 1:
            hint = "; ".join(h for _, _, h in missing if h)
        return status, path, hint
    repo = RAE_ENCODERS.get(canonical)
    if repo is not None:
        folder, why = snapshot(repo)
        if folder is None:
            fix = f"hf download {repo}"
            return "missing", None, f"{why}; {fix}" if why else fix
    return "present", found[0][1], None


def _cached_snapshot(repo_id: str, cache: Path) -> tuple[Path | None, str | None]:
    """(snapshot folder, None) if `repo_id` is in the HF cache, else (None, why not).

    `snapshot_download(local_files_only=True)` is the lookup the loaders make; it never
    touches the network. A snapshot folder without refs/main is reported, not accepted.
    """
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True)), None
    except Exception:  # LocalEntryNotFoundError, OSError, ValueError: not usable offline
        pass
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    if (repo / "snapshots").is_dir() and any((repo / "snapshots").iterdir()):
        return None, f"{repo} has snapshots but no usable refs/main (an interrupted download?)"
    return None, None


class _PipelineRepos:
    """Default LDM repo ids and the reasons for backbones without one (`pid_models.ldm`)."""

    def __init__(self) -> None:
        from pid_models import ldm

        self.repos = {tag: spec.repo_id for tag, spec in ldm.PIPELINES.items()}
        self.unavailable = dict(ldm.UNAVAILABLE)

    def repo(self, backbone: str) -> str | None:
        return self.repos.get(backbone)

    def reason(self, backbone: str) -> str:
        return self.unavailable.get(backbone, f"no diffusers LDM pipeline for {backbone!r}")


def check_components(root: str | os.PathLike | None = None) -> list[ComponentStatus]:
    """A status per (backbone, ckpt_type, component), the embedded pairs first.

    `root` is the PiD download root (else $PID_BENCH_CHECKPOINTS); the HF cache is the one the
    environment names now (see `hf_cache_dir`).
    """
    root = _download_root(root)
    cache = hf_cache_dir()
    pipelines = _PipelineRepos()
    snapshots: dict[str, tuple[Path | None, str | None]] = {}

    def snapshot(repo_id: str) -> tuple[Path | None, str | None]:
        if repo_id not in snapshots:
            snapshots[repo_id] = _cached_snapshot(repo_id, cache)
        return snapshots[repo_id]

    def from_cache(pair, component: str, repo_id: str, needs: str | None = None):
        found, why = snapshot(repo_id)
        fix = f"hf download {repo_id}"
        if found is not None and needs and not (found / needs).is_file():
            return ComponentStatus(
                *pair, component, "missing", str(found), f"{found} lacks {needs}; {fix}"
            )
        if found is not None:
            return ComponentStatus(*pair, component, "present", str(found))
        return ComponentStatus(*pair, component, "missing", None, f"{why}; {fix}" if why else fix)

    rows: list[ComponentStatus] = []
    for pair in EMBEDDED_PAIRS:
        for component in COMPONENTS:
            if component == "ldm_pipeline" and pipelines.repo(pair[0]) is None:
                reason = pipelines.reason(pair[0])
                rows.append(ComponentStatus(*pair, component, "not implemented", None, reason))
            else:
                rows.append(ComponentStatus(*pair, component, "embedded"))

    for pair in released_pairs():
        backbone = pair[0]
        rows.append(
            ComponentStatus(
                *pair, "pid_checkpoint", *_root_file(root, resolve(*pair).checkpoint_relpath)
            )
        )
        canonical = canonical_backbone(backbone)
        if canonical in CODEC_FILES:
            rows.append(ComponentStatus(*pair, "codec", *_codec_files(root, canonical, snapshot)))
        else:
            why = f"no native codec for {canonical}"
            rows.append(ComponentStatus(*pair, "codec", "not implemented", None, why))
        rows.append(from_cache(pair, "caption_encoder", GEMMA_ID))
        repo = pipelines.repo(backbone)
        if repo is None:
            reason = pipelines.reason(backbone)
            rows.append(ComponentStatus(*pair, "ldm_pipeline", "not implemented", None, reason))
        else:
            rows.append(from_cache(pair, "ldm_pipeline", repo, needs="model_index.json"))
    return rows


# --------------------------------------------------------------------------- metric weights


@dataclass(frozen=True)
class MetricWeightStatus:
    metric: str
    status: str  # no weights needed | present | missing | unknown
    files: tuple[str, ...] = ()
    searched: tuple[str, ...] = ()
    hint: str | None = None


def check_metric_weights(metrics: Iterable[str] | None = None) -> list[MetricWeightStatus]:
    """Whether each metric's weight files are on this machine (the metric registry names them:
    `pid_bench.metrics.weight_status`); every registry metric by default."""
    from pid_bench.metrics import METRICS, weight_status

    names = list(metrics) if metrics is not None else list(METRICS)
    return [MetricWeightStatus(name, *weight_status(name)) for name in names]


# --------------------------------------------------------------------------- suites


def needed_components(mode: str) -> tuple[str, ...]:
    """What a cell of `mode` loads: PiD, the native codec and the caption encoder; from_ldm also
    the LDM pipeline."""
    base = ("pid_checkpoint", "codec", "caption_encoder")
    return (*base, "ldm_pipeline") if mode == "from_ldm" else base


def cell_summary(cell) -> str:
    """One line naming a cell: mode, pair, size, sigma / x_t step, seed, PiD steps, item."""
    h, w = cell.resolution
    latent = f"xt={cell.save_xt_step}" if cell.save_xt_step is not None else f"sigma={cell.sigma:g}"
    return (
        f"{cell.mode} {cell.backbone}/{cell.ckpt_type} {h}x{w} {latent} seed={cell.seed} "
        f"steps={cell.pid_steps} item={cell.item.id}"
    )


def _classify(suite, statuses: Sequence[ComponentStatus]) -> tuple[list, list]:
    """(runnable cells, [(cell, missing component names)])."""
    usable = {(s.backbone, s.ckpt_type, s.component): s.usable for s in statuses}
    runnable, blocked = [], []
    for cell in suite.cells():
        missing = [
            c
            for c in needed_components(cell.mode)
            if not usable.get((cell.backbone, cell.ckpt_type, c), False)
        ]
        if missing:
            blocked.append((cell, missing))
        else:
            runnable.append(cell)
    return runnable, blocked


def runnable_cells(
    suite,
    statuses: Sequence[ComponentStatus] | None = None,
    root: str | os.PathLike | None = None,
) -> tuple[list, list[tuple[str, list[str]]]]:
    """(runnable cells, [(cell summary, missing components)]) of a loaded `Suite`.

    `statuses` defaults to `check_components(root)`.
    """
    if statuses is None:
        statuses = check_components(root)
    runnable, blocked = _classify(suite, statuses)
    return runnable, [(cell_summary(cell), missing) for cell, missing in blocked]


# --------------------------------------------------------------------------- report


@dataclass
class DoctorReport:
    environment: dict[str, Any]
    components: list[ComponentStatus]
    metric_weights: list[MetricWeightStatus]
    suite_name: str | None = None
    total_cells: int = 0
    runnable: list = field(default_factory=list)
    blocked: list[tuple[Any, list[str]]] = field(default_factory=list)  # (cell, missing)
    baselines: list[tuple[str, str, bool]] = field(default_factory=list)  # (decoder, path, found)

    @property
    def has_suite(self) -> bool:
        return self.suite_name is not None


def build_report(
    suite_path: str | os.PathLike | None = None, root: str | os.PathLike | None = None
) -> DoctorReport:
    """Everything the doctor checks; with a suite, its cells split into runnable and blocked.

    A suite that does not load raises `SuiteError` (the CLI validates it first).
    """
    components = check_components(root)
    report = DoctorReport(check_environment(), components, check_metric_weights())
    if suite_path is not None:
        from pid_bench.suite import load_suite

        suite = load_suite(suite_path)
        report.suite_name = suite.name
        if suite.mode == "from_ldm":
            components = _with_suite_pipelines(suite, components)
            report.components = components
        report.runnable, report.blocked = _classify(suite, components)
        report.total_cells = len(report.runnable) + len(report.blocked)
        report.baselines = [
            _baseline_status(name, options) for name, options in suite.baselines.items()
        ]
    return report


def _baseline_status(name: str, options) -> tuple[str, str, bool]:
    """(decoder, what it reads, whether that is here): a weights file, or a pipeline folder /
    cached repo with model_index.json."""
    if options.kind == "spandrel":
        return f"native+{name}", options.path, Path(options.path).is_file()
    from pid_models.baselines import SD_X4_UPSCALER

    source = options.source or SD_X4_UPSCALER
    folder = Path(source)
    if folder.is_dir():
        return f"native+{name}", source, (folder / "model_index.json").is_file()
    snapshot, _ = _cached_snapshot(source, hf_cache_dir())
    found = snapshot is not None and (snapshot / "model_index.json").is_file()
    return f"native+{name}", f"{source} (HF cache)", found


def _with_suite_pipelines(suite, statuses: list[ComponentStatus]) -> list[ComponentStatus]:
    """The ldm_pipeline rows of the backbones whose pipeline the suite names (ldm.pipelines):
    a local folder with model_index.json, else that repo id in the HF cache."""
    out = []
    cache = hf_cache_dir()
    for status in statuses:
        source = suite.ldm.source(status.backbone)
        if status.component != "ldm_pipeline" or source is None:
            out.append(status)
            continue
        pair = (status.backbone, status.ckpt_type)
        folder = Path(source)
        if folder.is_dir():
            found = (folder / "model_index.json").is_file()
            state, hint = (
                ("present", None) if found else ("missing", f"{folder} lacks model_index.json")
            )
            out.append(ComponentStatus(*pair, "ldm_pipeline", state, str(folder), hint))
            continue
        snapshot, why = _cached_snapshot(source, cache)
        if snapshot is not None and (snapshot / "model_index.json").is_file():
            out.append(ComponentStatus(*pair, "ldm_pipeline", "present", str(snapshot)))
        else:
            hint = f"{why}; hf download {source}" if why else f"hf download {source}"
            out.append(ComponentStatus(*pair, "ldm_pipeline", "missing", None, hint))
    return out


def doctor_exit_code(report: DoctorReport) -> int:
    """0 without a suite; with one, 0 only if every cell and every baseline can run, else 1."""
    missing_baseline = any(not found for _, _, found in report.baselines)
    return 1 if report.has_suite and (report.blocked or missing_baseline) else 0


_MARK = {
    "present": "[green]✓[/green]",
    "embedded": "[green]✓ embedded[/green]",
    "missing": "[red]✗[/red]",
    "not implemented": "[dim]— n/i[/dim]",
    "no weights needed": "[green]✓ none needed[/green]",
    "unknown": "[yellow]? named by pyiqa at run time[/yellow]",
}

_STATUS_TEXT = {
    "present": "[green]✓ present[/green]",
    "missing": "[red]✗ missing[/red]",
    "not implemented": "[dim]— not implemented[/dim]",
}


def _pairs_text(pairs: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{b}/{c}" for b, c in pairs)


#: Short headers of the component matrix, so it fits 80 columns.
_SHORT = {"pid_checkpoint": "PiD ckpt", "codec": "codec", "caption_encoder": "caption",
          "ldm_pipeline": "LDM"}  # fmt: skip


class _Fixes:
    """The commands that fix what is missing, numbered: tables cite `[n]`, and the list after
    them prints each command whole on one line, so it pastes whole however narrow the
    terminal (a command folded inside a table cell would not)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def ref(self, hint: str | None) -> str:
        if not hint:
            return ""
        if hint not in self.lines:
            self.lines.append(hint)
        return f"fix [{self.lines.index(hint) + 1}]"

    def renderables(self) -> list:
        from rich.text import Text

        if not self.lines:
            return []
        head = Text("fixes (one a line, unwrapped: each pastes whole)", style="bold")
        return [head, *(Text(f"[{i}] {line}") for i, line in enumerate(self.lines, start=1))]


def _environment_table(report: DoctorReport):
    from rich.table import Table

    env = Table(title="environment", show_header=False, title_justify="left")
    env.add_column("key", style="bold")
    env.add_column("value", overflow="fold")
    for key, value in report.environment.items():
        if isinstance(value, list):
            value = ", ".join(value) if value else "none"
        env.add_row(key, "[dim]not set / not found[/dim]" if value is None else str(value))
    return env


def _matrix_table(report: DoctorReport):
    from rich.table import Table

    matrix = Table(
        title="components (✓ present, ✗ missing, — not implemented)", title_justify="left"
    )
    for column in ("backbone", "ckpt_type", *(_SHORT[c] for c in COMPONENTS)):
        matrix.add_column(column)
    by_pair: dict[tuple[str, str], dict[str, ComponentStatus]] = defaultdict(dict)
    for s in report.components:
        by_pair[(s.backbone, s.ckpt_type)][s.component] = s
    for (backbone, ckpt_type), row in by_pair.items():
        cells = [_MARK.get(row[c].status, row[c].status) if c in row else "" for c in COMPONENTS]
        matrix.add_row(backbone, ckpt_type, *cells)
    return matrix


def _where_table(report: DoctorReport, fixes: _Fixes):
    """One row per (component, status, path, fix): the same file or repo serves many pairs."""
    from rich.table import Table

    groups: dict[tuple, list[tuple[str, str]]] = defaultdict(list)
    for s in report.components:
        if s.status != "embedded":
            groups[(s.component, s.status, s.path, s.hint)].append((s.backbone, s.ckpt_type))
    where = Table(
        title="where each component is, and how to fix a missing one", title_justify="left"
    )
    where.add_column("component")
    where.add_column("status")
    where.add_column("pairs · path · fix", overflow="fold")
    order = {"missing": 0, "present": 1, "not implemented": 2}
    for (component, status, path, hint), pairs in sorted(
        groups.items(), key=lambda kv: (order.get(kv[0][1], 3), COMPONENTS.index(kv[0][0]))
    ):
        # a reason that is not a command (not implemented) stays in the table
        fix = fixes.ref(hint) if status == "missing" else (hint or "")
        detail = [_pairs_text(pairs), path or "", fix]
        where.add_row(
            component, _STATUS_TEXT.get(status, status), "\n".join(d for d in detail if d)
        )
    return where


def _metrics_table(report: DoctorReport, fixes: _Fixes):
    from rich.table import Table

    metrics = Table(title="metric weights", title_justify="left")
    metrics.add_column("metric")
    metrics.add_column("status")
    metrics.add_column("files · fix", overflow="fold")
    for m in report.metric_weights:
        detail = "\n".join(m.files) if m.files else fixes.ref(m.hint)
        metrics.add_row(m.metric, _MARK.get(m.status, m.status), detail)
    return metrics


def render(report: DoctorReport) -> list:
    """Rich renderables: environment, component matrix, locations, metrics, suite, then the
    numbered fixes. Every table fits 80 columns (long paths fold)."""
    from rich.text import Text

    fixes = _Fixes()
    out: list = [_environment_table(report), _matrix_table(report), _where_table(report, fixes)]
    out.append(_metrics_table(report, fixes))
    hub = torch_hub_dir()
    out.append(Text(f"metric weights are looked for under {hub} and the HF cache", style="dim"))
    if report.has_suite:
        ok = not report.blocked
        style = "bold green" if ok else "bold red"
        out.append(
            Text(
                f"suite {report.suite_name}: {len(report.runnable)} of {report.total_cells} "
                "cells can run",
                style=style,
            )
        )
        if report.blocked:
            out.append(_blocked_table(report, fixes))
        if report.baselines:
            out.append(_baselines_table(report))
    return out + fixes.renderables()


def _baselines_table(report: DoctorReport):
    from rich.table import Table

    table = Table(title="baselines (learned SR after the native decode)", title_justify="left")
    for column in ("decoder", "weights", "status"):
        table.add_column(column, overflow="fold")
    for decoder, path, found in report.baselines:
        status = (
            _STATUS_TEXT["present"]
            if found
            else (f"{_STATUS_TEXT['missing']}: put the file there or fix baselines.<name>.path")
        )
        table.add_row(decoder, path, status)
    return table


def _blocked_table(report: DoctorReport, fixes: _Fixes):
    from rich.table import Table

    status = {(s.backbone, s.ckpt_type, s.component): s for s in report.components}
    groups: dict[tuple[str, str, str], list] = defaultdict(list)
    for cell, missing in report.blocked:
        groups[(cell.mode, cell.backbone, cell.ckpt_type)].append(missing)
    table = Table(title="blocked cells", title_justify="left")
    for column in ("mode", "pair", "cells", "missing", "fix"):
        table.add_column(column, overflow="fold")
    for (mode, backbone, ckpt_type), missing_lists in groups.items():
        names = list(dict.fromkeys(c for missing in missing_lists for c in missing))
        rows = [status.get((backbone, ckpt_type, c)) for c in names]
        missing = [
            f"{c} ({r.status})" if r else f"{c} (unknown pair)"
            for c, r in zip(names, rows, strict=True)
        ]
        refs = [fixes.ref(r.hint) for r in rows if r and r.hint]
        table.add_row(
            mode, f"{backbone}/{ckpt_type}", str(len(missing_lists)), "\n".join(missing),
            "\n".join(refs),
        )  # fmt: skip
    return table


def print_doctor(
    suite_path: str | os.PathLike | None, root: str | os.PathLike | None, console=None
) -> int:
    """Print the doctor's tables to `console` (a rich Console) and return the exit code:
    without a suite always 0; with one, 0 if every cell can run, else 1."""
    if console is None:
        from rich.console import Console

        console = Console(soft_wrap=True)
    report = build_report(suite_path, root)
    for renderable in render(report):
        console.print(renderable)
    return doctor_exit_code(report)
