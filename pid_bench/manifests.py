"""Image manifests and prompt files: the sources a suite's cells draw from.

A manifest is JSONL, one ``{"id", "image", "caption"}`` object per line. Image paths are
relative to the manifest's folder, so a manifest and its images move together; a path may not
leave that folder unless the caller opts in (``allow_outside=True``), which keeps a shared
manifest from reading arbitrary files. ``pkg://<distribution>/<path>`` points inside an
installed distribution (scikit-image's sample images, pyiqa's Kodak references), resolved
where the manifest is loaded, so shipped manifests need no download and no absolute path.

Every problem is reported at once, one line each, as ``FILE:LINE field: message; fix``.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = ["ManifestError", "SourceItem", "load_image", "load_manifest", "load_prompts"]

PKG_SCHEME = "pkg://"
FIELDS = ("id", "image", "caption")
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
    problems = [_unknown_key(where, key) for key in record if key not in FIELDS]
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
    close = difflib.get_close_matches(key, FIELDS, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(FIELDS)}"
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
