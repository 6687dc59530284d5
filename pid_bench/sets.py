"""Set-level metrics of a run (fid, kid): one value per (setting, decoder) group.

After the cells of a run, the driver computes each set-level metric the suite names for every
group of ok rows sharing the leaderboard's setting (pid_bench.axes.SETTING_KEYS: mode,
backbone, ckpt_type, precision, compile, output size, σ, save_xt step) and decoder, from the
features the cells stored (pid_bench.features), reading a member's PNGs only where they are
absent for the suite's extractor (a rerun with another extractor, a cell that could not store
them):

- from_clean: the decodes against the references of the same cells (at the decode's size);
- from_ldm: there is no reference; the decodes against the native decodes of the same cells
  (bicubic to the decode's size), so the value is a distance from the VAE decode's
  distribution, not a quality score.

Results are rows of `SET_SCHEMA` (pid_bench.rundb, which reads them back) in
``RUN_DIR/sets/set-*.parquet`` (written atomically). Each row carries the digest of its members
(cell ids and image files; the patch protocol for patched images), so a resumed or grown run
recomputes a group only when its members changed, and in `extra` how many members came from
stored features and how many from PNGs. A value that cannot be computed is null with its reason
(weights missing, images not saved and no features stored, too few images).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from pid_bench.axes import SETTING_KEYS
from pid_bench.features import (  # noqa: F401  (INCEPTION_NAME: read from here too)
    FEATURES_DIR,
    INCEPTION_NAME,
    extractor_name,
    extractor_slug,
    load_feature_extractor,
    stored_member,
)
from pid_bench.rundb import SET_SCHEMA, SETS_DIR, connect, ident, read_sets
from pid_bench.store import write_table_atomic

#: A set-level group is one setting (pid_bench.axes) of one decoder.
GROUP_KEYS = SETTING_KEYS


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
            "reference_path, run_id, scored_height, scored_width FROM rows "
            "WHERE status = 'ok' ORDER BY cell_id"
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
    name = extractor_name(feature_extractor)
    loaded: list[Any] = []

    def extractor() -> Any:  # loaded once, and only when a member's PNGs must be read
        if not loaded:
            loaded.append(
                load_feature_extractor(feature_extractor, base_dir) if feature_extractor else None
            )
        return loaded[0]

    current, new = [], []
    for key, group in groups.items():
        digest = _digest(group, name)
        todo = [n for n in names if (digest, n) not in known]
        current += [known[(digest, n)] for n in names if (digest, n) in known]
        if not todo:
            continue
        results = _group_results(run_dir, group, natives, todo, extractor, name, device)
        for metric, result in results.items():
            row = _row(key, group[0]["run_id"], metric, result, name, digest)
            new.append(row)
            current.append(row)
    if new:
        write_sets(run_dir, new)
    return current


def _group_results(run_dir, group, natives, names, extractor, name, device) -> dict[str, Any]:
    """The group's values: each member's features from RUN_DIR/features/ (stored by its cell
    for this extractor), or else from its PNGs."""
    from pid_bench.metrics import SetResult
    from pid_bench.metrics.errors import MetricUnavailable
    from pid_bench.metrics.set_level import patch_spec, set_metrics_from_features
    from pid_bench.metrics.shared import warn_once

    def null(reason: str, patch=None) -> dict[str, Any]:
        return {n: SetResult(n, None, reason, n_images=len(group), patch=patch) for n in names}

    first = group[0]
    if first["mode"] == "from_clean":
        references = [m["reference_path"] for m in group]
        reference_set, missing = "references", "no reference image saved for every member"
    else:
        references = [natives.get(m["cell_id"]) for m in group]
        reference_set = "native decodes (bicubic to the decode's size)"
        missing = "from_ldm set metrics compare with the native decodes: add decoder native"
    size = _size(run_dir, first)  # native decodes: the native size
    if size is None:
        return null(
            "images not saved (suite save_images: none or reference_and_pid); set-level metrics "
            "need the PNGs or the features the cells store"
        )
    patch = patch_spec(size)
    count = patch["crops_per_image"] if patch else 1
    stored = [stored_member(run_dir, name, m["cell_id"], m["decoder"], size, count) for m in group]
    need = [i for i, s in enumerate(stored) if s is None]
    dims = {s[0].shape[1] for s in stored if s is not None}
    if need:
        if any(not group[i]["image_path"] for i in need):
            return null(
                "images not saved (suite save_images: none or reference_and_pid); set-level metrics "
                "need the PNGs "
                "(or the features stored by the cells)",
                patch,
            )
        if any(references[i] is None for i in need):
            return null(missing, patch)
        try:
            fakes, reals = _png_features(
                run_dir, [group[i] for i in need], [references[i] for i in need], size, patch,
                extractor(), device,
            )  # fmt: skip
        except MetricUnavailable as exc:
            warn_once("fid/kid", exc.reason)
            return null(exc.reason, patch)
        dims.add(fakes.shape[1])
        for i, fake, real in zip(need, fakes.split(count), reals.split(count), strict=True):
            stored[i] = (fake, real)
    if len(dims) > 1:  # features stored by another extractor of the same name
        return null(f"stored features of {len(dims)} widths ({sorted(dims)}): delete "
                    f"{FEATURES_DIR}/{extractor_slug(name)} to recompute them from the PNGs")  # fmt: skip
    fake = torch.cat([torch.as_tensor(s[0]).double() for s in stored])
    real = torch.cat([torch.as_tensor(s[1]).double() for s in stored])
    results = set_metrics_from_features(names, fake, real, len(group), len(group), patch)
    sources = {"members_from_features": len(group) - len(need), "members_from_pngs": len(need)}
    for result in results.values():
        result.extra = {**result.extra, "reference_set": reference_set, **sources}
    return results


def _size(run_dir: Path, member: dict) -> tuple[int, int] | None:
    """The size a member's decode is scored (and saved) at: its row's, else its PNG's."""
    if member.get("scored_height") and member.get("scored_width"):
        return int(member["scored_height"]), int(member["scored_width"])
    if not member["image_path"]:
        return None
    from pid_bench.manifests import image_size

    return image_size(Path(run_dir) / member["image_path"])


def _png_features(run_dir, members, references, size, patch, extractor, device):
    """Features of the members' decodes and references read from their PNGs (the references
    resized to `size`), patches at each member's positions: [N, D] each."""
    from pid_bench.metrics import load_inception
    from pid_bench.metrics.set_level import extract_features

    dev = torch.device(device or "cpu")
    extractor = load_inception(dev) if extractor is None else extractor.to(dev)
    ids = [m["cell_id"] for m in members]
    images = _pngs(run_dir, [m["image_path"] for m in members], None)
    fake, _ = extract_features(images, extractor, dev, patch, members=ids)
    refs = _pngs(run_dir, references, size)
    real, _ = extract_features(refs, extractor, dev, patch, members=ids)
    return fake, real


def _pngs(run_dir: Path, paths: list[str], size: tuple[int, int] | None) -> Iterator[torch.Tensor]:
    """[3, H, W] images in [0, 1], read one at a time; resized (antialiased bicubic) to size."""
    from pid_bench.manifests import load_image
    from pid_bench.metrics import resize, to_unit_range

    for relative in paths:
        image = to_unit_range(load_image(Path(run_dir) / relative))[None]
        yield (image if size is None else resize(image, size))[0]


def _digest(group: list[dict], extractor_name: str) -> str:
    """The group's identity: its members (cell ids and image files) and the extractor; for
    patched images also the patch protocol (positions per member since features are stored by
    the cells: a group computed with the earlier, sequential positions is recomputed)."""
    from pid_bench.metrics.set_level import patch_spec

    members = sorted(
        (m["cell_id"], m["image_path"] or "", m["reference_path"] or "") for m in group
    )
    identity: list[Any] = [extractor_name, members]
    size = group[0].get("scored_height"), group[0].get("scored_width")
    patch = patch_spec(size) if all(size) else None
    if patch:
        identity.append({**patch, "positions": "per member"})
    text = json.dumps(identity)
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
