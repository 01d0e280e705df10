"""Config Struct of the ``miniwob`` domain (every field has a default)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from dreamgym_core.config import Config, NonNegativeInt, PositiveInt, Probability

__all__ = ["MiniWoBConfig", "DEFAULT_CALL_TIMEOUT_S", "DEFAULT_START_TIMEOUT_S", "SPLIT_SIZE"]

# Page seeds per split: train 0-99999, valid from 100000, test from 200000. A split's seed
# count is at most this, so no split reaches into the next one's seeds.
SPLIT_SIZE = 100_000
_AT_MOST_SPLIT = Meta(le=SPLIT_SIZE)

# Measured on a 2-core machine at load 2: a task's page loads in at most 0.5 s, a script (the
# elements, the utterance, a click) answers in at most 20 ms, typing a few words in 30 ms, and
# Chromium starts in 0.75 s. Ten seconds is twenty times the slowest call, and a stopped
# browser then costs a run seconds instead of Selenium's 120.
DEFAULT_CALL_TIMEOUT_S = 10.0
# Chromium and its ChromeDriver start in 0.75 s there (3 s with five test runs sharing the two
# cores). Left to themselves, a browser that never comes up costs ChromeDriver's 60 s and a
# ChromeDriver that never answers Selenium's 120 s or more, both fixed; thirty seconds is forty
# times a normal start.
DEFAULT_START_TIMEOUT_S = 30.0


class MiniWoBConfig(Config):
    """MiniWoB++ tasks; each seed of a task's page generator is one seed task."""

    tasks: Annotated[
        list[str], Meta(min_length=1, description="MiniWoB++ task names (e.g. [click-button, enter-text, login-user]).")
    ] = msgspec.field(default_factory=lambda: ["click-button"])
    train_seeds: Annotated[
        PositiveInt, _AT_MOST_SPLIT, Meta(description="Seed tasks per task in the train split (page seeds 0..N-1; at most 100000).")
    ] = 64
    valid_seeds: Annotated[
        NonNegativeInt, _AT_MOST_SPLIT,
        Meta(description="Seed tasks per task in the validation split (page seeds from 100000; at most 100000)."),
    ] = 16
    test_seeds: Annotated[
        PositiveInt, _AT_MOST_SPLIT, Meta(description="Seed tasks per task in the test split (page seeds from 200000; at most 100000).")
    ] = 32
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
    call_timeout_s: Annotated[
        float,
        Meta(
            gt=0.0,
            description=(
                "Time limit of one browser call (a page load, a script, typing), in seconds. A browser that does not"
                " answer within it (a stopped or hung one) is killed, the call fails with BrowserError, and the next"
                " reset starts a new browser. Normal calls take 20 ms to 0.5 s."
            ),
        ),
    ] = DEFAULT_CALL_TIMEOUT_S
    start_timeout_s: Annotated[
        float,
        Meta(
            gt=0.0,
            description=(
                "Time limit of a browser's start (ChromeDriver and Chromium, until they answer), in seconds. A start that"
                " does not finish within it (a hung Chromium or ChromeDriver) is killed and fails with BrowserError."
                " A normal start takes 0.75 s."
            ),
        ),
    ] = DEFAULT_START_TIMEOUT_S
    describe_actions: Annotated[
        bool, Meta(description="Append the action syntax (click [N], type [N] TEXT) to each task's instruction.")
    ] = True
