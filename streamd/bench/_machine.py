"""What a benchmark ran on (recorded with every result), and device-aware timing."""
from __future__ import annotations

import os
import platform
import time

import torch


def describe_machine(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def synced_clock(device: torch.device) -> float:
    """perf_counter after the device finished its queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
