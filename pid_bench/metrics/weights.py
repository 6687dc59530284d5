"""Weight files: what each metric reads, where it is looked for on this machine (torch hub
folders, the HF cache) and where it is published. Torch-free at import (the row schema reads the
declarations); `torch_hub_dir` imports torch only when a path is asked for."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from pid_bench.metrics.errors import MetricUnavailable
from pid_bench.paths import hf_cache_dir, torch_hub_dir

IQA_REPO = "chaofengc/IQA-PyTorch-Weights"
_IQA_URL = f"https://huggingface.co/{IQA_REPO}/resolve/main/"


@dataclass(frozen=True)
class WeightFile:
    """One file a metric reads: its exact name, the torch-hub sub-folders it may be in (search
    order; the first is the path a missing-weights reason names) and where it is published.

    ``loader``: who opens it: ``pyiqa`` (pyiqa's `load_file_from_url`, also found in an HF cache
    snapshot of chaofengc/IQA-PyTorch-Weights), ``torchvision`` (torch.hub checkpoints) or
    ``clip`` (OpenAI CLIP, handed to pyiqa as a file path).
    """

    filename: str
    folders: tuple[str, ...]
    url: str
    loader: Literal["pyiqa", "torchvision", "clip"] = "pyiqa"

    def candidates(self) -> list[Path]:
        hub = torch_hub_dir()
        out = [hub / folder / self.filename for folder in self.folders]
        if self.loader == "pyiqa":
            out += _hf_snapshot_files(IQA_REPO, self.filename)
        return out

    def expected(self) -> Path:
        """Where a download would put it (the path a missing-weights reason names)."""
        return torch_hub_dir() / self.folders[0] / self.filename

    def find(self) -> Path | None:
        return next((p for p in self.candidates() if p.is_file()), None)


def pyiqa_weight(filename: str, folders: tuple[str, ...] = ("pyiqa",)) -> WeightFile:
    """A file of chaofengc/IQA-PyTorch-Weights, as pyiqa stores it under the torch hub."""
    return WeightFile(filename, folders, _IQA_URL + filename, "pyiqa")


def torchvision_weight(filename: str) -> WeightFile:
    """A torchvision checkpoint (hub/checkpoints), as torchvision downloads it."""
    return WeightFile(
        filename, ("checkpoints",), f"https://download.pytorch.org/models/{filename}", "torchvision"
    )


CLIP_RN50 = WeightFile(
    "RN50.pt",
    ("clip",),
    "https://openaipublic.azureedge.net/clip/models/"
    "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
    "clip",
)
#: pytorch-fid's FID Inception (TF 2015-12-05 graph), as pytorch-fid (hub/checkpoints) and pyiqa
#: (hub/pyiqa) store it.
INCEPTION_WEIGHTS = pyiqa_weight("pt_inception-2015-12-05-6726825d.pth", ("checkpoints", "pyiqa"))


def _hf_snapshot_files(repo_id: str, filename: str) -> list[Path]:
    """`filename` in every snapshot of `repo_id` in the HF cache, refs/main's first."""
    repo = hf_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return []
    revisions = sorted(p.name for p in snapshots.iterdir())
    main = repo / "refs" / "main"
    if main.is_file():
        head = main.read_text().strip()
        revisions.sort(key=lambda r: r != head)
    return [snapshots / r / filename for r in revisions]


class WeightStatus(NamedTuple):
    """What `weight_status` returns (unpacks as ``status, files, searched, hint``).

    status: ``no weights needed`` | ``present`` | ``missing`` | ``unknown`` (pyiqa pass-through:
    pyiqa names its files when the metric is created). files: the files found. searched: every
    path looked at. hint: how to get the missing ones.
    """

    status: str
    files: tuple[str, ...]
    searched: tuple[str, ...]
    hint: str | None


def files_status(weights: Iterable[WeightFile]) -> WeightStatus:
    """Whether each of `weights` is on this machine (``no weights needed`` for none)."""
    weights = tuple(weights)
    if not weights:
        return WeightStatus("no weights needed", (), (), None)
    found, searched, missing = [], [], []
    for weight in weights:
        candidates = weight.candidates()
        searched += [str(p) for p in candidates]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            missing.append(weight)
        else:
            found.append(str(path))
    if not missing:
        return WeightStatus("present", tuple(found), tuple(searched), None)
    hint = "; ".join(f"download {w.url} to {w.expected()}" for w in missing)
    return WeightStatus("missing", tuple(found), tuple(searched), hint)


def require_weights(weights: Iterable[WeightFile]) -> dict[str, Path]:
    """filename -> path of every file of `weights`, else MetricUnavailable naming the missing."""
    found, missing = {}, []
    for weight in weights:
        path = weight.find()
        if path is None:
            missing.append(str(weight.expected()))
        else:
            found[weight.filename] = path
    if missing:
        raise MetricUnavailable(f"weights missing: {', '.join(missing)}")
    return found
