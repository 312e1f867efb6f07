"""The vLLM-vs-hf generation throughput check runs, and skips vLLM cleanly without CUDA."""

from currydpo.experiments.generation_bench import main


def test_generation_bench_tiny_on_cpu(tmp_path, capsys):
    assert main(["--device", "cpu", "--tiny", "--out", str(tmp_path), "--max-new-tokens", "4"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0].startswith("| generation hf, answers/s (4 prompts x 4, 4 new tokens, tiny) | ")
    assert float(rows[0].split("|")[2]) > 0
    assert rows[1] == "| generation vllm, answers/s | skipped: needs CUDA | - | SKIP |"
