"""Synthetic episodes whose experience model is served over HTTP, through the core
rollout code; the server is killed in the middle of the episodes."""

from __future__ import annotations

import msgspec
import pytest
import torch

from dreamgym_core.agent import render_response
from dreamgym_core.experience import ExperienceModelConfig, LMExperienceModel, build_prompt, render_target
from dreamgym_core.records import ExperienceRequest, HistoryStep, Task
from dreamgym_core.rollout import rollout
from dreamgym_core.synthetic import SyntheticEnv, SyntheticEnvConfig, step_many
from dreamgym_plugin_openai import OpenAIBackend, OpenAIConfig

TASK = Task(id="walk", instruction="walk to room 3", domain="toy", payload={"initial_state": "You are in room 0."})
GOAL = 3


def room(i: int) -> str:
    return f"You are in room {i}."


def walk_examples() -> list[list[tuple[str, bool]]]:
    """Joint-SFT examples of a toy world: 'go forward' moves to the next room; room 3 wins."""
    examples = []
    for i in range(GOAL):
        request = ExperienceRequest(
            instruction=TASK.instruction,
            history=[HistoryStep(state=room(j), action="go forward") for j in range(i)],
            state=room(i),
            action="go forward",
        )
        done = i + 1 == GOAL
        target = render_target(
            reasoning=f"Going forward leaves room {i}.", next_state=room(i + 1),
            valid=True, done=done, success=done, reward=float(done),
        )
        examples.append([(build_prompt(request), False), *target])
    return examples


@pytest.fixture(scope="module")
def experience_model_dir(tmp_path_factory) -> str:
    """A tiny experience model that has learnt the toy world (trained here, on CPU)."""
    from dreamgym_plugin_hf.config import TinyConfig
    from dreamgym_plugin_hf.tiny import TinyBackend

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # several times faster for a model this small on a shared CPU
    config = msgspec.convert(
        {"hidden_size": 64, "layers": 2, "heads": 2, "intermediate_size": 128, "vocab_size": 500, "max_length": 1024},
        type=TinyConfig,
    )
    backend = TinyBackend(config)
    examples = walk_examples()
    backend.prepare(corpus=["".join(t for t, _ in e) for e in examples] * 8)
    backend.sft(examples=examples, epochs=80, lr=5e-3, batch_size=3)
    path = str(tmp_path_factory.mktemp("exp") / "model")
    backend.save(path=path)
    torch.set_num_threads(threads)
    return path


def play(model: LMExperienceModel, n: int, act) -> tuple[list, object]:
    # as the trainers build them: one shared model, so its counters are the episodes' and a step is one call
    envs = [SyntheticEnv(model, config=SyntheticEnvConfig(max_steps=6, top_k=0, seeded_episodes=False)) for _ in range(n)]
    return rollout(
        tasks=[TASK] * n, envs=envs, act=act, max_steps=6, history_window=4,
        seeds=list(range(n)), source="synthetic", tag="walk", step_many=step_many,
    )


def test_episodes_survive_a_server_killed_mid_episode(start_server, experience_model_dir):
    server = start_server(directory=experience_model_dir)
    backend = OpenAIBackend(OpenAIConfig(base_url=server.url, max_retries=2, backoff=0.05, concurrency=4))
    model = LMExperienceModel(backend, ExperienceModelConfig(temperature=0.0, max_new_tokens=64, max_retries=1))

    # server alive: every episode walks to room 3 and succeeds
    trajectories, stats = play(model, 4, lambda prompts: [render_response("go forward")] * len(prompts))
    assert stats.successes == 4 and stats.parse_failures == 0
    assert [t.next_state for t in trajectories[0].transitions] == [room(1), room(2), room(3)]
    assert backend.stats["failed_calls"] == 0

    # kill the server while the policy is deciding its second step
    calls = []

    def act_then_kill(prompts):
        calls.append(len(prompts))
        if len(calls) == 2:
            server.kill()
        return [render_response("go forward")] * len(prompts)

    trajectories, stats = play(model, 4, act_then_kill)
    assert stats.successes == 0 and stats.parse_failures == 4
    for trajectory in trajectories:
        first, second = trajectory.transitions
        assert first.next_state == room(1) and not first.done
        assert second.done and not second.success and second.reward == 0.0
    # every HTTP call was retried with backoff, then counted as failed; the experience
    # model re-asked once (its own parse retry), which failed the same way
    assert backend.stats["failed_calls"] == 4 * 2
    assert backend.stats["retries"] == 2 * backend.stats["failed_calls"]
    assert model.counters["parse_failed"] >= 4
    # the run's metrics tell a dead server apart from a model writing unparsable answers
    metrics = model.metrics()
    # 4 episodes x 3 steps while alive, then the 4 first steps before the kill
    assert metrics["experience/backend_failed_calls"] == 8 and metrics["experience/backend_succeeded"] == 12 + 4
