"""FSDP2 sharded training: parameters, gradients and AdamW state split over the processes.

A run is sharded when it is launched with an accelerate FSDP config with ``fsdp_version: 2``
(examples/accelerate/fsdp2.yaml): ``accelerate launch`` puts that config in the environment
(``ACCELERATE_USE_FSDP``, ``FSDP_VERSION``, ``FSDP_*``). currydpo then calls torch's
``fully_shard`` itself, on one decoder layer at a time and on the root module, instead of
``accelerator.prepare``: accelerate 1.15 sets FSDP up only on accelerator devices — on CPU
processes its state stays ``MULTI_CPU`` and the FSDP config is ignored (accelerate/state.py,
``AcceleratorState.__init__``) — so this one path is what the 2-process CPU tests run and what
runs on GPUs.

What sharding changes elsewhere, each where it happens:
- log-probs: the backbone + LM-head fast path runs as a forward of the root module
  (logprobs.py), and every process runs the same number of forwards (responses.py);
- gradients: reduce-scattered after every micro-batch (loop.train_step), clipped as DTensors;
- checkpoints: ``state/`` is a torch.distributed.checkpoint dir, ``stage-K/`` and ``final/``
  consolidated (checkpoint.py).
"""

from __future__ import annotations

import torch

from ..errors import CurryError


def refuse_deepspeed() -> None:
    """Stop, before any work, under an accelerate DeepSpeed config (the handbook's deepspeed_zero3.yaml):
    ``accelerator.prepare`` would wrap the model in a DeepSpeed engine that this loop does not drive (its own
    backward, step and ZeRO partitioning), so training would be wrong rather than fail. FSDP2 shards the same
    way ZeRO-3 does and is what we run and test."""
    from accelerate.utils import parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        raise CurryError("DeepSpeed is not supported (this loop does not drive a DeepSpeed engine): launch with "
                         "accelerate launch --config_file examples/accelerate/fsdp2.yaml -m currydpo train ..., "
                         "FSDP2 shards weights, gradients and AdamW state as ZeRO-3 does: about 16 bytes per "
                         "parameter over all GPUs plus activations (a 7B model: ~15 GB per GPU on 8; "
                         "docs/multi-gpu.md)")


def fsdp_plugin(accelerator):
    """The launch's accelerate FSDP settings when this run is to be sharded, else None."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, parse_flag_from_env

    if accelerator.distributed_type == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
    elif parse_flag_from_env("ACCELERATE_USE_FSDP") and accelerator.num_processes > 1:  # CPU processes (gloo)
        plugin = FullyShardedDataParallelPlugin()
    else:
        return None
    if plugin.fsdp_version != 2:
        raise CurryError(f"FSDP version {plugin.fsdp_version} is not supported: set fsdp_config.fsdp_version: 2 in "
                         f"the accelerate config (see examples/accelerate/fsdp2.yaml)")
    if plugin.activation_checkpointing:
        raise CurryError("fsdp_config.fsdp_activation_checkpointing: true is not supported: set it to false "
                         "(currydpo shards the model itself; see docs/multi-gpu.md)")
    return plugin


def _layer_classes(model, plugin) -> tuple[type, ...]:
    """The decoder-layer classes that become their own FSDP units (TRANSFORMER_BASED_WRAP), () for NO_WRAP."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    policy = getattr(plugin.auto_wrap_policy, "func", plugin.auto_wrap_policy)
    if policy is None:
        return ()
    if policy is not transformer_auto_wrap_policy:
        raise CurryError("fsdp_config.fsdp_auto_wrap_policy must be TRANSFORMER_BASED_WRAP or NO_WRAP for currydpo")
    names = plugin.transformer_cls_names_to_wrap or list(getattr(model, "_no_split_modules", None) or [])
    found = {type(m) for m in model.modules() if type(m).__name__ in names}
    missing = set(names) - {c.__name__ for c in found}
    if missing or not found:
        raise CurryError(f"fsdp_config.fsdp_transformer_layer_cls_to_wrap: {sorted(missing) or names} not found in "
                         f"the model; name its decoder layer class (e.g. LlamaDecoderLayer)")
    return tuple(found)


def shard(model: torch.nn.Module, plugin, device: torch.device) -> torch.nn.Module:
    """``fully_shard`` each decoder layer, then the root (embeddings, final norm, LM head), in place.

    Each process keeps 1/W of every parameter (a DTensor); a layer's full weights exist only
    while it runs (``reshard_after_forward: true``). The root is sharded last so that it owns
    what the layers leave.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    kwargs = {"mesh": mesh, "reshard_after_forward": plugin.reshard_after_forward}
    if isinstance(plugin.cpu_offload, CPUOffloadPolicy):
        kwargs["offload_policy"] = plugin.cpu_offload
    layers = _layer_classes(model, plugin)
    for module in list(model.modules()):
        if isinstance(module, layers):
            fully_shard(module, **kwargs)
    # The root reshards after forward too (torch's default keeps it gathered until backward): after a
    # no-grad pass (reference log-probs) nothing would reshard it, and the optimiser, the checkpoints
    # and the weight checks must see the sharded parameters. Costs one all-gather of the embeddings
    # and LM head per backward.
    return fully_shard(model, **kwargs)


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a (possibly DTensor) tensor."""
    return t.to_local() if hasattr(t, "to_local") else t
