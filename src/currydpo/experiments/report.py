"""The comparison report: one table (markdown + JSON) with mean ± 95% CI per metric and arm, and plots."""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict

from ..evaluation.winrate import mean_ci
from ..io import save_figure, write_json, write_text
from .frontier import write_frontier

NA = "n/a"  # a metric that is undefined for a result (the SFT model's reward accuracy against itself)


def _pref(key: str):
    def get(m):
        pref = m.get("preference") or {}
        return NA if key in pref and pref[key] is None else pref.get(key)
    return get


# (key in the table, label, getter on one result's metrics, the metric's range: CIs are clipped to it)
METRICS = [
    ("judge_score", "gold reward", lambda m: m.get("judge_score"), (None, None)),
    ("win_rate", "win rate vs SFT", lambda m: (m.get("win_rate") or {}).get("win_rate"), (0.0, 1.0)),
    ("kl", "KL to SFT", lambda m: m.get("kl"), (None, None)),  # negative means are flagged as noise, not clipped
    ("reward_accuracy", "held-out reward acc", _pref("rewards/accuracies"), (0.0, 1.0)),
    ("ranking_accuracy", "held-out ranking acc", _pref("ranking_accuracy"), (0.0, 1.0)),
]


def aggregate(results: list[dict], arms: list[str]) -> list[dict]:
    """One row per arm: mean, CI low/high and per-seed values of each metric, plus fairness facts."""
    by_arm = defaultdict(list)
    for r in results:
        by_arm[r["arm"]].append(r)
    rows = []
    for arm in arms:
        rs = sorted(by_arm.get(arm, []), key=lambda r: r["seed"])
        if not rs:
            continue
        m = rs[0]["metrics"]
        row = {"arm": arm, **({"sweep": rs[0]["sweep"]} if "sweep" in rs[0] else {}),  # ARM@VALUE: arm, key, value
               "seeds": [r["seed"] for r in rs], "fairness": rs[0]["fairness"],
               "updates_per_seed": [r["fairness"]["updates"] for r in rs],  # differ with run.final_model best
               "run_updates_per_seed": [r["fairness"].get("run_updates") for r in rs],
               "data": {"heldout_pairs": (m.get("preference") or {}).get("n"),  # of the first seed
                        "eval_prompts": (m.get("win_rate") or {}).get("n")}}
        for key, _, get, bounds in METRICS:
            raw = [get(r["metrics"]) for r in rs]
            vals = [v for v in raw if v is not None and v != NA]
            if vals:
                m, lo, hi = mean_ci(vals, bounds=bounds)
                if len(vals) == 1 and key == "win_rate":  # one seed: the bootstrap CI over prompts
                    wr = rs[0]["metrics"]["win_rate"]
                    lo, hi = wr["ci_low"], wr["ci_high"]
                row[key] = {"mean": m, "ci_low": lo, "ci_high": hi, "values": vals}
                if key == "kl" and m < 0:  # KL >= 0: a negative mean estimate is sampling noise
                    row[key]["noise"] = True
            elif NA in raw:
                row[key] = NA
        rows.append(row)
    return rows


def _fmt(cell) -> str:
    if cell == NA or not cell:
        return NA if cell == NA else "–"
    m, lo, hi = cell["mean"], cell["ci_low"], cell["ci_high"]
    note = " (< 0: noise)" if cell.get("noise") else ""
    if hi - lo <= 0:
        return f"{m:.3f}{note}"
    if abs((hi - m) - (m - lo)) > 1e-9:  # clipped at the metric's range: the interval itself, not ± half
        return f"{m:.3f} [{lo:.3f}, {hi:.3f}]{note}"
    return f"{m:.3f} ± {(hi - lo) / 2:.3f}{note}"


def _updates(row: dict) -> str:
    """Updates of the evaluated model (per seed where they differ), and of the run when it trained more
    (``run.final_model: best`` evaluates an earlier stage)."""
    per_seed = row.get("updates_per_seed") or [row["fairness"]["updates"]]
    cell = str(per_seed[0]) if len(set(per_seed)) == 1 else "/".join(map(str, per_seed))
    runs = row.get("run_updates_per_seed") or [row["fairness"].get("run_updates")] * len(per_seed)
    if any(run is not None and u != run for u, run in zip(per_seed, runs)):  # final/ is an earlier stage
        return cell + " of " + (str(runs[0]) if len(set(runs)) == 1 else "/".join(map(str, runs))) + " trained"
    return cell


def metrics_table(results: list[dict]) -> str:
    """The metric table alone (mean ± CI over seeds per arm) of results in the order their arms first appear."""
    rows = aggregate(results, list(dict.fromkeys(r["arm"] for r in results)))
    return "\n".join(_metric_lines(rows)) + "\n"


def _metric_lines(rows: list[dict]) -> list[str]:
    head = "| arm | " + " | ".join(label for _, label, *_ in METRICS) + " | updates | reference |"
    lines = [head, "|" + "---|" * (len(METRICS) + 3)]
    for row in rows:
        lines.append(f"| {row['arm']} | " + " | ".join(_fmt(row.get(k)) for k, *_ in METRICS)
                     + f" | {_updates(row)} | {row['fairness']['reference']} |")
    return lines


def _data_line(rows: list[dict]) -> str:
    """How much data the numbers rest on (first seed): evaluation prompts and held-out pairs (training pairs
    are in the fairness table)."""
    d = [r.get("data") or {} for r in rows]
    parts = []
    for key, label in (("eval_prompts", "evaluation prompts (gold reward, win rate, KL)"),
                       ("heldout_pairs", "held-out preference pairs (reward and ranking accuracy)")):
        values = sorted({x[key] for x in d if x.get(key) is not None})
        if values:
            parts.append(f"{label}: {'/'.join(map(str, values))}")
    return f"Data (seed {rows[0]['seeds'][0]}): " + "; ".join(parts) + "." if parts else ""


def markdown(rows: list[dict]) -> str:
    lines = _metric_lines(rows)
    n = max(len(r["seeds"]) for r in rows)
    lines.append("")
    lines.append(f"Mean ± half-width of the 95% CI over {n} seed(s) (t-interval; with one seed the win-rate CI "
                 "is a bootstrap over prompts); [low, high] where the interval is clipped to the metric's range. "
                 "Win rate = (wins + ties/2) / N against the SFT model's answers. n/a: undefined (the SFT model "
                 "is its own reference, so it has no implicit reward). A negative KL is a Monte-Carlo estimate "
                 "below 0, i.e. noise around a small KL, and is left out of the reward-vs-KL plot.")
    data = _data_line(rows)
    if data:
        lines += ["", data]
    lines.append("")
    lines.append("What was held equal (Weber et al. 2024: curriculum gains often come from optimiser side effects):")
    lines.append("")
    lines.append("| arm | schedule | stages | updates | pairs/update | train pairs | passes per stage | LR schedule "
                 "| optimiser resets | loss |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        f = row["fairness"]
        lines.append(f"| {row['arm']} | {f['schedule']} | {f.get('stages', '–')} | {_updates(row)} | "
                     f"{f.get('pairs_per_update', '–')} | {f.get('train_pairs', '–')} | {f.get('passes', '–')} | "
                     f"{f['lr_schedule']} | "
                     f"{f['optimizer_resets']} | "
                     f"{f.get('loss', '–')} |")
    return "\n".join(lines) + "\n"


def _save(fig, path: str) -> None:
    save_figure(fig, path)


def plots(output_dir: str, rows: list[dict], results: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    arms = [r["arm"] for r in rows]
    palette = plt.cm.tab10 if len(arms) <= 10 else plt.cm.tab20  # every arm its own colour
    colors = {a: palette(i % palette.N) for i, a in enumerate(arms)}
    markers = dict(zip(arms, "osD^vP*Xph<>" * (len(arms) // 12 + 1)))
    panels = [(key, label) for key, label in (("judge_score", "gold reward of sampled answers"),
                                              ("win_rate", "adjusted win rate vs SFT"))
              if any(key in r for r in rows)]  # none without a judge (held-out metrics only)
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
        for ax, (key, label) in zip(axes[0], panels):
            have = [r for r in rows if key in r]
            means = [r[key]["mean"] for r in have]
            errs = [[r[key]["mean"] - r[key]["ci_low"] for r in have],
                    [r[key]["ci_high"] - r[key]["mean"] for r in have]]
            ax.bar([r["arm"] for r in have], means, yerr=errs, capsize=4, color=[colors[r["arm"]] for r in have])
            ax.set_title(label)
            ax.set_ylabel(label)
            ax.tick_params(axis="x", rotation=30)
            if key == "win_rate":
                ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        paths.append(os.path.join(output_dir, "scores.png"))
        _save(fig, paths[-1])
        plt.close(fig)

    points = [r for r in results if r["metrics"].get("kl") is not None and r["metrics"].get("judge_score") is not None]
    noise = [r for r in points if r["metrics"]["kl"] < 0]  # KL >= 0: noise, not a value to plot
    points = [r for r in points if r["metrics"]["kl"] >= 0]
    if points:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for r in points:
            ax.scatter(r["metrics"]["kl"], r["metrics"]["judge_score"], color=colors.get(r["arm"]),
                       marker=markers.get(r["arm"], "o"), label=r["arm"])
            ax.annotate(str(r["seed"]), (r["metrics"]["kl"], r["metrics"]["judge_score"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points", color="dimgrey")  # which seed
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=8)
        ax.set_xlabel("KL(policy || SFT), nats per answer")
        ax.set_ylabel("gold reward")
        ax.set_title("reward vs KL (one point per seed, numbered)" + (f"; {len(noise)} negative KL estimate(s) left out"
                                                            if noise else ""), fontsize=9 if noise else None)
        paths.append(os.path.join(output_dir, "reward_vs_kl.png"))
        _save(fig, paths[-1])
        plt.close(fig)

    logs = {}  # arm -> (seed, its training log), read from the run directories under output_dir
    for arm in arms:
        r = next((r for r in results if r["arm"] == arm and r.get("train")), None)
        log_path = r and os.path.join(output_dir, arm, f"seed-{r['seed']}", "train", "metrics.jsonl")
        if log_path and os.path.exists(log_path):
            with open(log_path) as f:
                logs[arm] = (r["seed"], [json.loads(line) for line in f])
        elif log_path:
            print(f"currydpo: no training log at {log_path}; {arm} left out of training_curves.png", file=sys.stderr)
    if logs:
        # own y-axis per panel (losses of different arms live on different scales: dpo vs ipo vs pro);
        # the raw per-update loss faint, its moving average (EMA, 0.9) on top
        fig, axes = plt.subplots(1, len(logs), figsize=(3.6 * len(logs), 3.2), squeeze=False)
        for ax, (arm, (seed, log)) in zip(axes[0], logs.items()):
            for i, stage in enumerate(sorted({e["stage"] for e in log if "loss" in e})):  # eval/* lines skipped
                pts = [(e["step"], e["loss"]) for e in log if e["stage"] == stage and "loss" in e]
                steps, loss = zip(*pts)
                smooth, m = [], loss[0]
                for v in loss:
                    m = 0.9 * m + 0.1 * v
                    smooth.append(m)
                color = plt.cm.tab10(i % 10)
                ax.plot(steps, loss, color=color, alpha=0.25, lw=0.8)
                ax.plot(steps, smooth, color=color, label=f"stage {stage}")
            ax.set_title(f"{arm} (seed {seed})", fontsize=9)
            ax.set_xlabel("update")
            ax.set_ylabel(f"training loss ({_loss_name(results, arm)})", fontsize=8)
            ax.legend(fontsize=7)
        paths.append(os.path.join(output_dir, "training_curves.png"))
        _save(fig, paths[-1])
        plt.close(fig)
    path = _heldout_by_stage(plt, output_dir, arms, results, colors)
    if path:
        paths.append(path)
    return paths


def _loss_name(results: list[dict], arm: str) -> str:
    r = next((r for r in results if r["arm"] == arm and r.get("train")), None)
    loss = (r or {}).get("train", {}).get("loss", "?")
    return loss if isinstance(loss, str) else " + ".join(loss)


def _heldout_by_stage(plt, output_dir: str, arms: list[str], results: list[dict], colors: dict) -> str | None:
    """Held-out preference metrics measured after each stage (mean over seeds): where a curriculum helps or hurts."""
    panels = (("eval/rewards/accuracies", "held-out reward accuracy"),
              ("eval/logps/chosen", "held-out log p(chosen), nats"))
    series = {}
    for arm in arms:
        runs = [r["train"]["stages"] for r in results if r["arm"] == arm and r.get("train")]
        runs = [st for st in runs if st and all(panels[0][0] in s for s in st)]
        if runs:
            n = min(len(st) for st in runs)
            series[arm] = [(sum(st[k]["end_step"] for st in runs) / len(runs),
                            {key: sum(st[k][key] for st in runs) / len(runs) for key, _ in panels}) for k in range(n)]
    if not series:
        return None  # no held-out pairs (data.eval_fraction 0)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, (key, label) in zip(axes, panels):
        for arm, pts in series.items():
            ax.plot([x for x, _ in pts], [m[key] for _, m in pts], marker="o", color=colors[arm], label=arm)
        ax.set_title(f"{label}, after each stage")
        ax.set_xlabel("update")
    axes[0].legend(fontsize=7)
    path = os.path.join(output_dir, "heldout_by_stage.png")
    _save(fig, path)
    plt.close(fig)
    return path


def setup_lines(notes: dict) -> str:
    """``{"responses": "pool", "responses_detail": "..."}`` -> ``Responses: pool (...)``, one line per fact."""
    lines = [f"{k.replace('_', ' ').capitalize()}: {v}" + (f" ({notes[k + '_detail']})" if k + "_detail" in notes
                                                            else "")
             for k, v in notes.items() if not k.endswith("_detail")]
    return "".join(line + "\n\n" for line in lines)


def write_report(output_dir: str, results: list[dict], arms: list[str], notes: dict | None = None) -> dict:
    rows = aggregate(results, arms)
    md = setup_lines(notes or {}) + markdown(rows)  # the setup first: a table is never read without it
    write_text(os.path.join(output_dir, "results.md"), md)
    frontier_md, frontier_plots = write_frontier(output_dir, results)  # when an arm was swept
    report = {"rows": rows, "results": results, "plots": plots(output_dir, rows, results) + frontier_plots,
              "markdown": md + ("\n" + frontier_md if frontier_md else ""),
              "notes": dict(notes or {})}
    write_json(os.path.join(output_dir, "results.json"),  # plots by name: the directory may be copied (docs/)
               {**{k: v for k, v in report.items() if k not in ("markdown", "plots")},
                "plots": [os.path.basename(p) for p in report["plots"]]})
    return report
