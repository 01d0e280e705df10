"""End to end on real components: TextWorldExpress data, the hf-tiny model, the exact buffer.

Trains a tiny experience model from scratch (joint SFT, Eq. 5) on real offline
transitions of the TextWorldExpress coin game, checks that its reward and success
predictions on held-out real transitions (other game seeds) beat any constant answer
(balanced accuracy), then runs multi-step synthetic episodes with it. No test doubles.
"""

from __future__ import annotations

import msgspec
import pytest
import torch

pytest.importorskip("dreamgym_plugin_hf")
pytest.importorskip("dreamgym_plugin_textworld")
pytest.importorskip("dreamgym_plugin_exact")

from dreamgym_plugin_encoders import HashingConfig, HashingEncoder  # noqa: E402
from dreamgym_plugin_exact import ExactConfig, make_exact  # noqa: E402
from dreamgym_plugin_hf.config import TinyConfig  # noqa: E402
from dreamgym_plugin_hf.tiny import TinyBackend  # noqa: E402
from dreamgym_plugin_textworld import TwxConfig, make_twx  # noqa: E402

from dreamgym_core.experience import (  # noqa: E402
    ExperienceModelConfig,
    LMExperienceModel,
    annotate_with_domain,
    training_examples,
)
from dreamgym_core.fidelity import evaluate_model  # noqa: E402
from dreamgym_core.synthetic import SyntheticEnv, SyntheticEnvConfig, step_many  # noqa: E402

GAME = {
    "game": "coin", "params": {"numLocations": 3}, "train_seeds": 6, "valid_seeds": 0, "test_seeds": 3,
    "max_steps": 8, "max_observation_chars": 160, "max_action_chars": 120,
}  # fmt: skip
TINY = {
    "hidden_size": 128, "layers": 2, "heads": 4, "intermediate_size": 256, "vocab_size": 1200,
    "max_length": 1024, "max_positions": 1024, "seed": 0,
}  # fmt: skip
MODEL = ExperienceModelConfig(history_window=1, top_k=1, max_new_tokens=220, temperature=0.0, max_retries=2)
EPOCHS = 30


def _collect(domain, tasks, seed: int, episodes: int):
    out = []
    for i, policy in enumerate(("expert", "noisy", "random")):
        for trajectory in domain.collect(tasks=tasks, policy=policy, episodes=episodes, seed=seed + i):
            out.extend(trajectory.transitions)
    return out


@pytest.fixture(scope="module")
def trained():
    # One torch thread: on a shared 2-core machine, two OpenMP threads per process thrash.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield from _trained()
    finally:
        torch.set_num_threads(threads)


def _trained():
    domain = make_twx(msgspec.convert(GAME, type=TwxConfig))
    train = annotate_with_domain(_collect(domain, domain.tasks(split="train"), seed=0, episodes=6), domain)
    heldout = _collect(domain, domain.tasks(split="test"), seed=100, episodes=2)
    buffer = make_exact(ExactConfig(), encoder=HashingEncoder(HashingConfig()), path=None)
    buffer.add(transitions=train)
    backend = TinyBackend(msgspec.convert(TINY, type=TinyConfig))
    examples = training_examples(train, buffer, history_window=MODEL.history_window, k=MODEL.top_k)
    backend.prepare(corpus=["".join(text for text, _ in e) for e in examples])
    model = LMExperienceModel(backend, MODEL, domain=domain)
    sft = model.train(transitions=train, buffer=buffer, epochs=EPOCHS, lr=3e-3, batch_size=8)
    yield domain, buffer, model, heldout, sft
    buffer.close()
    domain.close()


@pytest.mark.slow
def test_tiny_model_beats_a_constant_answer_on_heldout_real_transitions(trained) -> None:
    domain, buffer, model, heldout, sft = trained
    assert sft["losses/sft_loss"] < sft["losses/sft_loss_first"]
    m = evaluate_model(model, heldout, buffer, history_window=MODEL.history_window, k=MODEL.top_k)
    print({k: round(v, 3) for k, v in m.items()})
    # Better than any constant answer. One held-out step in ten is a win, so agreement is a poor
    # judge here: on a 2-core AMD EPYC the model found all 3 wins and called 3 of 27 plain steps
    # wins, and its 0.9 agreement tied the constant "never won"; balanced accuracy gives any
    # constant 0.5 and that model 0.94.
    assert m["fidelity/reward_balanced_accuracy"] > 0.5
    assert m["fidelity/success_balanced_accuracy"] > 0.5
    assert m["fidelity/parse_failed"] < 0.5


@pytest.mark.slow
def test_synthetic_env_runs_multistep_episodes_with_the_trained_model(trained) -> None:
    domain, buffer, model, _, _ = trained
    before = len(buffer)
    tasks = domain.tasks(split="test")
    config = SyntheticEnvConfig(max_steps=6, history_window=1, top_k=1, add_to_buffer=True, seeded_episodes=False)  # as before both defaults changed
    envs = [SyntheticEnv(model, buffer, domain, config) for _ in tasks]
    observations = [env.reset(task=task, seed=0) for env, task in zip(envs, tasks)]
    assert all(obs.admissible_actions for obs in observations)
    lengths, running = [0] * len(envs), list(range(len(envs)))
    action = "look around"
    while running:
        results = step_many([envs[i] for i in running], [action] * len(running))
        for i, result in zip(running, results):
            lengths[i] += 1
            assert result.observation.text.strip()
            assert result.reward == (1.0 if result.done and result.success else 0.0)
        running = [i for i, r in zip(running, results) if not r.done]
    assert max(lengths) >= 2  # "look around" is valid and does not end the game: multi-step episodes
    assert len(buffer) > before
    synthetic = buffer.sample(n=len(buffer), seed=0)
    assert any(t.source == "synthetic" and t.model_id == model.model_id for t in synthetic)
