"""Pipeline files: two-phase decoding, located errors, overrides, config identity."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import msgspec
import pytest
import yaml as _yaml
import yaml

from dreamgym_core.config import Config, EvalConfig, LoopConfig, PipelineConfig, config_hash, load_pipeline, load_resolved, pipeline_from_dict, resolve
from dreamgym_core.config import non_finite
from dreamgym_core.errors import ComponentNotFound, ConfigError, DreamGymError
from dreamgym_core.synthetic import SyntheticEnvConfig

from stand_ins import StandIns, pipeline_dict


def write(tmp_path, data, name="pipeline.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_wrong_type_in_component_config_names_file_and_json_path(register_plugin, tmp_path):
    plugins = register_plugin(StandIns(), "stand-ins")
    data = pipeline_dict(str(tmp_path / "run"))
    data["algo"]["config"] = {"lr": "fast"}
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        resolve(load_pipeline(path), plugins, where=str(path))
    message = str(info.value)
    assert message.startswith(str(path)) and "`$.algo.config.lr`" in message and "Expected `float`" in message


def test_unknown_field_is_rejected_with_its_path(tmp_path):
    data = pipeline_dict(str(tmp_path / "run"))
    data["loop"]["iteratons"] = 3
    with pytest.raises(ConfigError, match=r"pipeline.yaml: Object contains unknown field `iteratons` - at `\$.loop`"):
        load_pipeline(write(tmp_path, data))


def test_unknown_field_in_component_config_is_rejected(register_plugin, tmp_path):
    plugins = register_plugin(StandIns(), "stand-ins")
    data = pipeline_dict(str(tmp_path / "run"))
    data["env"]["config"] = {"targetz": 3}
    path = write(tmp_path, data)
    # the fields it takes are named: often the settings are another component's (--set env.name=...)
    with pytest.raises(ConfigError, match=r"unknown field `targetz` - at `\$.env.config` \(env 'count' takes: \w+"):
        resolve(load_pipeline(path), plugins, where=str(path))


def test_success_repeats_out_of_range_names_the_field(tmp_path):
    for repeats in (0, 101):
        data = pipeline_dict(str(tmp_path / "run"))
        data["experience"] = {"success_repeats": repeats}
        with pytest.raises(ConfigError, match=r"pipeline.yaml: Expected `int` [<>]= 1?0?\d* - at `\$.experience.success_repeats`"):
            load_pipeline(write(tmp_path, data))


def test_constraint_and_cross_field_errors(tmp_path):
    data = pipeline_dict(str(tmp_path / "run"))
    data["loop"]["tasks_per_iteration"] = 0
    with pytest.raises(ConfigError, match=r"Expected `int` >= 1 - at `\$.loop.tasks_per_iteration`"):
        load_pipeline(write(tmp_path, data))
    data = pipeline_dict(str(tmp_path / "run"))
    data["eval"] = {"fidelity_policies": ["expert", "oracle"]}
    with pytest.raises(ConfigError, match=r"Invalid enum value 'oracle' - at `\$.eval.fidelity_policies\[1\]`"):
        load_pipeline(write(tmp_path, data))
    data = pipeline_dict(str(tmp_path / "run"), mode="dreamgym")
    with pytest.raises(ConfigError, match="needs experience_model, encoder, buffer"):
        load_pipeline(write(tmp_path, data))
    data = pipeline_dict(str(tmp_path / "run"))
    data["eval"] = {"synthetic_agreement": True}
    with pytest.raises(ConfigError, match="eval.synthetic_agreement replays .* needs experience_model, encoder, buffer"):
        load_pipeline(write(tmp_path, data))
    data = pipeline_dict(str(tmp_path / "run"))
    data["loop"].update(mode="s2r", group_size=4, max_steps=6, real_budget=23)
    data.update({k: {"name": "x"} for k in ("experience_model", "encoder", "buffer")})
    with pytest.raises(ConfigError, match=r"real_budget >= group_size \* max_steps = 24 .*got 23"):
        load_pipeline(write(tmp_path, data))
    # The synthetic share is rounded up: 2 iterations at 0.75 would both be synthetic.
    data["loop"].update(real_budget=24, iterations=2, s2r_synthetic_share=0.75)
    with pytest.raises(ConfigError, match=r"s2r' leaves no real iteration: ceil\(loop.iterations=2 \* loop.s2r_synthetic_share=0.75\) = 2"):
        load_pipeline(write(tmp_path, data))
    data["loop"].update(iterations=5)  # ceil(3.75) = 4 synthetic, then 1 real
    load_pipeline(write(tmp_path, data))
    data = pipeline_dict(str(tmp_path / "run"))
    data["eval"] = {"keep": "best-valid"}
    with pytest.raises(ConfigError, match=r"pipeline.yaml: .*eval.keep='best-valid' needs eval.valid_every > 0"):
        load_pipeline(write(tmp_path, data))
    data = pipeline_dict(str(tmp_path / "run"))
    data["loop"]["world_model_epochs"] = 1
    with pytest.raises(ConfigError, match=r"pipeline.yaml: loop.world_model_epochs needs branch transitions .* data.branch_actions > 0"):
        load_pipeline(write(tmp_path, data))
    data["data"] = {"branch_actions": 2}
    data["loop"]["warmstart_epochs"] = 0
    with pytest.raises(ConfigError, match=r"pipeline.yaml: loop.world_model_epochs is part of the warm start: set loop.warmstart_epochs > 0"):
        load_pipeline(write(tmp_path, data))
    data["loop"]["warmstart_epochs"] = 1
    assert load_pipeline(write(tmp_path, data)).loop.world_model_epochs == 1
    data = pipeline_dict(str(tmp_path / "run"))
    data["loop"]["self_reflection"] = "rule"
    with pytest.raises(ConfigError, match=r"pipeline.yaml: loop.self_reflection needs branch transitions .* data.branch_actions > 0"):
        load_pipeline(write(tmp_path, data))
    data["data"] = {"branch_actions": 2}
    data["loop"].update(self_reflection="teacher", warmstart_epochs=1)
    with pytest.raises(ConfigError, match=r"pipeline.yaml: loop.self_reflection='teacher' needs experience.teacher"):
        load_pipeline(write(tmp_path, data))
    data = pipeline_dict(str(tmp_path / "run"))
    data.setdefault("experience", {})["branches"] = True
    with pytest.raises(ConfigError, match=r"pipeline.yaml: experience.branches needs branch transitions: set data.branch_actions > 0"):
        load_pipeline(write(tmp_path, data))
    data["data"] = {"branch_actions": 2}
    assert load_pipeline(write(tmp_path, data)).experience.branches


@pytest.mark.parametrize("run_dir", ["", " ", ".", "./", "/", "x/..", "runs/../x/../", "/tmp/..", "<cwd>"])
def test_run_dir_must_be_a_directory_of_its_own(tmp_path, run_dir):
    # A run writes config.json and the rest into run_dir: "" or "." would overwrite the working directory's.
    # Spelled another way ('x/..', its absolute path) it is still the working directory.
    data = pipeline_dict(run_dir.replace("<cwd>", str(Path.cwd())))
    with pytest.raises(ConfigError, match=r"pipeline.yaml: .*run_dir=.* must name a directory of the run's own"):
        load_pipeline(write(tmp_path, data))


@pytest.mark.parametrize("run_dir", ["<loop>/run", "runs/\0x"])
def test_a_run_dir_that_cannot_be_resolved_is_a_config_error_naming_it(tmp_path, run_dir):
    # A symlink loop raised RuntimeError from Path.resolve(); a NUL byte said only "embedded null byte - at `$`".
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(ConfigError, match=r"pipeline.yaml: run_dir=.* is not a usable path: "):
        load_pipeline(write(tmp_path, pipeline_dict(run_dir.replace("<loop>", str(tmp_path / "a")))))


@pytest.mark.parametrize("field", ["loop", "env.config"])
def test_a_key_that_is_not_a_string_is_located_once(tmp_path, field):
    # msgspec locates it "at `key` in `$.loop`"; a second "- at `$`" was appended
    data = pipeline_dict("runs/x")
    target = data
    for part in field.split("."):
        target = target.setdefault(part, {})
    target[1] = 2
    with pytest.raises(ConfigError, match=rf"pipeline.yaml: Expected `str`(, got `int`)? - at `key` in `\$\.{field}`$"):
        load_pipeline(write(tmp_path, data))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["eval.fidelity_episodes=8"], r"eval.fidelity_episodes scores the experience model and needs experience_model"),
        (
            ["eval.fidelity_episodes=8", "experience_model={name: x}", "eval.fidelity_policies=[]"],
            r"eval.fidelity_episodes needs at least one policy in eval.fidelity_policies",
        ),
        (
            ["eval.fidelity_episodes=8", "experience_model={name: x}", "eval.fidelity_policies=[expert, random, expert]"],
            r"eval.fidelity_policies names expert more than once",
        ),
        (["experience.annotator=teacher"], r"experience.annotator='teacher' needs experience.teacher"),
        (["experience.teacher_fallback=rule"], r"experience.teacher_fallback='rule' only apply to experience.annotator='teacher'"),
        (["experience.teacher_max_new_tokens=4096"], r"experience.teacher_max_new_tokens=4096 only apply to experience.annotator='teacher' \(it is 'rule'\)"),
    ],
)
def test_settings_that_would_do_nothing_are_refused_naming_the_field(tmp_path, overrides, message):
    # Each passed validation and then did nothing (no fidelity scored), or failed only after the data was collected.
    with pytest.raises(ConfigError, match=rf"^\S*pipeline.yaml: {message}"):
        load_pipeline(write(tmp_path, pipeline_dict("runs/x")), overrides)


def test_fidelity_settings_that_are_used_stay_valid(tmp_path):
    path = write(tmp_path, pipeline_dict("runs/x"))
    assert load_pipeline(path, ["eval.fidelity_episodes=8", "experience_model={name: x}"]).eval.fidelity_episodes == 8
    # the real-environment baselines share the DreamGym rows' fidelity setting and score nothing
    skipped = load_pipeline(path, ["eval.fidelity_episodes=6", "experience_model={name: x}", "experience.skip=true"])
    assert skipped.experience.skip and skipped.eval.fidelity_episodes == 6
    with_teacher = load_pipeline(path, ["experience.annotator=teacher", "experience.teacher={name: x}"])
    assert with_teacher.experience.teacher.name == "x"


@pytest.mark.parametrize("value, field", [(".inf", "experience.lr"), ("-.inf", "algo.config.lr"), (".nan", "loop.top_k")])
def test_infinite_or_nan_settings_are_refused_naming_the_field(tmp_path, value, field):
    # .inf passed gt=0 checks, trained on NaN weights and wrote "Infinity" into config.json
    with pytest.raises(ConfigError, match=rf"pipeline.yaml: {re.escape(field)} is (-?inf|nan); settings must be finite"):
        load_pipeline(write(tmp_path, pipeline_dict("runs/x")), [f"{field}={value}"])


def test_a_colon_without_a_space_is_refused_with_the_fix(tmp_path):
    # {numLocations:3} is YAML for the key "numLocations:3" with no value: msgspec then said only
    # "Expected `int`, got `null` - at `$.env.config.params[...]`"
    with pytest.raises(ConfigError, match=re.escape("pipeline.yaml: algo.config: key 'lr:0.5' has no value; YAML needs a space after the colon (lr: 0.5)")):
        load_pipeline(write(tmp_path, pipeline_dict("runs/x")), ["algo.config={lr:0.5}"])
    text = yaml.safe_dump(pipeline_dict("runs/x")) + "extra_top:1:\n"
    with pytest.raises(ConfigError, match=re.escape("top level: key 'extra_top:1' has no value")):
        load_pipeline(write(tmp_path, text))
    # a URL-like key or one with a value is not this mistake: left to the schema
    assert load_pipeline(write(tmp_path, pipeline_dict("runs/x")), ["algo.config={lr: 0.5}"]).algo.config == {"lr": 0.5}
    with pytest.raises(ConfigError, match="unknown field `http://x`"):
        load_pipeline(write(tmp_path, pipeline_dict("runs/x") | {"http://x": None}))


def test_a_pipeline_built_in_python_is_checked_as_a_file_is(tmp_path):
    # msgspec.convert, the only way from a dict, let .inf through and raised msgspec's own
    # errors, without the pipeline's name, where a file gave one ConfigError line.
    data = pipeline_dict(str(tmp_path / "run"))
    pipeline = pipeline_from_dict(data, ["loop.iterations=2", "algo.config.lr=0.5"])
    assert pipeline.loop.iterations == 2 and pipeline.algo.config == {"lr": 0.5}
    assert data["loop"]["iterations"] == 4 and "config" not in data["algo"]  # the caller's dict is left alone
    assert pipeline == load_pipeline(write(tmp_path, data), ["loop.iterations=2", "algo.config.lr=0.5"])
    with pytest.raises(ConfigError, match=r"^<pipeline dict>: experience.lr is inf; settings must be finite"):
        pipeline_from_dict(data | {"experience": {"lr": float("inf")}})
    with pytest.raises(ConfigError, match=r"^sweep\[3\]: Expected `int` >= 1 - at `\$.loop.tasks_per_iteration`"):
        pipeline_from_dict(data, ["loop.tasks_per_iteration=0"], where="sweep[3]")
    with pytest.raises(ConfigError, match=r"^<pipeline dict>: loop.mode='dreamgym' needs experience_model"):
        pipeline_from_dict(data, ["loop.mode=dreamgym"])
    with pytest.raises(ConfigError, match="train_demos='other-tasks' contradicts loop.demos='same-world-first'"):
        pipeline_from_dict(data, ["experience.train_demos=other-tasks", "loop.demos=same-world-first"])
    with pytest.raises(ConfigError, match="a pipeline must be a mapping, got list"):
        pipeline_from_dict([data])


def test_a_pipeline_built_in_python_may_name_its_paths_with_path_objects(tmp_path):
    # Expected `str`, got `PosixPath` - at `$.run_dir`
    data = pipeline_dict("unused") | {"run_dir": tmp_path / "run", "data": {"path": tmp_path / "offline.jsonl"}}
    pipeline = pipeline_from_dict(data)
    assert pipeline.run_dir == str(tmp_path / "run") and pipeline.data.path == str(tmp_path / "offline.jsonl")


def test_load_resolved_takes_a_file_or_a_mapping_and_loads_their_plugins(tmp_path, tiny_pipeline):
    pytest.importorskip("dreamgym_plugin_textworld")
    pytest.importorskip("dreamgym_plugin_hf")
    pytest.importorskip("dreamgym_plugin_local")
    resolved, plugins = load_resolved(tiny_pipeline, ["loop.iterations=3"])
    from_file, _ = load_resolved(write(tmp_path, tiny_pipeline), ["loop.iterations=3"])
    assert resolved.pipeline.loop.iterations == 3 and resolved.source == "<pipeline dict>"
    assert config_hash(resolved.to_builtins()) == config_hash(from_file.to_builtins())
    assert plugins.component("env", "twx").plugin == "textworld"
    with pytest.raises(ConfigError, match=r"<pipeline dict>: Expected `int`.* - at `\$.env.config.train_seeds`"):
        load_resolved(tiny_pipeline, ["env.config.train_seeds=many"])
    # A caller's wrong types: a TypeError from open(), or a lone string read as one-character overrides
    for source in ([1, 2], None):
        with pytest.raises(ConfigError, match=f"^a pipeline is a file path or a mapping, got {type(source).__name__}$"):
            load_resolved(source)
    for overrides in ("loop.iterations=2", [3]):
        with pytest.raises(ConfigError, match=r"^<pipeline dict>: overrides must be a list of 'key.path=value' strings, got"):
            load_resolved(tiny_pipeline, overrides)
    with pytest.raises(DreamGymError, match="^unknown component kind 'envs'; the kinds are env, model, encoder"):
        plugins.build("envs", "twx", resolved.components["env"])


def test_malformed_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(line 2"):
        load_pipeline(write(tmp_path, "plugins: [a\nenv: {", "bad.yaml"))
    with pytest.raises(ConfigError, match="cannot read pipeline file"):
        load_pipeline(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_pipeline(write(tmp_path, "- a\n- b\n", "list.yaml"))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"plugins: [a]\n\xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"binary.yaml: not a text file \(byte 13 is not UTF-8\)"):
        load_pipeline(binary)


def test_dates_stay_strings_and_bad_tagged_values_or_huge_files_are_one_line_errors(tmp_path):
    # PyYAML reads 2026-12-05 as a date and 2001-13-45 raised a ValueError traceback.
    path = write(tmp_path, pipeline_dict("2026-12-05"))
    assert load_pipeline(path).run_dir == "2026-12-05"
    assert load_pipeline(path, ["run_dir=2001-12-14 25:59:43"]).run_dir == "2001-12-14 25:59:43"
    with pytest.raises(ConfigError, match=r"Object contains unknown field `when`"):
        load_pipeline(write(tmp_path, "when: 2001-13-45\n", "date.yaml"))
    with pytest.raises(ConfigError, match=r"tag.yaml: not valid YAML: a tagged value cannot be read: could not convert string to float: 'abc'"):
        load_pipeline(write(tmp_path, "seed: !!float abc\n", "tag.yaml"))
    with pytest.raises(ConfigError, match=r"--set 'seed=!!timestamp 2001-13-45': the value is not valid YAML: a tagged value cannot be read"):
        load_pipeline(path, ["seed=!!timestamp 2001-13-45"])
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (2**20 + 1))
    with pytest.raises(ConfigError, match=r"huge.yaml: not a pipeline file: larger than 1 MiB"):
        load_pipeline(huge)


def test_set_overrides_parse_yaml_scalars(tmp_path):
    path = write(tmp_path, pipeline_dict(str(tmp_path / "run")))
    cfg = load_pipeline(path, ["loop.iterations=7", "algo.config.lr=1e-5", "seed=3"])
    assert cfg.loop.iterations == 7 and cfg.algo.config == {"lr": 1e-5} and cfg.seed == 3
    with pytest.raises(ConfigError, match="--set expects key.path=value"):
        load_pipeline(path, ["nonsense"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("loop.iterations=[1", r"--set 'loop.iterations=\[1': the value is not valid YAML"),
        ("seed={a", r"--set 'seed=\{a': the value is not valid YAML"),
        ("loggers.5.name=x", r"--set loggers.5.name: index 5 is past the end of a list of 0"),
        ("loggers.0={name: jsonl}", r"--set loggers.0: index 0 is past the end of a list of 0"),
        ("seed=99999999999999999999999999", r"Expected `int` <= \d+ - at `\$.seed`"),
        ("seed=-1", r"Expected `int` >= 0 - at `\$.seed`"),
    ],
)
def test_bad_set_overrides_are_one_line_errors(tmp_path, override, message):
    path = write(tmp_path, pipeline_dict(str(tmp_path / "run")) | {"loggers": []})
    with pytest.raises(ConfigError, match=message):
        load_pipeline(path, [override])


def test_set_can_replace_a_list_item(tmp_path):
    data = pipeline_dict(str(tmp_path / "run")) | {"loggers": [{"name": "jsonl"}]}
    cfg = load_pipeline(write(tmp_path, data), ["loggers.0={name: tensorboard}", "loggers.0.config.x=1"])
    assert cfg.loggers[0].name == "tensorboard" and cfg.loggers[0].config == {"x": 1}


def test_unknown_component_suggests_the_closest(register_plugin, tmp_path):
    plugins = register_plugin(StandIns(), "stand-ins")
    data = pipeline_dict(str(tmp_path / "run"))
    data["algo"]["name"] = "recrd"
    path = write(tmp_path, data)
    with pytest.raises(ComponentNotFound, match=r"algo.name: no algo named 'recrd' \(available: record\). Did you mean 'record'\?"):
        resolve(load_pipeline(path), plugins, where=str(path))


def test_unknown_component_says_its_plugin_must_be_listed(register_plugin, tmp_path):
    # A component of an installed plugin left out of `plugins:` was reported as unknown,
    # without a word on where components come from.
    plugins = register_plugin(StandIns(), "stand-ins")
    data = pipeline_dict(str(tmp_path / "run")) | {"plugins": ["stand-ins"], "encoder": {"name": "trigram"}}
    path = write(tmp_path, data)
    with pytest.raises(ComponentNotFound) as caught:
        resolve(load_pipeline(path), plugins, where=str(path))
    assert str(caught.value) == (
        f"{path}: encoder.name: no encoder named 'trigram' (available: none). Components come from the plugins "
        "listed in `plugins:` (stand-ins); add the one that registers 'trigram'."
    )


def test_resolved_config_fills_defaults_and_hash_is_stable(register_plugin, tmp_path):
    plugins = register_plugin(StandIns(), "stand-ins")
    path = write(tmp_path, pipeline_dict(str(tmp_path / "run")))
    a = resolve(load_pipeline(path), plugins, where=str(path)).to_builtins()
    b = resolve(load_pipeline(path), plugins, where=str(path)).to_builtins()
    assert a["env"]["config"] == {"targets": 6, "max_value": 5}
    assert a["eval"]["split"] == "test"
    assert config_hash(a) == config_hash(b)
    changed = resolve(load_pipeline(path, ["seed=1"]), plugins, where=str(path)).to_builtins()
    assert config_hash(changed) != config_hash(a)


def test_configs_are_frozen():
    cfg = msgspec.convert(pipeline_dict("r"), type=PipelineConfig)
    with pytest.raises(AttributeError):
        cfg.seed = 4  # type: ignore[misc]


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    text = "plugins: [a]\nloop: {iterations: 3}\nenv: {name: x}\nloop: {mode: real}\n"
    with pytest.raises(ConfigError, match=r"twice.yaml: not valid YAML \(line 4, column 1\): duplicate key 'loop'"):
        load_pipeline(write(tmp_path, text, "twice.yaml"))
    nested = "plugins: [a]\nenv: {name: x, config: {game: coin, game: mapreader}}\n"
    with pytest.raises(ConfigError, match=r"duplicate key 'game'"):
        load_pipeline(write(tmp_path, nested, "nested.yaml"))
    with pytest.raises(ConfigError, match=r"duplicate key 'a'"):
        load_pipeline(write(tmp_path, "plugins: [a]\n", "ok.yaml"), ["env={a: 1, a: 2}"])
    from dreamgym_core.config import yaml_load

    merged = "base: &b {name: x, config: {game: coin}}\nenv: {<<: *b, name: y}\n"  # a "<<" merge may be overridden
    assert yaml_load(merged)["env"] == {"name": "y", "config": {"game": "coin"}}


def test_alias_bombs_recursive_aliases_and_deep_nesting_are_refused(tmp_path):
    # nine aliases of nine aliases ...: a few hundred bytes that expand to 9**9 values
    levels = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb = "\n".join(levels) + "\nplugins: *l8\n"
    with pytest.raises(ConfigError, match=r"bomb.yaml: not valid YAML \(line \d+, column \d+\): more than 100000 values once aliases are expanded"):
        load_pipeline(write(tmp_path, bomb, "bomb.yaml"))
    with pytest.raises(ConfigError, match=r"loop.yaml: not valid YAML \(line 1, column 4\): an alias refers to a collection that contains it"):
        load_pipeline(write(tmp_path, "a: &a {b: *a}\nplugins: [x]\n", "loop.yaml"))
    with pytest.raises(ConfigError, match=r"deep.yaml: not valid YAML: collections nested too deeply"):
        load_pipeline(write(tmp_path, "plugins: " + "[" * 3000 + "]" * 3000 + "\n", "deep.yaml"))
    with pytest.raises(ConfigError, match=r"ok.yaml: --set seed=...: the value is nested too deeply"):
        load_pipeline(write(tmp_path, "plugins: [a]\n", "ok.yaml"), ["seed=" + "[" * 3000])
    from dreamgym_core.config import yaml_load

    shared = yaml_load("env: {config: &c {game: coin}}\npolicy: {config: *c}\n")  # an alias used a few times is fine
    assert shared["policy"]["config"] == {"game": "coin"}


@pytest.mark.parametrize("iterations, share, synthetic", [
    (10, 0.25, 3), (10, 0.21, 3), (4, 0.5, 2), (10, 0.0, 0), (3, 1.0, 3),
    (100, 0.55, 55), (100, 0.07, 7), (25, 0.28, 7), (200, 0.14, 28),  # exact products the floats' ceiling overshot
])
def test_s2r_synthetic_iterations_round_the_share_up(iterations, share, synthetic):
    from dreamgym_core.config import s2r_synthetic_iterations

    # ceil(10 * 0.25) = ceil(2.5) = 3, where round() would give 2 (half to even)
    assert s2r_synthetic_iterations(iterations, share) == synthetic


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: LoopConfig(iterations="3"), r"^LoopConfig: Expected `int`, got `str` - at `\$\.iterations`$"),
        (lambda: LoopConfig(group_size=0), r"^LoopConfig: Expected `int` >= 1 - at `\$\.group_size`$"),
        (lambda: SyntheticEnvConfig(max_steps=2.5), r"^SyntheticEnvConfig: Expected `int`, got `float` - at `\$\.max_steps`$"),
        (lambda: EvalConfig(episodes=None), r"^EvalConfig: Expected `int`, got `null` - at `\$\.episodes`$"),
    ],
)
def test_a_config_built_in_python_is_checked_as_a_pipeline_files_would_be(build, message):
    # msgspec checks types and bounds only when it decodes: these were accepted, and failed
    # wherever the value was later used.
    with pytest.raises(msgspec.ValidationError, match=message):
        build()


def test_an_iteration_of_more_episodes_than_its_rollout_seeds_keep_apart_is_refused(tmp_path):
    # Episode i of RL iteration t plays from seed * 7919 + t * 1000 + i: with 1001 episodes an
    # iteration, iteration 0's last episode played from iteration 1's first episode's seed.
    data = pipeline_dict(str(tmp_path / "run"), tasks_per_iteration=250, group_size=4)
    assert load_pipeline(write(tmp_path, data)).loop.tasks_per_iteration == 250  # 1000: the most that stay apart
    data["loop"].update(tasks_per_iteration=143, group_size=7)
    with pytest.raises(ConfigError, match=(
        r"^.*pipeline.yaml: loop.tasks_per_iteration \* loop.group_size = 143 \* 7 = 1001 episodes an iteration; "
        r"at most 1000 keep their rollout seeds apart .* - at `\$\.loop`$"
    )):
        load_pipeline(write(tmp_path, data))
    with pytest.raises(ValueError, match=r"^loop.tasks_per_iteration \* loop.group_size = 1 \* 1001 = 1001 episodes"):
        LoopConfig(group_size=1001, tasks_per_iteration=1)  # built in Python, as a file's is checked


def test_a_checked_config_keeps_its_values_and_a_subclass_check_still_runs(tmp_path):
    loop = LoopConfig(iterations=3, warmstart_lr=1)  # an int where a float is declared, as YAML gives
    assert loop.iterations == 3 and loop.warmstart_lr == 1
    with pytest.raises(ValueError, match="must name a directory of the run.s own"):
        msgspec.structs.replace(pipeline_from_dict(pipeline_dict(str(tmp_path))), run_dir="/")


@pytest.mark.parametrize("value, read", [("010", 10), ("08", 8), ("100_000", 100_000), ("0x10", 16), ("0o10", 8)])
def test_integers_are_read_as_yaml_1_2_reads_them(tmp_path, value, read):
    # YAML 1.1 read a zero-padded 010 as octal 8 and refused 08: a seed sweep ran other seeds
    path = write(tmp_path, pipeline_dict("runs/x"))
    assert load_pipeline(path, [f"seed={value}"]).seed == read
    path.write_text(path.read_text() + f"seed: {value}\n")
    assert load_pipeline(path).seed == read


@pytest.mark.parametrize("value", ["off", "on", "yes", "no", "Off", "NO"])
def test_yaml_1_1_booleans_are_strings_and_true_false_stay_booleans(tmp_path, value):
    # YAML 1.1 read the documented `loop.self_reflection: off` as False: "Expected `str`, got `bool`"
    path = write(tmp_path, pipeline_dict("runs/x"))
    assert load_pipeline(path, ["loop.self_reflection=off"]).loop.self_reflection == "off"
    data = _yaml.safe_load(path.read_text())
    data["loop"]["self_reflection"] = "off"
    path.write_text(_yaml.safe_dump(data).replace("'off'", "off"))
    assert load_pipeline(path).loop.self_reflection == "off"
    assert load_pipeline(path, [f"run_dir={value}"]).run_dir == value  # a str field given a 1.1 boolean word
    for text, read in (("true", True), ("False", False)):
        assert load_pipeline(path, [f"loop.store_synthetic={text}"]).loop.store_synthetic is read


def test_a_sexagesimal_integer_is_no_integer(tmp_path):
    # YAML 1.1 read 1:30 as 90
    with pytest.raises(ConfigError, match=r"Expected `int`, got `str` - at `\$.loop.iterations`"):
        load_pipeline(write(tmp_path, pipeline_dict("runs/x")), ["loop.iterations=1:30"])


def test_a_run_dir_under_a_tilde_is_refused_not_made_in_the_working_directory(tmp_path):
    with pytest.raises(ConfigError, match=r"run_dir='~/runs/x': '~' is not expanded in a pipeline"):
        load_pipeline(write(tmp_path, pipeline_dict("~/runs/x")))


def test_set_fills_a_section_left_empty_and_names_what_is_not_a_mapping(tmp_path):
    data = pipeline_dict("runs/x") | {"curriculum": None}
    path = write(tmp_path, data)
    assert load_pipeline(path, ["curriculum.name=uniform"]).curriculum.name == "uniform"
    with pytest.raises(ConfigError, match=r"--set run_dir.x.y: 'run_dir' is not a mapping"):
        load_pipeline(path, ["run_dir.x.y=1"])
    with pytest.raises(ConfigError, match=r"--set run_dir.x: 'run_dir' is not a mapping"):
        load_pipeline(path, ["run_dir.x=1"])




class _Settings(Config):
    rate: Annotated[float, msgspec.Meta(gt=0.0)] = 1.0
    scales: list[float] = []


def test_a_config_built_in_python_refuses_infinity_naming_the_field():
    """inf passes gt=0; a pipeline file's was refused before decoding, a Python-built one was
    not (GRPO's kl_coef=inf made every loss NaN: a run that skipped every step)."""
    with pytest.raises(msgspec.ValidationError, match=r"^_Settings: rate is inf; settings must be finite numbers$"):
        _Settings(rate=float("inf"))
    with pytest.raises(msgspec.ValidationError, match=r"scales\[1\] is -inf"):
        _Settings(scales=[1.0, float("-inf")])
    assert _Settings(rate=2.0, scales=[0.5]).rate == 2.0
    assert non_finite({"a": {"b": [1.0, float("nan")]}})[0] == "a.b[1]"
    assert non_finite({"a": [1, "x", 2.5]}) is None
