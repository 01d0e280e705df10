"""A task payload's task name and simplifications are checked before the simulator is touched."""

from __future__ import annotations

import pytest

from dreamgym_core.errors import ConfigError
from dreamgym_core.records import Task
from dreamgym_plugin_scienceworld import SciWorldEnv

GOOD = {"task": "find-animal", "variation": 0, "simplifications": "easy"}


@pytest.fixture(scope="module")
def env():
    made = SciWorldEnv(max_steps=5, max_observation_chars=100)
    yield made
    made.close()


@pytest.mark.parametrize(
    ("change", "field", "shown"),
    [
        ({"task": 5}, "task", "5"),
        ({"task": None}, "task", "None"),
        ({"task": "boyl"}, "task", "'boyl'"),
        ({"task": None, "drop": "task"}, "task", "missing"),
        ({"simplifications": None}, "simplifications", "None"),
        ({"simplifications": 1}, "simplifications", "1"),
        ({"simplifications": None, "drop": "simplifications"}, "simplifications", "missing"),
    ],
)
def test_a_bad_payload_is_a_one_line_config_error_and_the_jvm_lives_on(env, change, field, shown):
    env.reset(task=Task(id="ok", instruction="", domain="sciworld", payload=GOOD))
    pid = env._engine._gateway.java_process.pid
    payload = GOOD | {k: v for k, v in change.items() if k != "drop"}
    payload.pop(change.get("drop", ""), None)
    with pytest.raises(ConfigError) as err:
        env.reset(task=Task(id="hand-made", instruction="", domain="sciworld", payload=payload))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"scienceworld: task 'hand-made': payload['{field}'] is {shown};"), message
    assert env._engine is not None and env._engine._gateway.java_process.pid == pid  # the same JVM, alive
    assert env._engine._gateway.java_process.poll() is None
    assert env.reset(task=Task(id="ok", instruction="", domain="sciworld", payload=GOOD)).text
