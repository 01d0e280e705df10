"""The verl backend's config Struct (every field defaulted, documented once)."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from dreamgym_core.config import Config, NonNegativeInt, PositiveFloat, PositiveInt

__all__ = ["VerlConfig", "AGENT_LOOP_NAME"]

# The name the DreamGym agent loop registers under in verl's agent-loop registry.
AGENT_LOOP_NAME = "dreamgym_agent"


class VerlConfig(Config):
    """GRPO or PPO on verl's Ray trainer; the estimator comes from the component name.

    Paper/verl-agent reference defaults: actor lr 1e-6, KL loss ``low_var_kl`` with
    coefficient 0.01, invalid-action penalty 0.1.
    """

    model_path: Annotated[
        str,
        Meta(description="Policy weights (HF directory with safetensors); empty: the policy component's `path`."),
    ] = ""
    rollout_engine: Annotated[Literal["vllm", "sglang"], Meta(description="verl rollout server.")] = "vllm"
    actor_lr: Annotated[PositiveFloat, Meta(description="Actor learning rate.")] = 1e-6
    critic_lr: Annotated[PositiveFloat, Meta(description="Critic learning rate (PPO only).")] = 1e-5
    kl_loss_coef: Annotated[float, Meta(ge=0.0, description="KL loss coefficient (0 disables the KL loss).")] = 0.01
    kl_loss_type: Annotated[
        Literal["kl", "abs", "mse", "low_var_kl"],
        # verl 0.9 names 'full' but raises NotImplementedError at the first actor update
        Meta(description="verl KL penalty estimator.")
    ] = "low_var_kl"
    entropy_coeff: Annotated[float, Meta(ge=0.0, description="Entropy bonus coefficient.")] = 0.0
    gamma: Annotated[float, Meta(ge=0.0, le=1.0, description="Discount (PPO/GAE).")] = 1.0
    lam: Annotated[float, Meta(ge=0.0, le=1.0, description="GAE lambda (PPO).")] = 1.0
    norm_adv_by_std_in_grpo: Annotated[bool, Meta(description="GRPO: divide advantages by the group std.")] = True
    invalid_action_penalty: Annotated[
        float, Meta(ge=0.0, description="Subtracted from the episode reward per invalid or unparsable action.")
    ] = 0.1
    ppo_mini_batch_size: Annotated[
        NonNegativeInt, Meta(description="Tasks per actor mini-batch; 0: loop.tasks_per_iteration (one update).")
    ] = 0
    micro_batch_size_per_gpu: Annotated[PositiveInt, Meta(description="Sequences per forward pass per GPU.")] = 4
    max_prompt_length: Annotated[PositiveInt, Meta(description="Token cap of the first agent prompt.")] = 1024
    max_response_length: Annotated[
        PositiveInt, Meta(description="Token cap of all turns after the prompt (policy and environment tokens).")
    ] = 4096
    turn_max_tokens: Annotated[PositiveInt, Meta(description="Token cap of one policy turn.")] = 256
    n_gpus_per_node: Annotated[PositiveInt, Meta(description="GPUs per node.")] = 1
    nnodes: Annotated[PositiveInt, Meta(description="Nodes in the Ray cluster.")] = 1
    ray_address: Annotated[
        str, Meta(description="Ray cluster address ('auto', 'ray://host:10001'); empty: start a Ray of its own, listening on 127.0.0.1 only.")
    ] = ""
    tensor_parallel_size: Annotated[PositiveInt, Meta(description="Rollout tensor parallelism.")] = 1
    gpu_memory_utilization: Annotated[
        float, Meta(gt=0.0, le=1.0, description="Share of GPU memory the rollout server takes.")
    ] = 0.4
    agent_workers: Annotated[PositiveInt, Meta(description="verl agent-loop worker processes.")] = 2
    param_offload: Annotated[bool, Meta(description="FSDP: offload actor parameters to CPU.")] = False
    experiment_name: Annotated[str, Meta(description="verl experiment name; empty: the run directory's name.")] = ""
    extra_overrides: Annotated[
        list[str], Meta(description="Hydra overrides appended last (they win), e.g. 'trainer.val_before_train=False'.")
    ] = []

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [o for o in self.extra_overrides if "=" not in o]
        if bad:
            raise ValueError(f"extra_overrides must be Hydra 'key=value' strings, got {bad[0]!r}")
