"""The built-in metric sinks rewind to a checkpoint's history on --resume."""

from __future__ import annotations

import json
import math

import pytest

from dreamgym_core.loggers import JsonlConfig, JsonlSink, TensorBoardConfig, TensorBoardSink


def _play(sink, steps, scale=1.0):
    for step in steps:
        sink.log(step=step, metrics={"m": step * scale})


def test_jsonl_rewind_keeps_the_history_rows_and_appends_after_them(tmp_path):
    sink = JsonlSink(JsonlConfig(), run_dir=str(tmp_path))
    _play(sink, range(4))
    sink.log(step=4, metrics={"m": math.nan})
    sink.close()
    sink = JsonlSink(JsonlConfig(), run_dir=str(tmp_path))  # the resumed run
    sink.rewind(history=[{"step": 0, "m": 0.0}, {"step": 1, "m": None}])
    _play(sink, [2], scale=10.0)
    sink.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 0, "m": 0.0}, {"step": 1, "m": None}, {"step": 2, "m": 20.0}]


def test_tensorboard_rewind_hides_the_steps_played_again(tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    sink = TensorBoardSink(TensorBoardConfig(), run_dir=str(tmp_path))
    _play(sink, range(4))
    sink.close()
    sink = TensorBoardSink(TensorBoardConfig(), run_dir=str(tmp_path))
    sink.rewind(history=[{"step": 0, "m": 0.0}, {"step": 1, "m": 1.0}])
    _play(sink, [2, 3], scale=10.0)
    sink.close()
    events = accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("m")] == [(0, 0.0), (1, 1.0), (2, 20.0), (3, 30.0)]


@pytest.mark.parametrize(("config_type", "field", "value"), [
    (JsonlConfig, "filename", "../metrics.jsonl"),
    (JsonlConfig, "filename", "/tmp/metrics.jsonl"),
    (JsonlConfig, "filename", "logs/metrics.jsonl"),
    (JsonlConfig, "filename", ""),
    (TensorBoardConfig, "subdir", "../tensorboard"),
    (TensorBoardConfig, "subdir", "tb/../../tensorboard"),
    (TensorBoardConfig, "subdir", "/tmp/tensorboard"),
    (TensorBoardConfig, "subdir", "."),
])
def test_a_sink_writing_outside_the_run_directory_is_refused(config_type, field, value):
    """The sinks write into the run directory; a name that leads out of it (or rewinds a file
    elsewhere on --resume) is a config error naming the field."""
    from dreamgym_core.config import convert_config
    from dreamgym_core.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"pipeline.yaml: {field} .*run directory.* - at `\$.loggers.0.config`"):
        convert_config({field: value}, config_type, "pipeline.yaml", "$.loggers.0.config")


def test_sinks_may_still_name_their_own_files_and_folders(tmp_path):
    JsonlConfig(filename="rl.jsonl")
    sink = TensorBoardSink(TensorBoardConfig(subdir="logs/tensorboard"), run_dir=str(tmp_path))
    sink.log(step=0, metrics={"m": 1.0})
    sink.close()
    assert list((tmp_path / "logs" / "tensorboard").iterdir())


@pytest.mark.parametrize("name", ["offline.jsonl", "summary.json", "Report.md", "./config.json", "report.md/"])
def test_a_jsonl_sink_named_after_a_file_the_run_writes_is_refused(name):
    """Appended to offline.jsonl (the run's real data), metrics rows would be read back as transitions."""
    from dreamgym_core.config import convert_config
    from dreamgym_core.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"pipeline.yaml: filename {name!r} is a file the run writes itself"):
        convert_config({"filename": name}, JsonlConfig, "pipeline.yaml", "$.loggers.0.config")
