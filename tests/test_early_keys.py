"""Early Experience finds each branch's demo state by task, episode and the state's index.

Offline data from ``data.path`` is grouped by (task id, episode id), so two tasks may each
have an episode "ep0", and its recorded steps need not run 0, 1, 2. Branches keyed by episode
id alone took the other task's instruction, and reflections looked up by the recorded step
landed one state early. A scripted corridor stands in for a real game: the keys are the
subject here (plugins/envs/textworld/tests/test_early_experience.py runs a real one)."""

from __future__ import annotations

from dreamgym_core.checkpoint import trajectories_from_transitions
from dreamgym_core.early import collect_branches, outcome, reflections, world_model_examples
from dreamgym_core.loop import demo_conversations
from dreamgym_core.records import Observation, StepResult, Task, Transition

ACTIONS = ["east", "west"]


class Corridor:
    """Rooms 1..3 of one task; east moves on, west back; room 3 wins."""

    def reset(self, *, task: Task, seed: int | None = None) -> Observation:
        self.task, self.room = task, 1
        return self._observe()

    def _observe(self) -> Observation:
        return Observation(text=f"{self.task.id}: room {self.room}", admissible_actions=ACTIONS)

    def step(self, *, action: str) -> StepResult:
        self.room += 1 if action == "east" else -1
        won = self.room == 3
        return StepResult(observation=self._observe(), reward=float(won), done=won, success=won)

    def close(self) -> None:
        pass


def _demo_rows(task: Task, *, first_step: int) -> list[Transition]:
    return [
        Transition(task_id=task.id, episode_id="ep0", step=first_step + i, state=f"{task.id}: room {i + 1}", action="east",
                   next_state=f"{task.id}: room {i + 2}", reward=float(i == 1), done=i == 1, success=i == 1,
                   admissible_actions=ACTIONS, instruction=task.instruction)
        for i in range(2)
    ]


def _conversations(tasks: list[Task], *, first_step: int):
    demos = trajectories_from_transitions([r for t in tasks for r in _demo_rows(t, first_step=first_step)], tasks)
    branches, diverged = collect_branches(Corridor, demos, k=1, seed=0)
    assert diverged == 0 and len(branches) == 2 * len(tasks)
    return demos, branches, demo_conversations(demos, max_steps=5, history_window=3, thoughts=reflections(branches, demos))


def test_two_tasks_sharing_an_episode_id_keep_their_own_branches_and_reflections() -> None:
    tasks = [Task(id="A", instruction="reach the RED room", domain="d"), Task(id="B", instruction="reach the BLUE room", domain="d")]
    demos, branches, conversations = _conversations(tasks, first_step=0)
    for b, example in zip(branches, world_model_examples(branches, demos, max_steps=5, history_window=3)):
        prompt = example[0][0]
        assert b.state in prompt and ("RED" in prompt) == (b.task_id == "A")
    for task, turns in zip(tasks, conversations):
        other = "B" if task.id == "A" else "A"
        assert all(f"{other}: room" not in response for _, response in turns), turns


def test_a_reflection_lands_on_its_own_state_whatever_the_recorded_step_numbers() -> None:
    task = Task(id="A", instruction="reach room 3", domain="d")
    _, _, (turns,) = _conversations([task], first_step=1)  # steps recorded 1, 2
    first, second = (response for _, response in turns)
    # at room 1, going west leads to room 0; at room 2, back to room 1
    assert "'west' A: room 0" in first and "'east' A: room 2" in first
    assert "'west' A: room 1" in second and "completes the task" in second


def test_a_branch_the_step_cap_ended_did_not_end_the_game():
    """The reflection said such a branch 'ends the episode without success': the game went on."""
    capped = Transition(
        task_id="t", episode_id="e/branch3.0", step=3, state="s", action="go west", next_state="You are in the hallway. A door.",
        reward=0.0, done=True, success=False, truncated=True,
    )
    lost = Transition(
        task_id="t", episode_id="e/branch3.1", step=3, state="s", action="eat coin", next_state="You died.",
        reward=0.0, done=True, success=False,
    )
    assert outcome(capped) == "You are in the hallway"
    assert outcome(lost) == "ends the episode without success"
