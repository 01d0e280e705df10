"""The SFT warm start with its demos' room descriptions perturbed: a test of whether a policy trained
only on train-fold worlds can learn to ignore furniture it has not seen (results/diagnosis.md).

Each demo prompt gets ``COPIES`` extra copies in which every furniture sentence of the observation
(not the coin's, not an exit's) is dropped with probability ``DROP``. Only train-fold words are used;
nothing from the test fold enters. Then the usual ``dreamgym run`` of the table's base pipeline (``base.yaml``):

    python benchmarks/table1/augmented_warmstart.py --set run_dir=R --set seed=1 --set loop.iterations=0 \
        --set loop.mode=real --set experience.skip=true --set eval.synthetic_agreement=false \
        --set loop.warmstart_epochs=40
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

from dreamgym_core import loop
from dreamgym_core.cli import cli

COPIES, DROP = 2, 0.3
_SENTENCE = re.compile(r"(?<=\.) (?=[A-Z])")
_KEEP = ("coin", "To the ", "You are in")


def perturb(prompt: str, rng: random.Random) -> str:
    """Drop furniture sentences from the prompt's observation line (the line after 'Observation: ')."""
    lines = prompt.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("Observation: "):
            sentences = _SENTENCE.split(line[len("Observation: "):])
            kept = [s for s in sentences if any(k in s for k in _KEEP) or rng.random() >= DROP]
            lines[i] = "Observation: " + " ".join(kept)
    return "\n".join(lines)


def augmented(original):  # type: ignore[no-untyped-def]
    def demo_examples(trajectories, *, max_steps, history_window):  # type: ignore[no-untyped-def]
        pairs = original(trajectories, max_steps=max_steps, history_window=history_window)
        rng = random.Random(0)
        return pairs + [(perturb(p, rng), r) for _ in range(COPIES) for p, r in pairs]

    return demo_examples


if __name__ == "__main__":
    loop.demo_examples = augmented(loop.demo_examples)
    sys.exit(cli(["run", str(Path(__file__).resolve().with_name("base.yaml")), *sys.argv[1:]]))
