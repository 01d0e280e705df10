"""write_game refuses a game whose id another split holds; `dreamgym check alfworld` skips
where ALFWorld's default data folder is absent."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dreamgym_core.cli import cli
from dreamgym_core.errors import ConfigError, DataUnavailable
from dreamgym_core.testing import check_domain
from dreamgym_plugin_alfworld import AlfWorldConfig, AlfWorldDomain, PickAndPlace, write_game

sys.path.insert(0, str(Path(__file__).parent))
from test_alfworld import write_folder  # noqa: E402

A = PickAndPlace(receptacles=["CounterTop", "Fridge"], objects=[("Apple", 0)], target=("Apple", "Fridge"))
B = PickAndPlace(receptacles=["Fridge", "Cabinet", "CounterTop"], objects=[("Apple", 1)], target=("Apple", "Fridge"))


def test_write_game_refuses_a_trial_another_split_holds(tmp_path):
    """The id is <task folder>@<trial>, without the split: the same target and number in train
    and valid_unseen gave two games one id (the conformance check: splits share tasks)."""
    root = tmp_path / "json_2.1.1"
    first = write_game(root, "train", A, number=1)
    for overwrite in (False, True):
        with pytest.raises(FileExistsError) as err:
            write_game(root, "valid_unseen", B, number=1, overwrite=overwrite)
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"write_game: {first.parent} already exists in split 'train'"), message
    assert not (root / "valid_unseen").exists() or not any((root / "valid_unseen").iterdir())
    write_game(root, "valid_unseen", B, number=2)  # another number: another id
    domain = AlfWorldDomain(AlfWorldConfig(data_path=str(root)))
    try:
        assert domain.tasks(split="train")[0].id != domain.tasks(split="test")[0].id
        check_domain(domain)
    finally:
        domain.close()


def test_written_game_sets_keep_their_ids(tmp_path):
    """The tests' folder (numbers differ across splits) is written as before, its ids unchanged."""
    domain = AlfWorldDomain(AlfWorldConfig(data_path=str(write_folder(tmp_path / "json_2.1.1"))))
    try:
        assert domain.tasks(split="train")[0].id == "alfworld/pick_and_place_simple/pick_and_place_simple-Apple-None-Fridge-1@trial_T00001"
    finally:
        domain.close()


def test_an_absent_default_folder_is_data_unavailable_a_given_empty_one_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataUnavailable, match=r"^env.config.data_path: no ALFWorld games in "):
        AlfWorldDomain(AlfWorldConfig())
    with pytest.raises(ConfigError) as err:
        AlfWorldDomain(AlfWorldConfig(data_path=str(tmp_path)))
    assert not isinstance(err.value, DataUnavailable)


def test_check_skips_without_the_default_data_and_passes_with_it(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    for absent in (tmp_path / "missing", tmp_path / "empty"):
        monkeypatch.setenv("ALFWORLD_DATA", str(absent))
        result = CliRunner().invoke(cli, ["check", "alfworld"])
        assert result.exit_code == 5, result.output
        assert result.output.startswith("skip env:alfworld (its default data is not here: env.config.data_path: no ALFWorld games")
    write_folder(tmp_path / "data" / "json_2.1.1")
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path / "data"))
    result = CliRunner().invoke(cli, ["check", "alfworld"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok   env:alfworld")
