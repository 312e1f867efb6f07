"""run.push_to_hub: final/ with its model card on the repo's main, each stage-K/ on branch stage-K.

The client's calls are recorded (huggingface_hub.HfApi replaced by conftest's `RecordingHub`):
what is ours is which folder goes to which repo and revision; the upload protocol is huggingface_hub's."""

import json

import pytest

from currydpo.errors import CurryError
from currydpo.training import loop

from conftest import RecordingHub, tiny_config, ufb_rows


@pytest.fixture
def scored_pairs(tmp_path):
    path = tmp_path / "ufb.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ufb_rows(6, 3)))
    return path


def test_final_on_main_and_each_stage_on_its_branch(tmp_path, tiny_model_dir, scored_pairs, hub):
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", data={"path": str(scored_pairs)},
                      run={"push_to_hub": True, "hub_model_id": "me/curry", "hub_private_repo": True})
    summary = loop.train(cfg)
    assert hub[0] == ("create_repo", "me/curry", True)
    assert [c[1:3] for c in hub if c[0] == "create_branch"] == [("me/curry", f"stage-{k}") for k in (1, 2, 3)]
    uploads = {c[2]: c for c in hub if c[0] == "upload_folder"}
    assert {k: c[3] for k, c in uploads.items()} == {"stage-1": "stage-1", "stage-2": "stage-2",
                                                     "stage-3": "stage-3", "final": "main"}
    files, card = uploads["final"][4], uploads["final"][5]
    assert "model.safetensors" in files and "README.md" in files
    assert "- dpo" in card and "- curry-dpo" in card  # the card's tags
    assert summary["hub"] == {"stage-1": "stage-1", "stage-2": "stage-2", "stage-3": "stage-3", "final": "main"}


def test_a_failed_push_is_one_line_and_keeps_the_run(tmp_path, tiny_model_dir, scored_pairs, monkeypatch):
    class Offline(RecordingHub):
        def create_repo(self, *a, **k):
            raise ConnectionError("Max retries exceeded with url: /api/repos/create")

    monkeypatch.setattr("currydpo.training.hub.HfApi", Offline)
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", data={"path": str(scored_pairs)},
                      run={"push_to_hub": True}, optim={"total_updates": 3})
    with pytest.raises(CurryError, match=r"push to the Hub repo run failed \(Max retries.*huggingface-cli upload"):
        loop.train(cfg)
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
