import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: CLI subprocesses inherit it (2 workers, 2 cores)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # tests run in parallel workers on 2 cores; oversubscribed threads run ~10x slower

CORPUS = [
    "the cat sat on the mat and the dog ran in the park.",
    "what is two plus two? it is four. what is three plus one? also four.",
    "a good answer is clear, kind and correct; a bad answer is vague.",
    "please write a short poem about the sea and the sky.",
    "hello, how are you today? i am fine, thank you very much!",
] * 4


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """run.cache_dir auto resolves to a directory of this test's own (never the real ~/.cache), fresh per test
    so counts of forward passes do not depend on which tests ran before. CLI subprocesses inherit it."""
    monkeypatch.setenv("CURRYDPO_CACHE", str(tmp_path / "currydpo-cache"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama + BPE tokenizer with a chat template, saved with save_pretrained."""
    from currydpo.world.tiny import save_tiny

    path = tmp_path_factory.mktemp("tiny") / "model"
    return save_tiny(path, CORPUS, vocab_size=300, hidden=32, layers=2, heads=2)


SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def make_records(n_prompts=12, n_responses=4, seed=0, scores=None):
    """Toy records: short word-salad prompts, N responses scored N..1 (best first) unless ``scores``."""
    import random

    from currydpo.data.records import Record, Response

    rng = random.Random(seed)
    words = "the cat sat on mat dog ran park good bad answer clear kind sea sky poem".split()
    recs = []
    for i in range(n_prompts):
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(3, 6)))
        s = scores or [float(n_responses - j) for j in range(n_responses)]
        resps = [Response(" ".join(rng.choice(words) for _ in range(rng.randint(2, 7))) + f" {j}", score=s[j])
                 for j in range(n_responses)]
        recs.append(Record(str(i), prompt, resps))
    return recs


@pytest.fixture
def toy_records():
    return make_records()


def tiny_config(model_dir, output_dir, **sections):
    """A validated TrainConfig for fast tiny runs; ``sections`` = {"optim": {"lr": 1e-3}, ...}."""
    from currydpo.config import from_dict, validate

    base = {"model": {"path": str(model_dir)}, "run": {"output_dir": str(output_dir), "progress": False},
            "optim": {"lr": 1e-3, "batch_size": 4, "warmup_ratio": 0.0}}
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    return validate(from_dict(base))


def update_grads(run, micro, ref) -> dict:
    """The gradients one `loop.train_step` over ``micro`` accumulates, taken where the optimiser would step
    (which it does not: the weights stay as they are)."""
    from currydpo.training import loop

    captured = {}

    class Stop(Exception):
        pass

    def step():
        captured.update({k: p.grad.clone() for k, p in run.model.named_parameters() if p.grad is not None})
        raise Stop

    opt = type("Opt", (), {"step": staticmethod(step), "zero_grad": lambda *a, **k: None})()
    try:
        loop.train_step(run, opt, None, micro, ref, "t")
    except Stop:
        return captured
    raise AssertionError("train_step did not reach the optimiser step")


def dir_fingerprint(path) -> dict:
    """{file: (mtime_ns, sha256)} under ``path``: a resume must leave completed checkpoints untouched, and a
    rewrite changes the mtime even when it writes the same bytes (a run that silently restarted would)."""
    import hashlib
    from pathlib import Path

    return {str(f.relative_to(path)): (f.stat().st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest())
            for f in sorted(Path(path).rglob("*")) if f.is_file()}


def mark_log(output_dir) -> None:
    """Tag every complete line of OUTPUT/metrics.jsonl with ``"before_resume": true`` (a cut last line stays)."""
    import json
    from pathlib import Path

    path = Path(output_dir) / "metrics.jsonl"
    lines = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            lines.append(json.dumps({**json.loads(line), "before_resume": True}) + "\n")
        except json.JSONDecodeError:
            lines.append(line)
    path.write_text("".join(lines))


def check_log_continued(output_dir, checkpoint_step: int, total_updates: int) -> None:
    """The resumed log keeps the killed run's lines up to the checkpoint and adds one line per update executed
    after it, numbered on from the checkpoint's step. A run that started over rewrites every line (no tags)."""
    import json
    from pathlib import Path

    log = [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]
    resumed = [e.get("before_resume", False) for e in log]
    assert resumed == [True] * checkpoint_step + [False] * (total_updates - checkpoint_step), resumed
    assert [e["step"] for e in log] == list(range(1, total_updates + 1))


def save_reward_model(tiny_model_dir, path):
    """A tiny sequence-classification reward model sharing the tiny model's tokenizer, saved to ``path``."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def ufb_rows(n_prompts=10, pairs=3, scored=True, scores=(5.0, 4.0, 2.5, 1.0), seed=0):
    """Rows in HuggingFaceH4/ultrafeedback_binarized's columns: a prompt string, chosen/rejected message lists
    repeating the user turn, score_chosen/score_rejected; ``pairs`` rows per prompt flattened best-vs-rest
    (R1>R2, R1>R3, ...)."""
    rows = []
    for r in make_records(n_prompts=n_prompts, n_responses=pairs + 1, seed=seed):
        user = {"role": "user", "content": r.prompt}
        for j in range(1, pairs + 1):
            chosen = [user, {"role": "assistant", "content": r.responses[0].text}]
            rejected = [user, {"role": "assistant", "content": r.responses[j].text}]
            row = {"prompt": r.prompt, "prompt_id": f"p{seed}-{r.id}", "chosen": chosen, "rejected": rejected,
                   "messages": chosen}
            if scored:
                row.update(score_chosen=scores[0], score_rejected=scores[j])
            rows.append(row)
    return rows


class RecordingHub:
    """Stands in for huggingface_hub.HfApi and records what would be uploaded where. Recording the client's
    calls (not a local server speaking the Hub's HTTP API) because what is ours is which folder goes to which
    repo and branch; the upload protocol is huggingface_hub's, tested there."""

    calls: list = []

    def create_repo(self, repo_id, private=False, exist_ok=False):
        self.calls.append(("create_repo", repo_id, private))

    def create_branch(self, repo_id, branch, exist_ok=False):
        self.calls.append(("create_branch", repo_id, branch))

    def upload_folder(self, repo_id, folder_path, revision, commit_message):
        from pathlib import Path

        folder = Path(folder_path)
        files = sorted(p.name for p in folder.iterdir())
        card = (folder / "README.md").read_text() if "README.md" in files else ""
        self.calls.append(("upload_folder", repo_id, folder.name, revision, files, card))


@pytest.fixture
def hub(monkeypatch):
    """huggingface_hub.HfApi replaced by `RecordingHub`: the list of calls a run's push made."""
    RecordingHub.calls = []
    monkeypatch.setattr("currydpo.training.hub.HfApi", RecordingHub)
    return RecordingHub.calls
