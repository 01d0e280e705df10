"""Synthetic transitions per second with the hf-tiny preset, and the share of step time
spent outside the model forward (prompt building, retrieval, parsing, buffer add).

Real components: the TextWorldExpress coin game seeds the ``exact`` buffer (hashing
or MiniLM encoder) with real offline transitions; ``batch`` SyntheticEnvs are stepped
together through ``step_many`` (one retrieval, one generate call, one buffer add per
batch step). The model is the hf-tiny preset (default TinyConfig, tokenizer fitted to
the domain's text), untrained: it always spends the full ``max_new_tokens`` budget,
so the timing is the worst case of a step. ``generate`` is timed from outside;
everything else in ``step_many`` counts as overhead.

    .venv/bin/python benchmarks/experience/bench_synthetic.py --out benchmarks/experience/results/synthetic.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import msgspec
import torch

from dreamgym_core.experience import ExperienceModelConfig, LMExperienceModel, annotate_with_domain, training_examples
from dreamgym_core.synthetic import SyntheticEnv, SyntheticEnvConfig, step_many

GAME = {"game": "coin", "params": {"numLocations": 4}, "train_seeds": 8, "valid_seeds": 0, "test_seeds": 1}


class TimedBackend:
    """Delegates to a backend and accumulates the wall time of ``generate``."""

    def __init__(self, backend: Any) -> None:
        self.backend, self.model_id, self.seconds = backend, backend.model_id, 0.0

    def generate(self, **kwargs: Any) -> list[str]:
        start = time.perf_counter()
        try:
            return self.backend.generate(**kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def build(encoder_name: str) -> tuple[Any, Any, list[Any], list[Any]]:
    from dreamgym_plugin_encoders import HashingConfig, HashingEncoder
    from dreamgym_plugin_exact import ExactConfig, make_exact
    from dreamgym_plugin_textworld import TwxConfig, make_twx

    domain = make_twx(msgspec.convert(GAME, type=TwxConfig))
    tasks = domain.tasks(split="train")
    data = []
    for policy in ("expert", "random"):
        for trajectory in domain.collect(tasks=tasks, policy=policy, episodes=32, seed=0):
            data.extend(trajectory.transitions)
    data = annotate_with_domain(data, domain)
    if encoder_name == "minilm":
        from dreamgym_plugin_encoders import MiniLMConfig, MiniLMEncoder

        encoder = MiniLMEncoder(MiniLMConfig())
    else:
        encoder = HashingEncoder(HashingConfig())
    buffer = make_exact(ExactConfig(), encoder=encoder, path=None)
    buffer.add(transitions=data)
    # Start states carried in the payload: resets cost nothing and stay out of the timing.
    starts = [msgspec.structs.replace(t, payload={**t.payload, "initial_state": domain.initial_observation(t).text}) for t in tasks]
    domain.close()
    return buffer, encoder, data, starts


def run(batch: int, steps: int, buffer: Any, data: list[Any], starts: list[Any], max_new_tokens: int) -> dict[str, float]:
    from dreamgym_plugin_hf.config import TinyConfig
    from dreamgym_plugin_hf.tiny import TinyBackend

    backend = TinyBackend(TinyConfig(generation_batch_size=batch))
    examples = training_examples(data[:400], buffer, history_window=4, k=4)
    backend.prepare(corpus=["".join(text for text, _ in e) for e in examples])
    timed = TimedBackend(backend)
    model = LMExperienceModel(timed, ExperienceModelConfig(max_new_tokens=max_new_tokens, max_retries=0, temperature=1.0))
    # One shared model (one batched call per step) and steps added to the buffer as they are
    # made: the settings these results were measured with, before those stopped being the defaults.
    config = SyntheticEnvConfig(max_steps=15, add_to_buffer=True, seeded_episodes=False)
    envs = [SyntheticEnv(model, buffer, None, config) for _ in range(batch)]
    actions = ["look around", "move north", "take coin", "open door to east"]
    for i, env in enumerate(envs):
        env.reset(task=starts[i % len(starts)], seed=i)
    step_many(envs, [actions[0]] * batch)  # warm-up (allocations, first forward)
    timed.seconds, total = 0.0, 0.0
    for step in range(steps):
        for i, env in enumerate(envs):
            if env._done:
                env.reset(task=starts[i % len(starts)], seed=i)
        start = time.perf_counter()
        step_many(envs, [actions[(step + i) % len(actions)] for i in range(batch)])
        total += time.perf_counter() - start
    return {
        "batch": batch,
        "steps": steps,
        "transitions": batch * steps,
        "transitions_per_s": batch * steps / total,
        "step_seconds": total / steps,
        "model_seconds_share": timed.seconds / total,
        "outside_model_share": 1.0 - timed.seconds / total,
        "parse_failure_rate": model.metrics()["experience/parse_failure_rate"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="16,64")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--encoder", choices=("hashing", "minilm"), default="hashing")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    buffer, encoder, data, starts = build(args.encoder)
    rows = [run(int(b), args.steps, buffer, data, starts, args.max_new_tokens) for b in args.batches.split(",")]
    report = {
        "benchmark": "synthetic transitions per second, hf-tiny preset (untrained, full token budget), exact buffer",
        "encoder": encoder.id,
        "buffer_seed_transitions": len(data),
        "max_new_tokens": args.max_new_tokens,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "results": rows,
    }  # fmt: skip
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
