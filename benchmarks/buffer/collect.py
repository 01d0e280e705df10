"""Collect real TextWorldExpress transitions with random valid actions, as JSONL.

Each line is a ``dreamgym_core.records.Transition`` (source "real"). Duplicates by
content (state, action, next state, reward, done) are dropped, so ``--count`` lines
are distinct transitions. Episodes cycle over several games and fresh seeds.

    python benchmarks/buffer/collect.py --count 600000 --seed-offset 0 --out /tmp/part0.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import random

import msgspec
from textworld_express import TextWorldExpressEnv

from dreamgym_core.records import Transition

GAMES = ("twc", "cookingworld", "coin", "mapreader", "sorting")


def episodes(env: TextWorldExpressEnv, game: str, seed: int, rng: random.Random, max_steps: int):
    """Yield (state, action, next_state, score, done) for one random-action episode."""
    obs, infos = env.reset(seed=seed, gameFold="train", generateGoldPath=False)
    state = f"{infos['taskDescription']}\n{obs}".strip()
    for _ in range(max_steps):
        action = rng.choice(infos["validActions"])
        obs, _, done, infos = env.step(action)
        next_state = f"{infos['taskDescription']}\n{obs}".strip()
        yield state, action, next_state, float(infos["score"]), bool(done), bool(infos["tasksuccess"])
        state = next_state
        if done:
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seed-offset", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rng = random.Random(args.seed_offset)
    envs = {}
    seen: set[bytes] = set()
    encoder = msgspec.json.Encoder()
    seed = args.seed_offset
    with open(args.out, "wb") as out:
        while len(seen) < args.count:
            for game in GAMES:
                if game not in envs:
                    envs[game] = TextWorldExpressEnv(envStepLimit=args.max_steps)
                    envs[game].load(gameName=game, gameParams="")
                for step, (s, a, s2, score, done, success) in enumerate(episodes(envs[game], game, seed, rng, args.max_steps)):
                    key = hashlib.blake2b(encoder.encode([s, a, s2, done]), digest_size=16).digest()
                    if key in seen or len(seen) >= args.count:
                        continue
                    seen.add(key)
                    record = Transition(
                        task_id=f"twx-{game}-{seed}", episode_id=f"twx-{game}-{seed}", step=step, state=s,
                        action=a, next_state=s2, reward=1.0 if success else 0.0, done=done, success=success,
                        source="real", model_id=f"textworld-express:{game}",
                    )
                    out.write(encoder.encode(record) + b"\n")
            seed += 1


if __name__ == "__main__":
    main()
