"""Image manifests and prompt files: the sources a suite's cells draw from.

A manifest is JSONL, one ``{"id", "image", "caption"}`` object per line. Image paths are
relative to the manifest's folder, so a manifest and its images move together; a path may not
leave that folder unless the caller opts in (``allow_outside=True``), which keeps a shared
manifest from reading arbitrary files. ``pkg://<distribution>/<path>`` points inside an
installed distribution (scikit-image's sample images, pyiqa's Kodak references), resolved
where the manifest is loaded, so shipped manifests need no download and no absolute path.

A folder of images is a source too (`load_folder`): ids come from the file names, captions
from a sidecar ``NAME.txt``, a ``captions.jsonl`` or ``captions.csv`` in the folder, else empty
(with a warning). `write_manifest` turns such a folder into a manifest file
(`pid-bench manifest DIR -o FILE.jsonl`), with each image's width and height.

Every problem is reported at once, one line each, as ``FILE:LINE field: message; fix``.
"""

from __future__ import annotations

import csv
import difflib
import importlib.metadata
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = [
    "ManifestError",
    "SourceItem",
    "image_size",
    "is_upsampled",
    "reference_crop",
    "load_folder",
    "load_image",
    "load_manifest",
    "load_prompts",
    "load_source",
    "scan_folder",
    "write_manifest",
]

PKG_SCHEME = "pkg://"
FIELDS = ("id", "image", "caption")
OPTIONAL_FIELDS = ("width", "height")  # pixels; written by `pid-bench manifest`, informative
#: Files a folder source takes as images (lower-case suffixes).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
CAPTION_FILES = ("captions.jsonl", "captions.csv")
#: Ids name output files (PNG per cell), so they stay file-name safe.
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class ManifestError(ValueError):
    """A manifest, prompt file or image that cannot be used; the message says where and how."""


@dataclass(frozen=True)
class SourceItem:
    """One source of a cell: an image with its caption, or a prompt (``image`` is None)."""

    id: str
    image: str | None  # absolute path, resolved at load time
    caption: str
    location: str  # "file:line" the item came from, for error messages


def load_manifest(path: str | Path, *, allow_outside: bool = False) -> list[SourceItem]:
    """Read a JSONL manifest, resolving and checking every image path before any cell runs.

    All problems are gathered into one `ManifestError`, so a user fixes a manifest in one pass.
    """
    path = Path(path)
    lines = _read_lines(path)
    items: list[SourceItem] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, text in lines:
        item, errors = _parse_line(path, lineno, text, allow_outside)
        problems += errors
        if item is None:
            continue
        if item.id in first_line:
            problems.append(
                f"{path}:{lineno} id: duplicate id {item.id!r} (first on line "
                f"{first_line[item.id]}); give each item its own id"
            )
            continue
        first_line[item.id] = lineno
        items.append(item)
    if not lines:
        problems.append(f"{path}:1 manifest is empty; add one JSON object per line")
    if problems:
        raise ManifestError("\n".join(problems))
    return items


def load_prompts(path: str | Path) -> list[SourceItem]:
    """Read a prompt file (one prompt a line, blanks skipped) into items ``p0000``, ``p0001``, …"""
    path = Path(path)
    lines = _read_lines(path)
    if not lines:
        raise ManifestError(f"{path}:1 prompts file is empty; write one prompt per line")
    return [
        SourceItem(id=f"p{index:04d}", image=None, caption=text, location=f"{path}:{lineno}")
        for index, (lineno, text) in enumerate(lines)
    ]


def load_image(item_or_path: SourceItem | str | Path) -> torch.Tensor:
    """Open an image as a ``[3, H, W]`` float32 tensor in ``[-1, 1]`` (RGB, EXIF-rotated).

    Grayscale, palette and RGBA images become RGB (alpha dropped, not composited). The file is
    verified before decoding so a truncated or corrupt file fails here, naming its path, rather
    than as a shape error deep inside a cell.
    """
    if isinstance(item_or_path, SourceItem):
        if item_or_path.image is None:
            raise ManifestError(f"{item_or_path.location}: item {item_or_path.id!r} is a prompt")
        item_or_path = item_or_path.image
    path = Path(item_or_path)
    try:
        with Image.open(path) as probe:
            probe.verify()
        with Image.open(path) as image:
            image.load()
            rgb = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        message = f"{path}: cannot read image ({err}); replace or re-export the file"
        raise ManifestError(message) from err
    array = np.asarray(rgb, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(127.5).sub(1.0)


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """Numbered, stripped, non-empty lines; a missing or undecodable file is a ManifestError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path}: file not found; check the path") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(f"{path}: cannot read ({err}); save it as UTF-8 text") from None
    numbered = ((lineno, line.strip()) for lineno, line in enumerate(text.splitlines(), 1))
    return [(lineno, line) for lineno, line in numbered if line]


def _parse_line(
    path: Path, lineno: int, text: str, allow_outside: bool
) -> tuple[SourceItem | None, list[str]]:
    """One manifest line to an item, or the list of what is wrong with it."""
    where = f"{path}:{lineno}"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        return None, [f"{where} line is not JSON ({err.msg}); write one JSON object per line"]
    if not isinstance(record, dict):
        kind = type(record).__name__
        return None, [f'{where} line is a JSON {kind}, not an object; write {{"id": ...}}']
    known = FIELDS + OPTIONAL_FIELDS
    problems = [_unknown_key(where, key) for key in record if key not in known]
    for key in OPTIONAL_FIELDS:
        if key in record and (not isinstance(record[key], int) or record[key] <= 0):
            problems.append(f"{where} {key}: must be a positive integer (pixels); fix or drop it")
    for key in FIELDS:
        if key not in record:
            problems.append(f"{where} {key}: missing; add a {key!r} string")
        elif not isinstance(record[key], str):
            got = type(record[key]).__name__
            problems.append(f"{where} {key}: must be a string, got {got}; quote it")
    if problems:
        return None, problems
    if not _ID_PATTERN.fullmatch(record["id"]):
        return None, [
            f"{where} id: {record['id']!r} is not file-name safe; use letters, digits, '_', '.', '-'"
        ]
    image, error = _resolve_image(path, record["image"], allow_outside)
    if error:
        return None, [f"{where} image: {error}"]
    return SourceItem(record["id"], image, record["caption"], where), []


def _unknown_key(where: str, key: str) -> str:
    known = FIELDS + OPTIONAL_FIELDS
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(known)}"
    return f"{where} {key}: unknown key; {hint}"


def _resolve_image(manifest: Path, ref: str, allow_outside: bool) -> tuple[str, str | None]:
    """Absolute path of an image reference, or ("", reason) when it cannot be used."""
    if ref.startswith(PKG_SCHEME):
        resolved, error = _resolve_pkg(ref)
        if error:
            return "", error
    elif "://" in ref:
        return "", f"{ref!r}: only relative paths and pkg:// references are supported"
    else:
        base = manifest.parent.resolve()
        raw = Path(ref)
        if raw.is_absolute() and not allow_outside:
            return "", f"{ref!r} is absolute; make it relative to {base} or pass allow_outside"
        resolved = (base / raw).resolve()
        if not allow_outside and not resolved.is_relative_to(base):
            return "", f"{ref!r} resolves to {resolved}, outside {base}; pass allow_outside"
    if not resolved.is_file():
        return "", f"image file not found: {resolved}; fix the path or add the file"
    return str(resolved), None


def _resolve_pkg(ref: str) -> tuple[Path, str | None]:
    """``pkg://dist/inner/path`` to a file inside the installed distribution ``dist``."""
    name, _, inner = ref[len(PKG_SCHEME) :].partition("/")
    if not name or not inner:
        return Path(), f"{ref!r}: write pkg://<distribution>/<path inside it>"
    if ".." in PurePosixPath(inner).parts:
        return Path(), f"{ref!r}: '..' may not leave the distribution"
    try:
        distribution = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return Path(), f"{ref!r}: package {name!r} is not installed; pip install {name}"
    return Path(distribution.locate_file(inner)).resolve(), None


def reference_crop(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the largest centre crop of a height x width image with the aspect of `size`:
    the source pixels a reference at `size` is made from."""
    target = size[0] / size[1]
    if height / width > target:
        return round(width * target), width
    return height, round(height / target)


def is_upsampled(crop: tuple[int, int], size: tuple[int, int]) -> bool:
    """A reference at `size` made from `crop` invents pixels when the crop is smaller on a side."""
    return crop[0] < size[0] or crop[1] < size[1]


# ---- folders of images --------------------------------------------------------------------------


def load_source(path: str | Path) -> list[SourceItem]:
    """A from_clean source: a JSONL manifest, or a folder of images (`load_folder`)."""
    path = Path(path)
    return load_folder(path) if path.is_dir() else load_manifest(path)


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file from its header, EXIF rotation applied."""
    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1)
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


@dataclass(frozen=True)
class FolderImage:
    """One image of a folder source, as `pid-bench manifest` writes it."""

    id: str
    path: Path
    caption: str
    height: int
    width: int


def scan_folder(folder: str | Path) -> list[FolderImage]:
    """The images of a folder (not recursive), sorted by name, with ids and captions.

    Ids are the file names without suffix, made file-name safe ('kodim 01.png' -> 'kodim_01');
    a clash gets the suffix added ('a.png', 'a.jpg' -> 'a_png', 'a_jpg'). Captions: the sidecar
    ``NAME.txt`` first, then ``captions.jsonl`` ({"image" or "id", "caption"}) or
    ``captions.csv`` (columns ``image`` or ``id``, and ``caption``), else empty with a warning.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ManifestError(f"{folder}: not a folder of images; check the path")
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        suffixes = ", ".join(IMAGE_SUFFIXES)
        raise ManifestError(f"{folder}: no images ({suffixes}); add images or name another folder")
    table = _caption_table(folder)
    ids = _ids(files)
    out, uncaptioned, problems = [], [], []
    for path, item_id in zip(files, ids, strict=True):
        sidecar = path.with_suffix(".txt")
        if sidecar.is_file():
            caption = sidecar.read_text(encoding="utf-8").strip()
        else:
            caption = table.get(path.name, table.get(path.stem, table.get(item_id)))
        if caption is None:
            uncaptioned.append(path.name)
            caption = ""
        try:
            height, width = image_size(path)
        except (OSError, SyntaxError, ValueError) as err:
            problems.append(f"{path}: cannot read image ({err}); replace or remove the file")
            continue
        out.append(FolderImage(item_id, path.resolve(), caption, height, width))
    if problems:
        raise ManifestError("\n".join(problems))
    if uncaptioned:
        shown = ", ".join(uncaptioned[:5]) + (" ..." if len(uncaptioned) > 5 else "")
        warnings.warn(
            f"{folder}: {len(uncaptioned)} image(s) without a caption ({shown}): PiD gets an "
            "empty caption for them; add NAME.txt files or a captions.jsonl / captions.csv",
            stacklevel=2,
        )
    return out


def load_folder(folder: str | Path) -> list[SourceItem]:
    """A folder of images as source items (see `scan_folder`)."""
    return [
        SourceItem(image.id, str(image.path), image.caption, f"{image.path}")
        for image in scan_folder(folder)
    ]


def write_manifest(folder: str | Path, output: str | Path) -> list[FolderImage]:
    """Write the manifest of a folder of images to `output` (JSONL), image paths relative to
    the manifest. The manifest must sit in the folder or above it: a manifest's paths may not
    leave its own folder (`load_manifest`)."""
    folder, output = Path(folder).resolve(), Path(output).resolve()
    if not folder.is_relative_to(output.parent):
        raise ManifestError(
            f"{output}: a manifest's image paths may not leave its folder, and {folder} is not "
            f"inside {output.parent}; write it into {folder} or a folder above it"
        )
    images = scan_folder(folder)
    lines = [
        json.dumps(
            {
                "id": image.id,
                "image": Path(os.path.relpath(image.path, output.parent)).as_posix(),
                "caption": image.caption,
                "width": image.width,
                "height": image.height,
            },
            ensure_ascii=False,
        )
        for image in images
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, output)
    return images


def _ids(files: list[Path]) -> list[str]:
    def safe(text: str) -> str:
        cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.-") or "image"
        return cleaned if _ID_PATTERN.fullmatch(cleaned) else f"i{cleaned}"

    stems = [safe(p.stem) for p in files]
    return [
        safe(f"{p.stem}_{p.suffix.lstrip('.')}") if stems.count(stem) > 1 else stem
        for p, stem in zip(files, stems, strict=True)
    ]


def _caption_table(folder: Path) -> dict[str, str]:
    """File name, stem or id -> caption, from captions.jsonl or captions.csv in the folder."""
    table: dict[str, str] = {}
    jsonl, csv_path = (folder / name for name in CAPTION_FILES)
    if jsonl.is_file():
        for lineno, text in _read_lines(jsonl):
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise ManifestError(f"{jsonl}:{lineno} line is not JSON ({err.msg})") from None
            key = record.get("image") or record.get("id") if isinstance(record, dict) else None
            if not key or not isinstance(record.get("caption"), str):
                raise ManifestError(
                    f'{jsonl}:{lineno}: write {{"image": "NAME.png", "caption": "..."}}'
                )
            table[str(key)] = record["caption"]
    elif csv_path.is_file():
        with open(csv_path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or [])
            if "caption" not in columns or not columns & {"image", "id"}:
                raise ManifestError(
                    f"{csv_path}:1 header: needs a 'caption' column and an 'image' or 'id' column"
                )
            for row in reader:
                table[row.get("image") or row["id"]] = row["caption"]
    return table
