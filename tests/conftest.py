import os

import pytest
import torch

torch.set_num_threads(1)  # tests run in parallel workers on 2 cores

CORPUS = [
    "the cat sat on the mat and the dog ran in the park.",
    "what is two plus two? it is four. what is three plus one? also four.",
    "a good answer is clear, kind and correct; a bad answer is vague.",
    "please write a short poem about the sea and the sky.",
    "hello, how are you today? i am fine, thank you very much!",
] * 4


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama + BPE tokenizer with a chat template, saved with save_pretrained."""
    from currydpo.world.tiny import save_tiny

    path = tmp_path_factory.mktemp("tiny") / "model"
    return save_tiny(path, CORPUS, vocab_size=300, hidden=32, layers=2, heads=2)


SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
