"""SFT and DPO train what the policy generates: the prompt window generation conditions on,
whole responses (stop string included), and only the steps the environment accepted."""

import msgspec
import pytest
import torch

from dreamgym_core.errors import ConfigError
from dreamgym_core.records import Task
from dreamgym_plugin_local.config import DPOConfig, SFTConfig
from dreamgym_plugin_local.dpo import DPO
from dreamgym_plugin_local.sft import SFT

TRAINERS = [(SFT, SFTConfig), (DPO, DPOConfig)]
IDS = ["sft", "dpo"]
POSITIONS, MAX_NEW = 64, 8  # the GPT-2 policy below: generation keeps the last 56 prompt tokens
LONG = Task(id="long", instruction="find the key " * 30, domain="d")  # a prompt of about 100 tokens


def gpt2_backend(kit):
    """An hf backend over a GPT-2 with 64 learned positions (past them it fails with an IndexError)."""
    hf_backend = pytest.importorskip("dreamgym_plugin_hf.backend")
    from dreamgym_plugin_hf.config import HFConfig
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = kit.TinyPolicy().tokenizer
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=POSITIONS, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return hf_backend.HFBackend(HFConfig(max_length=POSITIONS), model=GPT2LMHeadModel(config), tokenizer=tok, model_id="gpt2-tiny")


def long_group(kit):
    """A success and a failure at the same long prompt: SFT trains one step, DPO one pair."""
    return [kit.trajectory(LONG, ["go north"], True), kit.trajectory(LONG, ["go south"], False)]


def prompt_ids(batch, row=0):
    return batch.input_ids[row, : int(batch.positions[row, 0])].tolist()


# --- the prompt window ---------------------------------------------------------------------


@pytest.mark.parametrize("cls,config_type", TRAINERS, ids=IDS)
def test_updates_condition_on_the_prompt_window_generation_sees(cls, config_type, kit):
    backend = gpt2_backend(kit)
    algo = cls(config_type(max_new_tokens=MAX_NEW), policy=backend, seed=0)
    prompt = long_group(kit)[0].decisions[0].prompt
    window = backend.encode_prompt(prompt, POSITIONS - MAX_NEW)
    assert len(backend.prompt_ids(prompt)) > len(window) == POSITIONS - MAX_NEW
    batch = algo._tokenize([prompt], ["< action > go north < / action >"])
    assert prompt_ids(batch) == window


@pytest.mark.parametrize("cls,config_type", TRAINERS, ids=IDS)
def test_max_prompt_tokens_still_caps_the_window(cls, config_type, kit):
    backend = gpt2_backend(kit)
    algo = cls(config_type(max_new_tokens=MAX_NEW, max_prompt_tokens=20), policy=backend, seed=0)
    prompt = long_group(kit)[0].decisions[0].prompt
    assert prompt_ids(algo._tokenize([prompt], ["< action > go north < / action >"])) == backend.encode_prompt(prompt, 20)


@pytest.mark.parametrize("cls,config_type", TRAINERS, ids=IDS)
def test_updates_on_long_prompts_fit_a_model_with_learned_positions(cls, config_type, kit):
    algo = cls(config_type(lr=1e-3, max_new_tokens=MAX_NEW), policy=gpt2_backend(kit), seed=0)
    metrics = algo.update(groups=[long_group(kit)])
    assert metrics["perf/optimizer_steps"] == 1


def test_a_response_longer_than_generation_allows_is_cut_to_the_models_positions(kit):
    # an expert demo may be longer than max_new_tokens: the row keeps what generation could write
    backend = gpt2_backend(kit)
    algo = SFT(SFTConfig(lr=1e-3, max_new_tokens=MAX_NEW), policy=backend, seed=0)
    demo = "< action > " + "go north " * 10 + "< / action >"
    prompt = long_group(kit)[0].decisions[0].prompt
    batch = algo._tokenize([prompt], [demo])
    assert batch.input_ids.shape[1] == POSITIONS and int(batch.response_mask.sum()) == MAX_NEW
    traj = kit.trajectory(LONG, ["go north"], True)
    traj = msgspec.structs.replace(traj, decisions=[msgspec.structs.replace(traj.decisions[0], text=demo)])
    assert algo.fit_offline([traj])["perf/optimizer_steps"] == 1


def test_a_row_never_exceeds_the_models_positions_without_a_backend_window(kit):
    # the fixture policy has no max_length: its model's 256 positions bound the row, the prompt
    # keeping its last 256 - max_new_tokens tokens as generation would, the response whole
    policy = kit.TinyPolicy()
    positions = policy.model.config.max_position_embeddings
    algo = SFT(SFTConfig(max_new_tokens=16, stop=("< / action >",)), policy=policy, seed=0)
    response = "< action > go north < / action >"
    batch = algo._tokenize(["room " * (positions + 40)], [response])
    assert int(batch.positions[0, 0]) == positions - 16
    assert int(batch.response_mask.sum()) == 9 and batch.input_ids.shape[1] == positions - 16 + 9


# --- responses longer than trained --------------------------------------------------------


@pytest.mark.parametrize("cls,config_type", TRAINERS, ids=IDS)
def test_every_trainer_refuses_responses_generated_longer_than_it_trains(cls, config_type, kit):
    with pytest.raises(ConfigError, match=rf"^algo '{cls.name}' \(plugin local\): algo.config.max_new_tokens=16 exceeds "
                                          r"algo.config.max_response_tokens=4: [^\n]*$"):
        cls(config_type(max_new_tokens=16, max_response_tokens=4), policy=kit.TinyPolicy(), seed=0)
    cls(config_type(max_new_tokens=4, max_response_tokens=4), policy=kit.TinyPolicy(), seed=0)


# --- which steps SFT trains ---------------------------------------------------------------


def test_sft_skips_the_invalid_steps_of_a_successful_trajectory(kit):
    task = Task(id="t", instruction="find the key", domain="d")
    refused = kit.trajectory(task, ["go west", "go north", "take key"], True, valid=[False, True, True])
    unparsed = kit.trajectory(task, ["go west", "take key"], True)
    unparsed = msgspec.structs.replace(unparsed, decisions=[msgspec.structs.replace(unparsed.decisions[0], parsed=False)] + unparsed.decisions[1:])
    for successful_only in (True, False):
        algo = SFT(SFTConfig(successful_only=successful_only), policy=kit.TinyPolicy(), seed=0)
        assert algo.fit_offline([refused, unparsed])["data/trainable_steps"] == 3  # 2 + 1 valid steps


def test_sft_with_only_invalid_steps_trains_nothing(kit):
    task = Task(id="t", instruction="find the key", domain="d")
    refused = kit.trajectory(task, ["go west"], True, valid=[False])
    algo = SFT(SFTConfig(), policy=kit.TinyPolicy(), seed=0)
    before = kit.flat_params(algo.model)
    assert algo.fit_offline([refused])["data/trainable_steps"] == 0
    assert kit.flat_params(algo.model).equal(before)


# --- the stop string ----------------------------------------------------------------------

STOP = "< / action >"  # the fixture tokenizer's words for </action>


def cut_trajectory(kit, text):
    """A successful one-step trajectory whose response reads ``text`` (as generate() returns it)."""
    traj = kit.trajectory(Task(id="t", instruction="find the key", domain="d"), ["go north"], True)
    return msgspec.structs.replace(traj, decisions=[msgspec.structs.replace(traj.decisions[0], text=text)])


def trained_tokens(algo, traj):
    return algo.fit_offline([traj])["data/response_tokens"]


def test_sft_trains_the_stop_string_generation_cut_off(kit):
    # generate() returns "< action > go north " for "< action > go north < / action >"
    algo = SFT(SFTConfig(stop=(STOP,)), policy=kit.TinyPolicy(), seed=0)
    assert trained_tokens(algo, cut_trajectory(kit, "< action > go north ")) == 5 + 4
    batch = algo._tokenize(["task : find the key action"], ["< action > go north "])
    trained = batch.input_ids[0][batch.positions[0][batch.response_mask[0] > 0]].tolist()
    assert algo.policy.tokenizer.convert_ids_to_tokens(trained)[-4:] == ["<", "/", "action", ">"]


def test_sft_does_not_repeat_a_stop_string_the_response_holds(kit):
    algo = SFT(SFTConfig(stop=("[EOS]", STOP)), policy=kit.TinyPolicy(), seed=0)
    assert trained_tokens(algo, cut_trajectory(kit, "< action > go north < / action >")) == 9
    assert trained_tokens(algo, cut_trajectory(kit, "< action > go north < / action > ")) == 9
    assert int(algo._tokenize(["task : find the key action"], [" "]).response_mask.sum()) == 0  # blank: no action to close
    # with no stop string configured there is nothing to append
    assert trained_tokens(SFT(SFTConfig(stop=()), policy=kit.TinyPolicy(), seed=0), cut_trajectory(kit, "< action > go north ")) == 5
