"""Where the layers of one replica go when it spans several GPUs: a balanced accelerate device map.

Computed on an empty (meta-device) copy of the model, so the plan costs no memory and can be checked on CPU.
"""

from __future__ import annotations

from typing import Any

import torch


def empty_model(config: Any) -> torch.nn.Module:
    """The model's module tree with no storage behind its weights."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForImageTextToText

    with init_empty_weights():
        return AutoModelForImageTextToText.from_config(config)


def balanced_device_map(
    model: torch.nn.Module, num_devices: int, memory_per_device: int, dtype: torch.dtype = torch.bfloat16
) -> dict[str, int | str]:
    """Spread whole decoder layers / vision blocks over `num_devices` devices of `memory_per_device` bytes so
    that each holds about the same share; layers are never split (the model's `_no_split_modules`)."""
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    max_memory = {index: memory_per_device for index in range(num_devices)}
    balanced = get_balanced_memory(
        model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype
    )
    device_map = infer_auto_device_map(
        model, max_memory=balanced, no_split_module_classes=no_split, dtype=dtype
    )
    if any(device in ("cpu", "disk") for device in device_map.values()):
        raise ValueError(
            f"the model does not fit on {num_devices} device(s) of {memory_per_device / 2**30:.0f} GiB in {dtype}; "
            "raise --gpus-per-replica"
        )
    return device_map


def bytes_per_device(
    model: torch.nn.Module, device_map: dict[str, int | str], dtype: torch.dtype
) -> dict[int | str, int]:
    """Parameter bytes each device holds under `device_map` (for checks and logs)."""
    size = torch.finfo(dtype).bits // 8
    totals: dict[int | str, int] = {}
    for name, parameter in model.named_parameters():
        device = _device_of(name, device_map)
        totals[device] = totals.get(device, 0) + parameter.numel() * size
    return totals


def _device_of(name: str, device_map: dict[str, int | str]) -> int | str:
    parts = name.split(".")
    for cut in range(len(parts), -1, -1):
        prefix = ".".join(parts[:cut])
        if prefix in device_map:
            return device_map[prefix]
    raise KeyError(f"parameter {name!r} is not covered by the device map")
