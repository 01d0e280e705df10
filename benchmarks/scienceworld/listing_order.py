"""Does a variation's reset state read the same whatever its JVM loaded before?

    python benchmarks/scienceworld/listing_order.py [--variations 20] [TASK ...]

For each task, three JVMs load and reset its first N train variations (easy simplifications) in
three histories: in order, in reverse, and in order then in reverse (each one twice). A variation
counts as differing when its reset state is not one and the same string in all of them. It is
counted twice: on the simulator's own text (its answer to "look around" and the inventory, as
the abstract state held them before the listings were sorted) and on the abstract state the
adapter renders now (``render_state``, which sorts each listing).
"""

from __future__ import annotations

import argparse
import json

from dreamgym_plugin_scienceworld.env import SciWorldEnv, render_state

TASKS = ["find-non-living-thing", "boil", "find-animal", "chemistry-mix", "grow-plant", "measure-melting-point-known-substance"]


def reset_states(task: str, order: list[int]) -> dict[int, set[tuple[str, str]]]:
    """Variation -> the (raw, rendered) reset states seen along ``order``, in one JVM."""
    env = SciWorldEnv(max_steps=30, max_observation_chars=100_000)
    seen: dict[int, set[tuple[str, str]]] = {}
    try:
        for variation in order:
            with env._jvm.call(f"reset {task} {variation}") as engine:
                env._load(engine.server, task, variation, "easy", gold_path=False)
                engine.server.reset()
                observation, score, _, inventory = env._send(engine.server, "look around")
            raw = f"{observation}\n{inventory}"
            seen.setdefault(variation, set()).add((raw, render_state(observation, inventory, score, max_observation_chars=100_000)))
    finally:
        env.close()
    return seen


def differing(task: str, n: int) -> dict[str, int | str]:
    forward = list(range(n))
    histories = [forward, forward[::-1], forward + forward[::-1]]
    states: dict[int, set[tuple[str, str]]] = {v: set() for v in forward}
    for order in histories:
        for variation, seen in reset_states(task, order).items():
            states[variation] |= seen
    return {
        "task": task,
        "variations": n,
        "raw_differ": sum(len({raw for raw, _ in s}) > 1 for s in states.values()),
        "rendered_differ": sum(len({rendered for _, rendered in s}) > 1 for s in states.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="*", default=TASKS)
    parser.add_argument("--variations", type=int, default=20)
    args = parser.parse_args()
    for task in args.tasks:
        print(json.dumps(differing(task, args.variations)), flush=True)


if __name__ == "__main__":
    main()
