"""Set-level features (fid, kid) computed in the cell, stored beside the rows.

When a suite names fid or kid, each cell runs the feature extractor (pytorch-fid's Inception,
or the suite's ``set_metrics: {feature_extractor: module.path:callable}``) on its device over
every ok decode and its reference, and stores the features, so the end of the run
(`pid_bench.sets`) is arithmetic on stored features instead of a second read of every PNG::

  RUN_DIR/features/<extractor slug>/<cell_id>/<decoder>.npy           the decode (its PNG's name)
  RUN_DIR/features/<extractor slug>/<cell_id>/reference-<H>x<W>.npy   its reference at HxW

Each file is float32 ``[n, D]``: n = 1 (the whole image) or `PATCHES_PER_IMAGE` (patches, for
images >= `PATCH_THRESHOLD`, at the member's positions: `member_generator(PATCH_SEED,
cell_id)`), D = the extractor's ``num_features``. The features are of the image exactly as its
PNG holds it (8-bit, then [0, 1]); the reference is what the end of the run compares the
decode with: from_clean the saved (output-size) reference, from_ldm the native decode, each
bicubic-resized to the decode's size. The slug names the extractor, so another extractor never
reads these: a rerun with a new one recomputes from the PNGs. Nothing here can fail a row: an
extractor that cannot be loaded (Inception weights missing) or a refused write leaves the
features absent, and the end of the run reads the PNGs instead.
"""

from __future__ import annotations

import hashlib
import importlib
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: What identifies the default feature extractor in a set row (and its features folder).
INCEPTION_NAME = "pytorch-fid InceptionV3 pool3 (2048)"
#: The folder under RUN_DIR that holds the stored features.
FEATURES_DIR = "features"


def extractor_name(spec: str | None) -> str:
    """The name a set row records for the suite's extractor (`spec`, or the Inception)."""
    return spec or INCEPTION_NAME


def extractor_slug(name: str) -> str:
    """A folder name for an extractor name: readable, and unique by its hash."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_.")[:60] or "extractor"
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def cell_folder(run_dir: str | Path, name: str, cell_id: str) -> Path:
    return Path(run_dir) / FEATURES_DIR / extractor_slug(name) / cell_id


def decode_file(run_dir: str | Path, name: str, cell_id: str, decoder: str) -> Path:
    from pid_bench.images import image_name

    return cell_folder(run_dir, name, cell_id) / Path(image_name(decoder)).with_suffix(".npy")


def reference_file(run_dir: str | Path, name: str, cell_id: str, size: tuple[int, int]) -> Path:
    return cell_folder(run_dir, name, cell_id) / f"reference-{size[0]}x{size[1]}.npy"


def load_feature_extractor(spec: str, base_dir: Path | None = None) -> torch.nn.Module:
    """``module.path:callable`` -> the module it returns: ``[B, 3, H, W]`` in [0, 1] ->
    ``[B, D]`` features, with an integer attribute ``num_features`` (= D). The module is
    imported from sys.path, or from `base_dir` (the suite's folder)."""
    from pid_bench.metrics.custom import add_search_path

    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"feature extractor {spec!r}: write module.path:callable")
    if base_dir is not None:
        add_search_path(str(base_dir))
    extractor = getattr(importlib.import_module(module_name), attribute)()
    if not isinstance(getattr(extractor, "num_features", None), int):
        raise ValueError(f"feature extractor {spec!r}: the module needs an int num_features")
    return extractor


def as_saved(image: torch.Tensor) -> torch.Tensor:
    """``[1, 3, H, W]`` in [-1, 1] -> the pixels its PNG holds, in [0, 1]: rounded to 8 bits as
    `pid_bench.images.write_png` does, then read back as `load_image` + `to_unit_range` do."""
    from pid_bench.images import quantize
    from pid_bench.metrics import to_unit_range

    return to_unit_range(quantize(image).float().div(127.5).sub(1.0))


#: (extractor spec, device, search folders) -> (the extractor, None) or (None, why not).
_extractors: dict[tuple, tuple[torch.nn.Module | None, str | None]] = {}


def cell_extractor(spec: str | None, dev: torch.device, paths: tuple[str, ...] = ()) -> Any:
    """The suite's extractor on `dev`, loaded once per process; None when it cannot be loaded
    (the end of the run then reads the PNGs, and says why when it cannot either)."""
    key = (spec, str(dev), tuple(paths))
    if key not in _extractors:
        try:
            if spec:
                from pid_bench.metrics.custom import add_search_path

                for folder in paths:
                    add_search_path(folder)
                extractor = load_feature_extractor(spec).to(dev)
            else:
                from pid_bench.metrics import load_inception

                extractor = load_inception(dev)
            _extractors[key] = (extractor, None)
        except Exception as exc:  # weights missing, an import error: no features in the cell
            _extractors[key] = (None, f"{type(exc).__name__}: {exc}")
    return _extractors[key][0]


def clear_cache() -> None:
    """Forget the loaded extractors (tests)."""
    _extractors.clear()


def image_features(
    image: torch.Tensor, extractor: Any, dev: torch.device, member: str
) -> tuple[np.ndarray, dict | None]:
    """float32 ``[n, D]`` features of ``[1, 3, H, W]`` in [0, 1] (patches at `member`'s
    positions when the image is >= PATCH_THRESHOLD), and the patch parameters used."""
    from pid_bench.metrics.set_level import member_samples, patch_spec

    patch = patch_spec(tuple(image.shape[-2:]))
    samples = member_samples(image, patch, member)
    with torch.no_grad():
        features = extractor(samples.to(dev).float())
    return features.float().cpu().numpy(), patch


def store_cell_features(
    cell: Any, cell_id: str, rows: list[dict], images: dict[str, torch.Tensor],
    reference: torch.Tensor | None, settings: Any, dev: torch.device,
) -> int:  # fmt: skip
    """Compute and store the set-level features of the cell's ok decodes and their references
    (only when the suite names fid or kid); returns the files written. Never raises: what it
    cannot store, the end of the run reads from the PNGs."""
    from pid_bench.metrics import expand_metric_names, is_set_level

    if not any(is_set_level(n) for n in expand_metric_names(settings.metrics)):
        return 0
    try:
        extractor = cell_extractor(settings.feature_extractor, dev, settings.metric_paths)
        if extractor is None:
            return 0
        return _store(cell, cell_id, rows, images, reference, settings, extractor, dev)
    except Exception as exc:  # a refused write, an extractor failing: the rows stand
        warnings.warn(
            f"set-level features of cell {cell_id} not stored ({type(exc).__name__}: {exc}); "
            "the end of the run reads its PNGs instead",
            stacklevel=2,
        )
        return 0


def _store(cell, cell_id, rows, images, reference, settings, extractor, dev) -> int:
    from pid_bench.metrics import resize
    from pid_bench.metrics.errors import MetricUnavailable
    from pid_bench.store import write_array_atomic

    name = extractor_name(settings.feature_extractor)
    ok = {r["decoder"] for r in rows if r.get("status") == "ok"}
    if cell.mode == "from_ldm":  # the native decode stands for the reference (pid_bench.sets)
        source = images.get("native") if "native" in ok else None
    else:
        source = reference
    saved_source = None if source is None else as_saved(source.to(dev))
    written, references = 0, set()
    for row in rows:
        decoder = row["decoder"]
        if decoder not in ok or decoder not in images:
            continue
        image = as_saved(images[decoder].to(dev))
        size = tuple(image.shape[-2:])
        try:
            features, _ = image_features(image, extractor, dev, cell_id)
            if saved_source is not None and size not in references:
                ref, _ = image_features(resize(saved_source, size), extractor, dev, cell_id)
        except MetricUnavailable:  # smaller than the patches: the end of the run says so
            continue
        write_array_atomic(features, decode_file(settings.run_dir, name, cell_id, decoder))
        written += 1
        if saved_source is not None and size not in references:
            write_array_atomic(ref, reference_file(settings.run_dir, name, cell_id, size))
            references.add(size)
            written += 1
    return written


def stored_member(
    run_dir: str | Path, name: str, cell_id: str, decoder: str, size: tuple[int, int],
    rows: int,
) -> tuple[np.ndarray, np.ndarray] | None:  # fmt: skip
    """(decode, reference) features of one member, or None when either is absent, unreadable or
    not `rows` x D (another patch protocol: read the PNGs)."""
    pair = []
    for path in (
        decode_file(run_dir, name, cell_id, decoder),
        reference_file(run_dir, name, cell_id, size),
    ):
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if array.ndim != 2 or array.shape[0] != rows:
            return None
        pair.append(array)
    if pair[0].shape[1] != pair[1].shape[1]:
        return None
    return pair[0], pair[1]
