"""Config Struct of the ``miniwob`` domain (every field has a default)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from dreamgym_core.config import Config, NonNegativeInt, PositiveInt, Probability

__all__ = ["MiniWoBConfig"]


class MiniWoBConfig(Config):
    """MiniWoB++ tasks; each seed of a task's page generator is one seed task."""

    tasks: Annotated[
        list[str], Meta(min_length=1, description="MiniWoB++ task names (e.g. [click-button, enter-text, login-user]).")
    ] = msgspec.field(default_factory=lambda: ["click-button"])
    train_seeds: Annotated[PositiveInt, Meta(description="Seed tasks per task in the train split (page seeds 0..N-1).")] = 64
    valid_seeds: Annotated[NonNegativeInt, Meta(description="Seed tasks per task in the validation split (page seeds from 100000).")] = 16
    test_seeds: Annotated[PositiveInt, Meta(description="Seed tasks per task in the test split (page seeds from 200000).")] = 32
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
