"""Config Structs of the local trainers. Every field has a documented default.

Learning rates: the paper's reference (verl-agent) uses 1e-6 for pretrained 3B-8B
policies; pretrained small models (SmolLM2-135M) train well at 1e-6..1e-5, tiny
random models trained from scratch need 1e-4..1e-3. Set ``lr`` accordingly.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from dreamgym_core.config import Config, NonNegativeInt, PositiveInt

__all__ = ["TrainerConfig", "RLConfig", "GRPOConfig", "PPOConfig", "SFTConfig", "DPOConfig"]

NonNegativeFloat = Annotated[float, Meta(ge=0.0)]
PositiveFloat = Annotated[float, Meta(gt=0.0)]
LossAggMode = Literal["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean"]


class TrainerConfig(Config):
    """Settings every local trainer shares: optimiser, tokenisation, sampling."""

    lr: Annotated[PositiveFloat, Meta(description="AdamW learning rate of the policy (see module docs for ranges).")] = 1e-6
    weight_decay: Annotated[NonNegativeFloat, Meta(description="AdamW weight decay.")] = 0.0
    max_grad_norm: Annotated[PositiveFloat, Meta(description="Gradient clipping norm.")] = 1.0
    minibatch_size: Annotated[PositiveInt, Meta(description="Policy steps (prompt, response) per optimizer step.")] = 8
    micro_batch_size: Annotated[
        PositiveInt | None,
        Meta(description="Rows per forward/backward within a minibatch, gradients accumulated to the minibatch's "
             "(bounds activation memory; the update is the same up to rounding, logged losses are the micro-batches' "
             "mean by rows, as verl logs them). None: the whole minibatch at once."),
    ] = None
    max_prompt_tokens: Annotated[
        PositiveInt,
        Meta(description="Prompt tokens kept (the oldest are cut). Updates keep what generation keeps "
             "(policy max_length - max_new_tokens) within this cap; GRPO/PPO refuse a prompt sampled from more than it."),
    ] = 1024
    max_response_tokens: Annotated[
        PositiveInt,
        Meta(description="Response tokens trained on (the rest are cut). Every trainer refuses a max_new_tokens above it."),
    ] = 256
    max_new_tokens: Annotated[PositiveInt, Meta(description="Tokens generated per act() call.")] = 128
    temperature: Annotated[
        PositiveFloat,
        Meta(description="Sampling temperature of act(greedy=False) when the caller gives none (the run loop gives "
             "loop.sampling_temperature). GRPO and PPO score their updates at the latest sampled act()'s temperature."),
    ] = 1.0
    stop: Annotated[
        tuple[str, ...],
        Meta(description="Stop strings for act(). SFT appends the first to a response that holds none (generation cuts it off)."),
    ] = ("</action>",)
    loss_agg_mode: Annotated[LossAggMode, Meta(description="verl agg_loss mode.")] = "token-mean"


class RLConfig(TrainerConfig):
    """Shared PPO-clip settings of GRPO and PPO (names follow verl's actor config)."""

    ppo_epochs: Annotated[PositiveInt, Meta(description="Passes over each batch per update().")] = 1
    clip_ratio_low: Annotated[
        Annotated[float, Meta(gt=0.0, lt=1.0)],
        Meta(description="PPO clip: lower ratio bound 1 - eps; below 1 (at 1 or more the bound is <= 0 and clips nothing)."),
    ] = 0.2
    clip_ratio_high: Annotated[PositiveFloat, Meta(description="PPO clip: upper ratio bound 1 + eps.")] = 0.2
    clip_ratio_c: Annotated[Annotated[float, Meta(gt=1.0)], Meta(description="Dual-clip bound for negative advantages.")] = 3.0
    kl_coef: Annotated[NonNegativeFloat, Meta(description="KL-to-reference loss coefficient (paper: 0.01); 0 drops the reference.")] = 0.01
    kl_type: Annotated[
        Literal["low_var_kl", "k1", "k2", "k3", "kl", "abs", "mse"], Meta(description="verl kl_penalty estimator.")
    ] = "low_var_kl"
    invalid_action_penalty: Annotated[
        NonNegativeFloat, Meta(description="Reward subtracted per invalid or unparsed step (paper: 0.1).")
    ] = 0.1


class GRPOConfig(RLConfig):
    """Multi-turn GRPO: group-normalised trajectory outcome, no critic."""

    norm_adv_by_std: Annotated[bool, Meta(description="Divide by the group std (False: Dr.GRPO).")] = True
    epsilon: Annotated[PositiveFloat, Meta(description="Added to the group std.")] = 1e-6
    listed_update: Annotated[
        Literal["response", "choice"],
        Meta(description="What a step of loop.action_choice=listed trains: response, its answer's log-prob token by token over "
             "the whole vocabulary, as for a generated answer; choice, the log-prob of picking its answer among the state's "
             "listed ones (the distribution the rollout sampled from), one unit per step, so tokens all listed answers share "
             "carry no gradient. With choice a generated step is one unit too, its answer's summed log-prob."),
    ] = "response"


class PPOConfig(RLConfig):
    """PPO with GAE and a value head on the policy's last hidden state."""

    gamma: Annotated[Annotated[float, Meta(ge=0.0, le=1.0)], Meta(description="Discount per response token.")] = 1.0
    lam: Annotated[Annotated[float, Meta(ge=0.0, le=1.0)], Meta(description="GAE lambda.")] = 1.0
    value_lr: Annotated[PositiveFloat, Meta(description="Learning rate of the value head.")] = 1e-4
    vf_coef: Annotated[NonNegativeFloat, Meta(description="Weight of the value loss in the joint loss.")] = 0.5
    cliprange_value: Annotated[PositiveFloat, Meta(description="Value clipping range (verl).")] = 0.5


class SFTConfig(TrainerConfig):
    """Behaviour cloning on expert (successful) trajectories."""

    lr: Annotated[PositiveFloat, Meta(description="AdamW learning rate (paper gives none).")] = 1e-5
    epochs: Annotated[PositiveInt, Meta(description="Passes of fit_offline() over its data.")] = 1
    successful_only: Annotated[
        bool, Meta(description="Train only on trajectories that succeeded (their valid steps: SFT never trains an invalid step)."),
    ] = True


class DPOConfig(TrainerConfig):
    """DPO on (prompt, expert response, non-expert response) pairs."""

    lr: Annotated[PositiveFloat, Meta(description="AdamW learning rate (paper gives none).")] = 1e-5
    epochs: Annotated[PositiveInt, Meta(description="Passes of fit_offline() over its pairs.")] = 1
    beta: Annotated[PositiveFloat, Meta(description="DPO temperature beta (TRL default 0.1).")] = 0.1
    max_pairs_per_group: Annotated[NonNegativeInt, Meta(description="Cap on pairs built per task group (0: no cap).")] = 0
