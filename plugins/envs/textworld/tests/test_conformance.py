"""The conformance kit on every registered environment (small configs, real engines)."""

from __future__ import annotations

import pytest

from dreamgym_core.plugins import Plugins
from dreamgym_core.testing import check_domain


def test_plugin_registers_twx_and_tw() -> None:
    specs = Plugins.for_names(["textworld"]).components("env")
    assert {"twx", "tw"} <= set(specs)
    assert all(spec.plugin == "textworld" for name, spec in specs.items() if name in ("twx", "tw"))


@pytest.mark.parametrize("game", ["coin", "twc", "cookingworld", "mapreader"])
def test_twx_conformance(twx_domains, game: str) -> None:
    check_domain(twx_domains[game])


@pytest.mark.parametrize(
    "game",
    [
        "coin_collector",
        "treasure_hunter",
        # Generating cooking and custom games takes several seconds each.
        pytest.param("cooking", marks=pytest.mark.slow),
        pytest.param("custom", marks=pytest.mark.slow),
    ],
)
def test_tw_conformance(tw_domains, game: str) -> None:
    check_domain(tw_domains[game])


@pytest.mark.slow
def test_dreamgym_check_runs_the_kit_on_default_configs(tmp_path, monkeypatch) -> None:
    from dreamgym_core.conformance import check_plugin

    monkeypatch.setenv("DREAMGYM_TEXTWORLD_CACHE", str(tmp_path))  # default tw config generates 12 games
    lines = list(check_plugin("textworld"))
    assert "ok   env:twx" in lines and "ok   env:tw" in lines
