"""A run's last checkpoint played on real games (as ``dreamgym eval`` plays them), one line per game.

Used by ``results/diagnosis.md`` to see *what* a policy does, not only how often it succeeds:
whether the coin starts in the first room, which exits that room has, and the actions played.
``--drop`` removes a regular expression from every real observation before the policy sees it,
to test whether one unfamiliar sentence explains a failure.

    python benchmarks/table1/probe_policy.py RUN_DIR --split test --set seed=1
    python benchmarks/table1/probe_policy.py RUN_DIR --split test --set seed=1 \
        --drop ' In one part of the room you see a dining table, that has nothing on it\\.'

``--set`` takes the run's own overrides of the table's base pipeline (``base.yaml``).
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

import msgspec

from dreamgym_core import checkpoint
from dreamgym_core.cli import _load
from dreamgym_core.loop import evaluate_run
from dreamgym_plugin_textworld import env as textworld_env

BASE = Path(__file__).resolve().with_name("base.yaml")  # the table's pinned pipeline (run.py's BASE)
DIRECTIONS = ("North", "South", "East", "West")


def drop_from_observations(pattern: str) -> None:
    """Edit every real observation (text only; the admissible actions stay the engine's)."""
    compiled, observe = re.compile(pattern), textworld_env.TextWorldEnv.observe

    def edited(self, raw):  # type: ignore[no-untyped-def]
        obs = observe(self, raw)
        return msgspec.structs.replace(obs, text=compiled.sub("", obs.text))

    textworld_env.TextWorldEnv.observe = edited


def describe(first_state: str) -> str:
    room = first_state.split("Inventory")[0]
    where = "coin here" if "a coin" in room else "coin away"
    exits = ",".join(d for d in DIRECTIONS if f"To the {d}" in room)
    return f"{where:9} exits {exits:11}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--split", default="test")
    parser.add_argument("--drop", default=None, help="Regular expression removed from every observation.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="Override of benchmarks/table1/base.yaml.")
    args = parser.parse_args()
    if args.drop:
        drop_from_observations(args.drop)
    resolved, plugins = _load(str(BASE), (*args.overrides, f"run_dir={args.run_dir}"))
    with tempfile.TemporaryDirectory() as tmp:
        # ``dreamgym eval --trajectories``: the last checkpoint, the evaluation's own seeds and temperature.
        played = Path(tmp) / "played.jsonl"
        evaluate_run(resolved, plugins, split=args.split, episodes=None, trajectories=played)
        trajectories = checkpoint.read_trajectories(played)
    for t in trajectories:
        print(int(t.success), describe(t.transitions[0].state), [x.action for x in t.transitions])
    print(f"success {sum(t.success for t in trajectories)}/{len(trajectories)} on {args.split}")


if __name__ == "__main__":
    main()
