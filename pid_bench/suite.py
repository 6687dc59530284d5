"""The suite: a YAML file that says which cells to run, validated before anything loads.

A suite names axes (backbones, ckpt types, resolutions, σ, save_xt steps, seeds, PiD steps)
and a source (an image manifest or a prompt file); its cells are the cartesian product of the
axes and the source items, minus ``exclude`` entries. Validation reports every problem at once,
one line each as ``suite.yaml:LINE key.path: message``, because a benchmark that fails on its
third typo after a model download wastes an afternoon.

The product order is fixed (backbone, ckpt_type, resolution, sigma, save_xt_step, seed,
pid_steps, item) so cell lists and reports are reproducible; `cell_id` hashes a cell's
canonical JSON with the model identity so a resumed run finds exactly the cells it finished.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from yaml.nodes import Node

from pid_bench.axes import (
    AXES,
    AXIS_BY_NAME,
    EXPANSION_ORDER,
    Cell,
    unique,
    value_list,
)
from pid_bench.decoders import (
    BASELINE_NAME,
    BaselineOptions,
    TeacherOptions,
    check_name,
    needs_baseline,
)
from pid_bench.manifests import ManifestError, SourceItem, load_prompts, load_source
from pid_bench.metrics import METRICS, expand_metric_names, get_metric, is_known_metric
from pid_bench.paths import folder_or_repo_id, under_suite
from pid_bench.settings import image_policy
from pid_bench.yaml_errors import (
    duplicate_keys,
    format_error,
    line_number,
    line_of,
    yaml_problem,
)
from pid_models.registry import CKPT_TYPES, UnknownCheckpointError, check_pair, output_multiple

__all__ = [
    "Cell",
    "ExcludeEntry",
    "LdmOptions",
    "Suite",
    "SuiteError",
    "Timing",
    "cell_id",
    "load_suite",
]

log = logging.getLogger(__name__)

DecoderName = Annotated[str, AfterValidator(check_name)]
#: Source file suffix each mode reads: an image manifest or a prompt list.
SOURCE_SUFFIX = {"from_clean": ".jsonl", "from_ldm": ".txt"}


class SuiteError(ValueError):
    """Everything wrong with a suite file, one ``FILE:LINE key: message`` line per problem."""

    def __init__(self, problems: Sequence[str]):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


# --- field types ----------------------------------------------------------------------------


DecoderAxis = value_list(DecoderName)


_FROZEN = ConfigDict(frozen=True, extra="forbid", strict=True)


class Timing(BaseModel):
    """How each decoder of a cell is timed (docs/protocol.md, "Time").

    ``warmup`` untimed runs, then timed runs until there are at least ``repeats`` of them *and*
    they add up to ``min_time_s`` (at most ``max_repeats``): a 0.2 s GPU decode is timed at least
    five times and for a second, a 20 ms one fifty times. Every timed run is kept.
    """

    model_config = _FROZEN
    warmup: NonNegativeInt = 1
    repeats: PositiveInt = 5
    min_time_s: Annotated[float, Field(ge=0)] = 1.0
    max_repeats: PositiveInt = 100

    @model_validator(mode="after")
    def _cap_above_count(self) -> Timing:
        if self.max_repeats < self.repeats:
            raise ValueError(
                f"max_repeats ({self.max_repeats}) is below repeats ({self.repeats}); raise "
                "max_repeats or lower repeats"
            )
        return self


class _ExcludeRule(BaseModel):
    """A partial cell: a cell matching every key given here is dropped. The keys are the axes'
    ``exclude_key`` (`pid_bench.axes`), built into `ExcludeEntry`."""

    model_config = _FROZEN

    @model_validator(mode="after")
    def _not_empty(self) -> _ExcludeRule:
        if not self.constraints():
            raise ValueError("an empty entry would drop every cell; name at least one axis")
        return self

    def constraints(self) -> dict[str, Any]:
        """The axes this entry constrains, with their values."""
        return {name: value for name, value in self if value is not None}

    def matches(self, axes: dict[str, Any]) -> bool:
        """True when every constrained axis equals the cell's value (absent axes never match)."""
        return all(
            name in axes and axes[name] == value for name, value in self.constraints().items()
        )


ExcludeEntry = create_model(
    "ExcludeEntry",
    __base__=_ExcludeRule,
    __module__=__name__,
    **{a.exclude_key: (Optional[a.exclude_type], None) for a in AXES if a.exclude_key},  # noqa: UP045
)


class Tiling(BaseModel):
    """PiD decodes in overlapping tiles of ``tile_size`` output pixels (None: whole image)."""

    model_config = _FROZEN
    tile_size: PositiveInt | None = None
    tile_overlap: NonNegativeInt = 256


class PidOptions(BaseModel):
    """How PiD runs where upstream offers a choice (docs/protocol.md, "inference path").

    ``tf32``: allow TF32 matmuls and cuDNN during a CUDA decode (upstream's loader turns it on);
    no effect on CPU. ``generator_device``: where the latent noise and the sampler's noise are
    drawn; ``decode`` (the decode device) or ``cuda`` to replay upstream's stream, which always
    draws from a CUDA generator, or ``cpu`` to make a CUDA run draw a CPU run's noise.
    """

    model_config = _FROZEN
    tf32: bool = True
    generator_device: Literal["decode", "cpu", "cuda"] = "decode"


class SetMetricOptions(BaseModel):
    """How set-level metrics (fid, kid) are computed at the end of a run.

    ``feature_extractor``: ``module.path:callable`` returning a torch module that maps
    ``[B, 3, H, W]`` in [0, 1] to ``[B, D]`` features and has an int ``num_features`` (the
    module is imported from sys.path or the suite's folder); default pytorch-fid's Inception.
    """

    model_config = _FROZEN
    feature_extractor: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")] | None = (
        None
    )


class LdmOptions(BaseModel):
    """from_ldm: how each backbone's LDM runs (defaults: the registry's, pid_models.ldm.PIPELINES).

    ``pipelines`` maps a backbone to a local pipeline folder (relative to the suite file) or an
    HF repo id read from the HF cache; backbones not listed use the registry's repo id. The
    embedded ``tiny`` backbone has no default: a tiny pipeline folder must be named here.
    """

    model_config = _FROZEN
    steps: PositiveInt | None = None
    guidance_scale: float | None = None
    pipelines: dict[str, Annotated[str, Field(min_length=1)]] = {}
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    cache_dir: str | None = None

    @field_validator("pipelines")
    @classmethod
    def _local_paths(cls, pipelines: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        return {backbone: folder_or_repo_id(src, info) for backbone, src in pipelines.items()}

    _cache_dir = field_validator("cache_dir")(under_suite)

    def source(self, backbone: str) -> str | None:
        """The pipeline folder or repo id of ``backbone`` (None: the registry's default)."""
        return self.pipelines.get(backbone)

    def identity(self, backbone: str) -> str:
        """What distinguishes this LDM configuration in cell ids (no pipeline is loaded)."""
        return json.dumps(
            [self.source(backbone), self.steps, self.guidance_scale, self.dtype], default=str
        )


class _Named(BaseModel):
    model_config = _FROZEN

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]


#: The suite keys that list axis values, from the axis table (validated before the other keys,
#: so validators of later keys can read them).
_SuiteAxes = create_model(
    "_SuiteAxes",
    __base__=_Named,
    __module__=__name__,
    **{a.suite_key: (a.suite_type, a.suite_default) for a in AXES if a.suite_key},
)


class Suite(_SuiteAxes):
    """A validated suite file; `cells()` expands it. Build it with `load_suite`. Its axis keys
    (backbones, sigmas, resolutions, ...) come from `pid_bench.axes.AXES`."""

    model_config = _FROZEN

    decoders: DecoderAxis
    metrics: Annotated[list[str], AfterValidator(unique)] = []
    source: str
    # full_size: a full-reference metric compares only with a reference at least the size it is
    # scored at (else null, "reference upsampled from HxW"); upsampled: compare anyway (the
    # report says so in a banner).
    reference: Literal["full_size", "upsampled"] = "full_size"
    limit: PositiveInt | None = None
    timing: Timing = Timing()
    # which PNGs to keep: all (true), reference_and_pid (a big sweep's viewer), none (false)
    save_images: Annotated[
        Literal["all", "reference_and_pid", "none"], BeforeValidator(image_policy)
    ] = "all"
    # let PNG writes run during timed decodes (CUDA only; the CPU decoder needs its cores):
    # turn on only where benchmarks/device_check.py's overlap step agrees on your GPU
    overlap: bool = False
    tiling: Tiling = Tiling()
    pid: PidOptions = PidOptions()
    teacher: TeacherOptions = TeacherOptions()
    baselines: Annotated[
        dict[Annotated[str, Field(pattern=BASELINE_NAME)], BaselineOptions],
        Field(validate_default=True),
    ] = {}
    set_metrics: SetMetricOptions = SetMetricOptions()
    ldm: LdmOptions = LdmOptions()
    exclude: list[ExcludeEntry] = []

    _path: Path | None = PrivateAttr(default=None)

    @field_validator("save_xt_steps")
    @classmethod
    def _xt_needs_ldm(cls, steps: list[int], info: ValidationInfo) -> list[int]:
        if steps and info.data.get("mode") == "from_clean":
            raise ValueError("only from_ldm suites capture x_t; remove it or set mode: from_ldm")
        return steps

    @field_validator("sigmas")
    @classmethod
    def _ldm_sigma_is_the_schedulers(cls, sigmas: list[float], info: ValidationInfo) -> list[float]:
        if info.data.get("mode") == "from_ldm" and sigmas != [0.0]:
            raise ValueError(
                "from_ldm takes each latent's sigma from the LDM scheduler at its save_xt step; "
                "remove sigmas (or set mode: from_clean to add noise to clean latents)"
            )
        return sigmas

    @field_validator("tiling")
    @classmethod
    def _one_way_to_tile(cls, tiling: Tiling, info: ValidationInfo) -> Tiling:
        tiled = [t for t in info.data.get("tiles", []) if t]
        if tiled and tiling.tile_size is not None:
            raise ValueError(
                f"tiling.tile_size tiles every cell and tiles: {tiled} tiles some: keep one "
                "(tiles: [0, ...] compares whole and tiled decodes; tiling: keeps tile_overlap)"
            )
        return tiling

    @field_validator("ldm")
    @classmethod
    def _ldm_only_for_from_ldm(cls, ldm: LdmOptions, info: ValidationInfo) -> LdmOptions:
        if info.data.get("mode") == "from_clean":
            raise ValueError("ldm options apply to mode: from_ldm; remove ldm or change mode")
        late = [k for k in info.data.get("save_xt_steps", []) if ldm.steps and k > ldm.steps]
        if late:
            raise ValueError(f"save_xt_steps {late} exceed ldm.steps {ldm.steps}")
        return ldm

    @field_validator("baselines")
    @classmethod
    def _every_baseline_decoder_is_declared(
        cls, baselines: dict[str, BaselineOptions], info: ValidationInfo
    ) -> dict[str, BaselineOptions]:
        missing = [
            d
            for d in info.data.get("decoders", [])
            if needs_baseline(d) and d.removeprefix("native+") not in baselines
        ]
        if missing:
            raise ValueError(
                f"decoder(s) {', '.join(missing)} need an entry each under baselines: (e.g. "
                f"baselines: {{{missing[0].removeprefix('native+')}: {{path: weights/model.pth}}}})"
            )
        return baselines

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, metrics: list[str]) -> list[str]:
        unknown = [m for m in metrics if not is_known_metric(m)]
        if unknown:
            raise ValueError(
                f"unknown metric(s) {unknown}; known: {', '.join(sorted(METRICS))}, "
                "latent_consistency, twin, pyiqa:<any pyiqa.list_models() name>, or "
                "module.path:callable (an importable custom metric, docs/metrics.md)"
            )
        return metrics

    @field_validator("source")
    @classmethod
    def _source_exists(cls, source: str, info: ValidationInfo) -> str:
        """Relative to the suite file (context ``base_dir``), so suites move with their data."""
        base = Path((info.context or {}).get("base_dir", "."))
        resolved = (base / source).resolve()
        mode = info.data.get("mode")
        if resolved.is_dir() and mode == "from_clean":
            return str(resolved)  # a folder of images
        if not resolved.is_file():
            hint = "a manifest (.jsonl) or a folder of images" if mode == "from_clean" else ""
            raise ValueError(f"file not found: {resolved}" + (f"; name {hint}" if hint else ""))
        if mode in SOURCE_SUFFIX and resolved.suffix != SOURCE_SUFFIX[mode]:
            kind = "an image manifest" if mode == "from_clean" else "a prompts file"
            raise ValueError(f"{mode} reads {kind} ({SOURCE_SUFFIX[mode]}), got {resolved.name}")
        return str(resolved)

    @property
    def path(self) -> Path | None:
        """The suite file this was loaded from (None when built in code)."""
        return self._path

    def items(self) -> list[SourceItem]:
        """The source items, manifest or prompts by mode, cut to ``limit``."""
        loader = load_source if self.mode == "from_clean" else load_prompts
        items = loader(self.source)
        return items[: self.limit] if self.limit is not None else items

    def reference_notes(self) -> list[str]:
        """One line per (image, resolution) whose reference would be upsampled: the image's
        centre crop with the output's aspect is smaller than the output on a side."""
        from pid_bench.manifests import image_size, is_upsampled, reference_crop

        if self.mode != "from_clean" or not self.full_reference_metrics():
            return []
        consequence = (
            "full-reference metrics compare with an upsampled reference (reference: upsampled)"
            if self.reference == "upsampled"
            else "its full-reference metrics are null (set reference: upsampled to compare anyway)"
        )
        notes = []
        for item in self.items():
            try:
                height, width = image_size(item.image)
            except (OSError, ValueError):
                continue  # preflight names unreadable images
            for size in self.resolutions:
                crop = reference_crop(height, width, size)
                if is_upsampled(crop, size):
                    notes.append(
                        f"{item.id} ({height}x{width}): reference at {size[0]}x{size[1]} would be "
                        f"upsampled from {crop[0]}x{crop[1]}; {consequence}"
                    )
        return notes

    def full_reference_metrics(self) -> list[str]:
        """The suite's metrics that compare with a reference image (the ones an upsampled
        reference withholds)."""
        return [
            n for n in expand_metric_names(self.metrics) if get_metric(n).kind == "full_reference"
        ]

    def decode_identity(self) -> str:
        """The decode settings that change PiD's output, for cell ids ("" at the defaults, so
        the ids of suites that leave them alone do not change)."""
        changed = {
            **self.tiling.model_dump(exclude_defaults=True),
            **self.pid.model_dump(exclude_defaults=True),
        }
        if self.tiling.tile_size is not None:
            changed["tile_overlap"] = self.tiling.tile_overlap
        return json.dumps(changed, sort_keys=True) if changed else ""

    def cells(self) -> list[Cell]:
        """Every cell of the suite over its own source."""
        return self.expand(self.items())

    def expand(self, items: Iterable[SourceItem]) -> list[Cell]:
        """The product in `pid_bench.axes.EXPANSION_ORDER` (the items last), minus cells matched
        by an ``exclude`` entry."""
        values = self._axis_values({"item": list(items)})
        combos = itertools.product(*(values[name] for name in EXPANSION_ORDER))
        cells = [Cell(**dict(zip(EXPANSION_ORDER, combo, strict=True))) for combo in combos]
        return [cell for cell in cells if not self._excluded(cell.exclude_values())]

    def resolved(self) -> dict[str, Any]:
        """The whole suite as JSON-able data, defaults filled and paths absolute (run.json)."""
        data = self.model_dump(mode="json", exclude={"exclude"})
        data["exclude"] = [
            {k: list(v) if isinstance(v, tuple) else v for k, v in entry.constraints().items()}
            for entry in self.exclude
        ]
        data["path"] = str(self.path.resolve()) if self.path else None
        return data

    def _axis_values(self, given: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """Each axis's values in this suite, ``given`` ones replacing the suite's."""
        return {
            a.name: given.get(a.name) or a.suite_values(self) for a in AXES if a.name != "item"
        } | {"item": given.get("item", [])}

    def _excluded(self, axes: dict[str, Any]) -> bool:
        return any(entry.matches(axes) for entry in self.exclude)

    def _pair_survives(
        self, backbone: str, ckpt_type: str, resolution: tuple[int, int] | None = None
    ) -> bool:
        """Whether any cell of this pair (at this resolution, if given) outlives the excludes
        (items aside: an entry naming an image_id never removes a whole pair, because the items
        are not read here)."""
        fixed = {"backbone": [backbone], "ckpt_type": [ckpt_type]}
        values = self._axis_values(fixed | ({"resolution": [resolution]} if resolution else {}))
        names = [a.name for a in AXES if a.exclude_key and a.name != "item"]
        for combo in itertools.product(*(values[name] for name in names)):
            axes = {
                AXIS_BY_NAME[name].exclude_key: value
                for name, value in zip(names, combo, strict=True)
            }
            if not self._excluded(axes):
                return True
        return False


def cell_id(cell: Cell, model_identity: str) -> str:
    """16 hex chars of sha256 over the cell's canonical JSON and the model identity.

    What each axis contributes is declared in `pid_bench.axes` (the absolute ``source`` path
    and late axes at their defaults are left out, so ids of earlier runs stay valid).
    """
    payload = cell.id_payload()
    payload["model_identity"] = model_identity
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


# --- loading and error reporting ------------------------------------------------------------


def load_suite(path: str | Path) -> Suite:
    """Read, validate and check a suite file; every problem is in one `SuiteError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SuiteError([f"{path}:1: cannot read suite ({err})"]) from None
    suite = parse_suite(text, path)
    suite._path = path
    return suite


def suite_from_dict(data: Mapping[str, Any], base_dir: str | Path = ".") -> Suite:
    """A suite given as data (the Python API), checked as a file would be. Relative paths are
    relative to `base_dir`; problems name ``<suite dict>`` and lines of its YAML dump."""
    text = yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True)
    return parse_suite(text, Path(base_dir) / "<suite dict>")


def parse_suite(text: str, path: Path) -> Suite:
    """Validate suite YAML `text`; `path` names it in problems and anchors relative paths."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SuiteError([yaml_problem(path, err)]) from None
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else type(raw).__name__
        line = root.start_mark.line + 1 if root is not None else 1
        raise SuiteError(
            [f"{path}:{line}: the suite must be a mapping of keys (name, ...), got {got}"]
        )

    problems = duplicate_keys(path, root)
    suite: Suite | None = None
    try:
        _custom_metric_paths(path)
        suite = Suite.model_validate(raw, context={"base_dir": path.parent})
    except ValidationError as err:
        problems += [format_error(path, root, error, _allowed_keys) for error in err.errors()]
    problems += _pair_problems(path, root, raw, suite)
    if suite is not None and not problems:
        problems += _resolution_problems(path, root, suite)
    if suite is not None and not problems:
        problems += _source_problems(path, root, suite)
    if problems:
        raise SuiteError(sorted(problems, key=lambda problem: line_number(problem, path)))
    _log_defaults(suite, raw)
    return suite


def custom_metric_paths(path: Path | None) -> tuple[str, ...]:
    """Where a suite's ``module.path:callable`` metrics import from, besides sys.path."""
    folders = [str(Path.cwd().resolve())]
    if path is not None:
        folders.insert(0, str(path.resolve().parent))
    return tuple(dict.fromkeys(folders))


def _custom_metric_paths(path: Path) -> None:
    from pid_bench.metrics.custom import add_search_path

    for folder in custom_metric_paths(path):
        add_search_path(folder)


def _allowed_keys(loc: Sequence[str | int]) -> list[str]:
    """Field names of the model that owns the mapping at ``loc`` (for "did you mean")."""
    if not loc:
        return list(Suite.model_fields)
    if loc[0] == "timing":
        return list(Timing.model_fields)
    if loc[0] == "pid" and len(loc) == 1:
        return list(PidOptions.model_fields)
    if loc[0] == "ldm" and len(loc) == 1:
        return list(LdmOptions.model_fields)
    if loc[0] == "tiling" and len(loc) == 1:
        return list(Tiling.model_fields)
    if loc[0] == "exclude":
        return list(ExcludeEntry.model_fields)
    return []


def _pair_problems(path: Path, root: Node, raw: dict, suite: Suite | None) -> list[str]:
    """Backbone × ckpt_type pairs the registry lacks, unless excludes remove all their cells.

    With a valid suite the check runs on the expanded axes; otherwise it reads the raw lists
    and counts only entries naming nothing but backbone/ckpt_type, so the pair errors still
    arrive alongside the others.
    """
    backbones = raw.get("backbones") if isinstance(raw.get("backbones"), list) else []
    ckpt_types = raw.get("ckpt_types") if isinstance(raw.get("ckpt_types"), list) else []
    problems = []
    for index, backbone in enumerate(backbones):
        for ckpt_type in ckpt_types:
            if not isinstance(backbone, str) or ckpt_type not in CKPT_TYPES:
                continue  # a type or literal error is already reported
            try:
                check_pair(backbone, ckpt_type)
            except UnknownCheckpointError as err:
                if _pair_removed(raw, suite, backbone, ckpt_type):
                    continue
                line = line_of(root, ("backbones", index))
                problems.append(
                    f"{path}:{line} backbones[{index}]: pair {backbone}/{ckpt_type}: {err}; "
                    "drop it or exclude it with {backbone: ..., ckpt_type: ...}"
                )
    return problems


def _pair_removed(raw: dict, suite: Suite | None, backbone: str, ckpt_type: str) -> bool:
    if suite is not None:
        return not suite._pair_survives(backbone, ckpt_type)
    entries = raw.get("exclude") if isinstance(raw.get("exclude"), list) else []
    pair = {"backbone": backbone, "ckpt_type": ckpt_type}
    return any(
        isinstance(entry, dict)
        and entry
        and set(entry) <= set(pair)
        and all(pair[key] == value for key, value in entry.items())
        for entry in entries
    )


def _resolution_problems(path: Path, root: Node, suite: Suite) -> list[str]:
    """Sizes that a backbone's pixel grid cannot decode (a latent cell is codec factor x PiD
    scale pixels: 32 for FLUX and tiny, 64 for FLUX.2, 128 for SigLIP), per pair and size."""
    problems = []
    for index, size in enumerate(suite.resolutions):
        for backbone, ckpt_type in itertools.product(suite.backbones, suite.ckpt_types):
            try:
                multiple = output_multiple(backbone, ckpt_type)
            except UnknownCheckpointError:
                continue  # an unreleased pair the excludes remove (else _pair_problems says so)
            if not (size[0] % multiple or size[1] % multiple):
                continue
            if not suite._pair_survives(backbone, ckpt_type, size):
                continue
            near = "x".join(str(max(multiple, round(side / multiple) * multiple)) for side in size)
            problems.append(
                f"{path}:{line_of(root, ('resolutions', index))} resolutions[{index}]: "
                f"{size[0]}x{size[1]} is not a multiple of {multiple} px, the pixel grid of "
                f"{backbone}/{ckpt_type} (one latent cell, codec x PiD scale); use {near}, or "
                "exclude it with {backbone: ..., resolution: ...}"
            )
    return problems


def _source_problems(path: Path, root: Node, suite: Suite) -> list[str]:
    """Read the source now, so a bad manifest fails at load time, not in a worker."""
    try:
        suite.items()
    except ManifestError as err:
        line = line_of(root, ("source",))
        return [f"{path}:{line} source: {problem}" for problem in str(err).splitlines()]
    return []


def _log_defaults(suite: Suite, raw: dict) -> None:
    for name in Suite.model_fields:
        if name not in raw:
            log.info("suite %s: %s not given, using %r", suite.name, name, getattr(suite, name))
