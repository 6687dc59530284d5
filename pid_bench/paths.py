"""Where downloaded weights live on this machine, as the environment says now."""

from __future__ import annotations

import os
from pathlib import Path


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
