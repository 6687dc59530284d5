"""Device memory that belongs to one decoder (docs/protocol.md, "Memory").

On CUDA each decoder is measured with only its own modules on the device: the others are moved
to the CPU first (`place`), so the native decoder's peak no longer carries
PiD's 5 GB nor the caption encoder's. A row then has what the decoder keeps resident
(`weights_bytes`), the allocator's peaks over its calls, and the peak minus what was resident
before the first call (`peak_activation_bytes`): activations, workspace and, under autocast,
the bf16 copies of float32 weights that autocast caches during a forward.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

CPU_REASON = "CPU: torch keeps no allocator peaks on the CPU (CUDA only)"


def modules_of(obj: Any) -> list[torch.nn.Module]:
    """The torch modules an object runs on: itself, or its module attributes (a caption
    encoder wrapper holds its encoder, which holds the Gemma decoder stack)."""
    if isinstance(obj, torch.nn.Module):
        return [obj]
    found: list[torch.nn.Module] = []
    for name in ("encoder", "decoder", "net", "model"):
        inner = getattr(obj, name, None)
        if inner is not None and inner is not obj:
            found += modules_of(inner)
    return found


def weights_bytes(modules: Iterable[torch.nn.Module]) -> int:
    """Bytes of every parameter and buffer (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def place(
    keep: Iterable[torch.nn.Module], others: Iterable[torch.nn.Module], device: torch.device
) -> None:
    """On CUDA: `others` to the CPU, `keep` to `device` (each moved only if elsewhere).
    Elsewhere nothing moves: there is no separate device memory to attribute.

    Placement is left as it is afterwards, so consecutive decoders of one kind (native,
    native+bicubic, ...) move nothing, and a cell moves PiD off and back once.
    """
    if device.type != "cuda":
        return
    moved = False
    for module in others:
        if _on(module, device):
            module.to("cpu")
            moved = True
    for module in keep:
        if not _on(module, device):
            module.to(device)
            moved = True
    if moved:
        torch.cuda.empty_cache()


def _on(module: torch.nn.Module, device: torch.device) -> bool:
    first = next(iter([*module.parameters(), *module.buffers()]), None)
    return first is not None and first.device.type == device.type


def peak_fields(device: torch.device, resident_before: int | None) -> dict[str, Any]:
    """The allocator's peaks since the last reset (CUDA), else nulls."""
    if device.type != "cuda":
        return {}
    allocated = torch.cuda.max_memory_allocated(device)
    return {
        "peak_mem_allocated_bytes": allocated,
        "peak_mem_reserved_bytes": torch.cuda.max_memory_reserved(device),
        "peak_activation_bytes": allocated - (resident_before or 0),
    }
