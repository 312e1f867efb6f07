"""FSDP2 (training/sharding.py): log-probs and gradients through a sharded model equal the unsharded
ones (2 processes over gloo, fsdp2_worker.py), and the launch's FSDP settings are checked."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType

from currydpo.errors import CurryError
from currydpo.training import sharding

HERE = Path(__file__).resolve().parent
FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP"}


def test_sharded_logps_and_gradients_equal_the_unsharded_ones(tiny_model_dir):
    # The fast path (backbone, then the LM head at used positions only) must go through the root
    # module's FSDP hooks, or the root's shards are neither gathered nor their gradients reduced.
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", **FSDP_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[1] / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "fsdp2_worker.py"), str(tiny_model_dir)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fsdp2-worker-ok 0" in done.stdout and "fsdp2-worker-ok 1" in done.stdout


def cpu_processes(n=2):
    return SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, num_processes=n)


def test_fsdp_comes_from_the_launch_config(monkeypatch):
    assert sharding.fsdp_plugin(cpu_processes()) is None  # no FSDP config: DDP
    for k, v in FSDP_ENV.items():
        monkeypatch.setenv(k, v)
    assert sharding.fsdp_plugin(cpu_processes(1)) is None  # one process: nothing to shard
    plugin = sharding.fsdp_plugin(cpu_processes())
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True


@pytest.mark.parametrize("key, value, message", [
    ("FSDP_VERSION", "1", r"^FSDP version 1 is not supported: set fsdp_config.fsdp_version: 2 .*fsdp2.yaml\)$"),
    ("FSDP_ACTIVATION_CHECKPOINTING", "true", r"^fsdp_config.fsdp_activation_checkpointing: true is not supported"),
])
def test_unsupported_fsdp_settings_are_one_line_errors(monkeypatch, key, value, message):
    for k, v in {**FSDP_ENV, key: value}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(CurryError, match=message):
        sharding.fsdp_plugin(cpu_processes())


def test_a_layer_class_to_wrap_that_the_model_lacks_is_an_error(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    for k, v in {**FSDP_ENV, "FSDP_TRANSFORMER_CLS_TO_WRAP": "GPT2Block"}.items():
        monkeypatch.setenv(k, v)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(CurryError, match=r"fsdp_transformer_layer_cls_to_wrap: \['GPT2Block'\] not found"):
        sharding._layer_classes(model, sharding.fsdp_plugin(cpu_processes()))
    monkeypatch.delenv("FSDP_TRANSFORMER_CLS_TO_WRAP")
    assert [c.__name__ for c in sharding._layer_classes(model, sharding.fsdp_plugin(cpu_processes()))] == [
        "LlamaDecoderLayer"]


def test_a_sharded_state_resumes_only_sharded(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from currydpo.training import checkpoint

    (tmp_path / "state").mkdir()
    (tmp_path / "state" / ".metadata").write_bytes(b"")  # what torch.distributed.checkpoint writes
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(CurryError, match=r"state was written by a sharded \(FSDP2\) launch but this is an "
                                         r"unsharded launch; resume with the accelerate config"):
        checkpoint.load_weights(str(tmp_path), model)
