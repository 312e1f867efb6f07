"""One of 2 processes (gloo, CPU) for tests/training/test_sharding.py: with the model sharded by FSDP2,
log-probs and gradients equal those of the unsharded model, full fine-tuning and LoRA.

Each process scores its own batch, so gradients that skipped the reduce-scatter would differ from the
unsharded gradient of the mean loss. Run: torchrun --nproc_per_node 2 fsdp2_worker.py MODEL_DIR
"""

import copy
import sys

import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoTokenizer

from currydpo.config import ModelConfig
from currydpo.training import sharding
from currydpo.training.logprobs import response_logps
from currydpo.training.model import add_lora
from currydpo.training.responses import ResponseTable, logps_for_rows_shared
from currydpo.training.tokenize import encode

PROMPTS = ["what is two plus two?", "hello, how are you today?", "please write a short poem about the sea"]
RESPONSES = [" it is four.", " i am fine, thank you very much! the cat sat.", " the sky", " a cat"]

acc = Accelerator()
rank = acc.process_index
tok = AutoTokenizer.from_pretrained(sys.argv[1])
# Every response of prompt 0 and 1 for process 0; prompt 2 only for process 1 (a shared prompt, packed).
batches = [[encode(tok, p, r, max_length=64, max_prompt_length=32) for p in PROMPTS[:2] for r in RESPONSES],
           [encode(tok, PROMPTS[2], r, max_length=64, max_prompt_length=32) for r in RESPONSES[:3]]]
weights = [torch.linspace(-1.0, 1.0, len(b)) for b in batches]

def check_logps_and_grads(lora: bool):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
    if lora:
        model = add_lora(model, ModelConfig(path=sys.argv[1], lora=True, lora_r=4, lora_dropout=0.0))
        for n, p in model.named_parameters():  # peft starts B at 0: make the adapters non-trivial
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(len(n)))
    plain = copy.deepcopy(model)
    plugin = sharding.fsdp_plugin(acc)
    assert plugin is not None and plugin.fsdp_version == 2
    model = sharding.shard(model, plugin, acc.device)
    assert sharding.is_sharded(model)
    for packing in (True, False):
        plain.zero_grad()
        expected = []
        for b, w in zip(batches, weights):
            lp, _ = response_logps(plain, b, tok.pad_token_id, packing=packing)
            (lp * w).sum().div(len(batches)).backward()  # the mean over processes, as the reduce-scatter averages
            expected.append(lp.detach())
        model.zero_grad()
        lp, _ = response_logps(model, batches[rank], tok.pad_token_id, packing=packing)
        (lp * weights[rank]).sum().backward()
        torch.testing.assert_close(lp.detach(), expected[rank], rtol=1e-5, atol=1e-5)
        grads = {n: p.grad.full_tensor() for n, p in model.named_parameters() if p.grad is not None}
        want = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
        assert grads.keys() == want.keys() and grads, (sorted(grads)[:3], sorted(want)[:3])
        assert all("lora_" in n for n in grads) == lora
        for n in want:
            torch.testing.assert_close(grads[n], want[n], rtol=1e-4, atol=1e-6, msg=n)
    return model, plain


check_logps_and_grads(lora=True)
model, plain = check_logps_and_grads(lora=False)

# Reference log-probs split over the processes in unequal shares (a prompt's rows together), 1 row per forward.
# Every forward of a sharded model is collective, so the shares must run equally many forwards.
rows = [e for b in batches for e in b][:7]
table = ResponseTable(list(range(7)), rows, {})
table.encoded[6] = encode(tok, "a prompt nobody else has, long enough to weigh the most", " yes", max_length=64,
                          max_prompt_length=32)
lp, n = logps_for_rows_shared(acc, model, table, list(range(7)), tok.pad_token_id, batch_size=1)
want, _ = response_logps(plain.eval(), table.encoded, tok.pad_token_id)
torch.testing.assert_close(lp.float(), want.detach(), rtol=1e-5, atol=1e-5)
print(f"fsdp2-worker-ok {rank}", flush=True)
