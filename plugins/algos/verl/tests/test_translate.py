"""Pipeline -> verl Hydra overrides: golden files, and verl's own config accepts them.

Regenerate the golden files after an intended change with
``DREAMGYM_UPDATE_GOLDEN=1 pytest plugins/algos/verl/tests/test_translate.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dreamgym_core.errors import ConfigError
from dreamgym_plugin_verl.translate import hydra_value, translate

GOLDEN = Path(__file__).parent / "golden"
PIPELINES = sorted(p.stem for p in GOLDEN.glob("*.yaml"))


@pytest.mark.parametrize("name", PIPELINES)
def test_golden(name, resolve_file):
    overrides = translate(resolve_file(GOLDEN / f"{name}.yaml"))
    expected = GOLDEN / f"{name}.overrides.txt"
    text = "\n".join(overrides) + "\n"
    if os.environ.get("DREAMGYM_UPDATE_GOLDEN") == "1":
        expected.write_text(text)
    assert text == expected.read_text()


@pytest.mark.parametrize("name", PIPELINES)
def test_verl_config_accepts_overrides(name, resolve_file, compose):
    resolved = resolve_file(GOLDEN / f"{name}.yaml")
    cfg = compose(translate(resolved))
    loop = resolved.pipeline.loop
    assert cfg.data.train_batch_size == loop.tasks_per_iteration
    assert cfg.actor_rollout_ref.rollout.n == loop.group_size
    assert cfg.actor_rollout_ref.rollout.multi_turn.max_assistant_turns == loop.max_steps
    assert cfg.trainer.total_training_steps == loop.iterations
    assert cfg.actor_rollout_ref.rollout.agent.default_agent_loop == "dreamgym_agent"
    assert cfg.actor_rollout_ref.actor.kl_loss_type == "low_var_kl"


def test_grpo_reference_settings(resolve_file, compose):
    cfg = compose(translate(resolve_file(GOLDEN / "grpo_dreamgym.yaml")))
    assert cfg.algorithm.adv_estimator == "grpo"
    assert cfg.actor_rollout_ref.actor.optim.lr == 1e-6
    assert cfg.actor_rollout_ref.actor.use_kl_loss is True and cfg.actor_rollout_ref.actor.kl_loss_coef == 0.01
    # loop.warmstart_epochs (default 1): verl starts from the policy the driver warm-started
    assert cfg.actor_rollout_ref.model.path == "runs/golden-grpo/policy_init"
    assert cfg.actor_rollout_ref.rollout.val_kwargs.temperature == 0.4
    assert cfg.trainer.nnodes == 1 and cfg.trainer.n_gpus_per_node == 1
    assert "address" not in cfg.ray_kwargs.ray_init


def test_ppo_cluster_settings(resolve_file, compose):
    cfg = compose(translate(resolve_file(GOLDEN / "ppo_s2r_cluster.yaml")))
    assert cfg.algorithm.adv_estimator == "gae"
    assert cfg.critic.enable is True and cfg.critic.model.path == "/shared/models/Llama-3.1-8B-Instruct"
    assert cfg.ray_kwargs.ray_init.address == "auto"
    assert cfg.trainer.nnodes == 2 and cfg.trainer.n_gpus_per_node == 8
    assert cfg.actor_rollout_ref.rollout.name == "sglang"
    # extra_overrides come last and win
    assert cfg.actor_rollout_ref.rollout.gpu_memory_utilization == 0.6
    assert cfg.trainer.val_before_train is False


def test_bad_mini_batch_is_a_located_error(resolve_dict):
    data = {
        "plugins": [], "env": {"name": "e"}, "policy": {"name": "p"}, "loop": {"mode": "real", "tasks_per_iteration": 6},
        "algo": {"name": "verl-grpo", "config": {"model_path": "/m", "ppo_mini_batch_size": 4}},
    }
    with pytest.raises(ConfigError, match=r"pipeline.yaml: algo.config.ppo_mini_batch_size=4 must divide"):
        translate(resolve_dict(data))


def test_validation_between_steps_is_refused_not_ignored(resolve_dict):
    data = {
        "plugins": [], "env": {"name": "e"}, "policy": {"name": "p"}, "loop": {"mode": "real"},
        "algo": {"name": "verl-grpo", "config": {"model_path": "/m"}}, "eval": {"valid_every": 2},
    }
    with pytest.raises(ConfigError, match=r"pipeline.yaml: eval.valid_every and eval.keep='best-valid' are local-loop options"):
        translate(resolve_dict(data))


def test_dropping_unanswered_episodes_is_refused_not_ignored(resolve_dict):
    data = {
        "plugins": [], "env": {"name": "e"}, "policy": {"name": "p"}, "loop": {"mode": "real", "unanswered_episodes": "drop"},
        "algo": {"name": "verl-grpo", "config": {"model_path": "/m"}},
    }
    with pytest.raises(ConfigError, match=r"pipeline.yaml: loop.unanswered_episodes='drop' is a local-loop option"):
        translate(resolve_dict(data))


def test_a_cap_on_real_envs_at_once_is_refused_not_ignored(resolve_dict):
    data = {
        "plugins": [], "env": {"name": "e"}, "policy": {"name": "p"}, "loop": {"mode": "real", "real_envs_at_once": 4},
        "algo": {"name": "verl-grpo", "config": {"model_path": "/m"}},
    }
    with pytest.raises(ConfigError, match=r"pipeline.yaml: loop.real_envs_at_once=4 is a local-loop option"):
        translate(resolve_dict(data))


def test_verl_starts_from_the_warm_start_or_the_weights_as_given(resolve_dict):
    data = {
        "plugins": [], "env": {"name": "e"}, "policy": {"name": "p"}, "loop": {"mode": "real"},
        "algo": {"name": "verl-ppo", "config": {"model_path": "/m"}}, "run_dir": "/runs/r",
    }
    paths = {o.split("=")[0]: o.split("=")[1] for o in translate(resolve_dict(data)) if o.split("=")[0].endswith("model.path")}
    assert paths == {"actor_rollout_ref.model.path": "'/runs/r/policy_init'", "critic.model.path": "'/runs/r/policy_init'"}
    data["loop"]["warmstart_epochs"] = 0
    assert "actor_rollout_ref.model.path='/m'" in translate(resolve_dict(data))
    data["loop"] |= {"warmstart_epochs": 2, "warmstart_select_episodes": 8}
    with pytest.raises(ConfigError, match=r"pipeline.yaml: loop.warmstart_select_episodes is a local-loop option"):
        translate(resolve_dict(data))


def test_missing_model_path_is_an_error(resolve_dict):
    data = {"plugins": [], "env": {"name": "e"}, "policy": {"name": "p"}, "loop": {"mode": "real"}, "algo": {"name": "verl-grpo"}}
    with pytest.raises(ConfigError, match="model_path is empty"):
        translate(resolve_dict(data))


@pytest.mark.parametrize(
    ("value", "text"),
    [(True, "True"), (None, "null"), (1e-6, "1e-06"), (["a", "b"], "[a,b]"), ("/p/x.yaml", "'/p/x.yaml'"), ("a b", "'a b'")],
)
def test_hydra_value(value, text):
    assert hydra_value(value) == text


@pytest.fixture
def model_dir(tmp_path, chat_tokenizer):
    """A model directory verl's HFModelConfig can read (config and tokenizer; no weights needed)."""
    from transformers import LlamaConfig

    path = tmp_path / "model"
    LlamaConfig(
        vocab_size=len(chat_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=8192, architectures=["LlamaForCausalLM"],
    ).save_pretrained(path)
    chat_tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("name", PIPELINES)
def test_verl_validate_config_accepts_translation(name, resolve_dict, compose, model_dir):
    """What _run_main_ppo does before training (as verl's main_ppo.main): verl's validate_config
    on the composed config, which builds the actor/critic dataclasses and checks batch sizes."""
    import yaml
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    data = yaml.safe_load((GOLDEN / f"{name}.yaml").read_text())
    data["algo"].setdefault("config", {})["model_path"] = str(model_dir)
    data["loop"]["warmstart_epochs"] = 0  # verl reads model_dir itself (the warm start's output is checked in test_warmstart.py)
    cfg = compose(translate(resolve_dict(data)))
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    assert need_critic(cfg) == (data["algo"]["name"] == "verl-ppo")
    assert need_reference_policy(cfg)  # the KL loss needs the reference policy


def test_a_kl_estimator_verl_does_not_implement_is_refused_when_the_config_is_read():
    # verl 0.9 lists kl_penalty 'full' and raises NotImplementedError at the first actor update,
    # on a GPU after the offline data, experience model and warm start have run
    import msgspec

    from dreamgym_plugin_verl.config import VerlConfig

    with pytest.raises(msgspec.ValidationError, match="kl_loss_type"):
        msgspec.convert({"kl_loss_type": "full"}, type=VerlConfig)
    assert msgspec.convert({"kl_loss_type": "mse"}, type=VerlConfig).kl_loss_type == "mse"


@pytest.mark.parametrize(
    ("section", "setting", "message"),
    [
        ("loop", {"action_choice": "listed"}, r"loop.action_choice='listed' is a local-loop option"),
        ("eval", {"fidelity_episodes": 4}, r"eval.fidelity_episodes=4 is a local-loop option"),
        ("eval", {"synthetic_agreement": True}, r"eval.synthetic_agreement is a local-loop option"),
    ],
)
def test_local_loop_settings_verl_would_ignore_are_refused(resolve_dict, section, setting, message):
    data = {
        "plugins": [], "env": {"name": "e"}, "policy": {"name": "p"}, "loop": {"mode": "real"},
        "algo": {"name": "verl-grpo", "config": {"model_path": "/m"}},
        # what the settings need to be valid at all (a synthetic environment to replay in)
        "experience_model": {"name": "m"}, "encoder": {"name": "c"}, "buffer": {"name": "b"},
    }
    data[section] = {**data.get(section, {}), **setting}
    with pytest.raises(ConfigError, match=rf"^pipeline.yaml: {message}; the verl backend[^\n]+$"):
        translate(resolve_dict(data))


def test_a_warm_start_only_run_is_refused_before_any_stage_runs(resolve_dict):
    # loop.iterations 0 translated to total_training_steps=0 and an empty train dataset: verl
    # divided by zero after the offline data, the experience model and the warm start had run
    data = {
        "plugins": [], "env": {"name": "e"}, "policy": {"name": "p"}, "loop": {"mode": "real", "iterations": 0},
        "algo": {"name": "verl-grpo", "config": {"model_path": "/m"}},
    }
    with pytest.raises(ConfigError, match=r"^pipeline.yaml: loop.iterations=0 \(warm start only\) runs no verl step; [^\n]+'grpo'"):
        translate(resolve_dict(data))


@pytest.mark.parametrize(("keep", "kept"), [(0, None), (2, 2)])
def test_keep_checkpoints_bounds_verls_checkpoints(resolve_dict, compose, keep, kept):
    # 0 keeps all, as in the local loop (verl's null); verl used to keep every checkpoint whatever was set
    data = {
        "plugins": [], "env": {"name": "e"}, "policy": {"name": "p"}, "loop": {"mode": "real", "keep_checkpoints": keep},
        "algo": {"name": "verl-ppo", "config": {"model_path": "/m"}},
    }
    cfg = compose(translate(resolve_dict(data)))
    assert cfg.trainer.max_actor_ckpt_to_keep == kept and cfg.trainer.max_critic_ckpt_to_keep == kept
