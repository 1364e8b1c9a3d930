"""Validation of the torch device names a command is given (``cpu``, ``cuda``, ``cuda:N``, ``mps``)."""

from __future__ import annotations

import re
from collections.abc import Sequence

DEVICE = re.compile(r"(cpu|mps|cuda|xpu|npu)(:\d+)?")  # used with fullmatch


def check_devices(devices: Sequence[str | None]) -> None:
    """Refuse a device name that is malformed or not present on this machine, before any work starts.

    Raises:
        ValueError: Naming the device and the devices this machine has.
    """
    wanted = [device for device in devices if device is not None]
    if not wanted:
        return
    for device in wanted:
        if not isinstance(device, str) or not DEVICE.fullmatch(device):
            raise ValueError(f"device {device!r} is not a torch device; valid: cpu, cuda, cuda:N, mps")
    import torch

    available = ["cpu"]
    if torch.cuda.is_available():
        available += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        available.append("mps")
    for device in wanted:
        if device not in available and device.split(":")[0] != "cpu":
            raise ValueError(f"device {device!r} is not available on this machine; available: {available}")
