"""Config Struct of the ``miniwob`` domain (every field has a default)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from dreamgym_core.config import Config, NonNegativeInt, PositiveInt, Probability

__all__ = ["MiniWoBConfig"]


class MiniWoBConfig(Config):
    """One MiniWoB++ task; each seed of its page generator is one seed task."""

    task: Annotated[str, Meta(description="MiniWoB++ task name (e.g. click-button, enter-text, login-user).")] = "click-button"
    train_seeds: Annotated[PositiveInt, Meta(description="Seed tasks in the train split (page seeds 0..N-1).")] = 64
    valid_seeds: Annotated[NonNegativeInt, Meta(description="Seed tasks in the validation split (page seeds from 100000).")] = 16
    test_seeds: Annotated[PositiveInt, Meta(description="Seed tasks in the test split (page seeds from 200000).")] = 32
    max_steps: Annotated[PositiveInt, Meta(description="Step cap per episode; reaching it ends the episode as a failure.")] = 8
    noise: Annotated[
        Probability, Meta(description="Noisy-expert policy: chance of a random action instead of the expert's next one.")
    ] = 0.3
    max_elements: Annotated[PositiveInt, Meta(description="Most page elements listed in the abstract state (document order).")] = 40
    chromium: Annotated[
        str, Meta(description="Chromium binary ('' : $MINIWOB_CHROME_BINARY, else chromium on PATH).")
    ] = ""
    chromedriver: Annotated[
        str, Meta(description="ChromeDriver binary ('' : $MINIWOB_CHROMEDRIVER, else chromedriver on PATH).")
    ] = ""
    describe_actions: Annotated[
        bool, Meta(description="Append the action syntax (click [N], type [N] TEXT) to each task's instruction.")
    ] = True
