"""Real environment steps per second: through the textworld plugin vs the raw engine.

Both sides drive the same engine object (one JVM for TextWorldExpress, one textworld
env with the same requested infos for TextWorld) in short paired chunks: chunk i of
each side resets the same game (not timed) and plays the same seeded uniform-random
admissible actions, so both do identical engine work; the order alternates so machine
load hits both alike. The raw side calls the engine's own Python API
(``TextWorldExpressEnv.step`` / ``textworld`` ``env.step``); the plugin side goes
through ``TextWorldEnv`` (state mapping, admissibility check, reward semantics).
Overhead = 1 - plugin steps/s / raw steps/s, per pair of chunks; the median is reported.

For TextWorldExpress the plugin calls the engine's ``stepJSON`` once per step, while
the wrapper's ``step`` makes a second JVM round trip per step to re-fetch the task
description, so the plugin is faster than the raw API there (negative overhead). To
show the plugin's own cost apart from that, ``plugin_python_us_per_step`` times the
plugin's play minus the time inside the engine call that steps the game.

    .venv/bin/python benchmarks/envs/bench_textworld.py --out benchmarks/envs/results/textworld.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from typing import Any, Callable

import msgspec

from dreamgym_plugin_textworld import TwConfig, TwxConfig, make_tw, make_twx


def raw_twx_chunk(env: Any, reset_args: dict[str, Any], steps: int, seed: int) -> tuple[int, float]:
    """Reset (not timed), then up to ``steps`` random valid actions on the bare API."""
    _, infos = env.reset(**reset_args)
    rng, done, n = random.Random(seed), False, 0
    start = time.perf_counter()
    while n < steps and not done:
        _, _, done, infos = env.step(rng.choice(sorted(infos["validActions"])))
        n += 1
    return n, time.perf_counter() - start


def raw_tw_chunk(env: Any, steps: int, seed: int) -> tuple[int, float]:
    """Reset (not timed), then up to ``steps`` random admissible actions on the bare API."""
    state = env.reset()
    rng, done, n = random.Random(seed), False, 0
    start = time.perf_counter()
    while n < steps and not done:
        state, _, done = env.step(rng.choice(sorted(state["admissible_commands"])))
        n += 1
    return n, time.perf_counter() - start


def plugin_chunk(env: Any, task: Any, steps: int, seed: int) -> tuple[int, float]:
    """Reset (not timed), then up to ``steps`` random admissible actions through the plugin."""
    obs = env.reset(task=task)
    rng, done, n = random.Random(seed), False, 0
    start = time.perf_counter()
    while n < steps and not done:
        result = env.step(action=rng.choice(obs.admissible_actions))
        obs, done = result.observation, result.done
        n += 1
    return n, time.perf_counter() - start


def compare(raw: Callable[[int], tuple[int, float]], plugin: Callable[[int], tuple[int, float]], chunks: int) -> dict[str, Any]:
    """Paired chunks: chunk i of both sides plays the same game with the same action seed on
    the same engine process, so they do identical engine work; the order alternates.

    ``overhead`` is the median over pairs of 1 - raw time / plugin time: a load spike on
    this shared machine hits one pair, not the estimate. The all-steps rates are kept too.
    """
    raw_steps = raw_time = plugin_steps = plugin_time = 0.0
    pairs = []
    for chunk in range(chunks):
        first, second = (raw, plugin) if chunk % 2 == 0 else (plugin, raw)
        a, b = first(chunk), second(chunk)
        r, p = (a, b) if first is raw else (b, a)
        if r[0] != p[0]:
            raise RuntimeError(f"chunk {chunk}: raw played {r[0]} steps, plugin {p[0]}; the two sides diverged")
        pairs.append(1 - r[1] / p[1])
        raw_steps, raw_time = raw_steps + r[0], raw_time + r[1]
        plugin_steps, plugin_time = plugin_steps + p[0], plugin_time + p[1]
    raw_sps, plugin_sps = raw_steps / raw_time, plugin_steps / plugin_time
    return {
        "raw_steps_per_s": round(raw_sps, 1),
        "plugin_steps_per_s": round(plugin_sps, 1),
        "overhead": round(statistics.median(pairs), 4),
        "overhead_all_steps": round(1 - plugin_sps / raw_sps, 4),
        "steps_per_side": int(raw_steps),
    }


class _TimedCalls:
    """Proxy that adds the time spent in one method of ``target`` to ``seconds``."""

    def __init__(self, target: Any, method: str) -> None:
        self.target, self.method, self.seconds = target, method, 0.0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.target, name)
        if name != self.method:
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


def plugin_python_cost(env: Any, task: Any, holder: Any, attr: str, method: str, steps: int, chunks: int) -> float:
    """Microseconds per step the plugin spends outside the engine call that steps the game
    (``holder.attr.method``), measured by timing that call during plugin play."""
    original = getattr(holder, attr)
    proxy = _TimedCalls(original, method)
    setattr(holder, attr, proxy)
    try:
        done = [plugin_chunk(env, task, steps, i) for i in range(chunks)]
    finally:
        setattr(holder, attr, original)
    n, total = sum(d[0] for d in done), sum(d[1] for d in done)
    return round((total - proxy.seconds) / n * 1e6, 1)


def bench_twx(game: str, params: dict[str, int], steps: int, chunks: int) -> dict[str, Any]:
    from dreamgym_plugin_textworld.games import TWX_FOLD_SEEDS, twx_params_string

    domain = make_twx(msgspec.convert({"game": game, "params": params, "train_seeds": 1}, type=TwxConfig))
    task = domain.tasks(split="train")[0]
    env = domain.make_env()
    env.max_steps = 10**9  # same episode ends as the raw loop: the game's own
    env.reset(task=task)  # starts the engine; the raw side then drives the same engine object
    # The TextWorldExpressEnv the engine's JVM guard started: the same JVM, with an engine
    # interface of its own (see TwxJvm), into which the raw side loads the same game.
    raw_env = env.engine._jvm.wrapper
    raw_env.load(game, twx_params_string(task.payload["params"]))
    reset_args = {"seed": task.payload["seed"], "gameFold": TWX_FOLD_SEEDS["train"][0], "generateGoldPath": True}
    try:
        result = compare(
            lambda i: raw_twx_chunk(raw_env, reset_args, steps, i),
            lambda i: plugin_chunk(env, task, steps, i),
            chunks,
        )
        return {**result, "plugin_python_us_per_step": plugin_python_cost(env, task, env.engine, "_server", "stepJSON", steps, chunks // 3)}
    finally:
        env.close()
        domain.close()


def bench_tw(game: str, params: dict[str, int], steps: int, chunks: int, cache: str) -> dict[str, Any]:
    config = msgspec.convert({"game": game, "params": params, "train_seeds": 1, "cache_dir": cache}, type=TwConfig)
    domain = make_tw(config)
    task = domain.tasks(split="train")[0]
    env = domain.make_env()
    env.max_steps = 10**9
    env.reset(task=task)
    raw_env = env.engine._env  # the textworld env the plugin started, same requested infos
    try:
        result = compare(lambda i: raw_tw_chunk(raw_env, steps, i), lambda i: plugin_chunk(env, task, steps, i), chunks)
        return {**result, "plugin_python_us_per_step": plugin_python_cost(env, task, env.engine, "_env", "step", steps, chunks // 3)}
    finally:
        env.close()
        domain.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="TextWorldExpress steps per chunk (at most).")
    parser.add_argument("--tw-steps", type=int, default=20, help="TextWorld steps per chunk (at most).")
    parser.add_argument("--chunks", type=int, default=150, help="Paired chunks per game.")
    parser.add_argument("--out", default="benchmarks/envs/results/textworld.json")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for game, params in [("coin", {}), ("twc", {}), ("cookingworld", {}), ("mapreader", {})]:
        results[f"twx/{game}"] = bench_twx(game, params, args.steps, args.chunks)
        print(f"twx/{game}", results[f"twx/{game}"], flush=True)
    with tempfile.TemporaryDirectory() as cache:
        for game, params in [("coin_collector", {"level": 5}), ("treasure_hunter", {"level": 3})]:
            results[f"tw/{game}"] = bench_tw(game, params, args.tw_steps, args.chunks, cache)
            print(f"tw/{game}", results[f"tw/{game}"], flush=True)
    report = {
        "benchmark": "textworld plugin vs raw engine, random admissible actions",
        "command": "python benchmarks/envs/bench_textworld.py " + f"--steps {args.steps} --tw-steps {args.tw_steps} --chunks {args.chunks}",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, python {platform.python_version()}",
        "results": results,
        "max_overhead": max(r["overhead"] for r in results.values()),
    }
    from pathlib import Path

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
