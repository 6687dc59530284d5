"""The report's image viewer: what report.html shows of the saved images, as data for its script.

One entry per setting (a cell of the report with saved images: backbone, ckpt type, image, σ or
x_t step, size, and the other axes where they vary), rows from `reports/grid.sql`. Each entry
lists the reference and every decoder's PNG, in the viewer's order (reference, native+bicubic,
native, pid, pid-teacher, then the other baselines), with:

- `href`: the full-size PNG, relative to the run directory (report.html sits there), URL-quoted;
- `preview`: a JPEG data URI (quality `PREVIEW_QUALITY`, no chroma subsampling, at most
  `PREVIEW_WIDTH` px wide) for the first `MAX_EMBEDDED` settings in grid.sql's `embed_rank`, else
  None (the page then says how many were left out and links their PNGs).

Previews are for looking only: every metric is computed on the PNGs, never on a preview. The
page reads the data from a `<script type="application/json">` block written by `json_for_html`,
which escapes `<`, `>` and `&` so no string from a run can close the block.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

#: Previews are at most this wide (px): enough to judge detail beside the slider and zoom, small
#: enough that 40 settings of 4 images stay near 10 MB at 512² (photographs, quality 85).
PREVIEW_WIDTH = 512
PREVIEW_QUALITY = 85
#: Settings whose previews are embedded; the others are listed with links to their PNGs.
MAX_EMBEDDED = 40
#: Settings listed at all (a run of 100k cells with saved images would list 100k links).
MAX_LISTED = 5000
#: Viewer order of the images of a setting; other decoders follow, sorted.
ORDER = ("reference", "native+bicubic", "native", "pid", "pid-teacher")
#: The slider's default pair: the common baseline (else the native decode) against PiD.
DEFAULT_LEFT = ("native+bicubic", "native")
DEFAULT_RIGHT = ("pid",)
#: Axes shown in a setting's label only when they vary among the run's settings.
_SOMETIMES = ("precision", "compile", "tile", "pid_steps", "seed")


def data_uri(payload: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(payload).decode("ascii")


def json_for_html(value: Any) -> str:
    """JSON safe inside a <script> element: `<`, `>` and `&` as \\u escapes (valid JSON)."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def inside(run_dir: Path, relative: str | None) -> Path | None:
    """The file a row's relative path names, if it exists inside the run directory."""
    if not relative:
        return None
    root = run_dir.resolve()
    path = (root / relative).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


def preview(path: Path) -> tuple[str, tuple[int, int]]:
    """(JPEG data URI, (height, width) of the PNG): at most PREVIEW_WIDTH px wide, antialiased."""
    from PIL import Image

    with Image.open(path) as opened:
        image = opened.convert("RGB")
    w, h = image.size
    if w > PREVIEW_WIDTH:
        image = image.resize(
            (PREVIEW_WIDTH, max(1, round(h * PREVIEW_WIDTH / w))), Image.Resampling.LANCZOS
        )
    buffer = io.BytesIO()
    # 4:4:4: chroma subsampling would blur exactly the colour shifts a reader compares
    image.save(buffer, format="JPEG", quality=PREVIEW_QUALITY, subsampling=0)
    return data_uri(buffer.getvalue(), "image/jpeg"), (h, w)


def _sort_key(name: str) -> tuple[int, str]:
    return (ORDER.index(name), "") if name in ORDER else (len(ORDER), name)


def _pick(names: list[str], wanted: tuple[str, ...], fallback: int) -> str | None:
    found = [n for n in wanted if n in names]
    if found:
        return found[0]
    return names[min(fallback, len(names) - 1)] if names else None


def _noise(record: dict[str, Any]) -> str:
    """The latent's noise: σ for from_clean, the captured x_t step (or x0) for from_ldm."""
    if record["mode"] == "from_ldm":
        step = record["save_xt_step"]
        return "x0" if step is None else f"x_t {step}"
    sigma = record["sigma"]
    return "σ=–" if sigma is None else f"σ={sigma:g}"


def _label(record: dict[str, Any], varying: list[str]) -> str:
    parts = [f"{record['backbone']} / {record['ckpt_type']}", str(record["image_id"])]
    parts += [_noise(record), f"{record['out_height']}x{record['out_width']}"]
    parts += [f"{axis} {record[axis]}" for axis in varying]
    return " · ".join(parts)


def _image(run_dir: Path, name: str, relative: str | None, embed: bool) -> dict[str, Any]:
    path = inside(run_dir, relative)
    entry: dict[str, Any] = {"name": name, "href": None, "preview": None, "size": None}
    if path is None:
        return entry  # not saved, or not inside the run directory: named, never linked
    entry["href"] = quote(path.relative_to(run_dir.resolve()).as_posix())
    if embed:
        entry["preview"], (h, w) = preview(path)
        entry["size"] = f"{h}x{w}"
    return entry


def _setting(
    run_dir: Path, record: dict[str, Any], varying: list[str], embed: bool
) -> dict[str, Any]:
    paths = {"reference": record["reference_path"]} if record["reference_path"] else {}
    paths |= {i["decoder"]: i["path"] for i in record["images"] or []}
    names = sorted(paths, key=_sort_key)
    images = [_image(run_dir, name, paths[name], embed) for name in names]
    shown = [i["name"] for i in images if i["href"]]
    return {
        "label": _label(record, varying),
        "caption": record["caption"] or "",
        "backbone": f"{record['backbone']} / {record['ckpt_type']}",
        "noise": _noise(record),
        "size": f"{record['out_height']}x{record['out_width']}",
        "image": str(record["image_id"]),
        "aspect": [record["out_width"], record["out_height"]],
        "embedded": embed,
        "images": images,
        "left": _pick(shown, DEFAULT_LEFT, 0),
        "right": _pick(shown, DEFAULT_RIGHT, 1),
    }


def viewer_data(run_dir: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The viewer's data for grid.sql's `records`: the first MAX_LISTED settings (and every
    embedded one), previews for the MAX_EMBEDDED of lowest embed_rank, and the counts the page
    states."""
    run_dir = Path(run_dir)
    varying = [a for a in _SOMETIMES if len({r[a] for r in records}) > 1]
    # the embedded ones are listed even past MAX_LISTED (their ranks spread over the settings)
    listed = [r for i, r in enumerate(records) if i < MAX_LISTED or r["embed_rank"] < MAX_EMBEDDED]
    settings = [_setting(run_dir, r, varying, r["embed_rank"] < MAX_EMBEDDED) for r in listed]
    return {
        "settings": settings,
        "total": len(records),
        "listed": len(listed),
        "embedded": sum(s["embedded"] for s in settings),
        "max_embedded": MAX_EMBEDDED,
        "max_listed": MAX_LISTED,
        "preview_width": PREVIEW_WIDTH,
        "preview_quality": PREVIEW_QUALITY,
    }
