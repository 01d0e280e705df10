"""Every checkpoint of Table 1 cells played greedily on the validation and the test games.

    python benchmarks/table1/checkpoint_curve.py --game coin --row "GRPO DreamGym" --seeds 0 1 2 \\
        --out benchmarks/table1/results/validation/coin-grpo-dreamgym.md

It asks what ``eval.keep: best-valid`` would have done to a cell: for each checkpoint of a cell's
run directory (the warm start is checkpoint 0) it plays the 'valid' split (as ``eval.valid_every``
does) and the test split (as the final evaluation does), then reports the test success of the last
checkpoint (the table's value) and of the one the validation games pick (ties keep the earliest,
as the loop does). The checkpoints' RL is the cell's own, so nothing is trained again.

Needs the cells' run directories (``runs/``, not committed). Each cell's scores are cached in
``results/validation/cells/`` so the report can be rebuilt without them; the last checkpoint's test
score must equal the cached cell's held-out success, else the script stops (the run directory is
not the cell's).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as table1  # noqa: E402

from dreamgym_core import checkpoint  # noqa: E402
from dreamgym_core.cli import _load  # noqa: E402
from dreamgym_core.loop import Runner  # noqa: E402
from dreamgym_core.selection import best_iteration  # noqa: E402

OUT = table1.HERE / "results" / "validation"


def cache_path(game: str, row: str, seed: int, draw: int) -> Path:
    return OUT / "cells" / table1.cell_path(game, row, seed, draw=draw).name


def score_cell(game: str, row: str, seed: int, draw: int, valid_episodes: int) -> dict:
    """Validation and test success of every checkpoint of one cell's run directory."""
    cached = table1.current(game, row, seed, draw=draw)
    run_dir = table1.run_dir_of(game, row, seed, draw)
    if cached is None or not (run_dir / "checkpoints" / "latest").exists():
        raise SystemExit(f"{game} | {row} | seed {seed} draw {draw}: no cached cell or no run directory {run_dir}")
    resolved, plugins = _load(str(table1.BASE), tuple(table1.overrides(game, row, seed, run_dir, draw)))
    runner = Runner(resolved, plugins, run_dir, progress=False)
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("it-*"))
    valid, test = {}, {}
    for name in names:
        iteration = checkpoint.load(runner, name, roll_back_buffer=False)
        valid[iteration] = runner.evaluate(prefix="v", split="valid", episodes=valid_episodes, temperature=0.0)["v/success_rate"]
        test[iteration] = runner.evaluate(prefix="t", split="test")["t/success_rate"]
        print(f"{game} | {row} | seed {seed} draw {draw} | checkpoint {iteration}: valid {valid[iteration]:.3f}, test {test[iteration]:.3f}", flush=True)
    last = max(test)
    if abs(test[last] - cached["success"]) > 1e-9:
        raise SystemExit(f"{run_dir}: last checkpoint plays {test[last]:.4f} on test, the cached cell {cached['success']:.4f}")
    return {"game": game, "row": row, "seed": seed, "draw": draw, "valid_episodes": valid_episodes,
            "valid": {str(k): v for k, v in valid.items()}, "test": {str(k): v for k, v in test.items()}}


def cell_scores(game: str, row: str, seed: int, draw: int, valid_episodes: int) -> dict:
    path = cache_path(game, row, seed, draw)
    if path.exists():
        return json.loads(path.read_text())
    scores = score_cell(game, row, seed, draw, valid_episodes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(scores, indent=1) + "\n")
    return scores


def curves(cell: dict) -> tuple[dict[int, float], dict[int, float]]:
    """A cached cell's validation and test success by checkpoint (JSON keys are strings)."""
    return ({int(k): v for k, v in cell["valid"].items()}, {int(k): v for k, v in cell["test"].items()})


def summary(cells: list[dict]) -> dict[str, float]:
    """Mean test success (%) of the warm start, the last checkpoint and the validation pick."""
    rows = []
    for cell in cells:
        valid, test = curves(cell)
        rows.append((test[0], test[max(test)], test[best_iteration(valid)], max(test.values()), len(set(valid.values())) == 1))
    return {
        "warm start": 100 * statistics.mean(r[0] for r in rows),
        "last checkpoint": 100 * statistics.mean(r[1] for r in rows),
        "validation pick": 100 * statistics.mean(r[2] for r in rows),
        "best test checkpoint (picked on test: a ceiling for any pick, not a method)": 100 * statistics.mean(r[3] for r in rows),
        "cells with flat validation": float(sum(r[4] for r in rows)),
    }


def report(cells: list[dict], command: str) -> str:
    lines = [
        "# Checkpoints played on validation and test games", "",
        f"Produced by `{command}`.", "",
        "Success % by checkpoint (0: the warm start; then after each RL iteration), greedy play, "
        f"{cells[0]['valid_episodes']} validation and 32 test games. The validation pick is the earliest "
        "checkpoint with the best validation success, as `eval.keep: best-valid` keeps.", "",
        "| cell | validation by checkpoint | test by checkpoint | test: last / validation pick |", "|---|---|---|---|",
    ]
    for c in cells:
        valid, test = curves(c)
        pick = best_iteration(valid)
        name = f"{c['game']} {c['row']} seed {c['seed']}" + (f" draw {c['draw']}" if c["draw"] else "")
        lines.append(
            f"| {name} | {' '.join(f'{100 * valid[k]:.0f}' for k in sorted(valid))} | "
            f"{' '.join(f'{100 * test[k]:.0f}' for k in sorted(test))} | {100 * test[max(test)]:.1f} / {100 * test[pick]:.1f} (checkpoint {pick}) |"
        )
    lines += ["", "Means over these cells:", ""]
    lines += [f"- {k}: {v:.1f}" if k != "cells with flat validation" else f"- {k}: {int(v)} of {len(cells)}" for k, v in summary(cells).items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", required=True, choices=sorted(table1.GAMES))
    parser.add_argument("--rows", nargs="+", required=True, choices=list(table1.ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, required=True)
    parser.add_argument("--draws", nargs="+", type=int, default=[0])
    parser.add_argument("--valid-episodes", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cells = [
        cell_scores(args.game, row, seed, draw, args.valid_episodes)
        for row in args.rows for seed in args.seeds for draw in args.draws
    ]
    command = "python benchmarks/table1/checkpoint_curve.py " + " ".join(
        a if " " not in a else json.dumps(a) for a in sys.argv[1:]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(cells, command))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
