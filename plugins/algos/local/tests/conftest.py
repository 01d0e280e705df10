"""Test fixtures: a tiny random Llama policy behind the attributes a policy backend exposes.

``TinyPolicy`` is a test fixture standing in for the ``hf`` backend (plugins/models/hf):
same attribute names (``model``, ``tokenizer``, ``generate``, ``model_id``), real
transformers model code, random weights, a word-level tokenizer built here.
"""

from __future__ import annotations

from typing import Sequence

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from dreamgym_core.records import Task, Trajectory
from dreamgym_core.testing import stand_in_groups, stand_in_trajectory

WORDS = (
    "you are in the kitchen pantry garden room task step go north south east west take open apple key door "
    "fridge look think action < > / done observe your find put it in on a an of to"
).split()


def make_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", "[BOS]", "[EOS]", *dict.fromkeys(WORDS), *map(str, range(10))])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]")


class TinyPolicy:
    """Test fixture with the policy-backend attribute names (see module docstring)."""

    model_id = "tiny-llama-test"

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.tokenizer = make_tokenizer()
        config = LlamaConfig(
            vocab_size=len(self.tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            pad_token_id=self.tokenizer.pad_token_id, bos_token_id=2, eos_token_id=3, tie_word_embeddings=True,
        )
        self.model = LlamaForCausalLM(config)

    def generate(self, *, prompts: Sequence[str], max_new_tokens: int, temperature: float = 1.0,
                 stop: Sequence[str] = (), seed: int | None = None) -> list[str]:
        if seed is not None:
            torch.manual_seed(seed)
        out = []
        for prompt in prompts:
            ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"]
            gen = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            out.append(self.tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
        return out


def _prompt(task: Task, step: int) -> str:  # in the words of the fixture tokenizer
    return f"task : {task.instruction} step {step} observe : you are in the room {step} action"


def _response(action: str) -> str:
    return f"< action > {action} < / action >"


def trajectory(task: Task, actions: Sequence[str], success: bool, **kwargs) -> Trajectory:
    """A multi-step trajectory whose decisions carry agent prompts and responses (the kit's, in
    words the fixture tokenizer knows)."""
    return stand_in_trajectory(task, actions, success, prompt=_prompt, response=_response, **kwargs)


def make_groups() -> list[list[Trajectory]]:
    """Two tasks x four rollouts, two steps each; successes prefer 'go north'."""
    return stand_in_groups(trajectory)


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()] or [torch.zeros(0)])


class Kit:
    """The helpers above, handed to tests as the ``kit`` fixture (tests cannot import conftest)."""

    TinyPolicy = TinyPolicy
    trajectory = staticmethod(trajectory)
    make_groups = staticmethod(make_groups)
    flat_params = staticmethod(flat_params)


@pytest.fixture
def kit() -> type[Kit]:
    return Kit


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread in these tests (tiny models; oversubscribed threads on a shared
    2-core machine made them 50x slower). Restored afterwards for other plugins' tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
