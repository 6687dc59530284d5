"""Set-level metrics of a run (fid, kid): one value per (setting, decoder) group.

After the cells of a run, the driver computes each set-level metric the suite names for every
group of ok rows sharing the leaderboard's setting (pid_bench.axes.SETTING_KEYS: mode,
backbone, ckpt_type, precision, compile, output size, σ, save_xt step) and decoder, from the
PNGs the cells saved:

- from_clean: the decodes against the references of the same cells (at the decode's size);
- from_ldm: there is no reference; the decodes against the native decodes of the same cells
  (bicubic to the decode's size), so the value is a distance from the VAE decode's
  distribution, not a quality score.

Results are rows of `SET_SCHEMA` (pid_bench.rundb, which reads them back) in
``RUN_DIR/sets/set-*.parquet`` (written atomically). Each row carries the digest of its members
(cell ids and image files), so a resumed or grown run recomputes a group only when its members
changed. A value that cannot be computed is null with
its reason (weights missing, images not saved, too few images).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from pid_bench.axes import SETTING_KEYS
from pid_bench.metrics.custom import add_search_path
from pid_bench.rundb import SET_SCHEMA, SETS_DIR, connect, ident, read_sets
from pid_bench.store import write_table_atomic

#: A set-level group is one setting (pid_bench.axes) of one decoder.
GROUP_KEYS = SETTING_KEYS
#: What identifies the default feature extractor in a row.
INCEPTION_NAME = "pytorch-fid InceptionV3 pool3 (2048)"


def load_feature_extractor(spec: str, base_dir: Path | None = None) -> torch.nn.Module:
    """``module.path:callable`` -> the module it returns: ``[B, 3, H, W]`` in [0, 1] ->
    ``[B, D]`` features, with an integer attribute ``num_features`` (= D). The module is
    imported from sys.path, or from `base_dir` (the suite's folder)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"feature extractor {spec!r}: write module.path:callable")
    if base_dir is not None:
        add_search_path(str(base_dir))
    extractor = getattr(importlib.import_module(module_name), attribute)()
    if not isinstance(getattr(extractor, "num_features", None), int):
        raise ValueError(f"feature extractor {spec!r}: the module needs an int num_features")
    return extractor


def compute_run_sets(
    run_dir: Path,
    names: list[str],
    feature_extractor: str | None = None,
    base_dir: Path | None = None,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Compute (or reuse) every set-level metric of `names` for every group of the run's
    report scope; returns the current rows, after writing the new ones to RUN_DIR/sets/."""
    if not names:
        return []
    with connect(run_dir) as con:
        cursor = con.execute(
            f"SELECT {', '.join(map(ident, GROUP_KEYS))}, decoder, cell_id, image_path, "
            "reference_path, run_id FROM rows WHERE status = 'ok' ORDER BY cell_id"
        )
        columns = [d[0] for d in cursor.description]
        members = [dict(zip(columns, values, strict=True)) for values in cursor.fetchall()]
        natives = dict(
            con.execute(
                "SELECT cell_id, image_path FROM rows WHERE decoder = 'native' "
                "AND status = 'ok' AND image_path IS NOT NULL"
            ).fetchall()
        )
    groups: dict[tuple, list[dict]] = {}
    for member in members:
        groups.setdefault(tuple(member[k] for k in (*GROUP_KEYS, "decoder")), []).append(member)
    known = {(r["members_digest"], r["metric"]): r for r in read_sets(run_dir)}
    extractor_name = feature_extractor or INCEPTION_NAME
    extractor: Any = None
    current, new = [], []
    for key, group in groups.items():
        digest = _digest(group, extractor_name)
        todo = [n for n in names if (digest, n) not in known]
        current += [known[(digest, n)] for n in names if (digest, n) in known]
        if not todo:
            continue
        if extractor is None and feature_extractor:
            extractor = load_feature_extractor(feature_extractor, base_dir)
        results = _group_results(run_dir, group, natives, todo, extractor, device)
        for name, result in results.items():
            row = _row(key, group[0]["run_id"], name, result, extractor_name, digest)
            new.append(row)
            current.append(row)
    if new:
        write_sets(run_dir, new)
    return current


def _group_results(run_dir, group, natives, names, extractor, device) -> dict[str, Any]:
    from pid_bench.metrics import SetResult, compute_set_metrics

    def null(reason: str) -> dict[str, Any]:
        return {n: SetResult(n, None, reason, n_images=len(group)) for n in names}

    first = group[0]
    if any(not m["image_path"] for m in group):
        return null("images not saved (suite save_images: false); set-level metrics need the PNGs")
    if first["mode"] == "from_clean":
        references = [m["reference_path"] for m in group]
        reference_set, missing = "references", "no reference image saved for every member"
    else:
        references = [natives.get(m["cell_id"]) for m in group]
        reference_set = "native decodes (bicubic to the decode's size)"
        missing = "from_ldm set metrics compare with the native decodes: add decoder native"
    if any(ref is None for ref in references):
        return null(missing)
    from pid_bench.manifests import image_size

    size = image_size(Path(run_dir) / first["image_path"])  # native decodes: the native size
    images = _pngs(run_dir, [m["image_path"] for m in group], None)
    refs = _pngs(run_dir, references, size)
    results = compute_set_metrics(names, images, refs, device=device, extractor=extractor)
    for result in results.values():
        result.extra = {**result.extra, "reference_set": reference_set}
    return results


def _pngs(run_dir: Path, paths: list[str], size: tuple[int, int] | None) -> Iterator[torch.Tensor]:
    """[3, H, W] images in [0, 1], read one at a time; resized (antialiased bicubic) to size."""
    from pid_bench.manifests import load_image
    from pid_bench.metrics import resize, to_unit_range

    for relative in paths:
        image = to_unit_range(load_image(Path(run_dir) / relative))[None]
        yield (image if size is None else resize(image, size))[0]


def _digest(group: list[dict], extractor_name: str) -> str:
    members = sorted(
        (m["cell_id"], m["image_path"] or "", m["reference_path"] or "") for m in group
    )
    text = json.dumps([extractor_name, members])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _row(key, run_id, name, result, extractor_name, digest) -> dict[str, Any]:
    from datetime import datetime, timezone

    extra = dict(result.extra)
    reference_set = extra.pop("reference_set", None)
    extra.pop("features", None)  # the extractor is named in its own column
    return {
        "run_id": run_id,
        **dict(zip((*GROUP_KEYS, "decoder"), key, strict=True)),
        "metric": name,
        "value": result.value,
        "reason": result.reason,
        "n_images": result.n_images,
        "n_reference": result.n_reference,
        "reference_set": reference_set,
        "feature_extractor": extractor_name,
        "patch": json.dumps(result.patch) if result.patch else None,
        "extra": json.dumps(extra) if extra else None,
        "members_digest": digest,
        "computed_at": datetime.now(timezone.utc),
    }


def write_sets(run_dir: Path, rows: list[dict[str, Any]]) -> Path:
    name = f"set-{uuid.uuid4().hex[:16]}.parquet"
    table = pa.Table.from_pylist(rows, schema=SET_SCHEMA)
    return write_table_atomic(table, Path(run_dir) / SETS_DIR / name)
