"""TRL's logits/chosen and logits/rejected on held-out pairs: the mean logit over response tokens and vocabulary."""

import torch
from transformers import AutoModelForCausalLM

from currydpo.training.logit_stats import mean_response_logits
from currydpo.training.tokenize import Encoded


def test_mean_logit_over_the_response_positions_as_a_plain_forward(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    short, long = Encoded((5, 6, 7), (8, 9)), Encoded((5, 6), (10, 11, 12, 13))
    got = mean_response_logits(model, [short, long], pad_token_id=0, device=torch.device("cpu"), batch_size=2)
    for e, value in zip((short, long), got):
        logits = model(torch.tensor([list(e.prompt_ids) + list(e.response_ids)])).logits[0]  # (T, V)
        p = len(e.prompt_ids)
        want = logits[p - 1:p - 1 + len(e.response_ids)].mean()  # the positions that predict the response
        assert torch.allclose(value, want, atol=1e-5)
