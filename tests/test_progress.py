"""Progress lines inside long training epochs and rollouts (dreamgym_core.progress)."""

from __future__ import annotations

from dreamgym_core.progress import RolloutProgress, StepProgress, takes


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_line_at_most_every_interval_with_the_mean_loss_since_the_last_one():
    clock, said = Clock(), []
    progress = StepProgress(said.append, "warm start", 2, every_s=60.0, clock=clock)
    for step, (at, loss) in enumerate([(10, 4.0), (59, 2.0), (61, 3.0), (100, 1.0), (121, 0.5)], start=1):
        clock.now = 100.0 + at
        progress(1, step, 9, loss)
    # 61 s after the start: the mean of the first three steps; 121 s: of the two after that
    assert said == ["warm start epoch 1/2: step 3/9, loss 3", "warm start epoch 1/2: step 5/9, loss 0.75"]


def test_short_epochs_say_nothing():
    clock, said = Clock(), []
    progress = StepProgress(said.append, "experience model", 6, clock=clock)
    for epoch in range(1, 7):
        for step in range(1, 4):
            clock.now += 0.5
            progress(epoch, step, 3, 1.0)
    assert said == []


def test_takes_reads_the_keyword_arguments_a_method_accepts():
    def old(*, examples, epochs, lr, batch_size, on_epoch=None): ...
    def new(*, examples, epochs, on_batch=None): ...
    def open_ended(*, examples, **_): ...

    assert not takes(old, "on_batch") and takes(old, "on_epoch")
    assert takes(new, "on_batch") and takes(open_ended, "on_batch")


def test_a_rollout_line_at_most_every_interval_with_the_episodes_still_playing():
    clock, said = Clock(), []
    progress = RolloutProgress(said.append, "iteration 2/6 rollout (synthetic)", every_s=60.0, clock=clock)
    for step, (at, playing) in enumerate([(30, 16), (61, 16), (90, 12), (125, 5), (130, 1)]):
        clock.now = 100.0 + at
        progress(step, 12, playing, 16)
    assert said == [
        "iteration 2/6 rollout (synthetic): step 2/12, 16 of 16 episodes still playing",
        "iteration 2/6 rollout (synthetic): step 4/12, 5 of 16 episodes still playing",
    ]
