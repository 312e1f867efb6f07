"""Generation engines behind one interface: ``hf`` (batched ``generate``) and ``vllm``.

An engine turns prompts into one sampled answer per prompt:
``engine.generate(prompts, cfg: GenerationConfig, progress) -> list[str]``, and
``engine.samples(...) -> list[Sample]`` gives each answer with the token ids it was sampled as
(the prompt as fed, the answer through a sampled EOS; `generate.Sample`), which the KL estimate
scores (`evaluation/evaluate.py`). Both
`currydpo eval` and online training stages (`training/online.py`) call it, so the
engine is a setting (``generation.engine``), not a second code path.

- ``hf``: today's batched, left-padded ``model.generate`` (`generation.generate`) on the
  model object handed in (in memory: the live policy, no reload).
- ``vllm``: the optional extra ``pip install 'currydpo[vllm]'`` (GPUs). Imported only
  when chosen; a missing package is a one-line error. It loads the weights from a
  directory (``stage-K/``, ``final/`` or the hub name) and maps the sampling
  parameters one to one (`vllm_sampling_kwargs`): temperature, top-p, top-k off,
  max_tokens, and a per-request seed, so the same seed gives the same answers.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from ..errors import CurryError
from .generate import GenerationConfig, Prompt, Sample, generate, generate_samples, render_prompt

ENGINES = ("hf", "vllm")
VLLM_MISSING = ("generation.engine vllm needs the vllm package, which is not installed: pip install "
                "'currydpo[vllm]' on a CUDA machine, or use generation.engine hf")


class Engine(Protocol):
    name: str

    def generate(self, prompts: Sequence[Prompt | str], cfg: GenerationConfig,
                 progress: bool = True) -> list[str]: ...

    def samples(self, prompts: Sequence[Prompt | str], cfg: GenerationConfig,
                progress: bool = True) -> list[Sample]: ...


class HFEngine:
    """Batched ``transformers`` generate on an in-memory model (`generation.generate`)."""

    name = "hf"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def generate(self, prompts, cfg, progress=True):
        return generate(self.model, self.tokenizer, prompts, cfg, progress=progress)

    def samples(self, prompts, cfg, progress=True):
        return generate_samples(self.model, self.tokenizer, prompts, cfg, progress=progress)


def vllm_sampling_kwargs(cfg: GenerationConfig, seed: int) -> dict:
    """`GenerationConfig` -> ``vllm.SamplingParams`` keyword arguments, one field to one field.

    Greedy (``do_sample=False`` or temperature 0) is temperature 0 in vLLM. ``top_k=-1``
    turns top-k off, as ``hf`` does (top_k=0). ``seed`` is per request.
    """
    return {"n": 1, "temperature": 0.0 if cfg.greedy else cfg.temperature, "top_p": 1.0 if cfg.greedy else cfg.top_p,
            "top_k": -1, "max_tokens": cfg.max_new_tokens, "seed": seed, "skip_special_tokens": True}


class VLLMEngine:
    """vLLM offline inference on the weights in ``path``. ``llm`` may be handed in (tests, reuse)."""

    name = "vllm"

    def __init__(self, path: str, tokenizer, *, seed: int = 0, gpu_memory_utilization: float = 0.4,
                 trust_remote_code: bool = False, dtype: str = "auto", llm=None, vllm_module=None):
        self.vllm = vllm_module or import_vllm()
        self.tokenizer = tokenizer
        self.llm = llm or self.vllm.LLM(model=str(path), seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                                        trust_remote_code=trust_remote_code, dtype=dtype)

    def _outputs(self, prompts, cfg, progress):
        # Prompts are rendered exactly as `hf` renders them (chat template when the tokenizer has one);
        # request i gets seed cfg.seed + i, so a seed fixes every answer whatever the batching.
        texts = [render_prompt(self.tokenizer, p)[0] for p in prompts]
        params = [self.vllm.SamplingParams(**vllm_sampling_kwargs(cfg, cfg.seed + i)) for i in range(len(texts))]
        return self.llm.generate(texts, params, use_tqdm=progress)

    def generate(self, prompts, cfg, progress=True):
        return [o.outputs[0].text.strip() for o in self._outputs(prompts, cfg, progress)]

    def samples(self, prompts, cfg, progress=True):
        """Each answer with vLLM's own ids: ``prompt_token_ids`` (the prompt as vLLM tokenised it) and the
        completion's ``token_ids``. ``finish_reason`` "length" is an answer cut at max_tokens (no EOS);
        "stop" ended on an EOS: the tokenizer's (``stop_reason`` None) or one of the model's extra EOS ids
        (``stop_reason`` that id), appended where a vLLM version leaves it out of ``token_ids``."""
        out = []
        for o in self._outputs(prompts, cfg, progress):
            c = o.outputs[0]
            ids, eos = tuple(int(t) for t in c.token_ids), c.finish_reason == "stop"
            end = getattr(c, "stop_reason", None)
            end = end if isinstance(end, int) else self.tokenizer.eos_token_id
            if eos and not (ids and ids[-1] == end):
                ids += (end,)
            out.append(Sample(c.text.strip(), tuple(int(t) for t in o.prompt_token_ids), ids, eos))
        return out


def import_vllm():
    try:
        import vllm
    except ImportError:
        raise CurryError(VLLM_MISSING) from None
    return vllm


def make_engine(name: str, *, model=None, tokenizer=None, path: str | None = None, seed: int = 0,
                gpu_memory_utilization: float = 0.4, trust_remote_code: bool = False) -> Engine:
    """``hf`` wraps ``model`` (in memory); ``vllm`` loads ``path`` (a saved model dir or hub name)."""
    if name == "hf":
        return HFEngine(model, tokenizer)
    if name == "vllm":
        if path is None:
            raise CurryError("generation.engine vllm loads weights from a directory; none was given")
        return VLLMEngine(path, tokenizer, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                          trust_remote_code=trust_remote_code)
    raise CurryError(f"unknown generation engine {name!r}; choose one of: {', '.join(ENGINES)}")
