"""The GPU's state around a timed span, as MLPerf records it: clocks, temperature, power draw
and throttle reasons (NVML, through nvidia-ml-py), plus the driver and CUDA versions.

A figure taken while the GPU throttles (power cap, heat) is a different figure; the rows carry
the state before and after each decoder's repeats so a reader can see it.
"""

from __future__ import annotations

import json
from typing import Any

import torch

#: NVML throttle-reason bits -> names (nvmlClocksEventReasons*, the older "ThrottleReasons").
_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


def _handle(device: torch.device) -> tuple[Any, Any]:
    """(pynvml, handle) of the physical GPU behind a torch device (found by UUID, so a Ray
    worker's CUDA_VISIBLE_DEVICES renumbering does not matter)."""
    import pynvml

    pynvml.nvmlInit()
    uuid = str(torch.cuda.get_device_properties(device).uuid)
    name = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
    return pynvml, pynvml.nvmlDeviceGetHandleByUUID(name)


def gpu_state(device: torch.device) -> tuple[str | None, str | None]:
    """(JSON of the GPU's state, None) or (None, the reason it could not be read)."""
    if device.type != "cuda":
        return None, "CPU: no GPU state"
    try:
        nvml, handle = _handle(device)
        read_reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
        reasons = (read_reasons or nvml.nvmlDeviceGetCurrentClocksThrottleReasons)(handle)
        state = {
            "sm_clock_mhz": nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM),
            "mem_clock_mhz": nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM),
            "temperature_c": nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
            "power_w": nvml.nvmlDeviceGetPowerUsage(handle) / 1000,
            "throttle_reasons": [name for bit, name in _REASONS.items() if reasons & bit],
        }
    except ImportError:
        return None, "nvidia-ml-py (pynvml) is not installed"
    except Exception as err:  # NVML missing or not permitted: a reason, not a failed row
        return None, f"NVML: {type(err).__name__}: {err}"
    return json.dumps(state, sort_keys=True), None


def gpu_versions(device: torch.device) -> dict[str, Any]:
    """Driver and CUDA versions for the row (empty on CPU; the driver null without NVML)."""
    if device.type != "cuda":
        return {}
    versions: dict[str, Any] = {"cuda_version": torch.version.cuda, "gpu_driver": None}
    try:
        nvml, _ = _handle(device)
        driver = nvml.nvmlSystemGetDriverVersion()
        versions["gpu_driver"] = driver.decode() if isinstance(driver, bytes) else driver
    except Exception:  # noqa: BLE001 - the version is informative; its absence is visible
        pass
    return versions
