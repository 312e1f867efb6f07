"""Tiny tokenizers and Llama-architecture models built from scratch.

Used by the embedded world, by the benchmarks (random-init models of a given size)
and by the tests, which save them with `save_pretrained` and load them back through
the ordinary loading code.
"""

from __future__ import annotations

from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]

# A minimal chat template: role tag, content, end tag. The generation prompt opens the
# assistant turn; the assistant turn ends with </s> so EOS ends generation.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}</s>"
    "{% else %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer(corpus: Iterable[str], vocab_size: int = 512, min_frequency: int = 1) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``corpus`` and wrap it as an HF fast tokenizer."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        chat_template=CHAT_TEMPLATE,
    )


def make_llama(tokenizer, hidden: int = 64, layers: int = 2, heads: int = 4, intermediate: int | None = None,
               max_positions: int = 512, seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised Llama-architecture causal LM sized for ``tokenizer``."""
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_tiny(path, corpus: Iterable[str], vocab_size: int = 512, seed: int = 0, **model_kwargs) -> str:
    """Build a tokenizer and a random tiny Llama on ``corpus`` and save both to ``path``."""
    tokenizer = make_tokenizer(corpus, vocab_size=vocab_size)
    model = make_llama(tokenizer, seed=seed, **model_kwargs)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
