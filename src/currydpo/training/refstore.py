"""The initial reference's log-probs, shared across runs: ``run.cache_dir/reference/``.

Every arm and seed of a comparison starts from the same initial model and scores the same responses
with it; a re-run does too. Each value is stored under the fingerprint of what decides it: the model's
weights (every tensor's bytes, dtype and shape) and the scoring settings (LM-head kernel, attention,
precision, device type, pad token) name the directory, the response's token ids (prompt and response)
name the value. Another model, tokenizer or truncation gives other keys, so a stale value is never read.
Files are only added (one per pass, written atomically), so runs sharing the directory never clash.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Sequence

import numpy as np
import torch

from ..io import atomic_path
from .tokenize import Encoded


def model_fingerprint(model: torch.nn.Module, settings: dict) -> str:
    """A hash of the weights and ``settings`` (call before sharding or LoRA change what the model holds)."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def response_key(e: Encoded) -> bytes:
    return hashlib.blake2b(len(e.prompt).to_bytes(8, "little") + e.prompt.tobytes() + e.response.tobytes(),
                           digest_size=16).digest()


class ReferenceStore:
    """Summed log-probs of responses under one reference (``directory`` is its fingerprint's)."""

    def __init__(self, directory: str):
        self.directory = directory
        self.values: dict[bytes, float] | None = None  # read on first lookup

    @classmethod
    def open(cls, cache_dir: str | None, fingerprint: str) -> "ReferenceStore | None":
        return None if cache_dir is None else cls(os.path.join(cache_dir, "reference", fingerprint))

    def _read(self) -> dict[bytes, float]:
        values: dict[bytes, float] = {}
        names = sorted(os.listdir(self.directory)) if os.path.isdir(self.directory) else []
        for name in names:
            if not name.endswith(".npz"):
                continue
            try:
                with np.load(os.path.join(self.directory, name)) as z:
                    keys, logps = z["keys"], z["logps"]
            except (OSError, ValueError, KeyError, EOFError):  # a damaged part only costs its recomputation
                continue
            values.update(zip((k.tobytes() for k in keys), logps.tolist()))
        return values

    def lookup(self, encoded: Sequence[Encoded], accelerator=None) -> list[float | None]:
        """The stored value of each sequence, None where there is none. With several processes the main one
        reads and sends its answer to all, so every process scores the same missing rows."""
        if accelerator is not None and accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            found = [self._lookup(encoded) if accelerator.is_main_process else None]
            return broadcast_object_list(found)[0]
        return self._lookup(encoded)

    def _lookup(self, encoded: Sequence[Encoded]) -> list[float | None]:
        if self.values is None:
            self.values = self._read()
        return [self.values.get(response_key(e)) for e in encoded]

    def add(self, encoded: Sequence[Encoded], logps: Sequence[float]) -> None:
        keys = [response_key(e) for e in encoded]
        if self.values is not None:
            self.values.update(zip(keys, logps))
        if not keys:
            return
        path = os.path.join(self.directory, f"part-{uuid.uuid4().hex}.npz")
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, keys=np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 16),
                     logps=np.asarray(logps, dtype=np.float64))
