"""How each row's training environment answered moves the room does not offer.

A "wall move" is an RL step whose action is ``move <direction>`` while the state's action
list offers no such move. The real engine refuses it (the step is wasted); an experience
model may accept it and show another room. This reads the replay buffers of a game's run
directories (``runs/<base>-p<protocol>/<game>/<row>/<seed>``, on the machine that ran the
cells) and counts, per row over every cell found: the wall moves among its RL steps, the
share the environment accepted, and the share of accepted ones whose next state offers
``take coin``. The buffer keeps one copy of identical steps (same state, action, next state
and outcome), so these are counts of distinct steps. Step 0 is counted apart: its action
list is the real reset's even in DreamGym, while later synthetic lists are the experience
model's own writing.

    python benchmarks/table1/wall_moves.py --game coin --out benchmarks/table1/results/wall-moves-coin.md
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from dreamgym_core.records import Transition
from dreamgym_plugin_encoders import HashingEncoder
from dreamgym_plugin_exact import ExactBuffer, ExactConfig

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as table1  # noqa: E402

#: The rows whose RL steps are stored in their buffer, and the source of those steps.
RL_SOURCES = {"GRPO (real env)": "real", "PPO (real env)": "real"}


def stored_transitions(buffer_dir: Path) -> list[Transition]:
    """The live records of a run's replay buffer, read by the buffer itself: evictions and
    rollbacks applied, a damaged frame warned about by file. The encoder is the default
    pipeline's (another one's embeddings raise a DataError naming it); nothing is embedded or
    written, as no record is added and no backfill is started."""
    config = ExactConfig(on_encoder_change="error", backfill_background=False)
    with ExactBuffer(config, encoder=HashingEncoder(), path=buffer_dir) as buffer:
        return list(buffer)


def is_wall_move(t: Transition) -> bool:
    return t.action.startswith("move ") and bool(t.admissible_actions) and t.action not in t.admissible_actions


def count_cell(steps: list[Transition]) -> Counter:
    """Wall moves of one cell's stored RL steps and how many were accepted (pure: tests import it)."""
    c: Counter = Counter()
    for t in steps:
        where = "step0" if t.step == 0 else "later"
        c[f"steps_{where}"] += 1
        if is_wall_move(t):
            c[f"wall_{where}"] += 1
            c[f"accepted_{where}"] += t.valid
            c[f"coin_after_{where}"] += t.valid and "take coin" in t.next_state.rsplit("Actions", 1)[-1]
    return c


def share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}% ({part}/{whole})" if whole else "-"


def table(game: str, runs: Path) -> list[str]:
    lines = [
        "| row | cells | wall moves at step 0 | accepted | then offers `take coin` "
        "| wall moves at later steps | accepted | then offers `take coin` |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table1.ROWS:
        if not (row in RL_SOURCES or "DreamGym" in row or row.startswith("w/o")):
            continue
        source = RL_SOURCES.get(row, "synthetic")
        cells = sorted(p for p in (runs / game / table1.slug(row)).glob("seed*") if (p / "buffer").is_dir())
        c: Counter = Counter()
        for cell in cells:
            c.update(count_cell([t for t in stored_transitions(cell / "buffer") if t.source == source]))
        if cells:
            lines.append(
                f"| {row} | {len(cells)} | {c['wall_step0']} of {c['steps_step0']} steps "
                f"| {share(c['accepted_step0'], c['wall_step0'])} | {share(c['coin_after_step0'], c['accepted_step0'])} "
                f"| {c['wall_later']} of {c['steps_later']} steps | {share(c['accepted_later'], c['wall_later'])} "
                f"| {share(c['coin_after_later'], c['accepted_later'])} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", default="coin")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = HERE / "runs" / f"{table1.base_sha256()[:12]}-p{table1.PROTOCOL}"
    text = [
        f"# Wall moves in each row's RL environment ({args.game}, protocol {table1.PROTOCOL})",
        "",
        f"Produced by `python benchmarks/table1/wall_moves.py --game {args.game} --out {args.out}` from the run",
        f"directories under `runs/{runs.name}/{args.game}/` (every seed and draw found; run directories are not",
        "committed, so this needs the machine that ran the cells or a rerun of them). A wall move is",
        "`move <direction>` while the state's action list offers no such move; after step 0 a synthetic",
        "state's list is the experience model's. \"Accepted\": the environment called the step valid.",
        "Counts are of distinct steps: the replay buffer stores one copy of identical steps.",
        "",
        *table(args.game, runs),
        "",
    ]
    args.out.write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
