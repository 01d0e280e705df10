"""Per-run plots (PNG) and a short report.md."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .checkpoint import atomic_write
from .provenance import VERSIONS_FILE
from .stages import valid_pickers

if TYPE_CHECKING:
    from .config import PipelineConfig
    from .selection import ValidSelection

__all__ = ["write", "plot_success", "plot_heldout_curve"]


SYNTHETIC_CURVE = "synthetic rollouts (success as the experience model judged it)"


def success_curves(history: list[dict[str, Any]]) -> tuple[str, str, list[tuple[str, list[dict[str, Any]]]]]:
    """(y label, metric, [(curve label, rows)]) of the run's success plots.

    Rollouts in the synthetic environment succeed when the experience model says so, not the
    environment: they get a curve of their own (``charts/synthetic_phase``), apart from real
    rollouts. A run whose rows carry no rollout success (verl logs the reward, not the
    success, of its training rollouts) gets its training return instead.
    """

    def rows_with(key: str) -> list[dict[str, Any]]:
        return [r for r in history if r.get("step", -1) >= 0 and r.get(key) is not None]

    rows = rows_with("rollout/success_rate")
    if not rows:
        returns = rows_with("charts/episodic_return")
        return "training-rollout return", "charts/episodic_return", [("training rollouts", returns)] if returns else []
    synthetic = [r for r in rows if r.get("charts/synthetic_phase") == 1.0]
    real = [r for r in rows if r.get("charts/synthetic_phase") != 1.0]
    curves = [(SYNTHETIC_CURVE, synthetic), ("real rollouts", real)]
    return "training-rollout success rate", "rollout/success_rate", [(label, part) for label, part in curves if part]


def plot_success(history: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Success rate against iterations, and real rollouts' success against the real
    transitions used (:func:`success_curves`)."""
    plt = _pyplot()
    ylabel, key, curves = success_curves(history)
    if not curves:
        return []
    stem = "success_vs" if key == "rollout/success_rate" else "return_vs"
    axes = [([(label, [r["step"] for r in part], [r[key] for r in part]) for label, part in curves], "iteration", f"{stem}_iteration.png")]
    real = [(label, part) for label, part in curves if label != SYNTHETIC_CURVE and any("counters/real_transitions" in r for r in part)]
    if real:
        lines = [(label, [r.get("counters/real_transitions", 0.0) for r in part], [r[key] for r in part]) for label, part in real]
        axes.append((lines, "real transitions used (RL phase)", f"{stem}_real_transitions.png"))
    paths = []
    for lines, label, name in axes:
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
        for curve, x, y in lines:
            ax.plot(x, y, marker="o", label=curve)
        ax.legend(fontsize="small")  # which curve is the experience model's judgement
        ax.set_xlabel(label)
        ax.set_ylabel(ylabel)
        if key == "rollout/success_rate":
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        paths.append(_save(fig, out_dir / name))
    return paths


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend (a run has no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    """``fig`` as a PNG at ``path``, closed after."""
    fig.tight_layout()
    png = io.BytesIO()  # rendered whole first: a failed or killed save leaves the old plot
    try:
        fig.savefig(png, format="png")
    finally:
        _pyplot().close(fig)
    atomic_write(path, png.getvalue())
    return path


def plot_heldout_curve(rows: Sequence[dict[str, Any]], path: Path, *, split: str) -> Path:
    """Held-out success of each checkpoint (``dreamgym curve``'s rows) against its iteration,
    with the Wilson 95% interval of each as an error bar: with 32 games an interval spans
    about 30 points, and a curve without them reads noise as learning."""
    plt = _pyplot()
    x = [row["checkpoint_iteration"] for row in rows]
    y = [row["eval/success_rate"] for row in rows]
    # Clamped: matplotlib refuses a negative bar, and a bound a rounding error past its rate gave one.
    below = [max(0.0, rate - row["eval/success_ci_low"]) for rate, row in zip(y, rows)]
    above = [max(0.0, row["eval/success_ci_high"] - rate) for rate, row in zip(y, rows)]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
    ax.errorbar(x, y, yerr=[below, above], marker="o", capsize=3)
    ax.set_xlabel("checkpoint (iteration; 0: warm start)")
    ax.set_ylabel(f"success on real {split} tasks")
    ax.set_xticks(x)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _unlisted_lines(history: list[dict[str, Any]]) -> list[str]:
    """How lenient the synthetic environment was with actions the state did not offer, over
    the synthetic RL iterations (a real engine refuses them; accepting them rewards blind moves)."""
    synthetic = [r for r in history if r.get("step", -1) >= 0 and r.get("charts/synthetic_phase") == 1.0]
    offered = sum(r.get("rollout/unlisted_actions", 0.0) for r in synthetic)
    if not offered:
        return []
    accepted = sum(r.get("rollout/unlisted_accepted", 0.0) for r in synthetic)
    return [
        "", f"During synthetic RL the policy took {int(offered)} actions its state did not offer; the synthetic "
        f"environment accepted {int(accepted)} of them ({accepted / offered:.0%}).",
    ]


def _family_lines(rows: Sequence[tuple[str, dict[str, float], str]]) -> list[str]:
    """Success per task family (a multi-task domain's evaluations log one rate per family)."""
    shown = [(label, row, prefix) for label, row, prefix in rows if any(k.startswith(f"{prefix}/success_rate/") for k in row)]
    if not shown:
        return []
    families = list(dict.fromkeys(k.split("/", 2)[2] for _, row, prefix in shown for k in row if k.startswith(f"{prefix}/success_rate/")))
    lines = ["", "By task family (success rate, episodes):", "", "| family | " + " | ".join(label for label, _, _ in shown) + " |"]
    lines.append("|---|" + "---|" * len(shown))
    for family in families:
        cells = [
            f"{row[f'{prefix}/success_rate/{family}']:.3f} ({int(row[f'{prefix}/episodes/{family}'])})"
            if f"{prefix}/success_rate/{family}" in row else "-"
            for _, row, prefix in shown
        ]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return lines


def _validation_lines(cfg: PipelineConfig, selection: ValidSelection | None, final: dict[str, Any]) -> list[str]:
    """Greedy validation success by iteration (eval.valid_every) and which policy was evaluated."""
    if selection is None or not selection.scores:
        return []
    scores = ", ".join(f"{it}: {score:.3f}" for it, score in sorted(selection.scores.items()))
    kept = final.get("eval/policy_iteration")
    which = "" if kept is None else f" The policy evaluated after RL is iteration {int(kept)}'s ({cfg.eval.keep})."
    return ["", f"Validation success by iteration (greedy, 'valid' split): {scores}.{which}"]


def _versions_lines(run_dir: Path) -> list[str]:
    """The software the run ran on, from versions.json (written when the run started)."""
    try:
        versions = json.loads((run_dir / VERSIONS_FILE).read_text())
    except (OSError, ValueError):
        return []
    packages = ", ".join(f"{name} {version}" for name, version in versions.get("packages", {}).items())
    return ["", "## Software", "", f"Python {versions.get('python')} on {versions.get('platform')}: {packages} ({VERSIONS_FILE})."]


def _held_out_heading(cfg: PipelineConfig) -> str:
    """Held out: neither trained on (train) nor used to pick the policy (the 'valid' split, when
    a warm-start epoch or an RL iteration is chosen by its score there). The heading names the
    split either way."""
    split = cfg.eval.split
    if split == "train":
        return "## Real tasks of the train split (eval.split: not held out)"
    picked_by = valid_pickers(cfg) if split == "valid" else []
    if picked_by:
        return f"## Real tasks of the valid split (eval.split: not held out, {' and '.join(picked_by)} picked the policy on it)"
    return f"## Held-out real tasks (split `{split}`)"


def _world_lines(rows: Sequence[tuple[str, dict[str, Any], str]]) -> list[str]:
    """How many distinct worlds the evaluations played, where the domain can tell (``world_key``),
    and how many of them the train tasks share: the interval above counts episodes."""
    row, prefix = next(((row, prefix) for _, row, prefix in reversed(rows) if f"{prefix}/worlds" in row), ({}, ""))
    if not row:
        return []
    episodes, worlds, trained = (int(row[f"{prefix}/{key}"]) for key in ("episodes", "worlds", "train_worlds"))
    lines = [""]
    if worlds < episodes:
        lines.append(f"- {episodes} episodes over **{worlds} distinct worlds**: a repeated world counts more than once, and the interval counts episodes, so it is too narrow")
    else:
        lines.append(f"- {episodes} episodes, each in a distinct world")
    if trained:
        lines.append(f"- **{trained} of these worlds are worlds of the train tasks**: play on them is not held out")
    return lines


def write(
    run_dir: Path, cfg: PipelineConfig, history: list[dict[str, Any]], *, counters: dict[str, float],
    selection: ValidSelection | None = None,
) -> Path:
    """Write report.md and plots into the run directory, from the run's metric rows (``history``:
    step -1 before RL, the last row after it) and its transition ``counters`` (those it has)."""
    plots = plot_success(history, run_dir)
    final = history[-1] if history else {}
    before = next((r for r in history if r.get("step") == -1), {})
    lines = [
        f"# DreamGym run: {run_dir.name}",
        "",
        f"- mode: `{cfg.loop.mode}`, env: `{cfg.env.name}`, policy: `{cfg.policy.name}`, algo: `{cfg.algo.name}`, seed: {cfg.seed}",
        f"- config sha256: `{(run_dir / 'config.sha256').read_text().strip()}`",
        f"- iterations: {cfg.loop.iterations}, tasks x group: {cfg.loop.tasks_per_iteration} x {cfg.loop.group_size}",
        "",
        _held_out_heading(cfg),
        "",
        "| policy | success rate | 95% CI | episodes |",
        "|---|---|---|---|",
    ]
    rows = (("untrained", before, "eval_untrained"), ("after warm start (SFT)", before, "eval_before"), ("after RL", final, "eval"))
    for label, row, prefix in rows:
        if f"{prefix}/success_rate" in row:
            lines.append(
                f"| {label} | {row[f'{prefix}/success_rate']:.3f} | [{row[f'{prefix}/success_ci_low']:.3f}, "
                f"{row[f'{prefix}/success_ci_high']:.3f}] | {int(row[f'{prefix}/episodes'])} |"
            )
    lines += _world_lines(rows)
    crashed = [(label, row, prefix) for label, row, prefix in rows if row.get(f"{prefix}/env_errors")]
    if crashed:
        lines += [""] + [
            f"- {label}: {int(row[f'{prefix}/env_errors'])} of {int(row[f'{prefix}/episodes'])} episodes ended by an "
            "environment error, counted as failures above" for label, row, prefix in crashed
        ]
    lines += _family_lines(rows)
    replayed = [(label, row, prefix) for label, row, prefix in rows if f"{prefix}/synthetic_agreement" in row]
    if replayed:
        lines += ["", "The same tasks played in the synthetic environment (the experience model on the policy's own play):", ""]
        lines += [
            f"- {label}: synthetic success {row[f'{prefix}/synthetic_success_rate']:.3f}, "
            f"outcome agreement with real play {row[f'{prefix}/synthetic_agreement']:.3f}"
            for label, row, prefix in replayed
        ]
    lines += _validation_lines(cfg, selection, final)
    lines += _unlisted_lines(history)
    lines += ["", "## Data used", ""]
    for key in ("offline_transitions", "branch_transitions", "real_transitions", "synthetic_transitions"):
        if key in counters:
            lines.append(f"- {key.replace('_', ' ')}: {int(counters[key])}")
    if counters.get("valid_transitions"):
        lines.append(f"- real transitions on validation tasks, to pick a policy (not trained on): {int(counters['valid_transitions'])}")
    extra = {k: v for k, v in before.items() if k.startswith(("experience/", "world_model/", "warmstart/", "fidelity/"))}
    if extra:
        lines += ["", "## Training before RL", ""] + [f"- {k}: {_fmt(v)}" for k, v in sorted(extra.items())]
    lines += _versions_lines(run_dir)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    path = run_dir / "report.md"
    atomic_write(path, ("\n".join(lines) + "\n").encode())
    return path
