"""Experiment-tracker logging of a run directory: `pid-bench run ... --log wandb|mlflow`.

`log_run(run_dir, tracker)` reads everything from the finished run directory (never from a
run's memory), after its report is written, and logs to one tracker run: the config and
provenance of run.json, one table row per (cell, decoder) (the latest attempt, as the report
counts it), per-decoder means of the metrics and latency, the leaderboard, up to `MAX_PAIRS`
image pairs of the report's viewer (reference or native decode beside PiD's), and report.html,
leaderboard.md and plots/ as files.

The tracker run's id is kept in RUN_DIR/trackers.json, so logging the directory again (a resumed
run, a retry after a tracker failure) goes to the same tracker run: its tables are replaced by
the latest rows, never appended to. The trackers are optional extras, imported only here:
`pip install 'pid-bench[wandb]'` or `'pid-bench[mlflow]'`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pid_bench.axes import SETTING_KEYS
from pid_bench.rundb import connect, fill_set_values, ok_rows, query, suite_name
from pid_bench.store import read_run_json, write_json
from pid_bench.viewer import inside

#: Trackers `--log` knows, by the name it takes.
TRACKERS = ("wandb", "mlflow")
#: Where a run directory keeps the id of each tracker run it was logged to.
RECORD_FILE = "trackers.json"
#: Image pairs logged at most: enough to eyeball a run, not a copy of its images/.
MAX_PAIRS = 8
#: Files of the report logged as files (those present); plots/ is logged as a folder too.
REPORT_FILES = ("report.html", "leaderboard.md", "recommendations.json")
#: The Python package each tracker imports, and a readable name for messages.
_PACKAGES = {"wandb": ("wandb", "W&B"), "mlflow": ("mlflow", "MLflow")}
#: What to check when logging to a tracker fails (its own message says what failed).
_FIXES = {
    "wandb": "log in (`wandb login`, or WANDB_API_KEY), or set WANDB_MODE=offline to log "
    "locally and `wandb sync` later",
    "mlflow": "check MLFLOW_TRACKING_URI (a server this machine reaches, or sqlite:///mlflow.db)",
}
#: Left image of a pair when a cell has no reference image, in the viewer's order; right: PiD.
_LEFT_DECODERS = ("native+bicubic", "native")
_RIGHT_DECODER = "pid"


class TrackerError(RuntimeError):
    """Logging to a tracker is not possible as asked (a missing package, an unknown name)."""


@dataclass(frozen=True)
class TrackerRecord:
    """What one `log_run` did: the tracker run it logged to and how much went there."""

    tracker: str
    run_id: str
    where: str  # the run's URL, else its tracking URI or offline folder
    resumed: bool  # logged to the tracker run of an earlier log_run of this directory
    logged: dict[str, int] = field(default_factory=dict)  # rows, image_pairs, files, metrics

    def line(self) -> str:
        counts = ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in self.logged.items())
        again = " (resumed)" if self.resumed else ""
        return f"{self.tracker}: run {self.run_id}{again}: {counts} -> {self.where}"


@dataclass(frozen=True)
class TrackerFailure:
    """A log_run that raised: the tracker, the error, and what to do about it."""

    tracker: str
    error: str
    fix: str  # what to check; empty where the error names its fix

    def line(self, run_dir: Path) -> str:
        fix = f"{self.fix}, then rerun" if self.fix else "rerun"
        return (
            f"--log {self.tracker}: {self.error.rstrip('. ')}. The run and its report are safe "
            f"in {run_dir}; {fix} the same command: it computes no cell again and logs to the "
            f"same {_PACKAGES.get(self.tracker, ('', self.tracker))[1]} run"
        )


@dataclass(frozen=True)
class ImagePair:
    """Two PNGs of one cell of the viewer: a reference (or native decode) and PiD's decode."""

    label: str
    left: str  # "reference" or a decoder
    left_path: Path
    right: str
    right_path: Path


@dataclass(frozen=True)
class RunContent:
    """What gets logged, read from the run directory. Values are JSON values throughout
    (timestamps as ISO text, lists and JSON columns as text), which every tracker stores."""

    run_dir: Path
    meta: dict[str, Any]
    columns: list[str]
    rows: list[list[Any]]  # one per (cell, decoder), its latest attempt
    leaderboard: list[dict[str, Any]]
    means: dict[str, float]  # "<decoder>/<metric or latency_ms_p50>" over ok rows
    pairs: list[ImagePair]
    files: list[Path]  # the report's files present (report.html, ...)

    @property
    def suite(self) -> str:
        return suite_name(self.meta)

    @property
    def config(self) -> dict[str, Any]:
        """run.json split in two: the suite as last run, and the provenance (the rest)."""
        provenance = {k: v for k, v in self.meta.items() if k != "suite"}
        return {"suite": self.meta.get("suite") or {}, "provenance": provenance}


# ---- names and packages ------------------------------------------------------------------------


def parse_trackers(values: Iterable[str]) -> list[str]:
    """Tracker names from repeated and/or comma-separated `--log` values, in order, once each; an
    unknown one is a TrackerError naming the valid ones."""
    names = [n.strip().lower() for v in values for n in v.split(",") if n.strip()]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise TrackerError(
            f"unknown tracker {', '.join(map(repr, unknown))}: use one of {', '.join(TRACKERS)}"
        )
    return list(dict.fromkeys(names))


def checked_trackers(values: Iterable[str], report: bool) -> list[str]:
    """The trackers to log to, checked before a run starts: known, installed, and with the
    report they log (a TrackerError otherwise)."""
    names = parse_trackers(values)
    for name in names:
        require(name)
    if names and not report:
        raise TrackerError(
            "a run is logged with its report: drop --no-report (report=False in the API)"
        )
    return names


def install_hint(tracker: str) -> str:
    return f"pip install 'pid-bench[{tracker}]'"


def require(tracker: str) -> None:
    """A TrackerError naming the extra to install when the tracker's package is missing; cheap
    (nothing is imported), so a run can check before its cells rather than after."""
    package, title = _PACKAGES[tracker]
    if importlib.util.find_spec(package) is None:
        raise TrackerError(
            f"logging to {title} needs the {package} package: {install_hint(tracker)}"
        )


def _import(tracker: str) -> Any:
    require(tracker)
    return importlib.import_module(_PACKAGES[tracker][0])


# ---- the run directory -------------------------------------------------------------------------


def log_run(run_dir: Path, tracker: str) -> TrackerRecord:
    """Log a run directory (its report written) to `tracker`, one of TRACKERS; the same tracker
    run as the last log_run of this directory where that run is still there."""
    if tracker not in TRACKERS:
        parse_trackers([tracker])  # raises, naming the valid ones
    run_dir = Path(run_dir)
    if not (run_dir / "report.html").is_file():
        raise TrackerError(
            f"{run_dir} has no report.html: write it first (pid-bench report {run_dir})"
        )
    module = _import(tracker)
    content = read_content(run_dir)
    log = _log_wandb if tracker == "wandb" else _log_mlflow
    return log(module, content, read_records(run_dir).get(tracker) or {})


def log_runs(run_dir: Path, names: Iterable[str]) -> list[TrackerRecord | TrackerFailure]:
    """log_run to each tracker named; a tracker that fails is a TrackerFailure, never an
    exception: the run and its report are already written, and the other trackers still log."""
    out: list[TrackerRecord | TrackerFailure] = []
    for name in names:
        try:
            out.append(log_run(run_dir, name))
        except TrackerError as exc:  # a missing package, no report: the message says what to do
            out.append(TrackerFailure(name, str(exc), ""))
        except Exception as exc:  # whatever the tracker raises: network, auth, its store
            out.append(TrackerFailure(name, f"{type(exc).__name__}: {exc}", _FIXES[name]))
    return out


def read_content(run_dir: Path) -> RunContent:
    """Everything log_run sends, from the run directory alone."""
    run_dir = Path(run_dir)
    with connect(run_dir) as con:
        frame = con.execute("SELECT * FROM rows ORDER BY cell_id, decoder").df()
        columns, rows = _json_rows(frame)
        leaderboard = query(con, "leaderboard")
        fill_set_values(con, leaderboard)  # fid / kid, as the report shows them
        means = _means(con)
        pairs = _pairs(run_dir, query(con, "grid"))
    return RunContent(
        run_dir=run_dir,
        meta=read_run_json(run_dir),
        columns=columns,
        rows=rows,
        leaderboard=[_json_record(r) for r in leaderboard],
        means=means,
        pairs=pairs,
        files=[run_dir / n for n in REPORT_FILES if (run_dir / n).is_file()],
    )


def _json_rows(frame: Any) -> tuple[list[str], list[list[Any]]]:
    """A DataFrame as JSON values (pandas' own conversion: NaN/NaT null, timestamps ISO); lists
    and dicts as JSON text, so every column holds one type a tracker's table accepts."""
    split = json.loads(frame.to_json(orient="split", index=False, date_format="iso"))
    rows = [[_scalar(v) for v in row] for row in split["data"]]
    return split["columns"], rows


def _json_record(record: dict[str, Any]) -> dict[str, Any]:
    return {k: _scalar(json.loads(json.dumps(v, default=str))) for k, v in record.items()}


def _scalar(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _means(con: Any) -> dict[str, float]:
    """Per decoder, the mean over its ok rows of each metric and of the median latency."""
    frame, metrics = ok_rows(con)
    columns = [*metrics, "latency_ms_p50"]
    means = frame.groupby("decoder")[columns].mean(numeric_only=True)
    out = {}
    for decoder, row in means.iterrows():
        for column, value in row.items():
            if value == value:  # NaN: no ok row has it
                out[f"{decoder}/{column.removeprefix('metric_')}"] = float(value)
    return out


def _pairs(run_dir: Path, grid: list[dict[str, Any]]) -> list[ImagePair]:
    """Up to MAX_PAIRS pairs from the viewer's cells (reports/grid.sql), in its embedding order
    (each setting's first image first), so the few logged span backbones, sizes and noise."""
    pairs = []
    for cell in sorted(grid, key=lambda c: c["embed_rank"]):
        pair = _pair(run_dir, cell)
        if pair is not None:
            pairs.append(pair)
        if len(pairs) == MAX_PAIRS:
            break
    return pairs


def _pair(run_dir: Path, cell: dict[str, Any]) -> ImagePair | None:
    images = {i["decoder"]: inside(run_dir, i["path"]) for i in cell["images"] or []}
    right = images.get(_RIGHT_DECODER)
    lefts = [("reference", inside(run_dir, cell["reference_path"]))]
    lefts += [(d, images.get(d)) for d in _LEFT_DECODERS]
    left = next(((name, path) for name, path in lefts if path is not None), None)
    if right is None or left is None:
        return None
    return ImagePair(_label(cell), left[0], left[1], _RIGHT_DECODER, right)


def _label(cell: dict[str, Any]) -> str:
    shown = [f"{k}={cell[k]}" for k in SETTING_KEYS if cell.get(k) is not None]
    return f"{cell['image_id']} seed={cell['seed']} " + " ".join(shown)


# ---- trackers.json -----------------------------------------------------------------------------


def read_records(run_dir: Path) -> dict[str, dict[str, Any]]:
    """RUN_DIR/trackers.json: {tracker: what identifies its run}; {} when absent or unreadable
    (a new tracker run is then started: losing the link never loses a log)."""
    path = Path(run_dir) / RECORD_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember(run_dir: Path, tracker: str, entry: dict[str, Any]) -> None:
    """Keep the tracker run's id before anything is logged to it, so a log that fails midway is
    retried into the same run, not a second one."""
    write_json(Path(run_dir) / RECORD_FILE, {**read_records(run_dir), tracker: entry})


# ---- W&B ---------------------------------------------------------------------------------------


def _log_wandb(wandb: Any, content: RunContent, previous: dict[str, Any]) -> TrackerRecord:
    project = os.environ.get("WANDB_PROJECT") or "pid-bench"
    # the same id in another project would be another run: start afresh there
    resume_id = previous.get("id") if previous.get("project") == project else None
    run = wandb.init(
        project=project, name=content.suite, id=resume_id, resume="allow", job_type="benchmark"
    )
    with run:
        _remember(content.run_dir, "wandb", {"id": run.id, "project": project})
        # a resumed run's config may differ (the suite grew): the latest wins
        run.config.update(content.config, allow_val_change=True)
        table = wandb.Table(columns=content.columns, data=content.rows, allow_mixed_types=True)
        report = _wandb_report(wandb, content)
        logged = {"leaderboard": _wandb_table(wandb, content.leaderboard)}
        # W&B cuts a table logged to the run at Table.MAX_ROWS (10k); in an artifact it holds
        # MAX_ARTIFACT_ROWS (200k), beyond which it too is cut
        if len(content.rows) <= wandb.Table.MAX_ROWS:
            logged["rows"] = table
        else:
            report.add(table, "rows")
        run.log(logged)
        if content.pairs:
            run.log({"image_pairs": _wandb_pairs(wandb, content.pairs)})
        run.summary.update({"n_rows": len(content.rows), **content.means})
        run.log_artifact(report)
        where = getattr(run, "url", None) or str(run.settings.sync_dir)
        counts = _counts(content) | {"rows": min(len(content.rows), wandb.Table.MAX_ARTIFACT_ROWS)}
        return TrackerRecord("wandb", run.id, where, resume_id is not None, counts)


def _wandb_table(wandb: Any, records: list[dict[str, Any]]) -> Any:
    columns, data = _table(records)
    return wandb.Table(columns=columns, data=data, allow_mixed_types=True)


def _wandb_pairs(wandb: Any, pairs: list[ImagePair]) -> Any:
    """A table of one pair per row, the two images side by side as W&B shows table cells."""
    columns = ["setting", "left", "left_image", "right", "right_image"]
    data = [
        [p.label, p.left, wandb.Image(str(p.left_path)), p.right, wandb.Image(str(p.right_path))]
        for p in pairs
    ]
    return wandb.Table(columns=columns, data=data)


def _wandb_report(wandb: Any, content: RunContent) -> Any:
    """The report's files as one artifact; a new version each time it is logged again."""
    name = re.sub(r"[^\w.-]+", "-", content.suite).strip("-.") or "run"
    artifact = wandb.Artifact(f"{name}-report", type="report")
    for path in content.files:
        artifact.add_file(str(path))
    plots = content.run_dir / "plots"
    if plots.is_dir():
        artifact.add_dir(str(plots), name="plots")
    return artifact


# ---- MLflow ------------------------------------------------------------------------------------


def _log_mlflow(mlflow: Any, content: RunContent, previous: dict[str, Any]) -> TrackerRecord:
    # MlflowClient, not the fluent API: no active run or experiment is left set in the process
    client = mlflow.MlflowClient()
    uri = mlflow.get_tracking_uri()  # $MLFLOW_TRACKING_URI, else MLflow's default
    run_id = _mlflow_resumable(client, previous, uri)
    resumed = run_id is not None
    if run_id is None:
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "pid-bench"
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        run_id = client.create_run(experiment_id, run_name=content.suite).info.run_id
    _remember(content.run_dir, "mlflow", {"run_id": run_id, "tracking_uri": uri})
    try:
        _mlflow_content(client, run_id, content)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    where = _mlflow_where(uri, client.get_run(run_id).info.experiment_id, run_id)
    return TrackerRecord("mlflow", run_id, where, resumed, _counts(content))


def _mlflow_resumable(client: Any, previous: dict[str, Any], uri: str) -> str | None:
    """The recorded run, if it is in this tracking store and not deleted."""
    from mlflow.exceptions import MlflowException

    run_id = previous.get("run_id")
    if not run_id or previous.get("tracking_uri") != uri:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:  # not in this store (deleted for good, or a store made anew)
        return None
    return run_id if run.info.lifecycle_stage == "active" else None


def _mlflow_content(client: Any, run_id: str, content: RunContent) -> None:
    from mlflow.entities import Metric, Param, RunTag

    logged = client.get_run(run_id).data.params
    # a param once logged cannot change; a resumed suite's new values are in run.json below
    params = [Param(k, v) for k, v in _params(content.meta).items() if k not in logged]
    tags = [RunTag(_mlflow_key(k), v) for k, v in _tags(content.meta).items()]
    now = _millis()
    metrics = [Metric(_mlflow_key(k), v, now, 0) for k, v in content.means.items()]
    metrics.append(Metric("n_rows", float(len(content.rows)), now, 0))
    for start in range(0, max(len(params), len(tags), len(metrics)), 100):  # log_batch's limit
        end = start + 100
        client.log_batch(run_id, metrics[start:end], params[start:end], tags[start:end])
    client.log_dict(run_id, content.meta, "run.json")
    _log_table(client, run_id, _frame(content.columns, content.rows), "rows.json")
    columns, rows = _table(content.leaderboard)
    _log_table(client, run_id, _frame(columns, rows), "leaderboard.json")
    _mlflow_pairs(client, run_id, content.pairs)
    for path in content.files:
        client.log_artifact(run_id, str(path))
    if (content.run_dir / "plots").is_dir():
        client.log_artifacts(run_id, str(content.run_dir / "plots"), "plots")


def _log_table(client: Any, run_id: str, frame: Any, name: str) -> None:
    """log_table, except that a table logged before is replaced (log_table would append the
    new rows to it): the file is written as log_table writes it and logged over the old one."""
    present = {f.path for f in client.list_artifacts(run_id)}
    if name not in present:
        client.log_table(run_id, data=frame, artifact_file=name)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        frame.to_json(path, orient="split", index=False, date_format="iso")
        client.log_artifact(run_id, str(path))


def _mlflow_pairs(client: Any, run_id: str, pairs: list[ImagePair]) -> None:
    """image_pairs/NN/{left}.png and {right}.png, and image_pairs/pairs.json saying which is
    which setting."""
    from PIL import Image

    index = []
    for i, pair in enumerate(pairs):
        folder = f"image_pairs/{i:02d}"
        for side, path in ((pair.left, pair.left_path), (pair.right, pair.right_path)):
            with Image.open(path) as image:
                client.log_image(run_id, image, f"{folder}/{_file_name(side)}.png")
        index.append(
            {"folder": folder, "setting": pair.label, "left": pair.left, "right": pair.right}
        )
    if index:
        client.log_dict(run_id, index, "image_pairs/pairs.json")


def _params(meta: dict[str, Any]) -> dict[str, str]:
    """The suite's short values as params (`suite.sigmas` = "[0.0, 0.3]"); long ones (lists of
    many images, nested records) only in the run.json artifact, the UI's params being a list."""
    flat = {_mlflow_key(k): v for k, v in _flatten(meta.get("suite") or {}, "suite")}
    return {k: v for k, v in flat.items() if len(k) <= 250 and len(v) <= 250}


def _tags(meta: dict[str, Any]) -> dict[str, str]:
    """Provenance as tags (git sha, host, GPUs, versions ...), the git sha also where MLflow's UI
    shows a run's commit."""
    provenance = {k: v for k, v in meta.items() if k not in ("suite", "invocations")}
    tags = {k: v[:5000] for k, v in _flatten(provenance, "")}
    sha = (meta.get("environment") or {}).get("git_sha")
    if sha:
        tags["mlflow.source.git.commit"] = str(sha)
    return tags


def _flatten(value: Any, prefix: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value if isinstance(value, str) else json.dumps(value, default=str)


def _mlflow_key(name: str) -> str:
    """A metric, param or tag name MLflow accepts (letters, digits, _ - . space : /):
    `native+bicubic/psnr` becomes `native_bicubic/psnr`."""
    return re.sub(r"[^\w\-. :/]", "_", name)


def _file_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


def _mlflow_where(uri: str, experiment_id: str, run_id: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return uri


# ---- shared ------------------------------------------------------------------------------------


def _table(records: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Records as (columns, rows), every key a column."""
    columns = list(dict.fromkeys(k for r in records for k in r))
    return columns, [[r.get(c) for c in columns] for r in records]


def _frame(columns: list[str], rows: list[list[Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame(rows, columns=columns, dtype=object)


def _millis() -> int:
    import time

    return int(time.time() * 1000)


def _counts(content: RunContent) -> dict[str, int]:
    plots = content.run_dir / "plots"
    files = len(content.files) + (len(list(plots.glob("*.png"))) if plots.is_dir() else 0)
    return {
        "rows": len(content.rows),
        "image_pairs": len(content.pairs),
        "files": files,
        "metrics": len(content.means),
    }
