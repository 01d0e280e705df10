"""versions.json: the software a run ran on, read from installed package metadata."""

from __future__ import annotations

import json
import logging
from importlib import metadata

from dreamgym_core.provenance import changed_packages, record_versions, software_versions


def test_the_core_a_plugin_and_what_they_require_at_run_time_are_recorded():
    packages = software_versions(["textworld"])["packages"]
    assert packages["dreamgym"] == metadata.version("dreamgym")
    assert packages["dreamgym-plugin-textworld"] == metadata.version("dreamgym-plugin-textworld")
    assert packages["textworld-express"] == metadata.version("textworld-express")  # the plugin's engine
    assert packages["msgspec"] == metadata.version("msgspec")  # the core's requirement
    assert "pytest" not in packages  # a test extra, not needed to run
    assert "dreamgym-plugin-hf" not in packages  # not loaded by this pipeline
    assert list(packages) == sorted(packages)


def test_changed_packages_names_each_difference():
    old = {"packages": {"torch": "2.13.0", "numpy": "2.4.6", "gone": "1.0"}}
    new = {"packages": {"torch": "2.14.0", "numpy": "2.4.6", "added": "0.1"}}
    assert changed_packages(old, new) == ["added absent -> 0.1", "gone 1.0 -> absent", "torch 2.13.0 -> 2.14.0"]
    assert changed_packages(new, new) == []


def test_a_run_resumed_under_other_versions_says_which_changed(tmp_path, caplog):
    stale = software_versions([])
    stale["packages"]["msgspec"] = "0.0.1"
    (tmp_path / "versions.json").write_text(json.dumps(stale))
    with caplog.at_level(logging.WARNING, logger="dreamgym_core.provenance"):
        current = record_versions(tmp_path, [])
    assert f"msgspec 0.0.1 -> {metadata.version('msgspec')}" in caplog.text
    assert json.loads((tmp_path / "versions.json").read_text()) == current
    assert json.loads((tmp_path / "versions.1.json").read_text()) == stale  # the record of the first start is kept


def test_a_resume_under_another_python_says_so_and_keeps_each_earlier_record(tmp_path, caplog):
    first = software_versions([]) | {"python": "3.9.0"}
    (tmp_path / "versions.json").write_text(json.dumps(first))
    with caplog.at_level(logging.WARNING, logger="dreamgym_core.provenance"):
        record_versions(tmp_path, [])
        record_versions(tmp_path, [])  # same versions again: nothing to keep
    assert caplog.text.count("python 3.9.0 -> ") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["versions.1.json", "versions.json"]
    assert json.loads((tmp_path / "versions.1.json").read_text()) == first


def test_a_damaged_record_is_kept_aside_not_a_traceback_or_lost(tmp_path, caplog):
    for n, damaged in enumerate([b'{"python": "3.11", "packages": ["torch"]}', b'{"packages": {"torch": 2}}', b"[1, 2]", b'{"pyth', b"\xff\xfe"], 1):
        (tmp_path / "versions.json").write_bytes(damaged)
        with caplog.at_level(logging.WARNING, logger="dreamgym_core.provenance"):
            current = record_versions(tmp_path, [])
        assert f"versions.json is not a readable versions record; kept as versions.{n}.json" in caplog.text
        assert (tmp_path / f"versions.{n}.json").read_bytes() == damaged
        assert json.loads((tmp_path / "versions.json").read_text()) == current


def test_an_earlier_record_is_kept_under_a_number_no_other_holds(tmp_path):
    # The number was the count of kept records plus one: with versions.1.json gone and
    # versions.2.json there, the next kept record overwrote versions.2.json.
    (tmp_path / "versions.2.json").write_text('{"kept": "second"}')
    first = software_versions([]) | {"python": "3.9.0"}
    (tmp_path / "versions.json").write_text(json.dumps(first))
    record_versions(tmp_path, [])
    assert json.loads((tmp_path / "versions.2.json").read_text()) == {"kept": "second"}
    assert json.loads((tmp_path / "versions.3.json").read_text()) == first
