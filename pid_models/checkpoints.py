"""Loading released PiD checkpoints, key-exact.

Released files are `checkpoints/<experiment>/model_ema_bf16.pth`: plain `{key: tensor}`
dictionaries in bfloat16 with a `net.` prefix. Unlike upstream (strict=False, log and go on),
a missing or unexpected key or a shape mismatch is an error here: a silently partial load
would make every number measured with it wrong.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from pid_models.pid_net import PidNet
from pid_models.registry import Experiment, resolve

CHECKPOINTS_ENV = "PID_BENCH_CHECKPOINTS"
#: The Hub repository of the released checkpoints and the codec files they plug into.
PID_REPO = "nvidia/PiD"
DOWNLOAD_HINT = f'hf download {PID_REPO} --include "checkpoints/*" --local-dir DIR'
DROPPED_PREFIXES = ("net_ema.", "fake_score.", "discriminator.")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded as the network it should hold."""


def checkpoints_root(root: str | os.PathLike | None = None) -> Path:
    """The download root: the argument, else $PID_BENCH_CHECKPOINTS."""
    chosen = root if root is not None else os.environ.get(CHECKPOINTS_ENV)
    if not chosen:
        raise CheckpointError(
            f"no checkpoints root: pass one or set {CHECKPOINTS_ENV} to the folder that "
            f"`{DOWNLOAD_HINT}` wrote (it holds checkpoints/<experiment>/model_ema_bf16.pth)"
        )
    return Path(chosen).expanduser()


def checkpoint_path(experiment: Experiment, root: str | os.PathLike | None = None) -> Path:
    """Where `experiment`'s file is expected; the root may be DIR or DIR/checkpoints."""
    base = checkpoints_root(root)
    candidates = [base / experiment.checkpoint_relpath]
    if base.name == "checkpoints":  # DIR/checkpoints given: the file is DIR/<relpath>
        candidates.insert(0, base.parent / experiment.checkpoint_relpath)
    for path in candidates:
        if path.is_file():
            return path
    download_root = candidates[0].parents[len(Path(experiment.checkpoint_relpath).parts) - 1]
    raise CheckpointError(
        f"PiD checkpoint for {experiment.name} not found: expected {candidates[0]}. "
        f'Fetch it with: hf download {PID_REPO} --include "{experiment.checkpoint_relpath}" '
        f"--local-dir {download_root}"
    )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a `.pth` tensor dictionary with `weights_only=True` (memory-mapped when possible)."""
    path = Path(path)
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            # Legacy (non-zip) torch.save files cannot be memory-mapped.
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err) or "global" in str(err):  # a class or function reference
            raise CheckpointError(
                f"{path}: refused by torch.load(weights_only=True): the file needs arbitrary "
                "pickled objects, not only tensors. Re-save it as a plain {key: tensor} dict "
                f"(torch.save(state_dict) or safetensors). ({_first_reason(err)})"
            ) from err
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint (weights_only=True could not unpickle it: "
            f"{_first_reason(err)}); re-download it or save a plain {{key: tensor}} dict"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({err})") from err
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(
            f"{path}: expected a dict of str -> tensor, got {type(obj).__name__}"
            + ("" if not isinstance(obj, Mapping) else " with non-tensor entries")
        )
    return dict(obj)


def _first_reason(err: BaseException) -> str:
    """torch's weights_only message: the line after its generic preamble that names the cause."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    specific = [ln for ln in lines if "Unsupported" in ln or "GLOBAL" in ln or "global" in ln]
    return (specific or lines or [type(err).__name__])[0][:300]


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`net.` keys lose the prefix; EMA / critic / discriminator keys go; others stay as they are."""
    out = {}
    for key, value in state.items():
        if key.startswith(DROPPED_PREFIXES):
            continue
        out[key.removeprefix("net.")] = value
    return out


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def check_state_dict(net: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError naming the keys unless `state` matches `net` key for key and shape.

    The one key-exact check: PiD networks and every native codec go through it.
    """
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} (file {tuple(state[k].shape)}, model {expected[k]})"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != expected[k]
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_listing(mismatched)}")
    if problems:
        raise CheckpointError(f"{source} does not match the network: " + "; ".join(problems))


def load_weights(net: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Key-exact load; bf16 values are upcast into the network's (float32) parameters."""
    state = strip_prefixes(state)
    check_state_dict(net, state, source)
    net.load_state_dict(state, strict=True)


def build_net(net_kwargs: Mapping[str, object], device: str | torch.device = "cpu") -> PidNet:
    """Construct without initialising (meta device, then empty storage on `device`)."""
    with torch.device("meta"):
        net = PidNet(**net_kwargs)
    return net.to_empty(device=device)


def load_pid_net(
    backbone: str,
    ckpt_type: str,
    root: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> PidNet:
    """The released PiD network for (backbone, ckpt_type), float32, eval mode."""
    return load_experiment_net(resolve(backbone, ckpt_type), root, device)


def load_experiment_net(
    experiment, root: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> PidNet:
    """The network of one registry experiment (a distilled checkpoint or a teacher)."""
    path = checkpoint_path(experiment, root)
    net = build_net(experiment.net_kwargs, device)
    load_weights(net, read_state_dict(path), str(path))
    return net.eval().requires_grad_(False)
