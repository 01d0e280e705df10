"""The experience model's answers to the warm start's own real steps, for ``next_state_parts.py``:
the run's warm start plays a split's games for real (``dreamgym eval --checkpoint 0
--trajectories``), then the experience model answers each of those real steps from the real history
(``dreamgym eval-model --predictions``: teacher-forced, demos retrieved from the run's annotated
offline data as in training), with the kernels held to AVX2 on an AVX-512 CPU as the run's cells ran
(``run.HELD_TO_AVX2``). Prints the part-by-part table of ``next_state_parts.py``.

    python benchmarks/table1/step_fidelity.py benchmarks/table1/runs/here/mapreader/grpo-dreamgym/seed2 --split train

The train split is where RL plays (its seed tasks and their variations); the test split is what
``eval.synthetic_agreement`` replays. Files go to ``--work`` (large, not committed); a split whose
predictions are there is not played again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import next_state_parts  # noqa: E402
import run as table1  # noqa: E402


def _dreamgym(args: list[str], out: Path) -> None:
    """One dreamgym command, its stdout to ``out``; a failure stops with its stderr's tail."""
    env = table1.HELD_TO_AVX2 if table1.cpu_simd() == "avx512" else {}
    done = subprocess.run([sys.executable, "-m", "dreamgym_core.cli", *args], capture_output=True, text=True,
                          cwd=table1.ROOT, env={**os.environ, **env})
    if done.returncode != 0:
        raise SystemExit(f"dreamgym {args[0]} failed:\n{done.stderr[-2000:]}")
    out.write_text(done.stdout)


def predictions(run_dir: Path, split: str, work: Path) -> Path:
    """The warm start's real play of ``split`` and the model's answer to each of its steps."""
    work.mkdir(parents=True, exist_ok=True)
    played, steps, answers = (work / f"{split}-{name}.jsonl" for name in ("episodes", "steps", "predictions"))
    if answers.exists():
        return answers
    config = str(run_dir / "config.json")
    _dreamgym(["eval", config, "--checkpoint", "0", "--split", split, "--trajectories", str(played)], work / f"{split}-eval.json")
    with steps.open("w") as f:  # eval-model reads Transition records, one per line
        for line in played.read_text().splitlines():
            for transition in json.loads(line)["transitions"]:
                f.write(json.dumps(transition) + "\n")
    _dreamgym(["eval-model", config, "--heldout", str(steps), "--train-data", str(run_dir / "offline_annotated.jsonl"),
               "--model-dir", str(run_dir / "experience_model"), "--predictions", str(answers)], work / f"{split}-eval-model.json")
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--split", default="test", choices=["train", "valid", "test"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/step-fidelity"))
    args = parser.parse_args()
    work = args.work / args.run_dir.resolve().relative_to(table1.RUNS.resolve()).as_posix().replace("/", "--")
    answers = predictions(args.run_dir, args.split, work)
    real = json.loads((work / f"{args.split}-eval.json").read_text())
    print(f"warm start, real success on {args.split}: {real['eval/success_rate']:.3f}")
    sys.argv = [sys.argv[0], str(answers)]
    next_state_parts.main()


if __name__ == "__main__":
    main()
