"""Bad input, through the CLI: each case is refused with exit code 2 and a message naming the
file (and line), the field or path, and the fix; nothing is computed and nothing earlier lost.

One parametrised test per category; the case count is printed by `test_case_count`.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pid_bench.cli import app

runner = CliRunner()

SUITE = """\
name: bad
mode: from_clean
backbones: [tiny]
ckpt_types: [2k]
sigmas: [0.0]
resolutions: [64]
decoders: [pid, native]
metrics: [psnr]
source: m.jsonl
timing: {warmup: 0, repeats: 1, min_time_s: 0}
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "m.jsonl").write_text('{"id": "a", "image": "a.png", "caption": "grey"}\n')
    return tmp_path


def _invoke(folder: Path, suite_text: str, *command: str):
    path = folder / "suite.yaml"
    path.write_text(suite_text)
    args = [c.replace("SUITE", str(path)).replace("OUT", str(folder / "out")) for c in command]
    return runner.invoke(app, args), path


def _refused(result, *expected: str) -> str:
    text = re.sub(r"\s+", " ", result.output)  # rich may wrap long paths
    assert result.exit_code == 2, result.output
    for fragment in expected:
        assert re.sub(r"\s+", " ", fragment) in text, f"{fragment!r} not in:\n{result.output}"
    return text


def _edit(old: str, new: str) -> str:
    assert old in SUITE
    return SUITE.replace(old, new)


# --- the suite file ---------------------------------------------------------------------------

SYNTAX = {
    "unclosed bracket": SUITE.replace("[tiny]", "[tiny"),
    "bad indentation": SUITE.replace("mode: from_clean", "mode: from_clean\n  oops: 1"),
    "not a mapping": "- name\n- bad\n",
    "empty file": "",
}


@pytest.mark.parametrize("text", SYNTAX.values(), ids=SYNTAX.keys())
def test_malformed_yaml(folder, text):
    result, path = _invoke(folder, text, "plan", "SUITE")
    _refused(result, str(path))


UNKNOWN_KEYS = {
    "top level": (_edit("backbones:", "backbone:"), "did you mean 'backbones'?"),
    "timing": (_edit("{warmup: 0", "{warmups: 0"), "timing.warmups: unknown key"),
    "exclude": (SUITE + "exclude: [{backbon: tiny}]\n", "exclude[0].backbon: unknown key"),
    "ldm": (SUITE + "ldm: {stepz: 4}\n", "ldm.stepz: unknown key"),
}


@pytest.mark.parametrize(("text", "message"), UNKNOWN_KEYS.values(), ids=UNKNOWN_KEYS.keys())
def test_unknown_keys(folder, text, message):
    result, path = _invoke(folder, text, "plan", "SUITE")
    _refused(result, str(path), message)


WRONG_TYPES = {
    "sigma string": (_edit("sigmas: [0.0]", "sigmas: abc"), "sigmas"),
    "negative seed": (_edit("sigmas: [0.0]", "sigmas: [0.0]\nseeds: [-1]"), "seeds[0]"),
    "zero repeats": (_edit("repeats: 1", "repeats: 0"), "timing.repeats"),
    "resolution word": (_edit("resolutions: [64]", "resolutions: [big]"), "resolutions[0]"),
    "bool as text": (SUITE + "save_images: maybe\n", "save_images"),
}


@pytest.mark.parametrize(("text", "field"), WRONG_TYPES.values(), ids=WRONG_TYPES.keys())
def test_wrong_types(folder, text, field):
    result, path = _invoke(folder, text, "plan", "SUITE")
    _refused(result, str(path), f" {field}:")


EMPTY_AXES = ["backbones: [tiny]", "resolutions: [64]", "decoders: [pid, native]", "sigmas: [0.0]"]


@pytest.mark.parametrize("line", EMPTY_AXES)
def test_empty_axes(folder, line):
    key = line.split(":")[0]
    result, path = _invoke(folder, _edit(line, f"{key}: []"), "plan", "SUITE")
    _refused(result, str(path), f"{key}: must not be empty")


PAIRS = {
    "sdxl has no 2k": ("sdxl", "2k", "pair sdxl/2k"),
    "qwenimage only v1.5": ("qwenimage", "2kto4k", "pair qwenimage/2kto4k"),
    "unknown backbone": ("flux3", "2k", "flux3"),
    "unknown ckpt type": ("flux", "8k", "ckpt_types[0]"),
}


@pytest.mark.parametrize(("backbone", "ckpt", "message"), PAIRS.values(), ids=PAIRS.keys())
def test_invalid_backbone_ckpt_pairs(folder, backbone, ckpt, message):
    text = _edit("backbones: [tiny]", f"backbones: [{backbone}]")
    text = text.replace("ckpt_types: [2k]", f"ckpt_types: [{ckpt}]")
    result, path = _invoke(folder, text, "plan", "SUITE")
    _refused(result, str(path), message)


RESOLUTIONS = {
    "zero": ("0", "must be a positive multiple of 16"),
    "negative": ("-256", "must be a positive multiple of 16"),
    "not a multiple of 16": ("250", "height 250 must be a positive multiple of 16"),
    "rectangle width": ("[256, 100]", "width 100 must be a positive multiple of 16"),
    "three numbers": ("[256, 256, 3]", "write [height, width]"),
    "absurd side": ("20480", "larger than 16384; check for a typo"),
    "absurd width": ("[16, 32768]", "width 32768 is larger than 16384"),
}


@pytest.mark.parametrize(("value", "message"), RESOLUTIONS.values(), ids=RESOLUTIONS.keys())
def test_bad_and_absurd_resolutions_are_refused_before_allocating(folder, value, message):
    result, path = _invoke(
        folder, _edit("resolutions: [64]", f"resolutions: [{value}]"), "plan", "SUITE"
    )
    _refused(result, str(path), "resolutions[0]", message)


@pytest.mark.parametrize("command", [("plan", "SUITE"), ("run", "SUITE", "--output", "OUT")])
def test_a_size_off_the_backbones_pixel_grid_is_refused_at_load(folder, command):
    """272 is a multiple of 16 but not of tiny's 32 px (codec 8x x PiD 4x): refused before any
    cell runs, not left to end as error rows."""
    result, path = _invoke(folder, _edit("resolutions: [64]", "resolutions: [64, 272]"), *command)
    _refused(result, str(path), "resolutions[1]", "272x272 is not a multiple of 32 px", "tiny/2k")
    assert not (folder / "out" / "parts").exists()


def test_a_size_off_the_grid_of_an_excluded_pair_is_accepted(folder):
    text = _edit("resolutions: [64]", "resolutions: [64, 272]")
    text += "exclude: [{backbone: tiny, resolution: 272}]\n"
    result, _ = _invoke(folder, text, "plan", "SUITE")
    assert result.exit_code == 0, result.output


# --- the manifest -----------------------------------------------------------------------------

MANIFESTS = {
    "not JSON": ("{id: a}", "line is not JSON"),
    "a JSON list": ('["a", "a.png"]', "not an object"),
    "missing caption": ('{"id": "a", "image": "a.png"}', "caption: missing"),
    "id not a string": ('{"id": 3, "image": "a.png", "caption": "c"}', "id: must be a string"),
    "unsafe id": ('{"id": "a/b", "image": "a.png", "caption": "c"}', "not file-name safe"),
    "duplicate ids": (
        '{"id": "a", "image": "a.png", "caption": "c"}\n{"id": "a", "image": "a.png", "caption": "d"}',
        "duplicate id 'a'",
    ),
    "escapes its folder": ('{"id": "a", "image": "../a.png", "caption": "c"}', "outside"),
    "absolute path": ('{"id": "a", "image": "/etc/hostname", "caption": "c"}', "is absolute"),
    "missing image": ('{"id": "a", "image": "nope.png", "caption": "c"}', "image file not found"),
    "empty": ("", "manifest is empty"),
}


@pytest.mark.parametrize(("text", "message"), MANIFESTS.values(), ids=MANIFESTS.keys())
def test_bad_manifests(folder, text, message):
    (folder / "m.jsonl").write_text(text + "\n")
    result, _ = _invoke(folder, SUITE, "plan", "SUITE")
    _refused(result, str(folder / "m.jsonl"), message)


# --- images, checkpoints, run directories, Ray (refused by `run` before anything starts) -------


def _corrupt(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)


def _truncated(path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])


def _not_an_image(path: Path) -> None:
    path.write_text("this is text")


IMAGES = {"corrupt": _corrupt, "truncated": _truncated, "text file": _not_an_image}


@pytest.mark.parametrize("spoil", IMAGES.values(), ids=IMAGES.keys())
def test_unreadable_images_stop_the_run_before_it_starts(folder, spoil):
    spoil(folder / "a.png")
    result, _ = _invoke(folder, SUITE, "run", "SUITE", "--output", "OUT")
    _refused(result, str(folder / "a.png"), "cannot read image", "replace or re-export")
    assert not (folder / "out" / "parts").exists() or not any((folder / "out" / "parts").iterdir())


class _Custom:  # pickled by reference: weights_only=True must refuse it
    pass


def _needs_pickle(path: Path) -> None:
    torch.save({"weight": torch.zeros(1), "extra": _Custom()}, path)


def _a_list(path: Path) -> None:
    torch.save([torch.zeros(1)], path)


def _garbage(path: Path) -> None:
    path.write_bytes(bytes(np.random.default_rng(0).integers(0, 255, 4096, np.uint8)))


def _a_string(path: Path) -> None:
    path.write_bytes(pickle.dumps("not a checkpoint"))


CHECKPOINTS = {
    "needs pickle": (_needs_pickle, "weights_only=True"),
    "not a dict": (_a_list, "expected a dict of str -> tensor"),
    "random bytes": (_garbage, "not a readable torch checkpoint"),
    "a pickled string": (_a_string, "not a readable torch checkpoint"),
    "missing": (None, 'hf download nvidia/PiD --include "checkpoints/PiD_res2k_sr4x_official_flux'),
}


@pytest.mark.parametrize(("write", "message"), CHECKPOINTS.values(), ids=CHECKPOINTS.keys())
def test_bad_checkpoints_are_refused_before_the_run(folder, write, message):
    relpath = "PiD_res2k_sr4x_official_flux_distill_4step/model_ema_bf16.pth"
    root = folder / "pid" / "checkpoints"
    (root / relpath).parent.mkdir(parents=True)
    if write is not None:
        write(root / relpath)
    text = _edit("backbones: [tiny]", "backbones: [flux]")
    result, _ = _invoke(folder, text, "run", "SUITE", "--output", "OUT", "--checkpoints", str(root))
    _refused(result, "flux/2k", str(root / relpath), message)


def test_a_run_directory_of_another_suite_is_not_mixed(folder):
    out = folder / "out"
    out.mkdir()
    (out / "run.json").write_text(
        json.dumps({"suite_fingerprint": "x", "suite": {"name": "other"}})
    )
    (out / "parts").mkdir()
    (out / "parts" / "part-keep.parquet").write_bytes(b"earlier results")
    result, _ = _invoke(folder, SUITE, "run", "SUITE", "--output", "OUT")
    _refused(result, str(out), "'other'", "--force")
    assert (out / "parts" / "part-keep.parquet").read_bytes() == b"earlier results"


def test_a_ray_address_that_does_not_answer(folder):
    result, _ = _invoke(
        folder, SUITE, "run", "SUITE", "--output", "OUT", "--ray-address", "127.0.0.1:9"
    )
    _refused(result, "Ray address 127.0.0.1:9 does not answer", "--ray-address")


def test_case_count():
    counts = {
        "malformed yaml": len(SYNTAX), "unknown keys": len(UNKNOWN_KEYS),
        "wrong types": len(WRONG_TYPES), "empty axes": len(EMPTY_AXES), "pairs": len(PAIRS),
        "resolutions": len(RESOLUTIONS), "manifests": len(MANIFESTS), "images": len(IMAGES),
        "checkpoints": len(CHECKPOINTS), "run dir": 1, "ray address": 1,
    }  # fmt: skip
    print("bad-input cases:", counts, "total", sum(counts.values()))
    assert sum(counts.values()) >= 30
