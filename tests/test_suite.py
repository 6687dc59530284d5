"""Suite schema: validation messages with file:line, expansion order, excludes, cell ids."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pid_bench.manifests import SourceItem
from pid_bench.suite import Cell, Suite, SuiteError, cell_id, load_suite

BASE = """\
name: smoke
mode: from_clean
backbones: [tiny]
ckpt_types: [2k]
sigmas: [0.0, 0.3]
resolutions: [256, [256, 384]]
decoders: [pid, native]
metrics: [psnr]
source: m.jsonl
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A suite folder with a 3-image manifest and a 2-prompt file beside it."""
    lines = []
    for index, name in enumerate(("a", "b", "c")):
        pixels = np.full((4, 4, 3), index * 40, dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
        lines.append(json.dumps({"id": name, "image": f"{name}.png", "caption": f"item {name}"}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "p.txt").write_text("a red fox\na blue bird\n", encoding="utf-8")
    return tmp_path


def _write(folder: Path, text: str, name: str = "suite.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def _edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new)


def _problems(path: Path) -> list[str]:
    with pytest.raises(SuiteError) as caught:
        load_suite(path)
    assert str(caught.value).splitlines() == caught.value.problems
    return caught.value.problems


def _assert_problem(path: Path, expected: str) -> None:
    """Some problem reads ``PATH:<expected regex>``."""
    problems = _problems(path)
    pattern = re.escape(str(path)) + ":" + expected
    assert any(re.match(pattern, p) for p in problems), "\n".join(problems)


# --- a good suite ----------------------------------------------------------------------------


def test_good_suite_loads_with_defaults(folder):
    path = _write(folder, BASE)
    suite = load_suite(path)
    assert suite.path == path
    assert suite.mode == "from_clean" and suite.backbones == ["tiny"]
    assert suite.resolutions == [(256, 256), (256, 384)]
    assert suite.seeds == [0] and suite.pid_steps == [4] and suite.save_xt_steps == []
    assert suite.timing.warmup == 1 and suite.timing.repeats == 5
    assert (suite.timing.min_time_s, suite.timing.max_repeats) == (1.0, 100)
    assert suite.save_images == "all" and suite.limit is None and suite.exclude == []
    assert suite.source == str((folder / "m.jsonl").resolve())


def test_defaults_of_sigmas_and_metrics(folder):
    text = _edit("sigmas: [0.0, 0.3]\n", "", _edit("metrics: [psnr]\n", ""))
    suite = load_suite(_write(folder, text))
    assert suite.sigmas == [0.0] and suite.metrics == []


def test_suite_is_frozen(folder):
    suite = load_suite(_write(folder, BASE))
    with pytest.raises(ValueError):
        suite.name = "other"


def test_resolved_is_plain_json_with_absolute_paths(folder):
    text = BASE + "exclude:\n  - {backbone: tiny, resolution: 256}\n"
    resolved = load_suite(_write(folder, text)).resolved()
    assert json.loads(json.dumps(resolved)) == resolved
    assert resolved["source"] == str((folder / "m.jsonl").resolve())
    assert resolved["path"] == str((folder / "suite.yaml").resolve())
    assert resolved["resolutions"] == [[256, 256], [256, 384]]
    assert resolved["timing"] == {"warmup": 1, "repeats": 5, "min_time_s": 1.0, "max_repeats": 100}
    assert resolved["exclude"] == [{"backbone": "tiny", "resolution": [256, 256]}]
    assert resolved["sigmas"] == [0.0, 0.3] and resolved["limit"] is None


# --- bad suites: every message names file:line and key ---------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("sigmas:", "sigma:", r"5 sigma: unknown key; did you mean 'sigmas'\?"),
        ("metrics: [psnr]", "zzz: 1", r"8 zzz: unknown key; allowed: name, mode, "),
        ("sigmas: [0.0, 0.3]", "sigmas: 0.3", r"5 sigmas: Input should be a valid list"),
        ("sigmas: [0.0, 0.3]", "sigmas: [0.0, '0.3']", r"5 sigmas\[1\]: Input should be a valid"),
        ("backbones: [tiny]", "backbones: []", r"3 backbones: must not be empty"),
        ("sigmas: [0.0, 0.3]", "sigmas: [0.0, 0.3, 1.5]", r"5 sigmas\[2\]: Input should be less"),
        ("[256, [256, 384]]", "[256, [250, 384]]", r"6 resolutions\[1\]: height 250 must be a pos"),
        ("[256, [256, 384]]", "[256, 0]", r"6 resolutions\[1\]: height 0 must be a positive"),
        ("[256, [256, 384]]", "[256, [256, 163840]]", r"6 resolutions\[1\]: width 163840 is larg"),
        ("[256, [256, 384]]", "[[256, 384, 3]]", r"6 resolutions\[0\]: write \[height, width\]"),
        ("decoders: [pid, native]", "decoders: [pid, pid]", r"7 decoders: duplicate value 'pid'"),
        (
            "decoders: [pid, native]",
            "decoders: [pid, vae]",
            r"7 decoders\[1\]: unknown decoder .vae.: one of pid",
        ),
        ("ckpt_types: [2k]", "ckpt_types: [4k]", r"4 ckpt_types\[0\]: Input should be '2k'"),
        ("mode: from_clean", "mode: clean", r"2 mode: Input should be 'from_clean' or 'from_ldm'"),
        ("name: smoke", "name: my suite", r"1 name: String should match pattern"),
        ("source: m.jsonl", "source: p.txt", r"9 source: from_clean reads an image manifest"),
        ("metrics: [psnr]", "save_xt_steps: [10]", r"8 save_xt_steps: only from_ldm suites"),
        ("metrics: [psnr]", "timing: {warmup: -1}", r"8 timing.warmup: Input should be greater"),
        ("metrics: [psnr]", "timing: {repeat: 2}", r"8 timing.repeat: unknown key; did you mean"),
        ("metrics: [psnr]", "limit: 0", r"8 limit: Input should be greater than 0"),
        ("metrics: [psnr]", "seeds: [1.5]", r"8 seeds\[0\]: Input should be a valid integer"),
        (
            "metrics: [psnr]",
            "pid_steps: [5]",
            r"8 pid_steps\[0\]: pid_steps 5: PiD is distilled to a 4-step schedule",
        ),
        (
            "metrics: [psnr]",
            "save_images: 'yes'",
            r"8 save_images: Input should be 'all', 'reference_and_pid' or 'none'",
        ),
        ("name: smoke\n", "", r"1 name: required key is missing"),
    ],
)
def test_bad_value_names_line_and_key(folder, old, new, expected):
    _assert_problem(_write(folder, _edit(old, new)), expected)


def test_block_style_lists_point_at_the_item_line(folder):
    text = _edit("sigmas: [0.0, 0.3]", "sigmas:\n  - 0.0\n  - 0.3\n  - 2.0")
    _assert_problem(_write(folder, text), r"8 sigmas\[2\]: Input should be less than or equal to 1")


def test_exclude_problems(folder):
    text = BASE + "exclude:\n  - {backbone: tiny}\n  - {backbon: tiny}\n  - {}\n"
    path = _write(folder, text)
    _assert_problem(path, r"12 exclude\[1\]\.backbon: unknown key; did you mean 'backbone'\?")
    _assert_problem(path, r"13 exclude\[2\]: an empty entry would drop every cell")


def test_missing_source_names_the_resolved_path(folder):
    path = _write(folder, _edit("source: m.jsonl", "source: ../gone/m.jsonl"))
    resolved = (folder.parent / "gone" / "m.jsonl").resolve()
    _assert_problem(path, rf"9 source: file not found: {re.escape(str(resolved))}")


def test_bad_manifest_is_reported_at_load_time(folder):
    (folder / "m.jsonl").write_text('{"id": "a", "image": "gone.png", "caption": ""}\n')
    path = _write(folder, BASE)
    _assert_problem(path, r"9 source: .*m\.jsonl:1 image: image file not found")


def test_invalid_pair_lists_the_valid_pairs(folder):
    path = _write(folder, _edit("ckpt_types: [2k]", "ckpt_types: [2k, 2kto4k]"))
    problems = _problems(path)
    assert len(problems) == 1
    assert re.match(re.escape(str(path)) + r":3 backbones\[0\]: pair tiny/2kto4k: ", problems[0])
    assert "flux/2k" in problems[0] and "tiny/2k" in problems[0]


def test_unknown_backbone_is_an_invalid_pair(folder):
    path = _write(folder, _edit("backbones: [tiny]", "backbones: [tiny, fluxx]"))
    _assert_problem(path, r"3 backbones\[1\]: pair fluxx/2k: unknown backbone 'fluxx'")


@pytest.mark.parametrize(
    "entry",
    [
        "{backbone: tiny, ckpt_type: 2kto4k}",
        "{ckpt_type: 2kto4k}",
        "{ckpt_type: 2kto4k, resolution: 256}\n  - {ckpt_type: 2kto4k, resolution: [256, 384]}",
    ],
)
def test_invalid_pair_that_is_excluded_passes(folder, entry):
    text = _edit("ckpt_types: [2k]", "ckpt_types: [2k, 2kto4k]") + f"exclude:\n  - {entry}\n"
    suite = load_suite(_write(folder, text))
    assert {cell.ckpt_type for cell in suite.cells()} == {"2k"}


def test_partially_excluded_invalid_pair_still_fails(folder):
    text = _edit("ckpt_types: [2k]", "ckpt_types: [2k, 2kto4k]")
    text += "exclude:\n  - {ckpt_type: 2kto4k, sigma: 0.3}\n"
    _assert_problem(_write(folder, text), r"3 backbones\[0\]: pair tiny/2kto4k")


def test_several_problems_at_once_in_line_order(folder):
    text = _edit("sigmas: [0.0, 0.3]", "sigmas: [0.0, 0.3, 1.5]")
    text = _edit("ckpt_types: [2k]", "ckpt_types: [2k, 2kto4k]", text)
    text = _edit("decoders: [pid, native]", "decoder: [pid]", text)
    text = _edit("source: m.jsonl", "source: gone.jsonl", text)
    problems = _problems(_write(folder, text))
    keys = [p[len(str(folder / "suite.yaml")) + 1 :].split(":")[0] for p in problems]
    assert keys == [
        "1 decoders",  # missing: reported at the top of the file
        "3 backbones[0]",
        "5 sigmas[2]",
        "7 decoder",
        "9 source",
    ]


def test_malformed_yaml_reports_yaml_line(folder):
    path = _write(folder, BASE.replace("decoders: [pid, native]", "decoders: [pid, native"))
    _assert_problem(path, r"\d+: malformed YAML: ")
    path = _write(folder, "name: smoke\nbackbones: [tiny]\n  bad indent: 1\n")
    _assert_problem(path, r"3: malformed YAML: ")


@pytest.mark.parametrize(
    ("text", "got"), [("- a\n- b\n", "list"), ("", "an empty file"), ("3\n", "int")]
)
def test_top_level_must_be_a_mapping(folder, text, got):
    _assert_problem(_write(folder, text), rf"1: the suite must be a mapping .*got {got}")


def test_duplicate_keys_are_reported(folder):
    path = _write(folder, BASE + "sigmas: [0.5]\n")
    _assert_problem(path, r"10 sigmas: duplicate key \(also on line 5\)")


def test_unreadable_suite_file(folder):
    _assert_problem(folder / "nope.yaml", r"1: cannot read suite")


# --- expansion -------------------------------------------------------------------------------


def test_expansion_count_and_order(folder):
    text = _edit("metrics: [psnr]", "seeds: [0, 1]\npid_steps: [2, 4]")
    cells = load_suite(_write(folder, text)).cells()
    assert len(cells) == 2 * 2 * 2 * 2 * 3  # resolutions, sigmas, seeds, pid_steps, items
    order = [(c.resolution, c.sigma, c.seed, c.pid_steps, c.item.id) for c in cells]
    assert order == sorted(order, key=lambda t: (t[0] != (256, 256), *t[1:]))
    assert order[:4] == [
        ((256, 256), 0.0, 0, 2, "a"),
        ((256, 256), 0.0, 0, 2, "b"),
        ((256, 256), 0.0, 0, 2, "c"),
        ((256, 256), 0.0, 0, 4, "a"),
    ]
    assert all(c.mode == "from_clean" and c.save_xt_step is None for c in cells)


def test_backbone_and_ckpt_type_are_the_outer_axes(folder):
    text = _edit("backbones: [tiny]", "backbones: [tiny, sd3]")
    text = _edit("ckpt_types: [2k]", "ckpt_types: [2k, 2kto4k]", text)
    text += "exclude:\n  - {backbone: tiny, ckpt_type: 2kto4k}\n"
    cells = load_suite(_write(folder, text)).cells()
    pairs = list(dict.fromkeys((c.backbone, c.ckpt_type) for c in cells))
    assert pairs == [("tiny", "2k"), ("sd3", "2k"), ("sd3", "2kto4k")]


def test_limit_keeps_the_first_items(folder):
    suite = load_suite(_write(folder, BASE + "limit: 2\n"))
    assert [i.id for i in suite.items()] == ["a", "b"]
    assert len(suite.cells()) == 2 * 2 * 2


def test_expand_takes_any_items(folder):
    suite = load_suite(_write(folder, BASE))
    item = SourceItem("x", "/nowhere/x.png", "x", "test:1")
    assert [c.item for c in suite.expand([item])] == [item] * 4


def _ldm_text(text: str = BASE) -> str:
    text = _edit("mode: from_clean", "mode: from_ldm", _edit("m.jsonl", "p.txt", text))
    return _edit("sigmas: [0.0, 0.3]\n", "", text)


def test_from_ldm_expands_prompts_save_xt_steps_and_the_final_latent(folder):
    text = _edit("metrics: [psnr]", "save_xt_steps: [10, 20]", _ldm_text())
    cells = load_suite(_write(folder, text)).cells()
    assert len(cells) == 2 * 3 * 2  # resolutions, (x_t 10, x_t 20, x0), prompts
    assert [(c.save_xt_step, c.item.id) for c in cells[:6]] == [
        (10, "p0000"),
        (10, "p0001"),
        (20, "p0000"),
        (20, "p0001"),
        (None, "p0000"),
        (None, "p0001"),
    ]
    assert cells[0].item.image is None and cells[0].item.caption == "a red fox"


def test_from_ldm_without_save_xt_steps_decodes_the_final_latent(folder):
    cells = load_suite(_write(folder, _ldm_text())).cells()
    assert {c.save_xt_step for c in cells} == {None}


def test_from_ldm_sigma_comes_from_the_scheduler_not_the_suite(folder):
    text = _edit("mode: from_clean", "mode: from_ldm", _edit("m.jsonl", "p.txt"))
    _assert_problem(_write(folder, text), r"5 sigmas: from_ldm takes each latent's sigma")


def test_ldm_options_resolve_folders_relative_to_the_suite(folder):
    (folder / "pipes" / "tiny").mkdir(parents=True)
    text = _ldm_text() + "ldm: {steps: 4, pipelines: {tiny: pipes/tiny, flux: org/flux-dev}}\n"
    suite = load_suite(_write(folder, text))
    assert suite.ldm.source("tiny") == str((folder / "pipes" / "tiny").resolve())
    assert suite.ldm.source("flux") == "org/flux-dev"  # not a folder here: an HF repo id
    assert suite.ldm.source("sd3") is None  # the registry's default


def test_ldm_options_are_checked(folder):
    text = _ldm_text() + "save_xt_steps: [5]\nldm: {steps: 4, guidance: 2}\n"
    problems = _problems(_write(folder, text))
    assert any("ldm.guidance: unknown key; did you mean 'guidance_scale'?" in p for p in problems)
    text = _ldm_text() + "save_xt_steps: [5]\nldm: {steps: 4}\n"
    _assert_problem(_write(folder, text), r"\d+ ldm: save_xt_steps \[5\] exceed ldm.steps 4")
    text = BASE + "ldm: {steps: 4}\n"
    _assert_problem(_write(folder, text), r"\d+ ldm: ldm options apply to mode: from_ldm")


def test_from_ldm_needs_a_prompts_file(folder):
    path = _write(folder, _edit("mode: from_clean", "mode: from_ldm"))
    _assert_problem(path, r"9 source: from_ldm reads a prompts file \(\.txt\), got m\.jsonl")


# --- excludes --------------------------------------------------------------------------------


def _cells(folder: Path, *entries: str) -> list[Cell]:
    text = BASE + "exclude:\n" + "".join(f"  - {e}\n" for e in entries)
    return load_suite(_write(folder, text)).cells()


def test_exclude_partial_match(folder):
    cells = _cells(folder, "{sigma: 0.3, resolution: [256, 384]}")
    assert len(cells) == 12 - 3
    assert not any(c.sigma == 0.3 and c.resolution == (256, 384) for c in cells)


def test_exclude_resolution_int_means_square(folder):
    square = _cells(folder, "{resolution: 256}")
    assert {c.resolution for c in square} == {(256, 384)}
    assert square == _cells(folder, "{resolution: [256, 256]}")


def test_exclude_image_id_and_several_entries(folder):
    cells = _cells(folder, "{image_id: b}", "{sigma: 0.0, image_id: c}")
    ids = [(c.sigma, c.item.id) for c in cells if c.resolution == (256, 256)]
    assert ids == [(0.0, "a"), (0.3, "a"), (0.3, "c")]


def test_exclude_matching_nothing_keeps_everything(folder):
    assert len(_cells(folder, "{backbone: flux}", "{seed: 7}")) == 12


# --- cell ids --------------------------------------------------------------------------------

ITEM = SourceItem("astronaut", "/data/astronaut.png", "an astronaut", "m.jsonl:1")
CELL = Cell("from_clean", "tiny", "2k", 0.3, None, (256, 384), 0, 4, ITEM)
#: Computed once; a change here breaks resume of every existing run directory.
CELL_ID = "c1bbf11dad6fe195"


def test_cell_id_is_fixed():
    """sha256 of sorted-key JSON: no dependence on PYTHONHASHSEED, process or dict order."""
    assert cell_id(CELL, "model-abc") == CELL_ID


@pytest.mark.parametrize(
    "change",
    [
        {"mode": "from_ldm"},
        {"backbone": "flux"},
        {"ckpt_type": "2kto4k"},
        {"sigma": 0.0},
        {"save_xt_step": 10},
        {"resolution": (384, 256)},
        {"seed": 1},
        {"pid_steps": 2},
        {"item": dataclasses.replace(ITEM, id="astronaut2")},
        {"item": dataclasses.replace(ITEM, caption="a person")},
    ],
    ids=lambda change: next(iter(change)),
)
def test_cell_id_changes_with_every_axis(change):
    assert cell_id(dataclasses.replace(CELL, **change), "model-abc") != CELL_ID


def test_cell_id_changes_with_model_identity_not_with_paths():
    assert cell_id(CELL, "model-abd") != CELL_ID
    moved = dataclasses.replace(ITEM, image="/elsewhere/astronaut.png", location="n.jsonl:9")
    assert cell_id(dataclasses.replace(CELL, item=moved), "model-abc") == CELL_ID


def test_axes_are_plain_json():
    axes = CELL.axes()
    assert json.loads(json.dumps(axes)) == axes
    assert axes["resolution"] == [256, 384] and axes["source"] == "/data/astronaut.png"
    assert set(axes) == {
        "mode",
        "backbone",
        "ckpt_type",
        "sigma",
        "save_xt_step",
        "resolution",
        "seed",
        "pid_steps",
        "image_id",
        "caption",
        "source",
        "precision",
        "compile",
        "tile",
    }


def test_late_axes_at_their_defaults_leave_cell_ids_unchanged():
    """precision and compile came after the first runs: at auto / eager a cell keeps the id it
    had before they existed (CELL_ID is pinned above); away from them the id changes."""
    assert cell_id(CELL, "model-abc") == CELL_ID
    assert cell_id(dataclasses.replace(CELL, precision="bf16"), "model-abc") != CELL_ID
    assert cell_id(dataclasses.replace(CELL, compile="default"), "model-abc") != CELL_ID


def test_precision_and_compile_are_axes_of_the_product(folder):
    text = BASE + "precision: [bf16-autocast, fp32]\ncompile: [eager, max-autotune]\n"
    cells = load_suite(_write(folder, text)).cells()
    assert len(cells) == 4 * 2 * 2 * 3  # the BASE product x 2 precisions x 2 compile modes
    assert {(c.precision, c.compile) for c in cells} == {
        ("bf16-autocast", "eager"), ("bf16-autocast", "max-autotune"),
        ("fp32", "eager"), ("fp32", "max-autotune"),
    }  # fmt: skip
    with pytest.raises(SuiteError, match=r"precision\[0\].*'auto', 'bf16-autocast', 'bf16'"):
        load_suite(_write(folder, BASE + "precision: [fp16]\n"))


def test_suite_built_in_code_has_no_path(folder):
    suite = Suite.model_validate(
        {
            "name": "x",
            "backbones": ["tiny"],
            "ckpt_types": ["2k"],
            "resolutions": [256],
            "decoders": ["pid"],
            "source": str(folder / "m.jsonl"),
        }
    )
    assert suite.path is None and len(suite.cells()) == 3


def test_unknown_metric_is_named_with_the_known_ones(tmp_path):
    manifest = Path(__file__).resolve().parents[1] / "manifests" / "smoke.jsonl"
    path = tmp_path / "m.yaml"
    path.write_text(
        f"name: m\nbackbones: [tiny]\nckpt_types: [2k]\nresolutions: [64]\n"
        f"decoders: [pid]\nmetrics: [psnr, lpipz]\nsource: {manifest}\n"
    )
    with pytest.raises(SuiteError, match=r"m.yaml:6 metrics: .*unknown metric\(s\) \['lpipz'\]"):
        load_suite(path)


def test_pid_options_default_to_upstreams_and_only_changed_ones_enter_cell_ids(folder):
    from pid_bench.runner import plan

    def ids(extra: str) -> list[str]:
        path = folder / "s.yaml"
        path.write_text(BASE + extra, encoding="utf-8")
        return [cid for cid, _ in plan(load_suite(path))]

    default = load_suite(_write(folder, BASE))
    assert default.pid.tf32 is True and default.pid.generator_device == "decode"
    assert default.decode_identity() == ""
    assert ids("") == ids("pid: {tf32: true, generator_device: decode}\n")
    for changed in ("pid: {tf32: false}\n", "pid: {generator_device: cpu}\n",
                    "tiling: {tile_size: 128}\n"):  # fmt: skip
        assert set(ids(changed)).isdisjoint(ids("")), changed
    assert ids("tiling: {tile_size: 128, tile_overlap: 64}\n") != ids("tiling: {tile_size: 128}\n")


def test_an_unknown_generator_device_names_the_field_and_the_choices(folder):
    with pytest.raises(SuiteError, match=r"pid\.generator_device.*'decode', 'cpu' or 'cuda'"):
        load_suite(_write(folder, BASE + "pid: {generator_device: gpu}\n"))
