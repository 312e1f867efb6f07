"""A sequence-classification reward model that scores (prompt, response) pairs.

Used by the ``reward-margin`` difficulty measure (difficulty = minus the reward margin) and,
wrapped as a judge, by evaluation (``reward-model:PATH``).
"""

from __future__ import annotations

from typing import Sequence

from ..device import default_device
from ..errors import CurryError


class RewardModel:
    """Scores (prompt, response) with a sequence-classification reward model (one logit).

    With a chat template the pair is rendered as a user turn + assistant turn; without
    one it is tokenised as a text pair (the convention of e.g. OpenAssistant's reward
    models). Batched, right-padded, under ``torch.no_grad``.
    """

    def __init__(self, path: str, *, batch_size: int = 8, device: str | None = None, max_length: int | None = None,
                 trust_remote_code: bool = False, what: str | None = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        what = what or f"reward model {path}"
        self.batch_size, self.max_length = batch_size, max_length
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise CurryError(f"{what}: cannot load a sequence-classification model from "
                             f"{path} ({str(e).splitlines()[0]})") from e
        if self.model.config.num_labels != 1:
            raise CurryError(f"{what}: the model has {self.model.config.num_labels} labels; a "
                             "reward model needs exactly one output (num_labels=1)")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        self.device = default_device(device)
        self.model.to(self.device).eval()

    def _encode(self, prompt: str, response: str) -> dict:
        kw = {"truncation": self.max_length is not None, "max_length": self.max_length}
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False)
            return self.tokenizer(text, add_special_tokens=False, **kw)
        return self.tokenizer(prompt, response, **kw)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """One reward per (prompt, response); prompts are plain strings."""
        import torch

        scores: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            enc = [self._encode(p, r) for p, r in zip(prompts[start:start + self.batch_size],
                                                      responses[start:start + self.batch_size])]
            batch = self.tokenizer.pad(enc, return_tensors="pt").to(self.device)
            with torch.no_grad():
                logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            scores.extend(logits[:, 0].float().cpu().tolist())  # (B, 1) -> (B,)
        return scores
