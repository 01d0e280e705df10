"""Does retrieval show the experience model the answer, and does the model use it?

For every valid ``move`` among held-out real steps (TextWorldExpress): whether the demos the
pipeline's buffer retrieves for it (as ``dreamgym eval-model`` builds its prompts: same encoder,
``loop.top_k`` and ``loop.demos``, never the step's own episode) include a step with the same action that reached the
same observation, whether the training data holds such a step of the same world (task) at all, and
how often the model's answer names the real room in each case (from ``eval-model --predictions``).

    python benchmarks/table1/retrieval_coverage.py PIPELINE HELDOUT.jsonl TRAIN.jsonl PREDICTIONS.jsonl [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from dreamgym_core.checkpoint import read_transitions
from dreamgym_core.commands.eval_model import _build_buffer, _world_of
from dreamgym_core.config import load_pipeline, resolve
from dreamgym_core.experience import requests_for
from dreamgym_core.fidelity import normalise
from dreamgym_core.plugins import Plugins
from dreamgym_core.records import Transition
from next_state_parts import room  # the script's folder is on sys.path when run as a script


def observation(state: str) -> str:
    """The state's observation, normalised (its text before the inventory line)."""
    return normalise(state).split("inventory:")[0].strip()


def coverage(steps: list[Transition], demos: list[list[Transition]], train: list[Transition], answers: list[dict]) -> Counter:
    """Counts over the valid moves of ``steps`` (pure: tests import it)."""
    reached = {(t.task_id, t.action, observation(t.next_state)) for t in train}
    c: Counter = Counter()
    for step, shown, answer in zip(steps, demos, answers):
        if not (step.valid and step.action.startswith("move ")):
            continue
        in_demo = any(d.action == step.action and observation(d.next_state) == observation(step.next_state) for d in shown)
        right = room(answer["model_next_state"]) == room(step.next_state)
        c["moves"] += 1
        c["in_data"] += (step.task_id, step.action, observation(step.next_state)) in reached
        c["in_demo"] += in_demo
        c["right_in_demo" if in_demo else "right_not_in_demo"] += right
    return c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline")
    parser.add_argument("heldout", type=Path)
    parser.add_argument("train", type=Path)
    parser.add_argument("predictions", type=Path)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    outer = load_pipeline(args.pipeline, tuple(args.overrides))
    plugins = Plugins.for_names(outer.plugins, where=args.pipeline)
    resolved = resolve(outer, plugins, where=args.pipeline)
    steps, train = read_transitions(args.heldout), read_transitions(args.train)
    answers = [json.loads(line) for line in args.predictions.read_text().splitlines() if line.strip()]
    if len(answers) != len(steps):
        raise SystemExit(f"{args.predictions}: {len(answers)} answers for {len(steps)} held-out steps")
    loop = resolved.pipeline.loop
    world_of = _world_of(resolved, plugins) if loop.demos == "same-world-first" else None
    requests = requests_for(
        steps, _build_buffer(resolved, plugins, train), history_window=loop.history_window, k=loop.top_k, world_of=world_of
    )
    c = coverage(steps, [r.demos for r in requests], train, answers)
    shown, hidden = c["in_demo"], c["moves"] - c["in_demo"]
    print(f"valid moves: {c['moves']}; the data holds the real destination for {c['in_data']}, "
          f"a retrieved demo (top_k={loop.top_k}) shows it for {shown}")
    print(f"room right when a demo shows it: {c['right_in_demo']} of {shown}; otherwise: {c['right_not_in_demo']} of {hidden}")


if __name__ == "__main__":
    main()
