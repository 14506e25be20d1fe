"""Install the tune stage's choice in this process: the inference path it measured fastest and, on a
CUDA GPU, the Triton kernel configs tuned for this GPU model."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def tuned_configs_from_record(record: dict, gpu_name: str) -> dict:
    """``{(kernel, edge bucket, feature width): triton.Config}`` tuned for ``gpu_name`` in a tune record, or {}."""
    # Triton's kernels only where they run: importing them fixes Triton's interpreter mode.
    from mlff_distill.kernels.edge_message import KERNELS, config_from_dict

    triton_record = record.get("triton")
    tuned = triton_record.get("gpus", {}).get(gpu_name) if isinstance(triton_record, dict) else None
    if tuned is None:
        return {}
    return {
        (kernel, int(bucket), int(tuned["n_features"])): config_from_dict(entry[f"{kernel}_config"])
        for bucket, entry in tuned["buckets"].items()
        for kernel in KERNELS
    }


def load_tuned_kernels(path: str | Path) -> dict:
    """Apply the tune stage's record at ``path`` (``inference_path.json``) to this process.

    On CUDA, installs the Triton configs tuned for this GPU model (`kernels.edge_message.set_tuned_configs`),
    so inference starts tuned; another GPU model's record leaves the kernels to autotune on first use.
    Returns ``{"chosen_path", "installed_configs", "note"}``; ``chosen_path`` is ``"triton"``, ``"eager"``
    or ``"torch_compile"`` and is what this machine should run: a GPU record read without CUDA gives
    ``"eager"``.
    """
    record = json.loads(Path(path).read_text())
    chosen = record.get("chosen_path")
    if chosen not in ("triton", "eager", "torch_compile"):
        raise ValueError(f"{path}: chosen_path must be triton, eager or torch_compile, got {chosen!r}")
    if not torch.cuda.is_available():
        if chosen == "triton":
            return {
                "chosen_path": "eager",
                "installed_configs": 0,
                "note": f"{path} was tuned on a CUDA GPU; none here, so eager PyTorch",
            }
        return {"chosen_path": chosen, "installed_configs": 0, "note": record.get("reason", "")}
    # On a CUDA GPU only: importing Triton's kernels fixes Triton's interpreter mode.
    from mlff_distill.kernels.edge_message import set_tuned_configs

    gpu_name = torch.cuda.get_device_name()
    configs = tuned_configs_from_record(record, gpu_name)
    set_tuned_configs(configs)
    if record.get("cuda_available") and chosen != "triton":
        return {"chosen_path": chosen, "installed_configs": len(configs), "note": record.get("reason", "")}
    note = (
        f"Triton configs tuned for {gpu_name} installed"
        if configs
        else f"no configs tuned for {gpu_name} in {path}: the kernels autotune on first use"
    )
    return {"chosen_path": "triton", "installed_configs": len(configs), "note": note}
