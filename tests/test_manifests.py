"""Manifests and prompt files: path resolution, pkg:// references, and errors that say where."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pid_bench.manifests import ManifestError, SourceItem, load_image, load_manifest, load_prompts

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"


def _png(path: Path, mode: str = "RGB", size: tuple[int, int] = (8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = np.arange(size[0] * size[1] * channels, dtype=np.uint8).reshape(size[1], size[0], -1)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path)
    return path


def _manifest(path: Path, *records: dict | str) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _record(id: str = "a", image: str = "img/a.png", caption: str = "a thing") -> dict:
    return {"id": id, "image": image, "caption": caption}


def _has_distribution(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path, monkeypatch):
    _png(tmp_path / "data" / "img" / "a.png")
    manifest = _manifest(tmp_path / "data" / "m.jsonl", _record(), "", _record("b", caption=""))
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    items = load_manifest(manifest)
    expected = str((tmp_path / "data" / "img" / "a.png").resolve())
    assert [i.id for i in items] == ["a", "b"]
    assert items[0] == SourceItem("a", expected, "a thing", f"{manifest}:1")
    assert items[1].caption == "" and items[1].location == f"{manifest}:3"


def test_escaping_the_manifest_folder_is_refused_unless_allowed(tmp_path):
    outside = _png(tmp_path / "outside.png")
    manifest = _manifest(tmp_path / "sub" / "m.jsonl", _record(image="../outside.png"))
    with pytest.raises(ManifestError, match=r"m\.jsonl:1 image: .*outside .*allow_outside"):
        load_manifest(manifest)
    assert load_manifest(manifest, allow_outside=True)[0].image == str(outside.resolve())


def test_absolute_paths_need_allow_outside(tmp_path):
    image = _png(tmp_path / "img" / "a.png")
    manifest = _manifest(tmp_path / "m.jsonl", _record(image=str(image)))
    with pytest.raises(ManifestError, match="is absolute"):
        load_manifest(manifest)
    assert load_manifest(manifest, allow_outside=True)[0].image == str(image.resolve())


def test_symlink_out_of_the_folder_is_refused(tmp_path):
    target = _png(tmp_path / "secret" / "x.png")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "link.png").symlink_to(target)
    manifest = _manifest(tmp_path / "data" / "m.jsonl", _record(image="link.png"))
    with pytest.raises(ManifestError, match="outside"):
        load_manifest(manifest)


def test_pkg_reference_resolves_inside_scikit_image(tmp_path):
    ref = "pkg://scikit-image/skimage/data/astronaut.png"
    items = load_manifest(_manifest(tmp_path / "m.jsonl", _record(image=ref)))
    assert items[0].image.endswith("skimage/data/astronaut.png")
    assert Path(items[0].image).is_file()


@pytest.mark.skipif(not _has_distribution("pyiqa"), reason="pyiqa not installed")
def test_pkg_reference_resolves_inside_pyiqa(tmp_path):
    ref = "pkg://pyiqa/ResultsCalibra/ref_dir/I03.bmp"
    items = load_manifest(_manifest(tmp_path / "m.jsonl", _record(image=ref)))
    assert load_image(items[0]).shape == (3, 384, 512)


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("pkg://no-such-dist-xyz/a.png", "package 'no-such-dist-xyz' is not installed"),
        ("pkg://scikit-image", r"pkg://<distribution>/<path"),
        ("pkg://scikit-image/../etc/passwd", "may not leave the distribution"),
        ("pkg://scikit-image/skimage/data/nope.png", "image file not found: .*nope.png"),
        ("https://example.com/a.png", "only relative paths and pkg://"),
    ],
)
def test_bad_image_references(tmp_path, ref, message):
    manifest = _manifest(tmp_path / "m.jsonl", _record(image=ref))
    with pytest.raises(ManifestError, match=rf"m\.jsonl:1 image: .*{message}"):
        load_manifest(manifest)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"m\.jsonl:1 line is not JSON .*one JSON object per line"),
        ("[1, 2]", r"m\.jsonl:1 line is a JSON list, not an object"),
        ('{"id": "a", "image": "img/a.png"}', r"m\.jsonl:1 caption: missing; add a 'caption'"),
        ('{"id": 3, "image": "img/a.png", "caption": ""}', r"m\.jsonl:1 id: must be a string"),
        ('{"id": "a b", "image": "img/a.png", "caption": ""}', r"id: 'a b' is not file-name"),
        (
            '{"id": "a", "image": "img/a.png", "caption": "", "captoin": "x"}',
            r"m\.jsonl:1 captoin: unknown key; did you mean 'caption'\?",
        ),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path, line, message):
    _png(tmp_path / "img" / "a.png")
    with pytest.raises(ManifestError, match=message):
        load_manifest(_manifest(tmp_path / "m.jsonl", line))


def test_duplicate_id_names_both_lines(tmp_path):
    _png(tmp_path / "img" / "a.png")
    manifest = _manifest(tmp_path / "m.jsonl", _record(), _record("b"), _record())
    with pytest.raises(ManifestError, match=r"m\.jsonl:3 id: duplicate id 'a' \(first on line 1\)"):
        load_manifest(manifest)


def test_missing_image_names_the_resolved_path(tmp_path):
    manifest = _manifest(tmp_path / "m.jsonl", _record(image="img/../img/gone.png"))
    resolved = tmp_path.resolve() / "img" / "gone.png"
    with pytest.raises(ManifestError, match=f"image file not found: {resolved}"):
        load_manifest(manifest)


def test_all_problems_are_reported_at_once(tmp_path):
    _png(tmp_path / "img" / "a.png")
    manifest = _manifest(tmp_path / "m.jsonl", "oops", _record(), '{"id": "b"}', _record("c", "x"))
    with pytest.raises(ManifestError) as caught:
        load_manifest(manifest)
    lines = str(caught.value).splitlines()
    assert [line.split(" ")[0].rsplit(":", 1)[1] for line in lines] == ["1", "3", "3", "4"]


def test_empty_and_missing_manifests(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"empty\.jsonl:1 manifest is empty"):
        load_manifest(empty)
    with pytest.raises(ManifestError, match="file not found"):
        load_manifest(tmp_path / "nope.jsonl")


def test_load_image_is_rgb_in_minus_one_one(tmp_path):
    rgb = load_image(_png(tmp_path / "rgb.png"))
    assert rgb.dtype == torch.float32 and rgb.shape == (3, 6, 8)
    assert rgb.min() >= -1 and rgb.max() <= 1
    assert rgb[0, 0, 0].item() == -1.0  # pixel value 0
    for mode in ("L", "RGBA"):
        assert load_image(_png(tmp_path / f"{mode}.png", mode)).shape == (3, 6, 8)
    gray = load_image(_png(tmp_path / "g.png", "L"))
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_load_image_accepts_items_and_refuses_prompts(tmp_path):
    image = _png(tmp_path / "img" / "a.png")
    item = load_manifest(_manifest(tmp_path / "m.jsonl", _record()))[0]
    assert torch.equal(load_image(item), load_image(str(image)))
    prompt = SourceItem("p0000", None, "a cat", "p.txt:1")
    with pytest.raises(ManifestError, match="p.txt:1: item 'p0000' is a prompt"):
        load_image(prompt)


def test_corrupt_and_truncated_images_name_the_path(tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(ManifestError, match=f"{garbage}: cannot read image"):
        load_image(garbage)
    whole = _png(tmp_path / "whole.png", size=(64, 64)).read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ManifestError, match=f"{truncated}: cannot read image"):
        load_image(truncated)


def test_prompts_file(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("  a red fox \n\n a blue bird\n", encoding="utf-8")
    items = load_prompts(prompts)
    assert [(i.id, i.caption, i.image) for i in items] == [
        ("p0000", "a red fox", None),
        ("p0001", "a blue bird", None),
    ]
    assert items[1].location == f"{prompts}:3"
    prompts.write_text("\n \n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"p\.txt:1 prompts file is empty"):
        load_prompts(prompts)


@pytest.mark.parametrize("manifest", sorted(MANIFESTS.glob("*.jsonl")), ids=lambda p: p.name)
def test_shipped_manifests_load_and_every_image_opens(manifest):
    items = load_manifest(manifest)
    assert items
    for item in items:
        image = load_image(item)
        assert image.shape[0] == 3 and min(image.shape[1:]) >= 256
        assert item.caption


def test_shipped_manifests_are_the_expected_ones():
    names = {p.name for p in MANIFESTS.glob("*.jsonl")}
    assert {"skimage.jsonl", "kodak.jsonl", "smoke.jsonl"} <= names
    assert [i.id for i in load_manifest(MANIFESTS / "smoke.jsonl")] == ["astronaut", "coffee"]
    assert len(load_prompts(MANIFESTS / "prompts_smoke.txt")) == 3
