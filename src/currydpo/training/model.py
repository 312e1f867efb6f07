"""Loading the policy, its tokenizer and (optionally) LoRA adapters.

Thin wrappers over transformers/peft whose only job is clear errors: a path that
does not exist, a tokenizer without a pad token, remote code the user did not allow.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..config import ModelConfig
from ..errors import CurryError


def check_path(path: str, what: str) -> None:
    """Refuse, in one line and before any download or retry loop, a model that cannot load: a missing
    directory, a PEFT adapter directory (no base weights), or a hub name that is neither cached nor on the Hub."""
    if not path:
        raise CurryError(f"no {what} given: set 'model.path' (a local HF model dir or a hub name)")
    local = os.path.expanduser(path)
    if os.path.isdir(local):
        if os.path.exists(os.path.join(local, "adapter_config.json")) and not os.path.exists(
                os.path.join(local, "config.json")):
            raise CurryError(f"{what} {path} is a LoRA adapter, not a model: give its base model as model.path with "
                             f"model.lora true to train adapters, or merge it first (peft merge_and_unload)")
        check_files(local)
        return
    hub_name = path.count("/") == 1 and not path.startswith((".", "/", "~"))
    if not hub_name:
        raise CurryError(f"{what} not found: {path} (expected a directory saved with save_pretrained, "
                         f"or a hub name like org/model)")
    check_on_hub(path, what)


def check_files(path: str) -> None:
    """A damaged local model directory, named by its file before transformers meets it (a truncated
    ``.safetensors`` otherwise ends the run in a 35-line SafetensorError traceback): config.json and the
    tokenizer's JSON files parse, and every ``.safetensors`` header is whole and matches the file's size."""
    redo = "re-download the model, or save it again with save_pretrained"
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        f = os.path.join(path, name)
        if not os.path.isfile(f):
            continue
        try:
            with open(f, encoding="utf-8") as fh:
                json.load(fh)
        except (ValueError, UnicodeDecodeError) as e:
            raise CurryError(f"{f}: not valid JSON ({str(e).splitlines()[0]}); the file is damaged: {redo}") from None
    shards = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    if shards:
        from safetensors import safe_open

        for name in shards:
            try:
                with safe_open(os.path.join(path, name), framework="pt"):
                    pass  # opening reads the header and checks that the data it lists fits the file
            except Exception as e:  # noqa: BLE001 (SafetensorError, or an OSError for an unreadable file)
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise CurryError(f"{os.path.join(path, name)}: truncated or corrupt weights ({reason}); "
                                 f"{redo}") from None


def check_on_hub(name: str, what: str) -> None:
    """A hub model name is usable when its config is cached, or when the Hub answers for it (one request,
    no retries: a typo or an offline machine is reported at once, not after transformers' back-off)."""
    import huggingface_hub

    if isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json"), str):
        return
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise CurryError(f"{what} {name}: no such local directory, not in the Hugging Face cache, and HF_HUB_OFFLINE "
                         f"is set; download it first or give a local model directory")
    try:
        huggingface_hub.model_info(name, timeout=10)
    except Exception as e:  # noqa: BLE001 (the Hub's errors are many types; the message is what the user needs)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CurryError(f"{what} {name}: no such local directory, not in the Hugging Face cache, and the Hub "
                         f"cannot provide it ({reason}); check the name or give a local model directory") from None


def dtype_for(precision: str, device: torch.device) -> torch.dtype:
    """Weights for inference (eval, difficulty, compare): fp32 on CPU (bf16 is ~20x slower there), bf16 on
    GPU, unless asked otherwise. Training keeps fp32 master weights for ``bf16`` (`precision.master_dtype`)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "bf16-pure": torch.bfloat16}[precision]


def load_tokenizer(path: str, trust_remote_code: bool = False):
    check_path(path, "model")
    try:
        tok = AutoTokenizer.from_pretrained(os.path.expanduser(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:  # missing files, remote code not allowed, ...: transformers says which
        raise CurryError(f"cannot load tokenizer from {path}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001 (tokenizers raises its own Exception type for a broken tokenizer.json)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CurryError(f"cannot load the tokenizer from {path} ({reason}); its tokenizer files are damaged: "
                         f"save the tokenizer again (tokenizer.save_pretrained) or copy it from the base "
                         f"model") from None
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise CurryError(f"tokenizer at {path} has neither a pad nor an eos token; add a pad token "
                             f"(tokenizer.add_special_tokens({{'pad_token': '<pad>'}})) and save it again")
        # Padding is always masked out, so reusing EOS as the pad id changes no number.
        tok.pad_token = tok.eos_token
    return tok


# model.attention -> transformers' name
ATTENTION = {"flex": "flex_attention", "sdpa": "sdpa", "eager": "eager", "flash_attention_2": "flash_attention_2",
             "flash_attention_3": "flash_attention_3"}
PACKABLE = ("flex", "sdpa", "eager")  # logprobs._PACKABLE_ATTENTION: kernels that take the packing's 4D mask


def attention_for(attention: str, device: torch.device) -> str:
    """``auto``: FlexAttention on CUDA (the packing's block mask skips masked blocks), sdpa on CPU, where
    torch 2.13's FlexAttention has no backward and compiles every new shape; sdpa's CPU kernel takes the
    packing's boolean mask without materialising attention probabilities."""
    if attention == "auto":
        return "flex" if device.type == "cuda" else "sdpa"
    return attention


def load_model(path: str, cfg: ModelConfig, device: torch.device, dtype: torch.dtype | None = None):
    """A causal LM on ``device`` in ``dtype`` (default: `dtype_for` the configured precision) and the configured
    attention, its dropout off when ``model.disable_dropout``; quantised with ``load_in_4bit``/``8bit``; no LoRA."""
    check_path(path, "model")
    attention = attention_for(cfg.attention, device)
    kwargs = dict(dtype=dtype or dtype_for(cfg.precision, device), trust_remote_code=cfg.trust_remote_code,
                  **quantisation(cfg, device))
    if attention not in PACKABLE:
        print(f"note: model.attention {attention}: packing needs sdpa, eager or flex, so responses are padded "
              f"instead", file=sys.stderr)
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(os.path.expanduser(path), **kwargs,
                                                         attn_implementation=ATTENTION[attention])
        except (ValueError, ImportError) as e:  # this architecture (or this install) lacks that attention
            if cfg.attention != "auto":
                raise CurryError(f"model.attention {cfg.attention}: {path} does not support it here "
                                 f"({str(e).splitlines()[0]}); use auto") from None
            model = AutoModelForCausalLM.from_pretrained(os.path.expanduser(path), **kwargs)
    except (OSError, ValueError) as e:
        raise CurryError(f"cannot load model from {path}: {str(e).splitlines()[0]}") from None
    if cfg.disable_dropout:
        disable_dropout(model)
    return model if "quantization_config" in kwargs else model.to(device)


def quantisation(cfg: ModelConfig, device: torch.device) -> dict:
    """``from_pretrained`` arguments for ``model.load_in_4bit`` / ``load_in_8bit`` (the handbook's QLoRA path):
    bitsandbytes on a CUDA device, else one line saying why not."""
    if not (cfg.load_in_4bit or cfg.load_in_8bit):
        return {}
    what = "model.load_in_4bit" if cfg.load_in_4bit else "model.load_in_8bit"
    if device.type != "cuda":
        raise CurryError(f"{what}: bitsandbytes quantisation needs a CUDA GPU, this run is on {device.type}; drop "
                         f"{what} (model.lora true alone trains adapters over full-precision weights)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise CurryError(f"{what}: bitsandbytes is not installed; pip install 'currydpo[qlora]'") from None
    from transformers import BitsAndBytesConfig

    if cfg.load_in_4bit:  # the QLoRA paper's settings, as the handbook's get_quantization_config
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.bfloat16)
    else:
        bnb = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": bnb, "device_map": {"": device.index or 0}}


def disable_dropout(model) -> int:
    """Every dropout probability to 0, as TRL's ``disable_dropout_in_model`` (DPOConfig.disable_dropout,
    default true) and beyond it: attention modules that keep their rate as a float (Llama's
    ``attention_dropout``) too. Returns how many were set."""
    n = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p, n = 0.0, n + 1
        for name in ("attention_dropout", "attn_dropout", "dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
                n += 1
    return n


def add_lora(model, cfg: ModelConfig):
    """Wrap ``model`` with trainable LoRA adapters (peft); the base weights stay frozen."""
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora_target_modules
    if targets != "all-linear":  # peft only warns when some of the names match nothing
        targets = [t.strip() for t in targets.split(",")]
        names = [n for n, _ in model.named_modules()]
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
            raise CurryError(f"model.lora_target_modules: {', '.join(missing)} not found in {cfg.path} (its linear "
                             f"layers: {', '.join(linear)}); use those names or all-linear")
    dropout = 0.0 if cfg.disable_dropout else cfg.lora_dropout  # model.disable_dropout covers LoRA's own too
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
                      target_modules=targets)
    if cfg.load_in_4bit or cfg.load_in_8bit:  # casts the non-quantised layers for stable k-bit training
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, lora)
