"""The setting axes of a suite, declared once.

A suite is a product of axes (backbone × ckpt type × … × source item); one point of the product
is a `Cell`. Each `Axis` below says everything the harness needs to know about one axis:

- the suite key that lists its values, their type and default (the suite schema is built from
  this table),
- where it sits in the expansion order,
- what it contributes to a cell's id (ids of earlier runs must not change: an axis added later
  enters the id only away from its default),
- the row columns it writes, with their Parquet type and description (the row schema reads
  them),
- whether it is part of the *setting key*: the columns that name one setting, so rows of one
  setting and decoder form one leaderboard row, one set-level group and one comparison group.

Adding an axis is one entry in `AXES` plus its use where it acts (the decoder reading
``cell.<name>``). Suite expansion and validation, excludes, cell ids, rows and lost rows, the row
schema, set groups, stats, compare, the report's keys and the SQL rollups all read this table.
This module imports no torch: `pid_bench.schema` and `pid_bench.store` depend on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, make_dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, NonNegativeInt, PositiveInt

if TYPE_CHECKING:  # pid_bench.manifests imports torch
    from pid_bench.manifests import SourceItem

# --- value types (pydantic) -----------------------------------------------------------------

#: Largest output side accepted: 16k is far above PiD's 4k and stops a typo (20480 → 2048 meant)
#: from allocating a terabyte.
MAX_SIDE = 16384
#: PiD works on 16-pixel patches; every backbone's latent grid divides it.
SIDE_MULTIPLE = 16

Mode = Literal["from_clean", "from_ldm"]
CkptType = Literal["2k", "2kto4k", "2kto4k_v1pt5"]
#: auto: upstream's choice on the device (bf16 autocast on CUDA, float32 on CPU);
#: bf16-autocast: float32 weights under bf16 autocast; bf16: weights stored in bf16; fp32.
Precision = Literal["auto", "bf16-autocast", "bf16", "fp32"]
#: eager, or a torch.compile mode (the network compiled once per output size).
CompileMode = Literal["eager", "default", "reduce-overhead", "max-autotune"]


def _to_hw(value: Any) -> Any:
    """``256`` means a square output, ``[h, w]`` a rectangle; both become ``(h, w)``."""
    if isinstance(value, bool):
        raise ValueError("write an int (square side) or [height, width]")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"write [height, width] (2 numbers), got {len(value)}")
        return tuple(value)
    return value  # the tuple validator reports the type


def _check_hw(hw: tuple[int, int]) -> tuple[int, int]:
    for side, name in zip(hw, ("height", "width"), strict=True):
        if side > MAX_SIDE:
            raise ValueError(f"{name} {side} is larger than {MAX_SIDE}; check for a typo")
        if side <= 0 or side % SIDE_MULTIPLE:
            raise ValueError(f"{name} {side} must be a positive multiple of {SIDE_MULTIPLE}")
    return hw


def unique(values: list[Any]) -> list[Any]:
    """Duplicate axis values would give two cells the same id."""
    seen: list[Any] = []
    for value in values:
        if value in seen:
            raise ValueError(f"duplicate value {value!r}; list each value once")
        seen.append(value)
    return values


def value_list(item: Any) -> Any:
    """A non-empty list of unique values of type ``item``."""
    return Annotated[list[item], Field(min_length=1), AfterValidator(unique)]


Resolution = Annotated[tuple[int, int], BeforeValidator(_to_hw), AfterValidator(_check_hw)]
Sigma = Annotated[float, Field(ge=0.0, le=1.0)]


def _distilled_steps(steps: int) -> int:
    # pid_models.sampler.t_schedule sub-samples the distilled 4-interval t list; more steps
    # would repeat timesteps (InvokeAI PR #9281 hit exactly that), so they are refused here.
    if not 1 <= steps <= 4:
        raise ValueError(
            f"pid_steps {steps}: PiD is distilled to a 4-step schedule, so 1 to 4 steps "
            "(more would repeat timesteps)"
        )
    return steps


PidSteps = Annotated[int, AfterValidator(_distilled_steps)]


# --- the table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A row column an axis writes: Parquet type name (`pyarrow.type_for_alias`) and its doc."""

    name: str
    dtype: str
    doc: str


@dataclass(frozen=True)
class Axis:
    """One setting axis. ``name`` is the `Cell` attribute, the ``exclude:`` key and the key in
    the cell's canonical JSON (unless ``plain`` says otherwise)."""

    name: str
    #: The Python type of a cell's value (the `Cell` field's annotation).
    cell_type: Any
    #: The suite key listing the values, the pydantic type of that entry and its default
    #: (``...``: required). None for an axis whose values the suite derives (see ``values``).
    suite_key: str | None
    suite_type: Any = None
    suite_default: Any = ...
    #: The row columns this axis writes.
    columns: tuple[Column, ...] = ()
    #: In the setting key (leaderboard row, set group, comparison group).
    setting: bool = False
    #: Axes added after the first release enter a cell's id only away from this default, so
    #: the ids of earlier runs stay valid; None: always in the id.
    id_default: Any = None
    #: The value's plain JSON fields (run.json, cells.parquet, the id); default ``{name: value}``.
    plain: Callable[[Any], dict[str, Any]] | None = None
    #: Plain fields left out of the id (a path that moves with the checkout).
    not_in_id: tuple[str, ...] = ()
    #: The row's columns from the value; default: the plain fields.
    row: Callable[[Any], dict[str, Any]] | None = None
    #: The ``exclude:`` key, its type and the cell's value it is compared with; None: no key.
    exclude_key: str | None = None
    exclude_type: Any = None
    exclude_value: Callable[[Any], Any] | None = None
    #: The values of a suite; default: the suite's ``suite_key`` entry.
    values: Callable[[Any], list[Any]] | None = None
    #: Its column in `pid-bench plan` ("": the name; None: not shown) and the text of a cell's
    #: value there (default: ``str`` of the value).
    plan_label: str | None = ""
    plan_text: Callable[[Any], str] | None = None

    def plain_fields(self, value: Any) -> dict[str, Any]:
        return self.plain(value) if self.plain else {self.name: value}

    def row_fields(self, value: Any) -> dict[str, Any]:
        return self.row(value) if self.row else self.plain_fields(value)

    def suite_values(self, suite: Any) -> list[Any]:
        return self.values(suite) if self.values else list(getattr(suite, self.suite_key))

    def plan_value(self, cell: Any) -> str:
        return self.plan_text(cell) if self.plan_text else str(getattr(cell, self.name))


def _xt_steps(suite: Any) -> list[int | None]:
    """from_ldm decodes x_t at each save_xt step and the final latent x0 (None)."""
    return [*suite.save_xt_steps, None] if suite.mode == "from_ldm" else [None]


def _item_plain(item: SourceItem) -> dict[str, Any]:
    return {"image_id": item.id, "caption": item.caption, "source": item.image}


def _string(name: str, doc: str) -> tuple[Column, ...]:
    return (Column(name, "string", doc),)


#: Every axis, in the order of the `Cell`'s fields (axes with a default last, as dataclasses
#: require; `EXPANSION_ORDER` is the order of the product).
AXES: tuple[Axis, ...] = (
    Axis(
        "mode", str, "mode", Mode, "from_clean",
        columns=_string("mode", "from_clean | from_ldm"),
        setting=True,
        values=lambda suite: [suite.mode],
        plan_label=None,
    ),
    Axis(
        "backbone", str, "backbones", value_list(Annotated[str, Field(min_length=1)]),
        columns=_string("backbone", "backbone name as written in the suite"),
        setting=True, exclude_key="backbone", exclude_type=str,
    ),
    Axis(
        "ckpt_type", str, "ckpt_types", value_list(CkptType),
        columns=_string("ckpt_type", "2k | 2kto4k | 2kto4k_v1pt5"),
        setting=True, exclude_key="ckpt_type", exclude_type=str,
    ),
    Axis(
        "sigma", float, "sigmas", value_list(Sigma), [0.0],
        columns=(Column("sigma", "float64", "noise level of the latent given to the decoders"),),
        setting=True, row=lambda sigma: {"sigma": float(sigma)},
        exclude_key="sigma", exclude_type=float,
        plan_text=lambda c: "scheduler" if c.mode == "from_ldm" else f"{c.sigma:g}",
    ),
    Axis(
        # from_ldm: LDM steps whose x_t is decoded; empty means the final latent x0 only.
        "save_xt_step", int | None, "save_xt_steps",
        Annotated[list[PositiveInt], AfterValidator(unique)], [],
        columns=(
            Column(
                "save_xt_step", "int64",
                "from_ldm: LDM step whose x_t was captured (null: from_clean)",
            ),
        ),
        setting=True, exclude_key="save_xt_step", exclude_type=int, values=_xt_steps,
        plan_label="x_t",
        plan_text=lambda c: "" if c.mode == "from_clean" else str(c.save_xt_step or "x0"),
    ),
    Axis(
        "resolution", tuple[int, int], "resolutions", value_list(Resolution),
        columns=(
            Column("out_height", "int64", "requested output height (pixels)"),
            Column("out_width", "int64", "requested output width (pixels)"),
        ),
        setting=True,
        plain=lambda hw: {"resolution": list(hw)},
        row=lambda hw: {"out_height": hw[0], "out_width": hw[1]},
        exclude_key="resolution", exclude_type=Resolution,
        plan_text=lambda c: f"{c.resolution[0]}x{c.resolution[1]}",
    ),
    Axis(
        "seed", int, "seeds", value_list(NonNegativeInt), [0],
        columns=(Column("seed", "int64", "seed of the noise and of PiD's sampler"),),
        exclude_key="seed", exclude_type=int,
    ),
    Axis(
        "pid_steps", int, "pid_steps", value_list(PidSteps), [4],
        columns=(Column("pid_steps", "int64", "PiD sampler steps"),),
        setting=True, exclude_key="pid_steps", exclude_type=int, plan_label="steps",
    ),
    Axis(
        "item", "SourceItem", None,
        columns=(
            *_string("image_id", "source item id (manifest id or prompt index)"),
            *_string("caption", "caption given to PiD"),
            *_string("source", "image path or URL of the source item"),
        ),
        plain=_item_plain,
        # The absolute path is left out: the image is named by image_id and its caption, so
        # moving the checkout or recreating the venv (pkg:// paths) keeps resume working.
        not_in_id=("source",),
        exclude_key="image_id", exclude_type=str, exclude_value=lambda item: item.id,
        plan_label="image", plan_text=lambda c: c.item.id,
    ),
    Axis(
        "precision", str, "precision", value_list(Precision), ["auto"],
        columns=_string(
            "precision",
            "PiD precision axis as run: bf16-autocast (fp32 weights under autocast) | bf16 | fp32",
        ),
        setting=True, id_default="auto", exclude_key="precision", exclude_type=str,
    ),
    Axis(
        # PiD decodes the cell in tiles of this many output pixels (0: whole, unless the suite's
        # `tiling:` tiles every cell); one suite compares whole and tiled decodes.
        "tile", int, "tiles", value_list(NonNegativeInt), [0],
        columns=(
            Column(
                "tile", "int64",
                "tiles: axis, PiD's tile side in output pixels (0: whole, or the suite's tiling:)",
            ),
        ),
        setting=True, id_default=0, exclude_key="tile", exclude_type=int,
    ),
    Axis(
        "compile", str, "compile", value_list(CompileMode), ["eager"],
        columns=_string("compile", "PiD compile axis: eager | a torch.compile mode"),
        setting=True, id_default="eager", exclude_key="compile", exclude_type=str,
    ),
)  # fmt: skip

#: The product's order: a worker reloads PiD only when one of the first four changes, so they
#: vary slowest. The source items come from the suite's source, the last axis.
EXPANSION_ORDER: tuple[str, ...] = (
    "mode", "backbone", "ckpt_type", "precision", "compile", "tile", "resolution", "sigma",
    "save_xt_step", "seed", "pid_steps", "item",
)  # fmt: skip

AXIS_BY_NAME: Mapping[str, Axis] = {axis.name: axis for axis in AXES}
assert sorted(EXPANSION_ORDER) == sorted(AXIS_BY_NAME), "EXPANSION_ORDER must name every axis"

#: The row columns of the setting key, in the table's order of settings (leaderboard rows,
#: set-level groups, default comparison groups, the SQL rollups' GROUP BY).
SETTING_KEYS: tuple[str, ...] = tuple(
    c.name
    for name in EXPANSION_ORDER
    if AXIS_BY_NAME[name].setting
    for c in AXIS_BY_NAME[name].columns
)
#: `pid-bench plan`'s columns after ``cell_id``: (label, axis), in the product's order.
PLAN_COLUMNS: tuple[tuple[str, Axis], ...] = tuple(
    (AXIS_BY_NAME[name].plan_label or name, AXIS_BY_NAME[name])
    for name in EXPANSION_ORDER
    if AXIS_BY_NAME[name].plan_label is not None
)
#: Every row column an axis writes.
AXIS_COLUMNS: tuple[Column, ...] = tuple(c for axis in AXES for c in axis.columns)


# --- the cell -------------------------------------------------------------------------------


def _cell_axes(cell: Any) -> dict[str, Any]:
    """Every axis as plain JSON-able data (rows, run.json and `cell_id` use it)."""
    out: dict[str, Any] = {}
    for axis in AXES:
        out |= axis.plain_fields(getattr(cell, axis.name))
    return out


def _cell_row(cell: Any) -> dict[str, Any]:
    """The row columns of every axis."""
    out: dict[str, Any] = {}
    for axis in AXES:
        out |= axis.row_fields(getattr(cell, axis.name))
    return out


def _cell_id_payload(cell: Any) -> dict[str, Any]:
    """The canonical fields a cell id hashes (model identity aside)."""
    out: dict[str, Any] = {}
    for axis in AXES:
        value = getattr(cell, axis.name)
        if axis.id_default is not None and value == axis.id_default:
            continue
        out |= {k: v for k, v in axis.plain_fields(value).items() if k not in axis.not_in_id}
    return out


def _cell_exclude_values(cell: Any) -> dict[str, Any]:
    """The cell's values under their ``exclude:`` keys, in the shapes an entry compares."""
    return {
        axis.exclude_key: (axis.exclude_value or (lambda v: v))(getattr(cell, axis.name))
        for axis in AXES
        if axis.exclude_key
    }


def _fields() -> list[tuple[str, Any, Any]]:
    fields: list[tuple[str, Any, Any]] = []
    for axis in AXES:
        if axis.id_default is None:
            fields.append((axis.name, axis.cell_type))
        else:
            fields.append((axis.name, axis.cell_type, field(default=axis.id_default)))
    return fields


#: One point of the suite's product: what the actor decodes and measures. Its fields are the
#: axes of `AXES`, in that order.
Cell = make_dataclass(
    "Cell",
    _fields(),
    frozen=True,
    namespace={
        "axes": _cell_axes,
        "row": _cell_row,
        "id_payload": _cell_id_payload,
        "exclude_values": _cell_exclude_values,
        "__doc__": "One point of the suite's product (fields: `pid_bench.axes.AXES`).",
    },
)
Cell.__module__ = __name__  # pickled by reference (Ray ships cells to workers)
