"""The dataset card (README.md) of an exported run (`pid_bench.export`): YAML front matter the
Hugging Face Hub reads (configs, license, tags, pretty name), then the suite, provenance, rows
per status and a table of the columns with their meanings from the schemas.

Every string from the run (suite name, versions, statuses, paths) goes through `_cell` or a
fenced block, so no value can break a table or inject markup; the front matter is written by
yaml.safe_dump.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import yaml

from pid_bench.metrics.catalog import BUILTIN_SPECS
from pid_bench.render import (
    EMBEDDED_WARNING,
    RANDOM_WEIGHTS_WARNING,
    md_cell,
    md_table_of_safe_cells,
    uses_trained_embedded,
)
from pid_bench.rundb import SET_COLUMN_DOCS, suite_name
from pid_bench.schema import ROW_SCHEMA

#: Row columns naming a PNG (relative to the run directory, or with --images to the export).
PATH_COLUMNS = ("image_path", "reference_path")
#: The Hub's size buckets (`size_categories`), by upper bound of rows.
_SIZE_CATEGORIES = (
    (10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
    (10**7, "1M<n<10M"), (10**8, "10M<n<100M"),
)  # fmt: skip


@dataclass(frozen=True)
class CardInput:
    """What the card describes: run.json, the exported tables and where they lie."""

    meta: Mapping[str, Any]
    run_id: str  # the run's label (pid_bench.rundb.run_label), as in the rows' run_id
    rows: pa.Table
    sets: pa.Table | None  # None: the run has no set-level values (no `sets` config)
    rows_file: str
    sets_file: str
    files: Mapping[str, str]  # every other file written: relative path -> what it is
    images: bool  # the PNGs were copied and the path columns point at them
    license: str


def dataset_card(card: CardInput) -> str:
    """README.md of the exported folder."""
    title = f"pid-bench results: {suite_name(dict(card.meta))} ({card.run_id})"
    lines = [_front_matter(card), f"# {_cell(title)}", ""]
    lines += _intro(card)
    lines += _loading(card)
    lines += _files(card)
    lines += _status_counts(card.rows)
    lines += _provenance(card)
    lines += _suite(card.meta)
    lines += _columns(card)
    return "\n".join(lines).rstrip("\n") + "\n"


def _front_matter(card: CardInput) -> str:
    configs = [_config("rows", card.rows_file, default=True)]
    if card.sets is not None:
        configs.append(_config("sets", card.sets_file))
    header = {
        "pretty_name": f"pid-bench results: {suite_name(dict(card.meta))}",
        "license": card.license,
        "tags": ["pid-bench", "benchmark", "image-decoding"],
        "size_categories": [_size_category(card.rows.num_rows)],
        "configs": configs,
    }
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n"


def _config(name: str, path: str, default: bool = False) -> dict[str, Any]:
    config: dict[str, Any] = {"config_name": name}
    if default:  # the Hub's viewer and load_dataset without a name open this one
        config["default"] = True
    config["data_files"] = [{"split": "train", "path": path}]
    return config


def _size_category(rows: int) -> str:
    return next((name for bound, name in _SIZE_CATEGORIES if rows < bound), "100M<n<1B")


def _intro(card: CardInput) -> list[str]:
    meta = dict(card.meta)
    sets = card.sets.num_rows if card.sets is not None else 0
    lines = [
        f"Results of the pid-bench suite {_cell(suite_name(meta))} (run {_cell(card.run_id)}): "
        f"{card.rows.num_rows} rows, one per (cell, "
        "decoder), the latest attempt of each (older attempts are not exported); "
        f"{sets or 'no'} set-level values (fid, kid: one per setting, decoder and metric).",
        "",
    ]
    backbones = suite_record(meta).get("backbones") or []
    if meta.get("random_weights") or _column_true(card.rows, "random_weights"):
        lines += [f"**{RANDOM_WEIGHTS_WARNING}**", ""]
    if uses_trained_embedded(backbones):
        lines += [f"**{EMBEDDED_WARNING}**", ""]
    return lines


def _column_true(table: pa.Table, name: str) -> bool:
    return name in table.column_names and any(table.column(name).to_pylist())


def _loading(card: CardInput) -> list[str]:
    lines = ["## Loading", "", "```python", "from datasets import load_dataset", ""]
    lines.append('rows = load_dataset("USER/NAME", "rows", split="train")')
    if card.sets is not None:
        lines.append('sets = load_dataset("USER/NAME", "sets", split="train")')
    lines += ["```", ""]
    lines += [
        "Published with `hf upload USER/NAME . --repo-type dataset` from this folder; "
        '`load_dataset(PATH_TO_THIS_FOLDER, "rows")` reads it locally.',
        "",
    ]
    if card.images:
        lines += [
            "`image_path` and `reference_path` are relative to this folder: the PNGs are "
            "under `images/`.",
            "",
        ]
    else:
        lines += [
            "`image_path` and `reference_path` are as in the run: relative to the run "
            "directory, whose PNGs were not exported (export with `--images` to include them).",
            "",
        ]
    return lines


def _files(card: CardInput) -> list[str]:
    rows = [[_code(card.rows_file), "the rows (config `rows`)"]]
    if card.sets is not None:
        rows.append([_code(card.sets_file), "the set-level values (config `sets`)"])
    rows += [[_code(path), _cell(what)] for path, what in card.files.items()]
    return ["## Files", "", *md_table_of_safe_cells(["file", "what"], rows), ""]


def status_counts(rows: pa.Table) -> dict[str, int]:
    """Rows per status, most first."""
    counts: dict[str, int] = {}
    for status in rows.column("status").to_pylist():
        counts[str(status)] = counts.get(str(status), 0) + 1
    return dict(sorted(counts.items(), key=lambda c: -c[1]))


def _status_counts(rows: pa.Table) -> list[str]:
    table = [[_cell(s), str(n)] for s, n in status_counts(rows).items()]
    return ["## Rows per status", "", *md_table_of_safe_cells(["status", "rows"], table), ""]


def _provenance(card: CardInput) -> list[str]:
    meta = card.meta
    env = meta.get("environment") or {}
    pairs: list[tuple[str, Any]] = [
        ("run", card.run_id),
        ("suite fingerprint", meta.get("suite_fingerprint")),
        ("started", meta.get("started_at")),
        ("finished", meta.get("finished_at")),
        ("invocations", len(meta.get("invocations") or [])),
        ("git sha", env.get("git_sha")),
        ("pid-bench", env.get("pid_bench_version")),
        *((name, version) for name, version in sorted((env.get("versions") or {}).items())),
        ("CUDA (torch built with)", env.get("cuda")),
        ("GPUs", ", ".join(map(str, env.get("gpus") or [])) or "none"),
        ("devices (rows)", _devices(card.rows)),
    ]
    table = [[_cell(k), _cell(str(v))] for k, v in pairs if v not in (None, "")]
    return ["## Provenance", "", *md_table_of_safe_cells(["", "value"], table), ""]


def _devices(rows: pa.Table) -> str:
    """Each distinct device of the rows (device, its name, driver) with its row count."""
    columns = [c for c in ("device", "device_name", "gpu_driver") if c in rows.column_names]
    counts: dict[str, int] = {}
    for values in zip(*(rows.column(c).to_pylist() for c in columns), strict=True):
        key = " ".join(str(v) for v in values if v)
        counts[key] = counts.get(key, 0) + 1
    return "; ".join(f"{key} ({n} rows)" for key, n in counts.items() if key)


def _suite(meta: Mapping[str, Any]) -> list[str]:
    text = yaml.safe_dump(suite_record(meta), sort_keys=False, allow_unicode=True)
    fence = _fence(text)
    return ["## Suite (as run)", "", f"{fence}yaml", text.rstrip("\n"), fence, ""]


def suite_record(meta: Mapping[str, Any]) -> dict[str, Any]:
    """run.json's suite as a record (the earliest run.json stored its name alone)."""
    suite = meta.get("suite")
    return dict(suite) if isinstance(suite, Mapping) else {"name": suite}


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in `text` (which could close a shorter one)."""
    return "`" * max(3, _longest_backticks(text) + 1)


def _columns(card: CardInput) -> list[str]:
    lines = ["## Columns", "", f"### rows ({_code(card.rows_file)})", ""]
    rows = [[_code(f.name), _code(type_name(f.type)), _cell(_row_doc(f.name, card.images))]
            for f in card.rows.schema]  # fmt: skip
    lines += [*md_table_of_safe_cells(["column", "type", "meaning"], rows), ""]
    if card.sets is not None:
        lines += [f"### sets ({_code(card.sets_file)})", ""]
        sets = [[_code(f.name), _code(type_name(f.type)), _cell(SET_COLUMN_DOCS.get(f.name, ""))]
                for f in card.sets.schema]  # fmt: skip
        lines += [*md_table_of_safe_cells(["column", "type", "meaning"], sets), ""]
    return lines


def _row_doc(name: str, images: bool) -> str:
    doc = row_column_doc(name)
    if name not in PATH_COLUMNS:
        return doc
    if images:
        return f"{doc}; in this export: relative to this folder (the copy under images/)"
    return f"{doc}; in this export: as in the run, whose PNGs were not exported"


def type_name(dtype: pa.DataType) -> str:
    """A column's Arrow type as the card shows it: a list by its values' type alone (the name of
    its item field differs between writers: item, element)."""
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return f"list<{type_name(dtype.value_type)}>"
    return str(dtype)


def row_column_doc(name: str) -> str:
    """What a rows column means: the row schema's `doc`, for a built-in metric with its
    direction and definition from the metric catalog; a metric column the schema lacks (a
    pyiqa:<name> or custom metric the suite asked for) says where its value came from."""
    metric = name.removeprefix("metric_")
    if name not in ROW_SCHEMA.names:
        if name.startswith("metric_"):
            return f"{metric}: a metric without a built-in column, its value from extra_metrics"
        return ""
    doc = ROW_SCHEMA.field(name).metadata[b"doc"].decode()
    spec = BUILTIN_SPECS.get(metric) if name.startswith("metric_") else None
    if spec is None:
        return doc
    direction = {True: "higher is better", False: "lower is better", None: "no better direction"}
    return f"{doc}; {direction[spec.higher_is_better]}. {spec.doc}"


# ---- markdown ----------------------------------------------------------------------------------


def _cell(text: str) -> str:
    """Text from the run, safe in a table cell or a line: one line, pipes escaped, and `<` / `&`
    as entities (the Hub renders HTML: `native+<baseline>` would vanish as a tag)."""
    return md_cell(html.escape(text, quote=False))


def _code(text: str) -> str:
    """Text as an inline code span (no HTML inside one), delimited by more backticks than any
    run in it; pipes escaped for tables."""
    delimiter = "`" * (_longest_backticks(text) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return md_cell(f"{delimiter}{pad}{text}{pad}{delimiter}")


def _longest_backticks(text: str) -> int:
    return max((len(run) for run in re.findall(r"`+", text)), default=0)
