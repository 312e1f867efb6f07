"""The model card of ``final/`` (its README.md): base model, data, the stages with their pairs and
held-out metrics, loss and config, in the Hub's card format (`huggingface_hub.ModelCard`)."""

from __future__ import annotations

from huggingface_hub import ModelCard, ModelCardData

from ..config import TrainConfig, to_yaml


def _looks_like_hub(name: str) -> bool:
    return bool(name) and name.count("/") == 1 and not name.startswith((".", "/", "~"))


def model_card(cfg: TrainConfig, summary: dict) -> ModelCard:
    base = cfg.model.path
    data = cfg.data.path or ", ".join(src["path"] for src in cfg.data.mixture or [])  # data.mixture: every source
    card_data = ModelCardData(
        library_name="transformers", tags=["currydpo", "dpo", "curry-dpo", "curriculum-learning", "trl-compatible"],
        base_model=base if _looks_like_hub(base) else None,
        datasets=[d for d in dict.fromkeys(data.split(", ")) if _looks_like_hub(d)] or None)
    rows = []
    for s in summary["stages"]:
        acc = s.get("eval/rewards/accuracies")
        rows.append(f"| {s['stage']} | {s['label']} | {s['reference']} | {s['pairs']} | {s['updates']} | "
                    f"{'n/a' if acc is None else f'{acc:.3f}'} |")
    final = summary.get("final_model")
    lines = [
        f"# {cfg.run.output_dir.rstrip('/').split('/')[-1]}",
        "",
        f"Trained with [currydpo](https://arxiv.org/abs/2403.07230) (Curry-DPO: curriculum learning over "
        f"several ranked preference pairs per prompt) from `{base}` on `{data}` "
        f"({summary['train_pairs']} training pairs, {summary['eval_pairs']} held out).",
        "",
        f"- schedule: `{summary['schedule']}`, difficulty `{summary['difficulty']}`, "
        f"reference `{summary['reference']}`",
        f"- loss: `{cfg.loss.label()}`, beta {summary['beta']}",
        f"- optimiser: AdamW, peak lr {summary['lr']}, `{summary['lr_schedule']}` schedule, "
        f"{summary['total_updates']} updates of {summary['pairs_per_update']} {summary['unit']}s, "
        f"across stages: `{summary['across_stages']}`",
        "- this checkpoint: " + (f"stage {final['stage']} (run.final_model best)" if final else "the last stage"),
        "",
        "| stage | pairs | reference | items | updates | held-out reward accuracy |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "## Config",
        "",
        "```yaml",
        to_yaml(cfg).rstrip(),
        "```",
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
