"""Where downloaded weights live on this machine, as the environment says now."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def hf_cache_dir() -> Path:
    """The HF hub cache: HF_HUB_CACHE, then HF_HOME/hub, then huggingface_hub's default."""
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(key):
            return Path(os.environ[key]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def torch_hub_dir() -> Path:
    """torch.hub's folder: `torch.hub.set_dir`, else $TORCH_HOME/hub, else XDG cache/torch/hub."""
    import torch

    return Path(torch.hub.get_dir()).expanduser()


def under_suite(path: str | None, info: Any) -> str | None:
    """A path relative to the suite file (pydantic validation context ``base_dir``), made
    absolute."""
    if path is None:
        return None
    base = Path((info.context or {}).get("base_dir", "."))
    return str((base / path).expanduser().resolve())


def folder_or_repo_id(source: str | None, info: Any) -> str | None:
    """A source naming an existing folder next to the suite becomes its absolute path; any other
    value is kept as it is (a repo id read from the HF cache)."""
    if source is None:
        return None
    local = (Path((info.context or {}).get("base_dir", ".")) / source).expanduser()
    return str(local.resolve()) if local.is_dir() else source


def import_named(name: str) -> tuple[Any, str | None]:
    """(the object, None) a ``module.path:attribute`` name stands for, or (None, why it could not
    be imported): custom metrics and user decoders word the error for their reader."""
    import importlib

    module_name, _, attribute = name.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute), None
    except (ImportError, AttributeError) as err:
        return None, f"cannot import {attribute!r} from {module_name!r} ({err})"
