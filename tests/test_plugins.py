"""Plugin discovery through entry points, with real packages built and pip-installed
into a temporary directory (offline), and the CLI's error surface."""

from __future__ import annotations

import json
import re
import sys
import tomllib
from typing import Annotated

import msgspec
import pytest
import yaml

from conftest import ROOT, build_plugin_package, run_cli
from dreamgym_core import ComponentSpec, hookimpl
from dreamgym_core.config import Config
from dreamgym_core.errors import ConfigError, DreamGymError, DuplicateComponentError

from stand_ins import CountConfig, CountDomain, StandIns

# A complete third-party plugin: its own env, policy and algorithm. The stand-in
# module (tests/stand_ins.py) supplies the component classes; the package itself is
# real and found only through its entry point.
THIRD_PARTY = '''
import sys
sys.path.insert(0, {tests!r})
from dreamgym_core import ComponentSpec, hookimpl
from stand_ins import CountConfig, CountDomain, ScriptConfig, ScriptedPolicy, RecordConfig, RecordingAlgo

@hookimpl
def dreamgym_register_envs():
    return [ComponentSpec(name="guess", factory=CountDomain, config_type=CountConfig, description="A third-party env.")]

@hookimpl
def dreamgym_register_models():
    return [ComponentSpec(name="oracle", factory=ScriptedPolicy, config_type=ScriptConfig, description="Scripted.")]

@hookimpl
def dreamgym_register_algos():
    return [ComponentSpec(name="tally", factory=RecordingAlgo, config_type=RecordConfig, description="Recording.")]
'''


@pytest.fixture(scope="module")
def third_party_site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("thirdparty")
    site = build_plugin_package(
        tmp, "dreamgym-plugin-guess", "dreamgym_plugin_guess",
        THIRD_PARTY.format(tests=str(ROOT / "tests")), {"guess": "dreamgym_plugin_guess"},
    )
    build_plugin_package(tmp, "dreamgym-plugin-broken", "dreamgym_plugin_broken", "import a_module_that_does_not_exist\n", {"broken": "dreamgym_plugin_broken"})
    # A hook implementation asking for an argument its hook specification does not pass.
    mismatched = "from dreamgym_core import hookimpl\n\n@hookimpl\ndef dreamgym_register_envs(colour):\n    return []\n"
    build_plugin_package(tmp, "dreamgym-plugin-mismatched", "dreamgym_plugin_mismatched", mismatched, {"mismatched": "dreamgym_plugin_mismatched"})
    # A hook implementation whose name no hook specification has (a typo).
    misnamed = "from dreamgym_core import hookimpl\n\n@hookimpl\ndef dreamgym_register_env():\n    return []\n"
    build_plugin_package(tmp, "dreamgym-plugin-misnamed", "dreamgym_plugin_misnamed", misnamed, {"misnamed": "dreamgym_plugin_misnamed"})
    # An entry point that loads another plugin's module (pluggy refuses one object under two names).
    build_plugin_package(tmp, "dreamgym-plugin-alias", "dreamgym_plugin_alias", "", {"alias": "dreamgym_plugin_guess"})
    # An env whose factory fails the way a missing system dependency does.
    crashing = (
        "from dreamgym_core import ComponentSpec, hookimpl\n"
        "from dreamgym_core.config import Config\n\n"
        "def build(config):\n"
        "    raise FileNotFoundError('java: not found\\nthe engine needs Java 17')\n\n"
        "@hookimpl\n"
        "def dreamgym_register_envs():\n"
        "    return [ComponentSpec(name='crashing', factory=build, config_type=Config, description='Fails to build.')]\n"
    )
    build_plugin_package(tmp, "dreamgym-plugin-crashing", "dreamgym_plugin_crashing", crashing, {"crashing": "dreamgym_plugin_crashing"})
    # Stops its own run after iteration 0 with the signal named by DREAMGYM_TEST_STOP (Ctrl-C, a
    # scheduler's stop); with DREAMGYM_TEST_STOP_IN=finalizer, the signal lands in a __del__.
    stopper = (
        "import os, signal, time\n"
        "from dreamgym_core import hookimpl\n\n"
        "class Finalized:\n"
        "    def __del__(self):\n"
        "        os.kill(os.getpid(), getattr(signal, os.environ['DREAMGYM_TEST_STOP']))\n"
        "        for _ in range(1000):  # the handler runs here, inside the finalizer\n"
        "            pass\n\n"
        "@hookimpl\n"
        "def dreamgym_after_iteration(iteration, metrics):\n"
        "    if iteration == 0 and os.environ.get('DREAMGYM_TEST_STOP_IN') == 'finalizer':\n"
        "        Finalized()\n"
        "        time.sleep(60)  # where an interrupt delivered again lands\n"
        "    elif iteration == 0 and os.environ.get('DREAMGYM_TEST_STOP'):\n"
        "        os.kill(os.getpid(), getattr(signal, os.environ['DREAMGYM_TEST_STOP']))\n"
    )
    build_plugin_package(tmp, "dreamgym-plugin-stopper", "dreamgym_plugin_stopper", stopper, {"stopper": "dreamgym_plugin_stopper"})
    # Two distributions registering one entry-point name.
    for dist in ("dreamgym-plugin-twin-a", "dreamgym-plugin-twin-b"):
        module = dist.replace("-", "_")
        build_plugin_package(tmp, dist, module, "", {"twin": module})
    return site


def pipeline(tmp_path, **changes):
    data = {
        "plugins": ["guess"],
        "env": {"name": "guess", "config": {"targets": 4}},
        "policy": {"name": "oracle"},
        "algo": {"name": "tally", "config": {"lr": 0.5}},
        "loop": {"mode": "real", "iterations": 2, "tasks_per_iteration": 2, "group_size": 2, "max_steps": 8, "warmstart_epochs": 0},
        "data": {"expert_episodes": 2, "noisy_episodes": 0, "random_episodes": 0},
        "eval": {"episodes": 4},
        "run_dir": str(tmp_path / "run"),
    }
    data.update(changes)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(("signal_name", "status"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_an_interrupted_run_says_so_in_one_line_and_resumes(third_party_site, tmp_path, signal_name, status):
    # click's own handling printed a bare "Aborted!" with status 1 (a failure's) for Ctrl-C,
    # and SIGTERM ended the run without a word.
    path = pipeline(tmp_path, plugins=["guess", "stopper"])
    stopped = run_cli("run", str(path), site=third_party_site, env={"DREAMGYM_TEST_STOP": signal_name})
    assert stopped.returncode == status, stopped.stderr
    last = stopped.stderr.strip().splitlines()[-1]
    assert last == f"Error: interrupted by {signal_name}; what the run stored is kept: continue it with --resume"
    assert "Traceback" not in stopped.stderr and "Aborted" not in stopped.stderr
    resumed = run_cli("run", str(path), "--resume", site=third_party_site)
    assert resumed.returncode == 0, resumed.stderr
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [-1, 0, 1, 2]


@pytest.mark.parametrize(("signal_name", "status"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_an_interrupt_raised_in_a_finalizer_still_stops_the_run(third_party_site, tmp_path, signal_name, status):
    # Python drops an exception raised in a __del__ or weakref callback ("Exception ignored"),
    # and py4j's proxies run such finalizers all the time: Ctrl-C there was lost, the run went on.
    path = pipeline(tmp_path, plugins=["guess", "stopper"])
    env = {"DREAMGYM_TEST_STOP": signal_name, "DREAMGYM_TEST_STOP_IN": "finalizer"}
    stopped = run_cli("run", str(path), site=third_party_site, env=env)
    assert stopped.returncode == status, stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1].startswith(f"Error: interrupted by {signal_name};")
    assert "Exception ignored" not in stopped.stderr and "Traceback" not in stopped.stderr
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [-1, 0]


def test_the_cli_run_in_process_leaves_no_stop_and_no_handler_behind(tmp_path, monkeypatch):
    # The CLI run in one process with other work (a notebook, CliRunner): its Ctrl-C handler
    # used to stay, so a later Ctrl-C of that process was recorded as a stop that every later
    # rollout raised again at its first environment error; and a stop recorded before a
    # command was reported as that command's interruption.
    import signal

    from click.testing import CliRunner

    from dreamgym_core import stopping
    from dreamgym_core.cli import cli

    handler, hook = signal.getsignal(signal.SIGINT), sys.unraisablehook
    monkeypatch.setattr(stopping, "_requested", signal.SIGINT)
    result = CliRunner().invoke(cli, ["config", "show", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2, result.output
    assert "interrupted" not in result.output and "missing.yaml" in result.output
    assert signal.getsignal(signal.SIGINT) is handler and sys.unraisablehook is hook
    assert stopping.requested() is None


def test_third_party_plugin_installed_by_pip_runs_a_pipeline(third_party_site, tmp_path):
    listed = json.loads(run_cli("plugins", "--json", site=third_party_site).stdout)
    guess = next(p for p in listed if p["name"] == "guess")
    assert guess["distribution"] == "dreamgym-plugin-guess" and guess["version"] == "1.2.3"
    result = run_cli("run", str(pipeline(tmp_path)), site=third_party_site)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["eval/success_rate"] == 1.0  # the oracle policy solves the third-party game
    assert summary["counters/real_transitions"] > 0
    checked = run_cli("check", "guess", site=third_party_site)
    assert "ok   env:guess" in checked.stdout and "ok   model:oracle" in checked.stdout
    # the test double's "parameter" is its own mean reward: it never trains the policy it owns
    assert "FAIL algo:tally: RecordingAlgo: update() did not change the policy's parameters" in checked.stdout
    assert checked.returncode == 1, checked.stderr


def test_a_quiet_run_prints_no_progress_line_but_its_warnings_errors_and_summary(third_party_site, tmp_path):
    # Sweeps had no way to silence the "[dreamgym   1.2s] ..." lines on stderr.
    path = pipeline(tmp_path, eval={"episodes": 6})  # more greedy games than the 4 test tasks: a warning
    quiet = run_cli("run", str(path), "--quiet", site=third_party_site)
    assert quiet.returncode == 0, quiet.stderr
    assert "[dreamgym" not in quiet.stderr
    assert "eval: 6 episodes requested on 4 test tasks with greedy play; using 4" in quiet.stderr
    assert json.loads(quiet.stdout)["eval/episodes"] == 4.0
    again = run_cli("run", str(path), "-q", site=third_party_site)  # the run directory is taken
    assert again.returncode == 2 and again.stderr == f"Error: {tmp_path / 'run'} already holds a run; pass --resume or choose another run_dir\n"
    loud = run_cli("run", str(path), "--set", f"run_dir={tmp_path / 'loud'}", site=third_party_site)
    assert loud.returncode == 0 and "] collecting offline real data" in loud.stderr, loud.stderr


def test_a_quiet_collect_prints_no_progress_bar_but_its_errors(third_party_site, tmp_path):
    args = ("collect", "--env", "guess", "--plugin", "guess", "--transitions", "5")
    loud = run_cli(*args, "--out", str(tmp_path / "loud.jsonl"), site=third_party_site)
    assert loud.returncode == 0 and "collect loud.jsonl: 100%" in loud.stderr, loud.stderr
    quiet = run_cli(*args, "--out", str(tmp_path / "quiet.jsonl"), "--quiet", site=third_party_site)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert quiet.stdout == f"wrote 5 transitions to {tmp_path / 'quiet.jsonl'}\n"
    assert len((tmp_path / "quiet.jsonl").read_text().splitlines()) == 5
    (tmp_path / "taken").write_text("a file where the output folder should be")
    failed = run_cli(*args, "--out", str(tmp_path / "taken" / "c.jsonl"), "-q", site=third_party_site)
    assert failed.returncode == 1 and failed.stderr.startswith(f"Error: --out {tmp_path / 'taken' / 'c.jsonl'}: cannot write there")


def test_unknown_plugin_is_one_line_with_suggestion_and_exit_2(third_party_site, tmp_path):
    result = run_cli("run", str(pipeline(tmp_path, plugins=["gues"])), site=third_party_site)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "plugin 'gues' is not installed (installed: " in lines[0] and "Did you mean 'guess'?" in lines[0]
    assert "pipeline.yaml: plugins" in lines[0] and "Traceback" not in result.stderr


def test_wrong_type_names_file_and_path_on_the_cli(third_party_site, tmp_path):
    path = pipeline(tmp_path, algo={"name": "tally", "config": {"lr": "fast"}})
    result = run_cli("config", "show", str(path), site=third_party_site)
    assert result.returncode == 2
    assert result.stderr.strip() == f"Error: {path}: Expected `float`, got `str` - at `$.algo.config.lr`"
    shown = run_cli("--traceback", "config", "show", str(path), site=third_party_site)
    assert "Traceback" in shown.stderr


def test_broken_plugin_is_named_and_listing_still_works(third_party_site, tmp_path):
    listed = run_cli("plugins", site=third_party_site)
    assert listed.returncode == 0 and "broken" in listed.stdout
    result = run_cli("run", str(pipeline(tmp_path, plugins=["guess", "broken"])), site=third_party_site)
    assert result.returncode == 2
    assert (
        "plugin 'broken' (distribution dreamgym-plugin-broken) failed to load: "
        "ModuleNotFoundError: No module named 'a_module_that_does_not_exist'"
    ) in result.stderr


def test_a_component_that_fails_to_build_names_itself_and_its_plugin_in_one_line(third_party_site, tmp_path):
    path = pipeline(tmp_path, plugins=["guess", "crashing"], env={"name": "crashing"})
    result = run_cli("run", str(path), site=third_party_site)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: env 'crashing' (plugin 'crashing') failed to build: "
        "FileNotFoundError: java: not found the engine needs Java 17"
    )


def test_a_plugin_name_that_two_distributions_register_is_refused_naming_both(third_party_site, tmp_path):
    result = run_cli("run", str(pipeline(tmp_path, plugins=["guess", "twin"])), site=third_party_site)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]  # the two are listed in sys.path's order
    assert re.fullmatch(
        r"Error: .*pipeline\.yaml: plugins: plugin 'twin' is registered by "
        r"dreamgym-plugin-twin-(a|b) and dreamgym-plugin-twin-(a|b); uninstall all but one", line
    ) and "twin-a" in line and "twin-b" in line
    listed = run_cli("plugins", site=third_party_site)
    assert listed.returncode == 0  # listing still works, and shows the clash
    (twin,) = [row for row in listed.stdout.splitlines() if row.startswith("twin ")]
    assert re.search(r"\(also registered by dreamgym-plugin-twin-(a|b): refused in pipelines\)$", twin)


def test_a_hook_implementation_that_does_not_match_its_spec_is_one_line(third_party_site, tmp_path):
    result = run_cli("run", str(pipeline(tmp_path, plugins=["guess", "mismatched"])), site=third_party_site)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()  # pluggy's own message spans three lines
    assert line.startswith("Error: plugin 'mismatched':") and "colour" in line


def test_a_hook_implementation_no_spec_names_is_one_line_naming_the_plugin(third_party_site, tmp_path):
    result = run_cli("run", str(pipeline(tmp_path, plugins=["guess", "misnamed"])), site=third_party_site)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()  # was the module's repr, "<module 'dreamgym_plugin_misnamed' from ...>"
    assert line == "Error: plugin 'misnamed': unknown hook 'dreamgym_register_env'. Did you mean 'dreamgym_register_envs'? (the hooks: docs/hooks.md)"
    assert result.returncode == 2  # a plugin that cannot be used, as an unknown or broken one


def test_two_entry_points_loading_one_object_is_one_line_naming_both(third_party_site, tmp_path):
    result = run_cli("run", str(pipeline(tmp_path, plugins=["guess", "alias"])), site=third_party_site)
    assert result.returncode != 0 and "Traceback" not in result.stderr  # was pluggy's ValueError, uncaught
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: plugin 'alias': its entry point loads the object plugin 'guess' already registered")


def test_a_control_character_in_the_pipeline_file_is_one_line(third_party_site, tmp_path):
    path = tmp_path / "ctrl.yaml"
    path.write_text(pipeline(tmp_path).read_text() + "note: a\x01b\n")
    result = run_cli("config", "show", str(path), site=third_party_site)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()  # the YAML reader's message spans two lines
    assert line.startswith(f"Error: {path}: not valid YAML") and "special characters are not allowed" in line


def test_blocked_plugin_is_not_loaded(third_party_site, tmp_path):
    result = run_cli("config", "show", str(pipeline(tmp_path)), site=third_party_site, env={"DREAMGYM_BLOCK_PLUGINS": "guess"})
    assert result.returncode == 2 and "plugin 'guess' is blocked by DREAMGYM_BLOCK_PLUGINS" in result.stderr


def test_config_show_prints_resolved_defaults(third_party_site, tmp_path):
    result = run_cli("config", "show", str(pipeline(tmp_path)), site=third_party_site)
    shown = json.loads(result.stdout)
    assert shown["config"]["env"]["config"] == {"targets": 4, "max_value": 5}
    assert len(shown["sha256"]) == 64
    schema = json.loads(run_cli("config", "schema", str(pipeline(tmp_path)), site=third_party_site).stdout)
    assert "loop" in json.dumps(schema["pipeline"]) and "algo" in schema["components"]


def test_every_builtin_plugin_is_listed_with_distribution_and_version():
    listed = {p["name"]: p for p in json.loads(run_cli("plugins", "--json").stdout)}
    builtins = sorted(ROOT.glob("plugins/*/*/pyproject.toml"))
    assert builtins, "no built-in plugins found"
    for path in builtins:
        project = tomllib.loads(path.read_text())["project"]
        for name in project.get("entry-points", {}).get("dreamgym", {}):
            assert listed[name]["distribution"] == project["name"], path
            assert listed[name]["version"] == project["version"], path


def test_duplicate_component_names_name_both_plugins(register_plugin):
    class Twin:
        @hookimpl
        def dreamgym_register_envs(self):
            return [ComponentSpec(name="count", factory=CountDomain, config_type=CountConfig, description="twin")]

    register_plugin(StandIns(), "first")
    plugins = register_plugin(Twin(), "second")
    with pytest.raises(DuplicateComponentError, match="duplicate env name 'count': registered by plugin 'first' and by plugin 'second'"):
        plugins.components("env")


def test_check_skips_a_model_whose_default_weights_are_not_on_this_machine(checked_plugin):
    from dreamgym_core import conformance
    from dreamgym_core.errors import ModelUnavailable

    def not_cached(config):
        raise ModelUnavailable("hf: path='org/model' is not a directory, nor a hub id in the local cache")

    class Hub:
        @hookimpl
        def dreamgym_register_models(self):
            return [ComponentSpec(name="hub", factory=not_cached, config_type=Config, description="a hub model")]

    checked_plugin(Hub(), "hub")
    assert list(conformance.check_plugin("hub")) == [
        "skip model:hub (its default model is not here: hf: path='org/model' is not a directory, nor a hub id in the local cache)",
        "nothing checked: each of the 1 component(s) of plugin 'hub' was skipped",
    ]
    # the CLI does not read "nothing checked" as a pass: exit 5, as pytest's "no tests collected"
    from click.testing import CliRunner

    from dreamgym_core.cli import cli

    result = CliRunner().invoke(cli, ["check", "hub"])
    assert result.exit_code == 5, result.output
    assert result.output.splitlines()[-1].startswith("nothing checked")


def test_check_skips_a_component_whose_config_has_required_fields(checked_plugin):
    from dreamgym_core import conformance

    class NeedsPath(Config):
        model_dir: str

    class Needy:
        @hookimpl
        def dreamgym_register_envs(self):
            return [ComponentSpec(name="needy", factory=CountDomain, config_type=NeedsPath, description="needs a path")]

    checked_plugin(Needy(), "needy")
    lines = list(conformance.check_plugin("needy"))
    assert lines == [
        "skip env:needy (NeedsPath has required fields; the plugin's own tests run its check)",
        "nothing checked: each of the 1 component(s) of plugin 'needy' was skipped",  # was "0 ... passed"
    ]


class _PositiveDim(Config):
    dim: Annotated[int, msgspec.Meta(gt=0)] = 0  # every field has a default, and this one is refused


def test_check_fails_a_component_whose_default_config_is_invalid(checked_plugin):
    # It was skipped as if it had required fields, while a pipeline naming it with no config fails.
    from dreamgym_core import conformance
    from dreamgym_core.testing import BagOfWordsEncoder

    class Defaults:
        @hookimpl
        def dreamgym_register_encoders(self):
            return [ComponentSpec(name="bad-default", factory=lambda config: BagOfWordsEncoder(dim=config.dim),
                                  config_type=_PositiveDim, description="refuses its own default")]

    checked_plugin(Defaults(), "defaults")
    assert list(conformance.check_plugin("defaults")) == [
        "FAIL encoder:bad-default: its default config is invalid: _PositiveDim: Expected `int` >= 1 - at `$.dim`",
        "1 of 1 component(s) of plugin 'defaults' failed",
    ]


class _CloseOnceEnv:
    """A CountEnv whose second close() raises."""

    def __init__(self, env) -> None:
        self.env, self.closed = env, False

    def reset(self, **kwargs):
        return self.env.reset(**kwargs)

    def step(self, **kwargs):
        return self.env.step(**kwargs)

    def close(self) -> None:
        if self.closed:
            raise RuntimeError("already closed")
        self.closed = True


class _CloseOnceDomain(CountDomain):
    def make_env(self):
        return _CloseOnceEnv(super().make_env())


class _BrokenFactoryDomain(CountDomain):
    def __init__(self, config) -> None:
        raise ValueError("no such data")


def test_check_reports_every_component_and_exits_1_if_any_failed(checked_plugin):
    from click.testing import CliRunner

    from dreamgym_core.cli import cli

    class Mixed:
        @hookimpl
        def dreamgym_register_envs(self):
            return [
                ComponentSpec(name="closes-once", factory=_CloseOnceDomain, config_type=CountConfig, description="raises on a 2nd close"),
                ComponentSpec(name="no-data", factory=_BrokenFactoryDomain, config_type=CountConfig, description="factory raises"),
                ComponentSpec(name="count", factory=CountDomain, config_type=CountConfig, description="good"),
            ]

    checked_plugin(Mixed(), "mixed")
    result = CliRunner().invoke(cli, ["check", "mixed"])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == [
        "FAIL env:closes-once: _CloseOnceEnv: a second close() (close must be idempotent) raised RuntimeError: already closed (see docs/conformance.md)",
        "FAIL env:no-data: ValueError: no such data",
        "ok   env:count",
        "2 of 3 component(s) of plugin 'mixed' failed",
    ]


class _EchoLM:
    """A generator that echoes the last letters of its prompt; ``cut_stops`` False keeps a
    stop string in its text, as a backend that ignores ``stop`` would."""

    model_id = "echo"
    cut_stops = True

    def __init__(self, config) -> None:
        pass

    def generate(self, *, prompts, max_new_tokens, temperature=1.0, stop=(), seed=None):
        texts = [p[-max_new_tokens:] for p in prompts]
        if not self.cut_stops:
            return texts
        return [t[: min((t.index(s) for s in stop if s in t), default=len(t))] for t in texts]


class _StopKeptLM(_EchoLM):
    cut_stops = False


def test_check_runs_the_language_model_check_on_a_model_backend(checked_plugin):
    from click.testing import CliRunner

    from dreamgym_core.cli import cli

    class Models:
        @hookimpl
        def dreamgym_register_models(self):
            return [
                ComponentSpec(name="echo", factory=_EchoLM, config_type=CountConfig, description="good"),
                ComponentSpec(name="stop-kept", factory=_StopKeptLM, config_type=CountConfig, description="ignores stop"),
            ]

    checked_plugin(Models(), "models")
    result = CliRunner().invoke(cli, ["check", "models"])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0] == "ok   model:echo"
    assert lines[1].startswith("FAIL model:stop-kept: _StopKeptLM: generate(stop=[")
    assert lines[2] == "1 of 2 component(s) of plugin 'models' failed"


def test_check_runs_the_algorithm_check_with_a_stand_in_policy(checked_plugin, register_plugin):
    # Algorithms were skipped ("needs collaborators"): an update that returned nothing passed.
    from click.testing import CliRunner

    from dreamgym_core.cli import cli

    register_plugin(pytest.importorskip("dreamgym_plugin_hf"), "hf")  # the hf-tiny stand-in policy
    local = pytest.importorskip("dreamgym_plugin_local")
    grpo = next(spec for spec in local.dreamgym_register_algos() if spec.name == "grpo")

    def lazy(config, *, policy, seed):  # an update that changes nothing
        algo = grpo.factory(config, policy=policy, seed=seed)
        algo.update = lambda **_: {"loss": 0.0}
        return algo

    def api_only(config, *, policy, seed):
        raise ConfigError("needs a served policy (base_url), got a local model")

    class Good:
        @hookimpl
        def dreamgym_register_algos(self):
            return [
                ComponentSpec(name="mine", factory=grpo.factory, config_type=grpo.config_type, description="good"),
                ComponentSpec(name="api", factory=api_only, config_type=grpo.config_type, description="another kind of policy"),
            ]

    class Lazy:
        @hookimpl
        def dreamgym_register_algos(self):
            return [ComponentSpec(name="lazy", factory=lazy, config_type=grpo.config_type, description="updates nothing")]

    checked_plugin(Good(), "good")
    checked_plugin(Lazy(), "lazy")
    result = CliRunner().invoke(cli, ["check", "good"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "ok   algo:mine",
        "skip algo:api (its factory refuses the hf-tiny stand-in policy: needs a served policy (base_url), got a local model)",
        "1 component(s) of plugin 'good' passed",
    ]
    result = CliRunner().invoke(cli, ["check", "lazy"])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == [
        "FAIL algo:lazy: GRPO: update() did not change the policy's parameters (see docs/conformance.md)",
        "1 of 1 component(s) of plugin 'lazy' failed",
    ]


class _NoSaveAlgo:
    """Acts and updates, but has no save/load."""

    def __init__(self, algo) -> None:
        self.act, self.update = algo.act, algo.update


def test_check_fails_an_algorithm_a_run_refuses_to_build(checked_plugin, register_plugin):
    # Passed: the kit checked save/load only where the algorithm had them, and every run refuses it.
    from click.testing import CliRunner

    from dreamgym_core.cli import cli

    register_plugin(pytest.importorskip("dreamgym_plugin_hf"), "hf")  # the hf-tiny stand-in policy
    local = pytest.importorskip("dreamgym_plugin_local")
    grpo = next(spec for spec in local.dreamgym_register_algos() if spec.name == "grpo")

    class NoSave:
        @hookimpl
        def dreamgym_register_algos(self):
            factory = lambda config, *, policy, seed: _NoSaveAlgo(grpo.factory(config, policy=policy, seed=seed))  # noqa: E731
            return [ComponentSpec(name="no-save", factory=factory, config_type=grpo.config_type, description="no save/load")]

    checked_plugin(NoSave(), "no-save")
    result = CliRunner().invoke(cli, ["check", "no-save"])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == [
        "FAIL algo:no-save: _NoSaveAlgo: has no save, load (a run refuses to build it; see docs/conformance.md)",
        "1 of 1 component(s) of plugin 'no-save' failed",
    ]


def test_check_fails_a_plugin_that_registers_nothing(checked_plugin):
    from click.testing import CliRunner

    from dreamgym_core.cli import cli

    class Unmarked:  # the register function lacks @hookimpl, so pluggy never calls it
        def dreamgym_register_envs(self):
            return [ComponentSpec(name="count", factory=CountDomain, config_type=CountConfig, description="never seen")]

    checked_plugin(Unmarked(), "unmarked")
    result = CliRunner().invoke(cli, ["check", "unmarked"])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "FAIL plugin 'unmarked' registers no components (is each dreamgym_register_* function marked @hookimpl?)"
    ]


class _ClosedDomain(CountDomain):
    """A CountDomain that counts its close() calls, as a browser's or a simulator's domain must be closed."""

    closed = 0

    def close(self) -> None:
        type(self).closed += 1


def test_check_closes_the_domain_it_built(checked_plugin, monkeypatch):
    from dreamgym_core import conformance

    class Closing:
        @hookimpl
        def dreamgym_register_envs(self):
            return [ComponentSpec(name="closing", factory=_ClosedDomain, config_type=CountConfig, description="counts close()")]

    checked_plugin(Closing(), "closing")
    monkeypatch.setattr(_ClosedDomain, "closed", 0)
    assert list(conformance.check_plugin("closing")) == ["ok   env:closing", "1 component(s) of plugin 'closing' passed"]
    assert _ClosedDomain.closed == 1


class _GoneDomain(CountDomain):
    """A CountDomain whose close() raises, as one whose browser is already gone."""

    def close(self) -> None:
        raise RuntimeError("browser already gone")


class _NamelessGoneDomain(_GoneDomain):
    name = ""


def test_check_reports_the_check_failure_when_close_fails_too(checked_plugin, caplog):
    # the close() error replaced the check's own failure, which dreamgym check never printed
    from dreamgym_core import conformance

    class Gone:
        @hookimpl
        def dreamgym_register_envs(self):
            return [
                ComponentSpec(name="nameless", factory=_NamelessGoneDomain, config_type=CountConfig, description="fails, then close raises"),
                ComponentSpec(name="gone", factory=_GoneDomain, config_type=CountConfig, description="passes, then close raises"),
            ]

    checked_plugin(Gone(), "gone")
    assert list(conformance.check_plugin("gone")) == [
        "FAIL env:nameless: _NamelessGoneDomain: name must be a non-empty str (pipelines and errors name the env by it), got '' (see docs/conformance.md)",
        "FAIL env:gone: RuntimeError: browser already gone",  # a check that passed still fails on its close()
        "2 of 2 component(s) of plugin 'gone' failed",
    ]
    assert "_NamelessGoneDomain: close() after the failed check raised too" in caplog.text


def test_check_builds_a_curriculum_with_the_arguments_the_loop_passes(checked_plugin):
    from dreamgym_core import conformance
    from dreamgym_plugin_uniform import UniformConfig, UniformCurriculum

    def factory(config, *, tasks, task_generator, encoder, seed, domain):  # no **kwargs: domain is required
        return UniformCurriculum(config, tasks=tasks, seed=seed)

    class Strict:
        @hookimpl
        def dreamgym_register_curricula(self):
            return [ComponentSpec(name="strict", factory=factory, config_type=UniformConfig, description="takes domain")]

    checked_plugin(Strict(), "strict")
    assert list(conformance.check_plugin("strict")) == ["ok   curriculum:strict", "1 component(s) of plugin 'strict' passed"]


def test_misspelled_hook_is_rejected(dreamgym_pm):
    class Typo:
        @hookimpl
        def dreamgym_register_env(self):  # missing the final "s"
            return []

    dreamgym_pm.register(Typo(), name="typo")
    with pytest.raises(Exception, match="unknown hook 'dreamgym_register_env'"):
        dreamgym_pm.check_pending()


def test_registration_hook_must_return_specs(register_plugin):
    class Wrong:
        @hookimpl
        def dreamgym_register_algos(self):
            return [{"name": "x"}]

    plugins = register_plugin(Wrong(), "wrong")
    with pytest.raises(Exception, match="plugin 'wrong': dreamgym_register_algos returned dict, expected ComponentSpec"):
        plugins.components("algo")


@pytest.mark.parametrize(
    "returned, message",
    [
        ("spec", r"dreamgym_register_algos returned ComponentSpec, expected a list of ComponentSpec"),
        ("raise", r"dreamgym_register_algos failed: KeyError: 'oops'"),
    ],
)
def test_a_registration_hook_that_fails_is_named(register_plugin, returned, message):
    class Wrong:
        @hookimpl
        def dreamgym_register_algos(self):
            if returned == "raise":
                raise KeyError("oops")
            return ComponentSpec(name="x", factory=object, config_type=object, description="x")

    plugins = register_plugin(Wrong(), "wrong")
    with pytest.raises(DreamGymError, match="plugin 'wrong': " + message):
        plugins.components("algo")


def test_no_plugin_is_imported_when_listing():
    code = "import sys; from dreamgym_core.plugins import installed_plugins; installed_plugins(); print([m for m in sys.modules if m.startswith('dreamgym_plugin')])"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# Registration hooks each have a test (checked by test_meta.py).
def _registers(kind: str, hook: str, register_plugin) -> None:
    class One:
        pass

    def impl(self):
        return [ComponentSpec(name=f"one-{kind}", factory=dict, config_type=Config, description="x")]

    setattr(One, hook, hookimpl(impl))
    plugins = register_plugin(One(), "one")
    assert plugins.component(kind, f"one-{kind}").plugin == "one"


def test_hook_dreamgym_register_envs(register_plugin):
    _registers("env", "dreamgym_register_envs", register_plugin)


def test_hook_dreamgym_register_models(register_plugin):
    _registers("model", "dreamgym_register_models", register_plugin)


def test_hook_dreamgym_register_encoders(register_plugin):
    _registers("encoder", "dreamgym_register_encoders", register_plugin)


def test_hook_dreamgym_register_buffers(register_plugin):
    _registers("buffer", "dreamgym_register_buffers", register_plugin)


def test_hook_dreamgym_register_curricula(register_plugin):
    _registers("curriculum", "dreamgym_register_curricula", register_plugin)


def test_hook_dreamgym_register_algos(register_plugin):
    _registers("algo", "dreamgym_register_algos", register_plugin)


def test_hook_dreamgym_register_loggers(register_plugin):
    _registers("logger", "dreamgym_register_loggers", register_plugin)


class _MemoryConfig(Config):
    dim: int = 4


class _MemoryBuffer:
    """A buffer that ignores its path: every instance starts empty."""

    def __init__(self, config, *, encoder, path=None) -> None:
        self.items: list = []

    def add(self, *, transitions):
        new = [t for t in transitions if t not in self.items]
        self.items += new
        return len(new)

    def retrieve(self, *, queries, k):
        # the exact (state, action) first, then the rest in insertion order
        return [sorted(self.items, key=lambda t: (t.state, t.action) != q)[:k] for q in queries]

    def sample(self, *, n, seed=None):
        return self.items[:n]

    def __len__(self):
        return len(self.items)

    def flush(self):
        pass

    def close(self):
        pass


def test_check_fails_a_buffer_that_does_not_keep_its_records_at_its_path(checked_plugin):
    from click.testing import CliRunner

    from dreamgym_core.cli import cli

    class Memory:
        @hookimpl
        def dreamgym_register_buffers(self):
            return [ComponentSpec(name="memory", factory=_MemoryBuffer, config_type=_MemoryConfig, description="in memory")]

    checked_plugin(Memory(), "memory")
    result = CliRunner().invoke(cli, ["check", "memory"])
    assert result.exit_code == 1, result.output
    assert "FAIL buffer:memory: _MemoryBuffer: reopened at its path, the buffer holds 0 of the 6 records it stored" in result.output


@pytest.mark.parametrize("command", ["eval", "curve"])
def test_an_empty_split_is_refused_not_read_as_the_default(command, tmp_path):
    from click.testing import CliRunner

    from dreamgym_core.cli import cli

    result = CliRunner().invoke(cli, [command, str(tmp_path / "pipeline.yaml"), "--split", " "])
    assert result.exit_code == 2
    assert "Invalid value for '--split': an empty split name (drop --split for the pipeline's eval.split)" in result.output
