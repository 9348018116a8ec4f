"""One device and precision policy for every stage, stated once in the config (`device:`).

Every stage that runs a model asks `placement(cfg.device)` where and in which precision to run,
and puts the answer in its key: a CPU worker and a GPU worker that share a store never serve each
other outputs that depend on where they ran (per-token losses in bf16 differ from fp32 ones).

- `device: auto` is `cuda` when a GPU is present, else `cpu`; `cuda` without a GPU is an error.
- `dtype: auto` is `bfloat16` on a GPU that supports it, else `float32`.
- What `bfloat16` means per stage: the score and eval stages run the models in bf16 (weights and
  activations); the discriminator and the fine-tune keep fp32 weights and run their forward and
  loss under bf16 autocast (mixed precision).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass

import torch

from .config import DeviceConfig


class DeviceError(RuntimeError):
    """The configured device or precision is not available on this machine."""


@dataclass(frozen=True)
class Placement:
    device: str  # cpu | cuda
    dtype: str  # float32 | bfloat16

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def mixed(self) -> bool:
        return self.dtype != "float32"

    def autocast(self) -> AbstractContextManager:
        """Mixed precision for a forward and its loss (a no-op in float32)."""
        return torch.autocast(device_type=self.device, dtype=self.torch_dtype, enabled=self.mixed)

    def key(self) -> dict[str, str]:
        """What a stage key holds of the placement."""
        return asdict(self)


CPU_FP32 = Placement("cpu", "float32")


def placement(cfg: DeviceConfig) -> Placement:
    """The device and dtype every stage of this run uses."""
    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise DeviceError("device.device is cuda but no CUDA GPU is visible here; use auto or cpu")
    device = cfg.device if cfg.device != "auto" else ("cuda" if cuda else "cpu")
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    elif dtype == "bfloat16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError("device.dtype is bfloat16 but this GPU does not support it; use auto or float32")
    return Placement(device, dtype)
