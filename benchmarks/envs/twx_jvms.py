"""Memory and start time of an evaluation's worth of TextWorldExpress games, with every game in
its own JVM (``games_per_jvm: 1``) and with several games per JVM (the default, 8).

    .venv/bin/python benchmarks/envs/twx_jvms.py --out benchmarks/envs/results/twx_jvms.json

Each setting makes a fresh coin domain, opens one env per test task (as an evaluation does),
resets them all and plays ``--steps`` expert steps in each, the envs taking turns; then it reads
the resident memory of the JVMs this process started (psutil) while they are all up. Both
settings run in one process, one after the other, so they share the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import msgspec
import psutil

from dreamgym_plugin_textworld import TwxConfig, make_twx


def jvm_memory() -> tuple[int, float]:
    """(JVMs running under this process, their summed resident memory in GB)."""
    jvms = [p for p in psutil.Process().children(recursive=True) if p.name() == "java"]
    return len(jvms), sum(p.memory_info().rss for p in jvms) / 1e9


def evaluation(games: int, games_per_jvm: int, steps: int) -> dict[str, Any]:
    config = msgspec.convert({"game": "coin", "train_seeds": 1, "test_seeds": games, "games_per_jvm": games_per_jvm}, type=TwxConfig)
    domain = make_twx(config)
    tasks = domain.tasks(split="test")  # starts the domain's probe engine
    start = time.perf_counter()
    envs = [domain.make_env() for _ in tasks]
    try:
        done = [env.reset(task=task) is None for env, task in zip(envs, tasks)]
        for _ in range(steps):
            for i, env in enumerate(envs):
                if not done[i]:
                    done[i] = env.step(action=env.expert_action() or "look around").done
        seconds = time.perf_counter() - start
        count, gb = jvm_memory()
    finally:
        for env in envs:
            env.close()
        domain.close()
    return {"games": games, "games_per_jvm": games_per_jvm, "jvms": count, "jvm_rss_gb": round(gb, 2), "reset_and_play_s": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", type=int, default=32, help="Test tasks, one env each (the main job evaluates 32).")
    parser.add_argument("--steps", type=int, default=5, help="Expert steps per game, the envs taking turns.")
    parser.add_argument("--out", default="benchmarks/envs/results/twx_jvms.json")
    args = parser.parse_args()
    rows = [evaluation(args.games, per_jvm, args.steps) for per_jvm in (1, 8)]
    for row in rows:
        print(json.dumps(row), flush=True)
    report = {
        "benchmark": "TextWorldExpress games per JVM: memory and start time of one evaluation's envs",
        "command": f"python benchmarks/envs/twx_jvms.py --games {args.games} --steps {args.steps}",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, python {platform.python_version()}",
        "rows": rows,
        "memory_ratio": round(rows[1]["jvm_rss_gb"] / rows[0]["jvm_rss_gb"], 3),
        "time_ratio": round(rows[1]["reset_and_play_s"] / rows[0]["reset_and_play_s"], 3),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
