"""Answers from a model: prompts and chat rendering (`generate`), engines (hf | vllm), online sampling."""
