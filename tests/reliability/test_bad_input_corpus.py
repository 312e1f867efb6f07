"""The malformed-input corpus (issue 8): every file in ``corpus/`` through the real CLI.

Each bad input must give exactly one stderr line ``currydpo CMD: error: ...`` naming the
file, row and field (or the config key), exit code 2, no traceback unless ``--debug``, and
leave no output (nor temp files) behind. ``--on-bad-row skip`` skips and counts row-level
problems instead. A few cases run as real subprocesses to check the process exit code.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from _reliability import env

from currydpo.cli import main
from currydpo.errors import CurryError

CORPUS = Path(__file__).parent / "corpus"
TRAIN = CORPUS / "train_tiny.yaml"  # the one valid config, used with corpus data and tokenizers


@dataclass
class Case:
    file: str
    expect: tuple[str, ...]  # substrings of the error line, after "currydpo CMD: error: <file>"
    skip: str | None = None  # the reason --on-bad-row skip counts; None: a file-level error skip cannot hide
    good_pairs: int = 1  # pairs the file's good row gives (a curri-dpo entry: easy, medium, hard)


DATA = [
    # ultrafeedback
    Case("uf_misspelled_field.jsonl", ("row 2 field 'completions': missing field", "did you mean 'completions'"),
         "missing field"),
    Case("uf_string_score.jsonl", ("row 2 field 'completions[1].annotations.helpfulness.Rating': bad score",
                                   "'high'"), "bad score"),
    Case("uf_one_response.jsonl", ("row 2 field 'completions': fewer than 2 responses (got 1)",),
         "fewer than 2 responses"),
    Case("uf_wrong_type.jsonl", ("row 2 field 'instruction[0]': bad message",), "bad message"),
    # nectar
    Case("nectar_wrong_type.jsonl", ("row 2 field 'answers': bad type (expected list, got str",), "bad type"),
    Case("nectar_string_rank.jsonl", ("row 2 field 'answers[0].rank': bad rank (got 'first'",), "bad rank"),
    Case("nectar_whitespace_answer.jsonl", ("row 2 field 'answers[1].answer': empty text",), "empty text"),
    Case("nectar_truncated.jsonl", ("line 3: invalid JSON", "truncated file?")),
    # oasst: tree export and the flat HF table
    Case("oasst_tree_bad_role.jsonl", ("row 2 field 'prompt.replies[1].role': bad role (got 'robot'",), "bad role"),
    Case("oasst_flat_missing_text.jsonl", ("row 3 field 'text': missing field", "did you mean 'text'"),
         "missing field"),
    # pairwise (jsonl, csv, JSON array)
    Case("pairwise_chat_bad_role.jsonl", ("row 2 field 'chosen[0].role': bad role (got 'bot'",), "bad role"),
    Case("pairwise_same_text.jsonl", ("row 2 field 'rejected': fewer than 2 distinct responses",),
         "fewer than 2 distinct responses"),
    Case("pairwise_empty_text.jsonl", ("row 2 field 'rejected': empty text",), "empty text"),
    Case("pairwise_no_shared_prompt.jsonl", ("row 2 field 'chosen': no shared prompt", "add a 'prompt' field"),
         "no shared prompt"),
    Case("pairwise_missing_cell.csv", ("row 2 field 'chosen': missing field",), "missing field"),
    Case("pairwise_not_an_object.json", ("row 2: bad type (expected a JSON object, got str)",), "bad type"),
    # ranked
    Case("ranked_nan_score.jsonl", ("row 3 field 'responses[0].score': non-finite score (got nan)",),
         "non-finite score"),  # row 3: a blank line 2 still counts as a line
    Case("ranked_inf_score.jsonl", ("row 2 field 'responses[1].score': non-finite score (got -inf)",),
         "non-finite score"),
    Case("ranked_string_score.jsonl", ("row 2 field 'responses[0].score': bad score (got 'nine'",), "bad score"),
    Case("ranked_missing_score.jsonl", ("row 2 field 'responses[1].score': missing field",), "missing field"),
    Case("ranked_duplicate_responses.jsonl", ("row 2 field 'responses': fewer than 2 distinct responses",),
         "fewer than 2 distinct responses"),
    Case("ranked_whitespace_prompt.jsonl", ("row 2 field 'prompt': empty text",), "empty text"),
    Case("ranked_bad_message.jsonl", ("row 2 field 'prompt[0]': bad message (expected {role, content})",),
         "bad message"),
    Case("ranked_invalid_utf8.jsonl", ("line 2: invalid UTF-8 (byte 0xe9 at column 16)", "re-save the file as UTF-8")),
    # the adversarial pass (issue 27)
    Case("ranked_nul_byte.jsonl", ("row 2 field 'prompt': NUL byte in text (at character 6",), "NUL byte in text"),
    Case("ranked_lone_surrogate.jsonl", ("row 2 field 'responses[0]': lone surrogate in text ('\\ud83c'",),
         "lone surrogate in text"),
    Case("ranked_bool_score.jsonl", ("row 2 field 'responses[0].score': bad score (got True, expected a number)",),
         "bad score"),
    Case("ranked_huge_scores.jsonl", ("row 2 field 'responses': scores too large (the gap between 1e+308 and "
                                      "-1e+308 overflows a float",), "scores too large"),
    Case("ranked_deep_2000.jsonl", ("line 2: JSON nested more than 100 levels deep",)),  # was: RecursionError
    Case("ranked_deep_10000.jsonl", ("line 2: JSON nested more than 100 levels deep",)),  # was: SIGSEGV in Arrow
    # curri-dpo: the authors' released easy/medium/hard pairs (JSON lines and a JSON array)
    Case("curri_dpo_missing_level.jsonl", ("row 2 field 'medium': missing field", "keys present: easy, hard"),
         "missing field", good_pairs=3),
    Case("curri_dpo_missing_chosen.json", ("row 2 field 'hard.conversation[1].chosen_content': missing field",),
         "missing field", good_pairs=3),
    Case("curri_dpo_chosen_is_rejected.jsonl", ("row 2 field 'medium.conversation[1].rejected_content': chosen "
                                                "equals rejected", "fix or drop this entry"),
         "chosen equals rejected", good_pairs=3),
    # any layout
    Case("empty.jsonl", (": file is empty",)),
    Case("whitespace_only.jsonl", (": file is empty",)),
    Case("unknown_format.jsonl", ("row 1: cannot detect the data format", "[answer, question, score]",
                                  "pass --format")),
]

CONFIGS = [
    Case("cfg_unknown_key.yaml", ("unknown config key 'loss.betta'", "valid keys in 'loss'")),
    Case("cfg_unknown_section.yaml", ("unknown config section 'optimizer'", "valid sections")),
    Case("cfg_beta_zero.yaml", ("config key 'loss.beta' must be > 0, got 0",)),
    Case("cfg_beta_negative.yaml", ("config key 'loss.beta' must be > 0, got -0.1",)),
    Case("cfg_lr_negative.yaml", ("config key 'optim.lr' must be > 0, got -1e-05",)),
    Case("cfg_stages_zero.yaml", ("config key 'curriculum.stages' must be >= 1, got 0",)),
    Case("cfg_wrong_type.yaml", ("config key 'optim.batch_size': expected int, got 'eight'",)),
    Case("cfg_prompt_length_too_big.yaml", ("'data.max_prompt_length' (128) must be below 'data.max_length' (128)",)),
    Case("cfg_invalid_yaml.yaml", ("cfg_invalid_yaml.yaml: invalid YAML",)),
]


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"currydpo {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_corpus_is_complete():
    """Every corpus file has a row in a table (or is used by a named test below)."""
    used = {c.file for c in DATA + CONFIGS} | {TRAIN.name, "ranked_all_tied.jsonl", "ranked_long_prompt.jsonl",
                                               "cfg_unknown_format.yaml", "cfg_missing_model.yaml", *ACCEPTED}
    assert {p.name for p in CORPUS.iterdir()} == used
    assert len(DATA) + len(CONFIGS) >= 20


# ----------------------------------------------------------------------------- data: currydpo pairs

@pytest.mark.parametrize("case", DATA, ids=lambda c: c.file)
def test_bad_data_gives_one_line_and_no_output(case, tmp_path, capsys):
    src = CORPUS / case.file
    out = tmp_path / "out" / "pairs.jsonl"
    assert main(["pairs", str(src), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    line = one_error_line(captured.err, "pairs")
    assert line.startswith(f"currydpo pairs: error: {src}"), line
    for part in case.expect:
        assert part in line, line
    assert not files_under(out.parent)  # no output, no temp file


@pytest.mark.parametrize("case", DATA, ids=lambda c: c.file)
def test_skip_counts_the_bad_row(case, tmp_path, capsys):
    src = CORPUS / case.file
    out = tmp_path / "out" / "pairs.jsonl"
    rc = main(["pairs", str(src), "--on-bad-row", "skip", "--out", str(out)])
    captured = capsys.readouterr()
    if case.skip is None:  # the file itself is broken: skipping rows cannot help
        assert rc == 2
        assert all(part in one_error_line(captured.err, "pairs") for part in case.expect)
        assert not files_under(out.parent)
        return
    assert rc == 0, captured.err
    assert "bad rows         1\n" in captured.out and f"  {case.skip}: 1\n" in captured.out, captured.out
    assert len(out.read_text().splitlines()) == case.good_pairs  # the good row's pairs
    assert files_under(out.parent) == [out]


def test_every_case_is_documented_and_the_readme_states_the_total():
    """docs/reliability.md names every corpus file, and the README's total is its number of case rows."""
    repo = CORPUS.parents[2]
    doc = (repo / "docs" / "reliability.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| ") and not line.startswith(("| case |",
                                                                                                   "| file |"))]
    missing = [p.name for p in CORPUS.iterdir() if p.name != TRAIN.name and f"`{p.name}`" not in doc]
    assert not missing, missing
    readme = (repo / "README.md").read_text()
    assert f"{len(rows)} cases, each checked by a test" in readme and f"All {len(rows)} behave as listed" in readme


ACCEPTED = ["ranked_bom_crlf.jsonl", "ranked_array.json", "ranked_gzip.jsonl.gz"]  # 3 prompts, 1 pair each


@pytest.mark.parametrize("name", ACCEPTED)
def test_bom_crlf_json_array_and_gzip_are_read(name, tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    assert main(["pairs", str(CORPUS / name), "--out", str(out)]) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Name a colour.", "Name a fruit.", "Name a shape."]  # no BOM, no CR
    assert rows[0]["chosen"] == "Blue." and rows[0]["rejected"] == "Dunno."


def test_a_50_mb_single_line_is_read(tmp_path, capsys):
    src = tmp_path / "huge.jsonl"  # made here, not kept in the corpus
    src.write_text(json.dumps({"prompt": "p", "responses": [{"text": "a" * 50_000_000, "score": 2},
                                                            {"text": "b", "score": 1}]}) + "\n")
    out = tmp_path / "pairs.jsonl"
    assert main(["pairs", str(src), "--out", str(out)]) == 0, capsys.readouterr().err
    assert len(json.loads(out.read_text())["chosen"]) == 50_000_000


def test_an_output_dir_that_cannot_be_written_is_one_line(tmp_path, tiny_model_dir, monkeypatch, capsys):
    # A read-only directory, simulated: these tests run as root here, and chmod does not stop root.
    import os

    real = os.makedirs

    def read_only(path, *a, **k):
        if str(path).startswith(str(tmp_path / "ro")):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(os, "makedirs", read_only)
    rc, captured, _ = train(tmp_path, capsys, CORPUS / "ranked_long_prompt.jsonl", tiny_model_dir, TRAIN,
                            "--output", str(tmp_path / "ro" / "run"))
    assert rc == 2
    assert one_error_line(captured.err, "train") == (f"currydpo train: error: permission denied: {tmp_path}/ro/run; "
                                                     f"check its permissions (outputs need a directory you can write)")


def test_all_tied_is_not_an_error_for_pairs(tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    assert main(["pairs", str(CORPUS / "ranked_all_tied.jsonl"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "prompts read     3" in text and "bad rows         0" in text and "pairs total      0" in text
    assert out.read_text() == ""
    assert main(["pairs", str(CORPUS / "ranked_all_tied.jsonl"), "--allow-ties", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 6  # best-vs-rest with ties: 2 pairs per prompt


def test_unknown_format_flag_and_missing_file(tmp_path, capsys):
    out = tmp_path / "out" / "pairs.jsonl"
    with pytest.raises(SystemExit) as e:  # argparse rejects the choice: usage + error, exit 2
        main(["pairs", str(CORPUS / "ranked_nan_score.jsonl"), "--format", "hh", "--out", str(out)])
    assert e.value.code == 2 and "invalid choice: 'hh'" in capsys.readouterr().err
    assert main(["pairs", str(tmp_path / "nope.jsonl"), "--out", str(out)]) == 2
    assert "nope.jsonl: file not found" in one_error_line(capsys.readouterr().err, "pairs")
    assert not files_under(out.parent)


# ----------------------------------------------------------------------------- configs: currydpo train

@pytest.mark.parametrize("case", CONFIGS, ids=lambda c: c.file)
def test_bad_config_names_the_key(case, tmp_path, capsys):
    run_dir = tmp_path / "run"
    rc = main(["train", "--config", str(CORPUS / case.file), "--model", str(tmp_path / "no-model"),
               "--data", str(CORPUS / "ranked_nan_score.jsonl"), "--output", str(run_dir)])
    assert rc == 2
    line = one_error_line(capsys.readouterr().err, "train")
    for part in case.expect:
        assert part in line, line
    assert not run_dir.exists()  # config errors come before anything is written


def train(tmp_path, capsys, data, model, config=TRAIN, *extra):
    run_dir = tmp_path / "run"
    args = ["train", "--config", str(config), "--data", str(data), "--output", str(run_dir), *extra]
    if model is not None:
        args += ["--model", str(model)]
    rc = main(args)
    return rc, capsys.readouterr(), run_dir


def test_train_unknown_data_format(tmp_path, tiny_model_dir, capsys):
    rc, captured, run_dir = train(tmp_path, capsys, CORPUS / "ranked_all_tied.jsonl", tiny_model_dir,
                                  CORPUS / "cfg_unknown_format.yaml")
    assert rc == 2
    line = one_error_line(captured.err, "train")
    assert "config key 'data.format': 'hh' is not valid; choose one of: auto, ultrafeedback" in line
    assert not run_dir.exists()  # validated before any work: nothing created


def test_train_missing_model_path(tmp_path, capsys):
    rc, captured, run_dir = train(tmp_path, capsys, CORPUS / "ranked_long_prompt.jsonl", None,
                                  CORPUS / "cfg_missing_model.yaml")
    assert rc == 2
    assert "model.path not found: ./no/such/model-dir" in one_error_line(captured.err, "train")
    assert not files_under(run_dir)


def test_train_bad_data_row(tmp_path, tiny_model_dir, capsys):
    src = CORPUS / "ranked_inf_score.jsonl"
    rc, captured, run_dir = train(tmp_path, capsys, src, tiny_model_dir)
    assert rc == 2
    assert f"{src} row 2 field 'responses[1].score': non-finite score" in one_error_line(captured.err, "train")
    assert not files_under(run_dir)


def test_train_on_all_tied_data_says_no_training_pairs(tmp_path, tiny_model_dir, capsys):
    rc, captured, run_dir = train(tmp_path, capsys, CORPUS / "ranked_all_tied.jsonl", tiny_model_dir)
    assert rc == 2
    line = one_error_line(captured.err, "train")
    assert "ranked_all_tied.jsonl: no training pairs (all responses tied" in line and "data.allow_ties" in line
    assert not files_under(run_dir)


def test_prompt_longer_than_max_length_is_cut_not_an_error(tmp_path, tiny_model_dir, capsys):
    """Prompts of ~1500 tokens are cut from the left to data.max_prompt_length (256) and train fine."""
    rc, captured, run_dir = train(tmp_path, capsys, CORPUS / "ranked_long_prompt.jsonl", tiny_model_dir)
    assert rc == 0, captured.err
    assert "trained 1 updates" in captured.out
    assert (run_dir / "final" / "config.json").exists()


def tokenizer_beside_model(tmp_path, model_dir, **special) -> Path:
    """The fixture's model with a fresh fast tokenizer that has only the given special tokens."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    dest = tmp_path / "model"
    dest.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(model_dir) / name, dest / name)
    backend = Tokenizer.from_str(AutoTokenizer.from_pretrained(model_dir).backend_tokenizer.to_str())
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", **special).save_pretrained(dest)
    return dest


def test_tokenizer_without_pad_falls_back_to_eos(tmp_path, tiny_model_dir, capsys):
    model = tokenizer_beside_model(tmp_path, tiny_model_dir, eos_token="</s>")
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(model).pad_token is None
    rc, captured, run_dir = train(tmp_path, capsys, CORPUS / "ranked_long_prompt.jsonl", model)
    assert rc == 0, captured.err
    assert (run_dir / "final" / "model.safetensors").exists()


def test_tokenizer_without_pad_or_eos_is_one_line(tmp_path, tiny_model_dir, capsys):
    model = tokenizer_beside_model(tmp_path, tiny_model_dir)
    rc, captured, run_dir = train(tmp_path, capsys, CORPUS / "ranked_long_prompt.jsonl", model)
    assert rc == 2
    line = one_error_line(captured.err, "train")
    assert f"tokenizer at {model} has neither a pad nor an eos token" in line and "pad_token" in line
    assert not files_under(run_dir)


# ----------------------------------------------------------------------------- real processes

def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "currydpo", *args], env=env(), capture_output=True, text=True,
                          timeout=120)


def test_subprocess_exit_codes_and_debug_traceback(tmp_path):
    out = tmp_path / "out" / "pairs.jsonl"
    src = CORPUS / "ranked_nan_score.jsonl"
    p = cli("pairs", str(src), "--out", str(out))
    assert p.returncode == 2 and p.stdout == ""
    assert f"{src} row 3 field 'responses[0].score': non-finite score" in one_error_line(p.stderr, "pairs")

    p = cli("train", "--config", str(CORPUS / "cfg_stages_zero.yaml"), "--output", str(tmp_path / "run"))
    assert p.returncode == 2
    assert "'curriculum.stages' must be >= 1" in one_error_line(p.stderr, "train")

    p = cli("--debug", "pairs", str(src), "--out", str(out))  # --debug: the full traceback, still no output
    assert p.returncode == 1 and "Traceback (most recent call last)" in p.stderr
    assert "currydpo.errors.BadRow:" in p.stderr and "non-finite score" in p.stderr
    assert not files_under(out.parent) and not (tmp_path / "run").exists()


def test_debug_flag_after_the_subcommand_reraises(tmp_path):
    out = tmp_path / "pairs.jsonl"
    with pytest.raises(CurryError, match="row 2 field 'answers'"):
        main(["pairs", str(CORPUS / "nectar_wrong_type.jsonl"), "--out", str(out), "--debug"])
    assert not out.exists()


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _garble(f: Path) -> None:
    f.write_bytes(b"\x00\x01not a header" + f.read_bytes()[16:])


def _not_a_tokenizer(f: Path) -> None:
    f.write_text('{"version": "1.0", "model": {"type": "NoSuchModel"}}')


# Damaged model files (issue 33), made from the tiny model at test time: (file, damage, expected in the line).
DAMAGED_MODELS = [
    ("model.safetensors", _truncate, "model.safetensors: truncated or corrupt weights"),
    ("model.safetensors", _garble, "model.safetensors: truncated or corrupt weights"),
    ("config.json", _truncate, "config.json: not valid JSON"),
    ("tokenizer.json", _truncate, "tokenizer.json: not valid JSON"),
    ("tokenizer.json", _not_a_tokenizer, "cannot load the tokenizer from"),
]


@pytest.mark.parametrize("name, damage, expect", DAMAGED_MODELS, ids=lambda x: getattr(x, "__name__", x))
def test_a_damaged_model_file_is_one_line(name, damage, expect, tmp_path, tiny_model_dir, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    damage(model / name)
    rc, captured, run_dir = train(tmp_path, capsys, CORPUS / "ranked_long_prompt.jsonl", model)
    assert rc == 2
    line = one_error_line(captured.err, "train")
    assert expect in line and ("re-download" in line or "save the tokenizer again" in line), line
    assert not files_under(run_dir)


def test_truncated_weights_exit_2_as_a_process(tmp_path, tiny_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    _truncate(model / "model.safetensors")
    p = cli("train", "--config", str(TRAIN), "--model", str(model), "--data", str(CORPUS / "ranked_long_prompt.jsonl"),
            "--output", str(tmp_path / "run"))
    assert p.returncode == 2
    assert f"{model / 'model.safetensors'}: truncated or corrupt weights" in one_error_line(p.stderr, "train")


def test_a_deepspeed_launch_stops_before_any_work(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what `accelerate launch` sets for a ZeRO config
    rc, captured, run_dir = train(tmp_path, capsys, CORPUS / "ranked_long_prompt.jsonl", tiny_model_dir)
    assert rc == 2
    line = one_error_line(captured.err, "train")
    assert "DeepSpeed is not supported" in line and "examples/accelerate/fsdp2.yaml" in line and "16 bytes" in line
    assert not files_under(run_dir)
