"""Peak memory and time of one GRPO update (plugin local) of SmolLM2-135M-Instruct on CPU, one
thread, with and without micro-batches, each mode in a fresh process, all in one run:

- ``whole``: the minibatch in one forward/backward (``micro_batch_size`` unset);
- ``micro-4`` and ``micro-2``: gradients accumulated over micro-batches of 4 and 2 rows.

    python benchmarks/rl_memory/run.py [WEIGHTS_DIR]  # writes benchmarks/rl_memory/results.json

WEIGHTS_DIR is the SmolLM2 backend's ``cache_dir`` (default: runs/smollm2-weights). The batch
imitates an RL iteration on mapreader with four locations: 2 tasks x 4 episodes, one step each,
agent prompts of 824 tokens in SmolLM2's chat template, short answers, half the episodes won; one minibatch of 8
rows, KL to the reference as in the table's GRPO. The update's result is compared across modes
by the parameter change it made (its norm and its largest difference from ``whole``'s).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MODES = {"whole": None, "micro-4": 4, "micro-2": 2}


def groups():
    from dreamgym_core.agent import build_agent_prompt
    from dreamgym_core.records import Observation, PolicyDecision, Task, Trajectory, Transition

    rooms = "You are in the kitchen. In one part of the room you see a fridge. To the East you see the pantry. "
    out = []
    for g in range(2):
        task = Task(id=f"t{g}", instruction=f"Take the coin in room {g} and put it into the box in the cupboard.", domain="bench")
        observation = Observation(text=rooms * 28, admissible_actions=["move east", "move west", "read map", "take coin"])
        prompt = build_agent_prompt(task=task, observation=observation, history=[], step=0, max_steps=12, history_window=2)
        group = []
        for e, action in enumerate(["move east", "read map", "move west", "take coin"]):
            won = e % 2 == 0
            transition = Transition(task_id=task.id, episode_id=f"{g}{e}", step=0, state=observation.text, action=action,
                                    next_state="...", reward=float(won), done=True, success=won, valid=True)
            decision = PolicyDecision(text=f"<action>{action}</action>", action=action, parsed=True, prompt=prompt)
            group.append(Trajectory(task=task, transitions=[transition], decisions=[decision]))
        out.append(group)
    return out


def one_update(mode: str, weights: str) -> dict:
    import torch

    from dreamgym_plugin_hf.config import SmolLM2Config
    from dreamgym_plugin_hf.smollm2 import SmolLM2Backend
    from dreamgym_plugin_local.config import GRPOConfig
    from dreamgym_plugin_local.grpo import GRPO

    torch.set_num_threads(1)
    backend = SmolLM2Backend.from_config(SmolLM2Config(cache_dir=weights, max_length=1024))
    algo = GRPO(GRPOConfig(lr=1e-5, minibatch_size=8, micro_batch_size=MODES[mode], max_new_tokens=24), policy=backend, seed=0)
    start = torch.cat([p.detach().flatten().clone() for p in backend.model.parameters()])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    metrics = algo.update(groups=groups())
    seconds = time.perf_counter() - started
    delta = torch.cat([p.detach().flatten() for p in backend.model.parameters()]) - start
    torch.save(delta, HERE / f".delta-{mode}.pt")  # compared by the parent, then deleted
    return {
        "mode": mode, "micro_batch_size": MODES[mode], "rows": int(metrics["data/trainable_steps"]),
        "optimizer_steps": metrics["perf/optimizer_steps"], "policy_loss": metrics["losses/policy_loss"],
        "update_norm": float(delta.norm()), "seconds": round(seconds, 2),
        "peak_rss_mb_before_update": before // 1024, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }


def main() -> None:
    if len(sys.argv) == 3:
        print(json.dumps(one_update(sys.argv[1], sys.argv[2])))
        return
    import torch

    weights = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "runs" / "smollm2-weights")
    results = []
    for mode in MODES:
        out = subprocess.run([sys.executable, __file__, mode, weights], capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    deltas = {mode: torch.load(HERE / f".delta-{mode}.pt") for mode in MODES}
    for mode in MODES:
        (HERE / f".delta-{mode}.pt").unlink()
    step = {r["mode"]: r["peak_rss_mb"] - r["peak_rss_mb_before_update"] for r in results}
    summary = {
        "command": "python benchmarks/rl_memory/run.py WEIGHTS_DIR", "results": results,
        "update_memory_mb": step,
        "update_memory_ratio_whole_over_micro_4": round(step["whole"] / max(step["micro-4"], 1), 2),
        "update_memory_ratio_whole_over_micro_2": round(step["whole"] / max(step["micro-2"], 1), 2),
        "max_parameter_change_difference_from_whole": {
            mode: float((deltas[mode] - deltas["whole"]).abs().max()) for mode in MODES if mode != "whole"
        },
        "max_parameter_change_whole": float(deltas["whole"].abs().max()),
    }
    (HERE / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
