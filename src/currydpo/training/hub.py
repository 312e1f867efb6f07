"""``run.push_to_hub``: the finished run on the Hugging Face Hub, as the alignment-handbook pushes each run.

``final/`` (with its model card, tagged dpo and curry-dpo) goes to ``run.hub_revision`` (``main``; the handbook's
``hub_model_revision``) of ``run.hub_model_id``; each ``stage-K/`` to branch ``stage-K`` of the same repo, so
a stage's policy — the next stage's reference — is one ``revision=`` away. Through ``huggingface_hub``'s
``HfApi``; its token and endpoint are the user's (``HF_TOKEN``, ``huggingface-cli login``, ``HF_ENDPOINT``)."""

from __future__ import annotations

import os

from huggingface_hub import HfApi

from ..errors import CurryError
from .references import stage_name


def repo_id(cfg) -> str:
    return cfg.run.hub_model_id or os.path.basename(os.path.normpath(cfg.run.output_dir))


def push(cfg, n_stages: int) -> dict:
    """Create the repo (if new) and upload final/ and every stage-K/; returns {folder: revision}."""
    out, repo, main = cfg.run.output_dir, repo_id(cfg), cfg.run.hub_revision
    api = HfApi()
    pushed = {}
    try:
        api.create_repo(repo, private=cfg.run.hub_private_repo, exist_ok=True)
        for k in range(n_stages):
            name = stage_name(k)
            pushed[name] = _upload(api, repo, os.path.join(out, name), name, f"stage {k + 1}")
        pushed["final"] = _upload(api, repo, os.path.join(out, "final"), main, "final model")
    except CurryError:
        raise
    except Exception as e:  # noqa: BLE001 (network, auth and Hub errors are many types; the message is what counts)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CurryError(f"push to the Hub repo {repo} failed ({reason}); the run itself is complete in {out}: "
                         f"log in (huggingface-cli login) and upload final/ with huggingface-cli upload {repo} "
                         f"{out}/final") from None
    return pushed


def _upload(api, repo: str, folder: str, revision: str, what: str) -> str:
    if revision != "main":
        api.create_branch(repo, branch=revision, exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=folder, revision=revision,
                      commit_message=f"currydpo: {what} ({os.path.basename(folder)}/)")
    return revision
