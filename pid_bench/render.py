"""How the reports are written out: markdown tables and the jinja2 pages, and the texts (notes,
warnings) both a run's report and the cross-run leaderboard show.

The HTML templates are reports/*.html.j2 (autoescaped, strict about undefined names); jinja2 is
imported only when a page is rendered.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pid_bench.board import Table
from pid_bench.rundb import reports_dir

if TYPE_CHECKING:
    from pid_bench.sections import Section

RANDOM_WEIGHTS_WARNING = (
    "The `tiny-random` backbone uses random networks: its quality numbers say nothing about PiD."
)
EMBEDDED_WARNING = (
    "The embedded `tiny` backbone is a pair of small networks trained here on CPU "
    "(pid_models.tiny_training): enough to show a wiring mistake, but its numbers say nothing "
    "about NVIDIA's PiD."
)
UPSAMPLED_WARNING = (
    "This suite says `reference: upsampled`: some full-reference metrics compare with a "
    "reference upsampled from a smaller source, which rewards blur (rows with "
    "reference_upsampled = true)."
)
LEADERBOARD_NOTE = (
    "↑ higher is better, ↓ lower is better; bold: best of its setting. Metrics are means "
    "over ok rows; latency is the median of the rows' p50 († some rows' repeats are noisy: "
    "see Flags); memory the max; – no value. `native` is scored at its own size (the codec's "
    "reconstruction, against the source at that size); the other decoders at the output size; "
    "twin_* compare a decode, downsampled to the native size, with the native decode."
)
DEFINITIONS_MD = (
    'Metric definitions: docs/metrics.md ("Definitions") in the pid-bench checkout, and the '
    "Definitions section of the HTML page."
)
MAX_FAILURES_MD = 50  # failures listed in leaderboard.md (the HTML lists them all)


def uses_trained_embedded(backbones: Iterable[str]) -> bool:
    """Whether any of `backbones` is an embedded backbone trained here (`tiny`, not
    `tiny-random`): its report carries `EMBEDDED_WARNING`."""
    from pid_models.registry import EMBEDDED_PAIRS, RANDOM_BACKBONES

    trained = {b for b, _ in EMBEDDED_PAIRS} - RANDOM_BACKBONES
    return any(b in trained for b in backbones)


def status_line(status: list[dict[str, Any]]) -> str:
    """'24 ok, 1 error (25 rows)' from reports/status.sql."""
    total = sum(s["n"] for s in status)
    counts = ", ".join(f"{s['n']} {s['status']}" for s in status)
    return f"{counts} ({total} rows)" if total else "no rows"


# ---- markdown ----------------------------------------------------------------------------------


def md_cell(text: str) -> str:
    """Text safe inside one markdown table cell (pipes escaped, one line). Backslashes are
    escaped first: a cell's own ``\\`` before a pipe would otherwise undo the pipe's escape;
    every line break (``\\r`` too: markdown ends a line there) becomes a space."""
    escaped = text.replace("\\", "\\\\").replace("|", "\\|")
    return " ".join(escaped.splitlines())


def md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines, every cell made safe (`md_cell`)."""
    return md_table_of_safe_cells([md_cell(h) for h in headers],
                                  [[md_cell(c) for c in row] for row in rows])  # fmt: skip


def md_table_of_safe_cells(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table's lines, of cells already made safe by the caller."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def md_leaderboard(table: Table) -> list[str]:
    """The leaderboard's lines, each setting's best value in bold, then a blank line."""
    cells = [[f"**{c.text}**" if c.best else c.text for c in row] for row in table.rows]
    return md_table(table.headers, cells) + [""]


def md_section(section: Section) -> list[str]:
    """An extra table as a titled markdown section, its note below."""
    lines = [f"## {section.title}", ""] + md_table(section.headers, section.rows) + [""]
    return lines + ([section.note, ""] if section.note else [])


def md_failures(failures: list[dict[str, Any]]) -> list[str]:
    """The Failures section (reports/failures.sql), at most MAX_FAILURES_MD rows."""
    if not failures:
        return []
    shown = failures[:MAX_FAILURES_MD]
    rows = [
        [f["decoder"] or "", f["cell_id"] or "", f["status"], f["error_first_line"]] for f in shown
    ]
    lines = [f"## Failures ({len(failures)})", ""]
    lines += md_table(["decoder", "cell_id", "status", "error"], rows)
    if len(failures) > len(shown):
        lines.append(f"\n… and {len(failures) - len(shown)} more (see report.html)")
    return lines + [""]


# ---- HTML --------------------------------------------------------------------------------------


def jinja() -> Any:
    """The jinja2 environment of reports/ (autoescaped; an undefined name is an error)."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(reports_dir()),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def environment_items(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """run.json's environment and times, flattened to (key, value) strings."""
    items: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in sorted(value.items()):
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            items.append((prefix, value if isinstance(value, str) else json.dumps(value)))

    walk("", meta.get("environment") or {})
    for key in ("started_at", "finished_at", "random_weights"):
        if key in meta:
            items.append((key, str(meta[key])))
    return items


# ---- the Recommendations section (pid_bench.recommend's answers) -----------------------------------------------------------------------------

RECOMMENDATION_TITLES = {
    "pid_or_baseline": "PiD or {baseline}",
    "sigma": "Which σ",
    "steps": "How many steps",
    "checkpoint": "Which checkpoint{size}",
    "fits": "What fits",
}


def recommendation_title(answer: dict[str, Any]) -> str:
    scope = answer["scope"]
    size = f" at {scope['size']}" if scope.get("size") else ""
    return RECOMMENDATION_TITLES[answer["question"]].format(
        baseline=scope.get("baseline", ""), size=size
    )


def group_name(answer: dict[str, Any]) -> str:
    scope = answer["scope"]
    return (
        f"{scope['backbone']} / {scope['ckpt_type']}" if "ckpt_type" in scope else scope["backbone"]
    )


def evidence_text(answer: dict[str, Any]) -> str:
    """The evidence's counts, "2 images, 1 setting, 2 cells" (its keys are plural nouns)."""
    return ", ".join(
        f"{v} {k.replace('_', ' ').removesuffix('s') if v == 1 else k.replace('_', ' ')}"
        for k, v in answer["evidence"].items()
        if not isinstance(v, list)
    )


def viewer_href(link: dict[str, str]) -> str:
    """The report's viewer, filtered to one setting (reports/viewer.js reads the fragment)."""
    from urllib.parse import urlencode

    return "#viewer?" + urlencode(link)


def _answers_by_scope(rec: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The answers by backbone / checkpoint type, in the order they were computed."""
    out: dict[str, list[dict[str, Any]]] = {}
    for answer in rec["answers"]:
        out.setdefault(group_name(answer), []).append(answer)
    return list(out.items())


def recommendations_markdown(rec: dict[str, Any], report_name: str = "report.html") -> list[str]:
    """The Recommendations section of leaderboard.md."""
    lines = ["## Recommendations", ""]
    lines += [f"**{note}**" for note in rec["notes"]] + ([""] if rec["notes"] else [])
    for name, answers in _answers_by_scope(rec):
        lines += [f"### {name}", ""]
        for a in answers:
            if a["answer"] is None:
                lines.append(f"- **{recommendation_title(a)}**: not answered: {a['reason']}")
                continue
            links = " ".join(
                f"[{link['noise']} {link['size']}]({report_name}{viewer_href(link)})"
                for link in a["links"]
            )
            evidence = evidence_text(a)
            lines.append(
                f"- **{recommendation_title(a)}**: {a['answer']}"
                + (f" — rests on {evidence}" if evidence else "")
                + (f"; images: {links}" if links else "")
            )
        lines.append("")
    lines += [
        "Definitions and the JSON layout: docs/recommendations.md (`recommendations.json`).",
        "",
    ]
    return lines


def recommendation_groups(rec: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The answers as the report template shows them (escaped there)."""
    return [
        (
            name,
            [
                {
                    "question": a["question"],
                    "title": recommendation_title(a),
                    "answer": a["answer"],
                    "reason": a["reason"],
                    "evidence": evidence_text(a),
                    "links": [
                        {"href": viewer_href(link), "label": f"{link['noise']} {link['size']}"}
                        for link in a["links"]
                    ],
                }
                for a in answers
            ],
        )
        for name, answers in _answers_by_scope(rec)
    ]
