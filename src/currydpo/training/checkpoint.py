"""Checkpoints: the training state (to resume) and per-stage models (to use).

``OUTPUT/state/`` holds the trainable weights, optimiser, LR scheduler, RNG states and
the curriculum position (stage, update); ``OUTPUT/stage-K/`` and ``OUTPUT/final/`` hold
models saved with ``save_pretrained``. Every directory is written to a temp dir and
renamed into place, so a reader (or ``--resume`` after a kill) only ever sees complete
checkpoints.

Sharded (FSDP2) runs write the weights and optimiser of ``state/`` as a torch distributed
checkpoint (every process writes its shards, ``.metadata`` + ``*.distcp``), and gather the
whole model onto the main process for ``stage-K/`` and ``final/``, so those load with plain
``from_pretrained``. Those calls are collective: every process makes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ..config import TrainConfig, to_yaml
from ..errors import CurryError
from ..io import atomic_dir
from .precision import cast_state_dict, set_config_dtype
from .references import stage_name
from .sharding import is_sharded

STATE_DIR = "state"


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_state(output_dir: str, model, optimizer, scheduler, position: dict, cfg: TrainConfig) -> None:
    """Write ``OUTPUT/state`` atomically. ``position`` is JSON: stage, update, global_step, ...

    Called by the main process only, or by every process for a sharded model.
    """
    sharded = is_sharded(model)
    main = not sharded or torch.distributed.get_rank() == 0
    with atomic_dir(os.path.join(output_dir, STATE_DIR)) if main else contextlib.nullcontext() as tmp:
        if sharded:
            tmp = _broadcast(tmp)  # every process writes its shards into the main process's temp dir
            dcp.save(_sharded_state(model, optimizer), checkpoint_id=tmp)  # returns once all shards are written
            if not main:
                return
        else:
            save_file(_trainable(model), os.path.join(tmp, "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict() if optimizer is not None and not sharded else None,
                    "scheduler": scheduler.state_dict() if scheduler is not None else None},
                   os.path.join(tmp, "optim.pt"))
        torch.save(rng_state(), os.path.join(tmp, "rng.pt"))
        with open(os.path.join(tmp, "position.json"), "w") as f:
            json.dump(position, f, indent=2)
        with open(os.path.join(tmp, "config.yaml"), "w") as f:
            f.write(to_yaml(cfg))
        write_checksums(tmp)  # last: every file above is complete


# ---- checksums: a damaged state/ file is named, not loaded ------------------------------------------

CHECKSUMS = "checksums.json"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(directory: str) -> None:
    """``CHECKSUMS``: the SHA-256 of every file in ``directory`` (the shards of a sharded state too)."""
    sums = {name: _sha256(os.path.join(directory, name)) for name in sorted(os.listdir(directory))
            if name != CHECKSUMS and os.path.isfile(os.path.join(directory, name))}
    with open(os.path.join(directory, CHECKSUMS), "w") as f:
        json.dump(sums, f, indent=2)


def verify_checksums(directory: str) -> None:
    """Raise a one-line `CurryError` naming the first file of ``directory`` that is missing or differs from
    its recorded checksum (a truncated copy, a flipped bit). A state/ written before checksums is trusted."""
    path = os.path.join(directory, CHECKSUMS)
    if not os.path.exists(path):
        return
    fix = "restore it from a copy, or delete the directory's state/ and train again without --resume"
    try:
        with open(path) as f:
            sums = json.load(f)
        if not isinstance(sums, dict):
            raise ValueError
    except ValueError:
        raise CurryError(f"--resume: {path} is damaged (not a JSON object of checksums); {fix}") from None
    for name, digest in sums.items():
        file = os.path.join(directory, name)
        if not os.path.isfile(file):
            raise CurryError(f"--resume: {file} is missing from the checkpoint; {fix}")
        if _sha256(file) != digest:
            raise CurryError(f"--resume: {file} is damaged (its SHA-256 differs from the one written with it); {fix}")


# ---- RNG state in a plain format (tensors, ints, lists), so torch.load(weights_only=True) reads it -------

def rng_state() -> dict:
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": [version, list(mt), gauss],
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    version, mt, gauss = rng["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _load_pt(path: str):
    """A ``.pt`` file of tensors and plain values; never unpickles code (weights_only)."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for a bad file; all mean "damaged"
        raise CurryError(f"--resume: {path} cannot be read ({type(e).__name__}): it is damaged, or holds more than "
                         f"tensors and plain values (nothing in it was run)") from None


def read_position(output_dir: str) -> dict | None:
    """Where a killed run stopped (None if it never checkpointed); repairs what a kill leaves."""
    state, old = os.path.join(output_dir, STATE_DIR), os.path.join(output_dir, f".{STATE_DIR}.old")
    if not os.path.exists(state) and os.path.exists(os.path.join(old, "position.json")):
        # Killed between the two renames of `io.atomic_dir`: the previous state is complete in `.state.old`.
        with contextlib.suppress(FileNotFoundError):  # another process of the same launch got there first
            os.replace(old, state)
    remove_leftover_temps(output_dir)
    if os.path.isdir(state):
        verify_checksums(state)
    path = os.path.join(state, "position.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def remove_leftover_temps(output_dir: str) -> None:
    """Delete the hidden ``.NAME.*.tmp`` files and dirs of writes a kill interrupted (`io.atomic_*`)."""
    for d in (output_dir, os.path.join(output_dir, "refcache")):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            if name.startswith(".") and name.endswith(".tmp"):
                path = os.path.join(d, name)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)


def _sharded_state(model, optimizer=None) -> dict:
    """This process's shards of the trainable weights (and AdamW state), keyed as in the unsharded model."""
    opts = StateDictOptions(ignore_frozen_params=True)
    if optimizer is None:
        return {"model": get_model_state_dict(model, options=opts)}
    msd, osd = get_state_dict(model, optimizer, options=opts)
    return {"model": msd, "optimizer": osd}


def _broadcast(value):
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _check_state_kind(output_dir: str, sharded: bool) -> None:
    """A state/ written by a sharded run resumes only sharded, and the other way round."""
    written_sharded = os.path.exists(os.path.join(output_dir, STATE_DIR, ".metadata"))
    if written_sharded != sharded:
        how = ("a sharded (FSDP2) launch", "an unsharded launch")
        raise CurryError(f"{output_dir}/state was written by {how[not written_sharded]} but this is "
                         f"{how[not sharded]}; resume with the accelerate config the run was started with")


def load_weights(output_dir: str, model) -> None:
    _check_state_kind(output_dir, is_sharded(model))
    if is_sharded(model):  # collective
        state = _sharded_state(model)
        dcp.load(state, checkpoint_id=os.path.join(output_dir, STATE_DIR))
        set_model_state_dict(model, state["model"], options=StateDictOptions(ignore_frozen_params=True))
        return
    weights = load_file(os.path.join(output_dir, STATE_DIR, "trainable.safetensors"))
    device = next(model.parameters()).device
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(device))


def load_optim(output_dir: str, optimizer, scheduler, model=None) -> None:
    """Optimiser and scheduler from ``state/``; ``model`` is needed (on every process) when it is sharded."""
    if optimizer is not None and model is not None and is_sharded(model):  # collective
        state = _sharded_state(model, optimizer)
        dcp.load(state, checkpoint_id=os.path.join(output_dir, STATE_DIR))
        set_optimizer_state_dict(model, optimizer, state["optimizer"],
                                 options=StateDictOptions(ignore_frozen_params=True))
    state = _load_pt(os.path.join(output_dir, STATE_DIR, "optim.pt"))
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])


def load_rng(output_dir: str) -> None:
    set_rng_state(_load_pt(os.path.join(output_dir, STATE_DIR, "rng.pt")))


def save_model(path: str, model, tokenizer, cfg: TrainConfig, merge_lora: bool = False, info: dict | None = None,
               dtype: torch.dtype | None = None, state_dict: dict | None = None, card=None):
    """``save_pretrained`` (safetensors) + tokenizer + resolved config, atomically.

    With LoRA, stage dirs hold the adapter (peft format, in its training dtype); ``merge_lora``
    writes merged full weights instead, so plain ``AutoModelForCausalLM.from_pretrained`` loads it.
    A full model is written in ``dtype`` (``run.save_dtype``; default: as it is in memory).
    ``state_dict``: the weights to write instead of the model's own (`full_state_dict` of a sharded model).
    ``card``: a `huggingface_hub.ModelCard`, saved as the directory's README.md.
    """
    with atomic_dir(path) as tmp:
        if merge_lora and hasattr(model, "merge_and_unload"):
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        if hasattr(model, "peft_config") or dtype is None:
            model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        else:
            weights = cast_state_dict(model, dtype) if state_dict is None else {
                k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
            model.save_pretrained(tmp, safe_serialization=True, state_dict=weights)
            set_config_dtype(tmp, dtype)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "currydpo_config.yaml"), "w") as f:
            f.write(to_yaml(cfg))
        if info:
            with open(os.path.join(tmp, "currydpo_stage.json"), "w") as f:
                json.dump(info, f, indent=2)
        if card is not None:
            card.save(os.path.join(tmp, "README.md"))


def full_state_dict(model) -> dict | None:
    """A sharded model's whole weights, gathered on the main process (None elsewhere). Collective."""
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if torch.distributed.get_rank() != 0:
        return None
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    return {k: v for k, v in sd.items() if k not in tied}  # as save_pretrained writes them: one name per tied weight


def load_saved(stage_dir: str, cfg: TrainConfig):
    """The model saved in ``stage_dir`` by `save_model`, on the CPU: the weights, or for LoRA the base
    model (``model.path``) with the adapter."""
    from transformers import AutoModelForCausalLM

    trust = cfg.model.trust_remote_code
    if not cfg.model.lora:
        return AutoModelForCausalLM.from_pretrained(stage_dir, dtype="auto", trust_remote_code=trust)
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(os.path.expanduser(cfg.model.path), dtype="auto",
                                                trust_remote_code=trust)
    return PeftModel.from_pretrained(base, stage_dir)


def stage_info(output_dir: str, stage: int) -> dict:
    """What `save_model` recorded for ``stage-K/`` (held-out metrics after the stage, reference, ...)."""
    with open(os.path.join(output_dir, stage_name(stage - 1), "currydpo_stage.json")) as f:
        return json.load(f)


def load_stage_weights(model, stage_dir: str) -> None:
    """Put the weights saved in ``stage_dir`` (by `save_model`) back into ``model``."""
    if hasattr(model, "peft_config"):  # LoRA: stage dirs hold the adapter
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(os.path.join(stage_dir, "adapter_model.safetensors")))
        return
    weights = {}
    for name in sorted(os.listdir(stage_dir)):  # model.safetensors, or the shards of a large model
        if name.endswith(".safetensors"):
            weights.update(load_file(os.path.join(stage_dir, name)))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    loaded = {p.data_ptr() for n, p in model.named_parameters() if n in weights}
    untied = [n for n, p in model.named_parameters() if n in missing and p.data_ptr() not in loaded]
    if unexpected or untied:
        raise CurryError(f"{stage_dir} does not match the model: missing {untied[:3]}, unexpected {unexpected[:3]}")
