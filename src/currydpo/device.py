"""The device a model runs on when the user does not say: the first CUDA GPU if there is one, else the CPU.

Training gets its device from accelerate (``Accelerator.device``); everything else that loads a
model on its own (eval, compare, pairs, reward models) asks here, so the rule lives once.
"""

from __future__ import annotations

import torch


def default_device(name: str | None = None) -> torch.device:
    """``torch.device(name)`` when given, else cuda when available, else cpu."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
