"""Generation throughput, vLLM against ``hf`` (issue #16): answers per second for online sampling.

    python -m currydpo.experiments.generation_bench --device cuda --out OUT/generation   # 0.5B, GPU
    python -m currydpo.experiments.generation_bench --device cpu --tiny --out /tmp/g      # smoke run

Both engines sample the same prompts (``--prompts`` x ``--samples``, ``--max-new-tokens``,
temperature 1) from the same random-init Llama of the bench (``0.5b``, bf16 on a GPU; ``tiny``
with ``--tiny``), through `generation.engines` — the code path online stages use. Prints
gpu_check.sh table rows ``| check | value | target | verdict |``; the vLLM row is SKIP when the
vllm package or CUDA is absent. The first call of each engine is a warm-up and is not timed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def throughput(engine, prompts: list[str], samples: int, max_new_tokens: int) -> float:
    from ..generation.generate import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=1.0, batch_size=len(prompts) * samples, seed=0)
    flat = [p for p in prompts for _ in range(samples)]
    engine.generate(flat[:samples], cfg, progress=False)  # warm-up (CUDA kernels, vLLM graphs)
    t0 = time.perf_counter()
    engine.generate(flat, cfg, progress=False)
    return len(flat) / (time.perf_counter() - t0)


def main(argv=None) -> int:
    import torch

    from ..config import ModelConfig
    from ..errors import CurryError
    from ..generation.engines import make_engine
    from ..training.model import load_model, load_tokenizer
    from .bench import build_model, make_records

    p = argparse.ArgumentParser(prog="generation_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="scratch directory (the model is written there)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="tiny model and few prompts: checks that it runs")
    p.add_argument("--prompts", type=int, default=128, help="prompts (default 128)")
    p.add_argument("--samples", type=int, default=4, help="answers per prompt (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens per answer (default 128)")
    args = p.parse_args(argv)
    size = "tiny" if args.tiny else "0.5b"
    n = 4 if args.tiny else args.prompts
    model_dir = os.path.join(args.out, f"model-{size}")
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        build_model(size, model_dir)
    prompts = [r.prompt for r in make_records(n, quick=args.tiny)]
    tok = load_tokenizer(model_dir)
    device = torch.device(args.device)
    precision = "bf16" if args.device == "cuda" else "fp32"
    model = load_model(model_dir, ModelConfig(path=model_dir, precision=precision), device)
    what = f"{n} prompts x {args.samples}, {args.max_new_tokens} new tokens, {size}"
    hf = throughput(make_engine("hf", model=model, tokenizer=tok), prompts, args.samples, args.max_new_tokens)
    print(f"| generation hf, answers/s ({what}) | {hf:.1f} | - | INFO |")
    del model
    if args.device != "cuda" or not torch.cuda.is_available():
        print("| generation vllm, answers/s | skipped: needs CUDA | - | SKIP |")
        return 0
    try:
        engine = make_engine("vllm", tokenizer=tok, path=model_dir, seed=0)
    except CurryError:
        print("| generation vllm, answers/s | skipped: vllm not installed (pip install 'currydpo[vllm]') | - | SKIP |")
        return 0
    vl = throughput(engine, prompts, args.samples, args.max_new_tokens)
    print(f"| generation vllm, answers/s ({what}) | {vl:.1f} ({vl / hf:.1f}x hf) | > hf | "
          f"{'PASS' if vl > hf else 'FAIL'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
