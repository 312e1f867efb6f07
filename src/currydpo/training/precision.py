"""Training precision: which dtype the weights live in, where bf16 autocast applies, how models are saved.

``model.precision`` (resolved once per run by `resolve_precision`):

- ``fp32``: fp32 weights, AdamW state and compute.
- ``bf16`` (mixed precision, what HF Trainer's ``bf16=True`` and accelerate's
  ``mixed_precision="bf16"`` do): fp32 master weights and AdamW state, forward passes under
  ``torch.autocast(dtype=bfloat16)``. Updates far below bf16's resolution still accumulate in
  the fp32 weights.
- ``bf16-pure``: bf16 weights, updated in bf16 (half the weight memory). An AdamW step is about
  ``lr`` per weight, and a bf16 weight near 0.02 is spaced 2**-13 ~ 1.2e-4 from its neighbours,
  so steps below half that spacing round back to the old value: at lr 5e-7 almost no weight
  ever changes. `warn_if_updates_round_away` says so.
- ``auto``: ``bf16`` on a CUDA GPU that supports it, else ``fp32``.

accelerate's ``mixed_precision`` (from ``accelerate launch``'s config or ``--mixed_precision``,
seen as ``ACCELERATE_MIXED_PRECISION``) must agree: ``bf16`` there makes ``auto`` mean ``bf16``
and is an error with an explicit ``fp32``; ``fp16``/``fp8`` are errors; ``no`` (accelerate's
default, so it cannot be told from "not set") leaves the choice to ``model.precision``. The
Accelerator is then built with the resolved mixed precision, and its ``autocast()`` is the one
context every forward pass of a run uses: policy updates (`responses.Scorer.policy`) and reference,
held-out and self-paced log-probs (`responses.logps_for_rows_shared`), so the reference
log-probs are computed exactly as the policy's are and the first update's margins are 0.
"""

from __future__ import annotations

import json
import os
import warnings

import torch

from ..errors import CurryError

PRECISIONS = ("auto", "fp32", "bf16", "bf16-pure")
SAVE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def bf16_supported(device: torch.device) -> bool:
    """Native bf16 on ``device``: CUDA from Ampere (sm_80) on; CPUs always (slowly, without AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type in ("cpu", "xpu", "hpu", "mps")


def resolve_precision(precision: str, device: torch.device, launcher: str | None) -> str:
    """``model.precision`` -> ``fp32 | bf16 | bf16-pure`` on ``device``, given accelerate's
    ``mixed_precision`` from the launcher (``launcher``; None when not launched by accelerate)."""
    launcher = (launcher or "no").lower()
    if launcher not in ("no", "bf16"):
        raise CurryError(f"accelerate mixed_precision {launcher!r} is not supported (fp16 needs loss scaling, "
                         f"which this trainer does not do): set mixed_precision: bf16 or 'no' in the accelerate "
                         f"config and choose with model.precision")
    if precision == "auto":
        resolved = "bf16" if launcher == "bf16" or (device.type == "cuda" and bf16_supported(device)) else "fp32"
    else:
        resolved = precision
    if launcher == "bf16" and resolved == "fp32":
        raise CurryError("model.precision fp32 disagrees with accelerate's mixed_precision bf16 (launch config): "
                         "set model.precision bf16 (or auto), or mixed_precision: 'no' in the accelerate config")
    if resolved != "fp32" and not bf16_supported(device):
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        raise CurryError(f"model.precision {precision} needs bf16, which {name} does not support (CUDA GPUs "
                         f"from Ampere on do): set model.precision fp32 (and mixed_precision: 'no' in the "
                         f"accelerate config)")
    return resolved


def training_device() -> torch.device:
    """The device accelerate's Accelerator will train on, known before it is built (its mixed precision
    depends on the device). Like Accelerator, honour ACCELERATE_USE_CPU, which PartialState alone does not."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device


def master_dtype(resolved: str) -> torch.dtype:
    """The dtype the trained weights (and so AdamW's state) live in."""
    return torch.bfloat16 if resolved == "bf16-pure" else torch.float32


def compute_dtype(resolved: str) -> torch.dtype:
    """The dtype the forward passes compute in, and so most kept activations are stored in."""
    return torch.float32 if resolved == "fp32" else torch.bfloat16


def make_accelerator(resolved: str, **kwargs):
    """An Accelerator whose ``autocast()`` is bf16 autocast exactly when ``resolved`` is ``bf16``."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mixed = "bf16" if resolved == "bf16" else "no"
    if AcceleratorState._shared_state.get("_mixed_precision", mixed) != mixed:
        # An earlier run in this process (tests, `compare` arms) fixed another mixed precision in
        # accelerate's process-wide state, which refuses a change; transformers' TrainingArguments
        # resets it the same way (training_args.py, `AcceleratorState._reset_state`).
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed, **kwargs)


def bf16_half_spacing(value: float) -> float:
    """Half the distance between bf16 neighbours at ``value``: smaller updates round back to it."""
    x = torch.tensor(abs(value), dtype=torch.bfloat16)
    return float(torch.nextafter(x, torch.tensor(float("inf"), dtype=torch.bfloat16)) - x) / 2


def warn_if_updates_round_away(model, lr: float) -> float | None:
    """Warn (once) when trainable bf16 weights cannot take an AdamW step of size ``lr``.

    AdamW moves each weight by about ``lr`` per update (the normalised first step is exactly
    lr in size). Typical weight = the median |w| of the trainable bf16 matrices (sampled).
    Returns that median (None when no trainable weight is bf16).
    """
    mats = [p.detach() for p in model.parameters() if p.requires_grad and p.dtype == torch.bfloat16 and p.dim() > 1]
    if not mats:
        return None
    sample = torch.cat([m.flatten()[:: max(1, m.numel() // 100_000)].float().abs().cpu() for m in mats])
    median = float(sample.median())
    resolution = bf16_half_spacing(median)
    if lr < resolution:
        warnings.warn(f"model.precision bf16-pure: bf16 weights near the median |w| = {median:.3g} change only by "
                      f"steps above {resolution:.2g} (half the bf16 spacing there), but an AdamW step is about "
                      f"optim.lr = {lr:.2g}, so most updates round away and the model barely trains; use "
                      f"model.precision bf16 (fp32 master weights, bf16 compute) or a larger optim.lr",
                      UserWarning, stacklevel=2)
    return median


def original_dtype(path: str, trust_remote_code: bool = False) -> torch.dtype:
    """The dtype the model at ``path`` was saved in (its config's ``dtype``; fp32 when absent)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(os.path.expanduser(path), trust_remote_code=trust_remote_code)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


def save_dtype(choice: str, model_path: str, trust_remote_code: bool = False) -> torch.dtype:
    """``run.save_dtype`` -> the dtype ``stage-K/`` and ``final/`` are written in."""
    return original_dtype(model_path, trust_remote_code) if choice == "auto" else SAVE_DTYPES[choice]


def cast_state_dict(model, dtype: torch.dtype) -> dict[str, torch.Tensor] | None:
    """``model``'s state dict on the CPU with float tensors in ``dtype``, tied tensors once (as
    ``save_pretrained`` writes them); None when the model is already in ``dtype``."""
    params = list(model.parameters())
    if all(p.dtype == dtype for p in params if p.is_floating_point()):
        return None
    out, seen = {}, set()
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen:  # tied (lm_head = embed_tokens)
            continue
        seen.add(t.data_ptr())
        out[name] = t.detach().to("cpu", dtype) if t.is_floating_point() else t.detach().cpu()
    return out


def set_config_dtype(model_dir: str, dtype: torch.dtype) -> None:
    """Record ``dtype`` in a saved model's config.json (``from_pretrained(dtype="auto")`` reads it)."""
    path = os.path.join(model_dir, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["dtype"] = str(dtype).removeprefix("torch.")
    with open(path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
