"""The verl-grpo / verl-ppo components: registration, run-directory files, metrics, CPU refusal."""

from __future__ import annotations

import importlib
import json
import re
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from dreamgym_core.errors import DreamGymError
from dreamgym_core.loop import run_pipeline
from dreamgym_core.plugins import Plugins
from dreamgym_core.records import Task
from dreamgym_plugin_verl.config import VerlConfig
from dreamgym_plugin_verl.dataset import DreamGymTaskDataset, feed_spec_path
from dreamgym_plugin_verl.trainer import VerlTrainer, map_verl_metrics, prepare_files, require_cuda

torch = pytest.importorskip("torch")
TASKS = [Task(id=f"t{i}", instruction=f"task {i}", domain="d") for i in range(3)]


def test_registered_through_the_entry_point():
    specs = Plugins.for_names(["verl"]).components("algo")
    assert {"verl-grpo", "verl-ppo"} <= set(specs)
    for name in ("verl-grpo", "verl-ppo"):
        assert specs[name].plugin == "verl" and specs[name].factory.runs_own_loop is True
        assert specs[name].config_type is VerlConfig


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cpu_run_is_refused_in_one_line(resolve_dict, tmp_path):
    resolved = resolve_dict({
        "plugins": ["verl"], "env": {"name": "e"}, "policy": {"name": "p"}, "loop": {"mode": "real"},
        "algo": {"name": "verl-grpo", "config": {"model_path": "/m"}}, "run_dir": str(tmp_path / "run"),
    })
    with pytest.raises(DreamGymError, match="verl's trainer needs CUDA") as err:
        run_pipeline(resolved, Plugins.for_names(["verl"]))
    assert "\n" not in str(err.value)
    with pytest.raises(DreamGymError):
        require_cuda()


def test_prepare_files_wires_dataset_and_agent_loop(resolve_dict, tmp_path):
    resolved = resolve_dict({
        "plugins": [], "env": {"name": "e"}, "policy": {"name": "p"},
        "loop": {"mode": "real", "tasks_per_iteration": 2, "iterations": 3},
        "algo": {"name": "verl-grpo", "config": {"model_path": "/m"}}, "seed": 5,
    })
    files = prepare_files(resolved, tmp_path, train=TASKS, val=TASKS[:1], actors={"buffer_actor": "buffer-x"})
    loops = yaml.safe_load(files["agent_loop"].read_text())
    assert loops == [{"name": "dreamgym_agent", "_target_": "dreamgym_plugin_verl.agent_loop.DreamGymAgentLoop", "runtime": str(tmp_path)}]
    assert json.loads((files["dir"] / "runtime.json").read_text()) == {"buffer_actor": "buffer-x"}
    spec = json.loads(feed_spec_path(files["train"]).read_text())
    assert spec["batch_size"] == 2 and spec["iterations"] == 3 and spec["seed"] == 5
    train = DreamGymTaskDataset(data_files=str(files["train"]))
    assert len(train) == 6 and [train[i]["extra_info"]["task_id"] for i in range(4)] == ["t0", "t1", "t2", "t0"]
    assert len(DreamGymTaskDataset(data_files=str(files["val"]))) == 1


def test_map_verl_metrics():
    row = map_verl_metrics({"actor/pg_loss": 0.5, "critic/score/mean": 0.25, "timing_s/step": 3, "flag": True, "s": "x"})
    assert row["losses/policy_loss"] == 0.5 and row["charts/episodic_return"] == 0.25
    assert row["perf/iteration_seconds"] == 3.0 and row["verl/actor/pg_loss"] == 0.5
    assert "verl/flag" not in row and "verl/s" not in row


def test_factory_signature_matches_the_core_loop():
    trainer = VerlTrainer(VerlConfig(), policy=None, seed=3)
    assert trainer.runs_own_loop and trainer.seed == 3


def test_backend_config_command(tmp_path):
    pytest.importorskip("dreamgym_plugin_textworld")
    pytest.importorskip("dreamgym_plugin_hf")
    from click.testing import CliRunner

    from dreamgym_core.commands.backend_config import command

    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump({
        "plugins": ["textworld", "hf", "verl"], "env": {"name": "twx"}, "policy": {"name": "hf-tiny"},
        "algo": {"name": "verl-ppo", "config": {"model_path": "/models/m"}},
        "loop": {"mode": "real", "group_size": 2}, "run_dir": str(tmp_path / "run"),
    }))
    result = CliRunner().invoke(command, [str(pipeline), "--backend", "verl", "--set", "loop.max_steps=9"])
    assert result.exit_code == 0, result.output
    view = json.loads(result.output)
    assert view["entry_point"] == "verl.trainer.main_ppo"
    assert "algorithm.adv_estimator=gae" in view["overrides"]
    assert "actor_rollout_ref.rollout.multi_turn.max_assistant_turns=9" in view["overrides"]
    assert "actor_rollout_ref.rollout.n=2" in view["overrides"]


def test_dependencies_cover_the_trainer_main_ppo_runs():
    """``_run_main_ppo`` runs verl's TaskRunnerV1 (``trainer.use_v1`` defaults to true in 0.9.1),
    whose trainer (verl/trainer/ppo/v1/trainer_base.py) imports ``transfer_queue``; verl
    declares TransferQueue and pyzmq only in its ``verl-core`` extra, which this plugin
    cannot use (every verl extra that GPU users would pick pins a CUDA torch)."""
    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    names = {re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0].lower() for dep in meta["project"]["dependencies"]}
    assert {"transferqueue", "pyzmq"} <= names
    importlib.import_module("verl.trainer.ppo.v1")


def test_ray_init_carries_verls_runtime_env_and_the_log_paths(resolve_file, compose, monkeypatch):
    """DreamGym calls ray.init before verl, so verl's run_ppo skips its own: the arguments it
    would have used (address, runtime env, user runtime_env) and the log paths, which verl's
    TaskRunner actor reads from its environment, go into DreamGym's ray.init."""
    from dreamgym_plugin_verl.trainer import ray_init_kwargs
    from dreamgym_plugin_verl.translate import translate

    for key in ("TOKENIZERS_PARALLELISM", "VLLM_LOGGING_LEVEL"):
        monkeypatch.delenv(key, raising=False)  # verl's defaults skip variables the shell already set
    golden = Path(__file__).parent / "golden" / "ppo_s2r_cluster.yaml"
    overrides = translate(resolve_file(golden)) + ["+ray_kwargs.ray_init.runtime_env.env_vars.MY_VAR=abc"]
    kwargs = ray_init_kwargs(compose(overrides), env_vars={"VERL_FILE_LOGGER_PATH": "/run/verl/m.jsonl"})
    assert kwargs["address"] == "auto" and kwargs["namespace"] == "dreamgym"
    env = kwargs["runtime_env"]["env_vars"]
    assert env["VERL_FILE_LOGGER_PATH"] == "/run/verl/m.jsonl" and env["MY_VAR"] == "abc"
    assert env["TOKENIZERS_PARALLELISM"] == "true" and env["VLLM_LOGGING_LEVEL"] == "WARN"


def test_main_ppo_runner_follows_trainer_use_v1(compose):
    """verl's main_ppo.main runs TaskRunnerV1 only when trainer.use_v1 (the default) and the
    legacy main_ppo_v0.TaskRunner otherwise; an extra override trainer.use_v1=False must not
    be ignored."""
    from verl.trainer.main_ppo import TaskRunnerV1
    from verl.trainer.main_ppo_v0 import TaskRunner

    from dreamgym_plugin_verl.trainer import _task_runner

    assert _task_runner(compose([])) is TaskRunnerV1
    assert _task_runner(compose(["trainer.use_v1=False"])) is TaskRunner


class _RayStarted(Exception):
    """Raised by the stand-in ray.init: what it was given is all this test needs."""


@pytest.mark.parametrize("allow_download", [None, False, True])
def test_verls_workers_stay_off_the_network_unless_the_policy_allows_downloads(resolve_file, monkeypatch, tmp_path, allow_download):
    """verl's workers load the policy with transformers and serve it with vLLM: without these
    variables a hub id would be fetched from the hub (the hf policy's allow_download says no),
    and the hub's telemetry and vLLM's usage statistics sent, none of which the user asked for."""
    import ray

    from dreamgym_plugin_verl import trainer as trainer_mod

    # monkeypatch: what run() and verl set in os.environ must not outlive this test
    for name in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "VLLM_NO_USAGE_STATS", "VERL_FILE_LOGGER_PATH", "TENSORBOARD_DIR",
                 "VERL_FULL_DETERMINISM", "VLLM_BATCH_INVARIANT", "PYTHONHASHSEED", "VERL_RL_INSIGHT_ENABLE"):
        monkeypatch.delenv(name, raising=False)
    resolved = resolve_file(Path(__file__).parent / "golden" / "ppo_s2r_cluster.yaml")
    if allow_download is not None:
        from dreamgym_plugin_hf.config import HFConfig

        policy = HFConfig(path="HuggingFaceTB/SmolLM2-135M-Instruct", allow_download=allow_download)
        resolved = type(resolved)(source=resolved.source, pipeline=resolved.pipeline, components={**resolved.components, "policy": policy})
    # run() checks the env's splits before Ray starts: an env with a train and a test task
    resolved = type(resolved)(source=resolved.source, pipeline=resolved.pipeline, components={**resolved.components, "env": None})
    domain = SimpleNamespace(tasks=lambda split: [Task(id=f"{split}-0", instruction="go", domain="twx", split=split)])
    plugins = Plugins.for_names(["verl"])
    monkeypatch.setattr(plugins, "build", lambda kind, name, config, **_: domain)
    monkeypatch.setattr(plugins, "who", lambda kind, name, role="": f"{kind} {name!r}")
    seen = {}

    def stand_in_init(**kwargs):
        seen.update(kwargs)
        raise _RayStarted

    monkeypatch.setattr(trainer_mod, "require_cuda", lambda: None)
    monkeypatch.setattr(ray, "init", stand_in_init)
    with pytest.raises(_RayStarted):
        VerlTrainer(resolved.components["algo"]).run(resolved=resolved, plugins=plugins, run_dir=str(tmp_path))
    env = seen["runtime_env"]["env_vars"]
    assert env["VLLM_NO_USAGE_STATS"] == "1" and env["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert env.get("HF_HUB_OFFLINE") == (None if allow_download else "1")


def test_the_pipelines_runtime_env_and_the_shell_still_decide_the_network_variables(resolve_file, compose, monkeypatch):
    from dreamgym_plugin_verl.trainer import offline_env, ray_init_kwargs
    from dreamgym_plugin_verl.translate import translate

    for name in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VLLM_NO_USAGE_STATS", "0")  # set in the shell: workers inherit it
    resolved = resolve_file(Path(__file__).parent / "golden" / "ppo_s2r_cluster.yaml")
    overrides = translate(resolved) + ["+ray_kwargs.ray_init.runtime_env.env_vars.HF_HUB_OFFLINE='0'"]
    env = ray_init_kwargs(compose(overrides), env_vars={}, offline=offline_env(resolved))["runtime_env"]["env_vars"]
    assert env["HF_HUB_OFFLINE"] == "0" and env["HF_HUB_DISABLE_TELEMETRY"] == "1" and "VLLM_NO_USAGE_STATS" not in env



LOAD_THE_MODULES = """
for module in pkgutil.iter_modules(dreamgym_plugin_verl.__path__):
    importlib.import_module(f"dreamgym_plugin_verl.{module.name}")
assert "verl" in sys.modules
"""
START_THE_TRAINER = """
from dreamgym_plugin_verl import trainer
for v1 in (True, False):  # the trainer imports verl's own when the run starts
    trainer._task_runner(NS(trainer=NS(use_v1=v1)))
assert "verl" in sys.modules
"""


@pytest.mark.parametrize("first", [LOAD_THE_MODULES, START_THE_TRAINER], ids=["modules", "trainer"])
def test_loading_the_plugin_or_verls_trainer_leaves_the_programs_logging_alone(first):
    # verl's import runs logging.basicConfig on the root logger: a script's own basicConfig (its
    # level, its format) then did nothing once the agent loop (or the trainer's verl) was loaded.
    # Only verl's first import configures it, so each order runs in a fresh interpreter.
    import subprocess
    import sys

    code = "\n".join([
        "import importlib, logging, pkgutil, sys",
        "from types import SimpleNamespace as NS",
        "import dreamgym_plugin_verl",
        "root = logging.getLogger(); level = root.level",
        first,
        "assert root.handlers == [] and root.level == level, (root.handlers, root.level)",
        "logging.basicConfig(level=logging.INFO, format='mine %(message)s')",
        "logging.getLogger('x').info('hello')",
    ])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mine hello" in done.stderr


def test_runs_whose_folders_share_a_name_get_their_own_shared_actors(tmp_path, monkeypatch):
    # Named "buffer-<folder>", two runs in /home/a/runs/grpo and /home/b/runs/grpo on one Ray
    # cluster found each other's buffer and curriculum (get_if_exists) and shared them silently.
    from dreamgym_plugin_verl.trainer import actor_name

    a, b = tmp_path / "a" / "runs" / "grpo", tmp_path / "b" / "runs" / "grpo"
    assert actor_name("buffer", a) != actor_name("buffer", b)
    assert actor_name("buffer", a) != actor_name("curriculum", a)
    assert actor_name("buffer", a).startswith("buffer-grpo-")  # readable in Ray's lists
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    assert actor_name("buffer", "runs/grpo") == actor_name("buffer", a)  # a resumed run finds its own


@pytest.mark.parametrize(
    ("episodes", "temperature", "chosen"),
    [
        (5, 0.4, ["t0", "t1", "t2", "t0", "t1"]),  # sampled: the split cycles up to the episodes asked for
        (5, 0.0, ["t0", "t1", "t2"]),  # greedy: a repeat replays the same episode
        (2, 0.4, ["t0", "t1"]),
        (0, 0.0, ["t0"]),  # no evaluation: verl still reads a val file
    ],
)
def test_verl_validates_on_the_episodes_the_local_evaluation_plays(episodes, temperature, chosen):
    # verl plays each val row once (val_kwargs.n 1); the rows were the split's first eval.episodes
    # tasks, so a sampled evaluation of more episodes than tasks counted fewer episodes than asked
    from dreamgym_plugin_verl.trainer import held_out_tasks

    assert [t.id for t in held_out_tasks(TASKS, episodes, temperature)] == chosen


class _Stop(Exception):
    """Raised in place of verl's trainer: the files it would read are written by then."""


def test_the_val_file_holds_the_episodes_asked_for(resolve_dict, tmp_path, monkeypatch):
    """VerlTrainer.run up to verl's trainer (no Ray, no data stages): a sampled evaluation of
    5 episodes on 3 held-out tasks writes 5 val rows, each task's repeats with their own seeds."""
    from types import SimpleNamespace as NS

    from dreamgym_plugin_verl import trainer as trainer_mod
    from dreamgym_plugin_verl.translate import run_files

    def stop(overrides):
        raise _Stop

    monkeypatch.setattr(trainer_mod, "require_cuda", lambda: None)
    monkeypatch.setattr(trainer_mod, "start_ray", lambda kwargs: None)
    monkeypatch.setattr(trainer_mod, "_start_actors", lambda *args, **kwargs: ({}, [], {}))
    monkeypatch.setattr(trainer_mod, "_run_main_ppo", stop)
    resolved = resolve_dict({
        "plugins": [], "env": {"name": "e"}, "policy": {"name": "p"}, "loop": {"mode": "real"},
        "algo": {"name": "verl-grpo", "config": {"model_path": "/m"}}, "eval": {"episodes": 5, "temperature": 0.4},
    })
    resolved = type(resolved)(source=resolved.source, pipeline=resolved.pipeline, components={**resolved.components, "env": None})
    # a train task: run() refuses an empty train split before anything starts
    train = [Task(id="train-0", instruction="go", domain="twx", split="train")]
    domain = NS(tasks=lambda split: TASKS if split == "test" else train)
    hook = NS(
        dreamgym_configure=NS(call_historic=lambda **kwargs: None),
        dreamgym_run_started=lambda **kwargs: None, dreamgym_run_finished=lambda **kwargs: None,
    )
    with pytest.raises(_Stop):
        VerlTrainer(resolved.components["algo"]).run(
            resolved=resolved, plugins=NS(hook=hook, build=lambda *args: domain, who=lambda kind, name, role="": f"{kind} {name!r}"),
            run_dir=str(tmp_path), progress=False,
        )
    val = DreamGymTaskDataset(data_files=str(run_files(tmp_path)["val"]))
    rows = [val[i] for i in range(len(val))]
    assert [r["extra_info"]["task_id"] for r in rows] == ["t0", "t1", "t2", "t0", "t1"]
    assert len({r["seed"] for r in rows}) == 5 and not any(r["publish"] for r in rows)
