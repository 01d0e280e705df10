"""Where the experience model's next states part from the real game, step by step, on the warm
start's own play: the policy plays a split's games for real (``dreamgym eval --checkpoint 0
--trajectories``), then the experience model answers each of those real steps from the real history
(``dreamgym eval-model --predictions``, teacher-forced, demos from the run's offline data), and each
answer is compared with the real next state line by line.

    python benchmarks/table1/step_fidelity.py benchmarks/table1/runs/here/mapreader/grpo-dreamgym/seed2 \\
        --split test --out benchmarks/table1/results/step-fidelity

Per step index and over all steps: the share of answers naming the real room (``You are in the X``),
the real exits (``To the D you see the X``), the real action list and the moves it lists; after each ``move``, the share
naming the room the real move reached; and, of the wrong rooms, how many the prompt's state names at
all (else they come from the demos or nowhere). Text games only (TextWorldExpress's observation
lines). The run's kernels are held to AVX2 on an AVX-512 CPU as its cells ran (``run.HELD_TO_AVX2``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as table1  # noqa: E402

ROOM = re.compile(r"You are in the ([a-z ]+?)\.")
EXIT = re.compile(r"To the (\w+) you see the ([a-z ]+?)\.")
ACTIONS = re.compile(r"Actions \(\d+\): (.*)")


def room(state: str) -> str | None:
    found = ROOM.search(state)
    return found.group(1) if found else None


def exits(state: str) -> list[tuple[str, str]]:
    return sorted(EXIT.findall(state))


def action_list(state: str) -> str | None:
    found = ACTIONS.search(state)
    return found.group(1) if found else None


def listed_moves(state: str) -> list[str]:
    """The moves the action list offers (the exits the policy can take; items aside)."""
    return sorted(a for a in (action_list(state) or "").split("; ") if a.startswith("move "))


def compare(prediction: dict) -> dict[str, bool]:
    """One teacher-forced answer against the real next state, part by part. A part the real state
    does not show (no room line after ``take coin``) is right when the answer shows none either."""
    real, model = prediction["real_next_state"], prediction["model_next_state"] or ""
    right_room = room(real) == room(model)
    named = room(model) is not None and room(model) in prediction["state"]
    return {
        "room": right_room, "exits": exits(real) == exits(model), "actions": action_list(real) == action_list(model),
        "listed_moves": listed_moves(real) == listed_moves(model),
        "exact": bool(prediction["next_state_exact"]),
        "wrong_room_named_in_state": not right_room and named, "wrong_room_not_in_state": not right_room and not named,
    }


def summarise(predictions: list[dict]) -> dict:
    """Shares per part, over all answered steps, per step index, and after moves."""
    answered = [p for p in predictions if p["parse_status"] != "failed"]
    parts = [compare(p) for p in answered]
    share = lambda rows, key: round(sum(r[key] for r in rows) / len(rows), 3) if rows else None  # noqa: E731
    by_step = collections.defaultdict(list)
    for p, r in zip(answered, parts, strict=True):
        by_step[p["step"]].append(r)
    moves = [r for p, r in zip(answered, parts, strict=True) if p["action"].startswith("move")]
    return {
        "steps": len(predictions), "unparsed": len(predictions) - len(answered),
        **{key: share(parts, key) for key in parts[0]},
        "moves": len(moves), "room_after_move": share(moves, "room"),
        "by_step": {step: {"n": len(rows), "room": share(rows, "room"), "room_exits_actions": share(
            [{"all": r["room"] and r["exits"] and r["actions"]} for r in rows], "all")} for step, rows in sorted(by_step.items())},
    }


def _dreamgym(args: list[str], out: Path) -> None:
    env = table1.HELD_TO_AVX2 if table1.cpu_simd() == "avx512" else {}
    done = subprocess.run([sys.executable, "-m", "dreamgym_core.cli", *args], capture_output=True, text=True,
                          cwd=table1.ROOT, env={**os.environ, **env})
    if done.returncode != 0:
        raise SystemExit(f"dreamgym {args[0]} failed:\n{done.stderr[-2000:]}")
    out.write_text(done.stdout)


def measure(run_dir: Path, split: str, work: Path) -> dict:
    """The warm start's real play of ``split`` and the model's answers to its steps, in ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    played, steps, answers = work / f"{split}-episodes.jsonl", work / f"{split}-steps.jsonl", work / f"{split}-predictions.jsonl"
    if not answers.exists():
        _dreamgym(["eval", str(run_dir / "config.json"), "--checkpoint", "0", "--split", split, "--trajectories", str(played)],
                  work / f"{split}-eval.json")
        with steps.open("w") as f:
            for line in played.read_text().splitlines():
                for t in json.loads(line)["transitions"]:
                    f.write(json.dumps(t) + "\n")
        _dreamgym(["eval-model", str(run_dir / "config.json"), "--heldout", str(steps), "--train-data",
                   str(run_dir / "offline_annotated.jsonl"), "--model-dir", str(run_dir / "experience_model"),
                   "--predictions", str(answers)], work / f"{split}-eval-model.json")
    real = json.loads((work / f"{split}-eval.json").read_text())
    predictions = [json.loads(line) for line in answers.read_text().splitlines() if line.strip()]
    return {"run_dir": str(run_dir), "split": split, "warmstart_success": real["eval/success_rate"], **summarise(predictions)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--split", default="test", choices=["train", "valid", "test"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/step-fidelity"), help="Episodes and answers (large, not committed).")
    parser.add_argument("--out", type=Path, help="Append the summary as one JSON line to OUT/summary.jsonl.")
    args = parser.parse_args()
    work = args.work / args.run_dir.resolve().relative_to(table1.RUNS.resolve()).as_posix().replace("/", "--")
    summary = measure(args.run_dir, args.split, work)
    line = json.dumps(summary)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with (args.out / "summary.jsonl").open("a") as f:
            f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
