"""Where in a YAML file a problem is: ``FILE:LINE key.path: message`` lines for malformed YAML,
duplicate keys and pydantic validation errors, worded for the person who has to fix the file."""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode


def line_number(problem: str, path: Path) -> int:
    """The LINE of a ``FILE:LINE ...`` problem, so problems read top to bottom (stable sort)."""
    digits = itertools.takewhile(str.isdigit, problem[len(str(path)) + 1 :])
    return int("".join(digits) or 0)


def yaml_problem(path: Path, err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    line = mark.line + 1 if mark is not None else 1
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    detail = f"{context}, {problem}" if context else problem
    return f"{path}:{line}: malformed YAML: {detail}"


def duplicate_keys(path: Path, node: Node | None) -> list[str]:
    """safe_load keeps the last of two equal keys silently; a suite says so instead."""
    problems: list[str] = []
    if isinstance(node, MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            if isinstance(key, ScalarNode):
                line = key.start_mark.line + 1
                if key.value in first:
                    problems.append(
                        f"{path}:{line} {key.value}: duplicate key (also on line "
                        f"{first[key.value]}); keep one"
                    )
                first.setdefault(key.value, line)
            problems += duplicate_keys(path, value)
    elif isinstance(node, SequenceNode):
        for child in node.value:
            problems += duplicate_keys(path, child)
    return problems


def line_of(root: Node, loc: Sequence[str | int]) -> int:
    """The line of the deepest YAML node on ``loc``: a key's line for a mapping entry, an item's
    line for a list element, else the nearest parent's."""
    node, line = root, root.start_mark.line + 1
    for part in loc:
        if isinstance(node, MappingNode) and isinstance(part, str):
            entry = next((kv for kv in node.value if getattr(kv[0], "value", None) == part), None)
            if entry is None:
                break
            line, node = entry[0].start_mark.line + 1, entry[1]
        elif isinstance(node, SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def key_path(loc: Sequence[str | int]) -> str:
    """``('exclude', 0, 'resolution')`` → ``exclude[0].resolution``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def message(error: dict[str, Any], allowed_keys: Callable[[tuple], list[str]]) -> str:
    """pydantic's message, reworded where a suite author needs the fix rather than the type."""
    kind, loc = error["type"], error["loc"]
    if kind == "extra_forbidden":
        allowed = allowed_keys(tuple(loc[:-1]))
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
        return f"unknown key; {hint}"
    if kind == "too_short" and error.get("ctx", {}).get("min_length") == 1:
        return "must not be empty"
    if kind == "missing":
        return "required key is missing"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    got = repr(error.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    return f"{error['msg']} (got {got})"


def format_error(
    path: Path, root: Node, error: dict[str, Any], allowed_keys: Callable[[tuple], list[str]]
) -> str:
    """``FILE:LINE key.path: message`` for one pydantic error."""
    loc = tuple(error["loc"])
    where = key_path(loc)
    return f"{path}:{line_of(root, loc)} {where}: {message(error, allowed_keys)}"
