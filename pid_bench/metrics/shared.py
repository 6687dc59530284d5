"""Helpers every metric implementation shares: the lock that guards model creation, warn-once,
and reading weights offline. A leaf: imports only `errors` and `pid_bench.paths`, so that the
implementation modules (pyiqa_backed, set_level) and the registry can all import it without
importing one another. Torch-free at import."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

from pid_bench.metrics.errors import MetricUnavailable, MetricUnavailableWarning
from pid_bench.paths import hf_cache_dir, torch_hub_dir

#: Held while a network is created or a model cache is cleared: pyiqa patches module globals
#: while it builds (`offline_weights`), which two threads must not do at once. Reentrant
#: because creating the Inception goes through `offline_weights` under it too.
MODEL_LOCK = threading.RLock()

_warned: set[str] = set()
_warn_lock = threading.Lock()


def warn_once(name: str, reason: str) -> None:
    """`MetricUnavailableWarning` for metric `name`, the first time in this process only."""
    with _warn_lock:
        if name in _warned:
            return
        _warned.add(name)
    # stacklevel 3: the warning points at whoever called `measure` / `compute_set_metrics`.
    warnings.warn(f"metric {name} left null: {reason}", MetricUnavailableWarning, stacklevel=3)


def forget_warnings() -> None:
    """Let every metric warn again (tests; `clear_caches`)."""
    with _warn_lock:
        _warned.clear()


class _DownloadBlocked(Exception):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def set_hf_offline() -> None:
    """HF_HUB_OFFLINE=1 for this process (also in an already imported huggingface_hub)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True
    except Exception:  # huggingface_hub absent: nothing to tell
        pass


@contextlib.contextmanager
def offline_weights(
    pyiqa_dir: Path | None = None, force_timm_random: bool = False
) -> Iterator[None]:
    """While pyiqa builds a network: read weights from local files only.

    pyiqa's download folder (frozen at its import) is pointed at `pyiqa_dir` (default: the hub's
    pyiqa folder as the environment says now); pyiqa's, torch.hub's and CLIP's downloaders raise
    instead of fetching; HF is offline. `force_timm_random` builds timm backbones without their
    pretrained weights (for checkpoints that overwrite them).
    """
    from unittest import mock  # imports asyncio: only when a network is built

    set_hf_offline()
    target = str(pyiqa_dir or torch_hub_dir() / "pyiqa")

    def blocked(url, dst, *args, **kwargs):
        raise _DownloadBlocked(str(dst))

    def clip_local(url: str, root: str) -> str:
        path = os.path.join(root, os.path.basename(url))
        if not os.path.isfile(path):
            raise _DownloadBlocked(path)
        return path

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch("torch.hub.download_url_to_file", blocked))
        download_util = sys.modules.get("pyiqa.utils.download_util")
        if download_util is not None:
            old = download_util.DEFAULT_CACHE_DIR
            for module in [m for k, m in list(sys.modules.items()) if k.startswith("pyiqa")]:
                if getattr(module, "DEFAULT_CACHE_DIR", None) == old:
                    stack.enter_context(mock.patch.object(module, "DEFAULT_CACHE_DIR", target))
            stack.enter_context(mock.patch.object(download_util, "download_url_to_file", blocked))
        clip_model = sys.modules.get("pyiqa.archs.clip_model")
        if clip_model is not None:
            stack.enter_context(mock.patch.object(clip_model, "_download", clip_local))
        if force_timm_random:
            import timm

            create = timm.create_model

            def create_random(*args, **kwargs):
                kwargs["pretrained"] = False
                return create(*args, **kwargs)

            stack.enter_context(mock.patch.object(timm, "create_model", create_random))
        try:
            yield
        except _DownloadBlocked as exc:
            raise MetricUnavailable(f"weights missing: {exc.path}") from None
        except Exception as exc:
            if type(exc).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
                raise MetricUnavailable(
                    f"weights missing: not in the HF cache {hf_cache_dir()} ({exc})"
                ) from None
            raise
