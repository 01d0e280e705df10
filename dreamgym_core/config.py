"""Pipeline files: YAML decoded into frozen msgspec Structs in two phases.

Phase 1 (:func:`load_pipeline`, or :func:`pipeline_from_dict` for a mapping built in
Python) types the outer shape and leaves each component's settings raw. Phase 2
(:func:`resolve`) converts each raw dict into the config Struct its plugin declares,
once the plugins are loaded. Every error names the file (or the mapping) and the JSON
path of the field. :func:`load_resolved` does both and loads the plugins, as the CLI does.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
import os
import re
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Sequence

import msgspec
import yaml
from msgspec import Meta

from .errors import ComponentNotFound, ConfigError

if TYPE_CHECKING:
    from .plugins import Plugins
    from .specs import ComponentKind

__all__ = [
    "Config",
    "PositiveInt",
    "NonNegativeInt",
    "Probability",
    "ComponentRef",
    "DataConfig",
    "ExperienceTrainingConfig",
    "LoopConfig",
    "EvalConfig",
    "PipelineConfig",
    "ResolvedPipeline",
    "load_pipeline",
    "pipeline_from_dict",
    "resolve",
    "load_resolved",
    "convert_config",
    "config_hash",
    "refuse_inside_run_dir",
    "is_run_directory",
    "refuse_inside_a_run",
    "ROLLOUT_SEED_STRIDE",
]

PositiveInt = Annotated[int, Meta(gt=0)]
NonNegativeInt = Annotated[int, Meta(ge=0)]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
PositiveFloat = Annotated[float, Meta(gt=0.0)]

# RL rollout seeds step this much an iteration: episode i of iteration t plays from
# seed * 7919 + t * ROLLOUT_SEED_STRIDE + i (dreamgym_core.loop.Runner._rollout), so an iteration
# of more episodes than this would reuse the next iteration's seeds. The formula stays as it is
# (runs keep their numbers); LoopConfig refuses a larger iteration.
ROLLOUT_SEED_STRIDE = 1000


class Config(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Base for every DreamGym config: immutable, keyword-only, typo-proof, and checked when built.

    msgspec applies ``kw_only`` to the fields of the class that declares it only: a subclass
    declares it too (``class MyConfig(Config, kw_only=True)``) to make its own fields
    keyword-only, which also lets a required field follow one with a default.

    msgspec checks types and bounds only when it decodes, so a config built in Python
    (``HFConfig(max_length="1024")``) would carry its wrong value to wherever it is used.
    ``__post_init__`` checks it as a pipeline file's would be; a subclass that has its own
    ``__post_init__`` calls ``super().__post_init__()`` first."""

    def __post_init__(self) -> None:
        check_fields(self)


def non_finite(value: Any, path: str = "") -> tuple[str, float] | None:
    """The path (``a.b[2]``; ``value`` itself) and value of the first non-finite float in
    ``value``, its dicts and lists; None when there is none."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "value", value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        where = f"{path}[{key}]" if isinstance(value, list) else f"{path}.{key}" if path else str(key)
        found = non_finite(item, where)
        if found is not None:
            return found
    return None


def check_fields(config: Config) -> None:
    """A ``msgspec.ValidationError`` naming ``config``'s class and field unless every field has
    its declared type and bounds: the config's builtins decoded into :func:`_fields_only`."""
    builtins = msgspec.to_builtins(config)
    try:
        msgspec.convert(builtins, _fields_only(type(config)))
    except msgspec.ValidationError as exc:
        raise msgspec.ValidationError(f"{type(config).__name__}: {exc}") from None
    # inf passes gt=0 (a pipeline file's is refused before it is decoded; one built in Python was
    # not: kl_coef=inf made every loss NaN and every step was skipped, a run that trained nothing)
    found = non_finite(builtins)
    if found is not None:
        raise msgspec.ValidationError(f"{type(config).__name__}: {found[0]} is {found[1]}; settings must be finite numbers")


@functools.cache
def _fields_only(config_type: type) -> type:
    """A Struct with ``config_type``'s fields and none of its ``__post_init__`` checks, which
    run on the config itself (decoding into the config type would run them on a copy too, and
    their errors would come back under a second name)."""
    fields = msgspec.structs.fields(config_type)
    rename = {f.name: f.encode_name for f in fields}  # e.g. reward-entropy's ``lambda_`` is ``lambda``
    return msgspec.defstruct(
        config_type.__name__, [(f.name, f.type) for f in fields], kw_only=True, forbid_unknown_fields=True, rename=rename
    )


class ComponentRef(Config):
    """A component by registered name, with its settings decoded later."""

    name: Annotated[str, Meta(description="A component name registered by a loaded plugin.")]
    config: Annotated[dict[str, Any], Meta(description="Settings for the component's own config Struct.")] = {}


class DataConfig(Config):
    """Offline real data collected before training (paper: expert + oracle/random)."""

    expert_episodes: Annotated[NonNegativeInt, Meta(description="Gold-path episodes per run.")] = 32
    noisy_episodes: Annotated[NonNegativeInt, Meta(description="Noisy-expert episodes.")] = 16
    random_episodes: Annotated[NonNegativeInt, Meta(description="Random-policy episodes.")] = 16
    explore_episodes: Annotated[
        NonNegativeInt,
        Meta(description="Episodes of uniform actions among all the game has offered, listed or not (invalid-action data)."),
    ] = 0
    path: Annotated[str | None, Meta(description="Existing JSONL of Transition records to use instead.")] = None
    branch_actions: Annotated[
        NonNegativeInt,
        Meta(description=(
            "Early Experience: at each state of a successful offline episode, run up to this many other offered "
            "actions in the real environment and keep the next states they reach (branches.jsonl; 0: none)."
        )),
    ] = 0


class ExperienceTrainingConfig(Config):
    """The experience model: joint SFT (paper Eq. 5) and how it answers."""

    epochs: Annotated[PositiveInt, Meta(description="Passes over the annotated offline transitions.")] = 3
    lr: Annotated[PositiveFloat, Meta(description="Learning rate.")] = 1e-3
    batch_size: Annotated[PositiveInt, Meta(description="Examples per step.")] = 16
    annotator: Annotated[
        Literal["rule", "teacher", "none"],
        Meta(description="Reasoning traces from the domain's rule-based annotator, a teacher model, or none."),
    ] = "rule"
    teacher: Annotated[ComponentRef | None, Meta(description="Teacher model backend when annotator=teacher.")] = None
    teacher_max_new_tokens: Annotated[
        PositiveInt,
        Meta(description=(
            "Token budget of the teacher's answer for one episode: its JSON holds a plan for every step, so long "
            "episodes (ALFWorld's 50 steps) need more than short ones; a cut answer is no JSON and is retried."
        )),
    ] = 1024
    teacher_fallback: Annotated[
        Literal["none", "rule"],
        Meta(description=(
            "An episode whose teacher answer is still unusable after the retries: stop the run (none), or annotate "
            "that episode with the domain's rule-based annotator (rule; how many is logged)."
        )),
    ] = "none"
    skip: Annotated[bool, Meta(description="Use the experience model as loaded, without training.")] = False
    train_demos: Annotated[
        Literal["any", "other-tasks"],
        Meta(description=(
            "Demos retrieved for a training example: any other transition, or only other tasks' "
            "(as for a task the buffer has never seen; else a small model learns to copy the same "
            "task's stored next state and misreads new worlds)."
        )),
    ] = "any"
    max_new_tokens: Annotated[PositiveInt, Meta(description="Token budget of one answer (reasoning + next state + flags).")] = 320
    max_retries: Annotated[NonNegativeInt, Meta(description="Re-generations of an answer that fails to parse.")] = 1
    success_repeats: Annotated[
        int,
        Meta(ge=1, le=100, description=(
            "Times each successful transition (the step that wins an episode) is shown per epoch of joint SFT; 1: "
            "once, as every other. Wins are one step of an expert episode, a few % of the data, and a small model "
            "can learn never to say one and still agree with most held-out steps. Measured on Table 1's mapreader "
            "(4 seeds), 4 did not help: balanced accuracy fell on three seeds, RL's result -4.7 points "
            "(benchmarks/table1/results/success-repeats)."
        )),
    ] = 1
    branches: Annotated[
        bool,
        Meta(description=(
            "Early Experience's branch transitions (data.branch_actions) also seed the replay buffer and join the "
            "joint SFT: real outcomes of the actions the demos did not take, which the expert data never shows."
        )),
    ] = False


class LoopConfig(Config):
    """The DreamGym training loop (paper section 4.3)."""

    mode: Annotated[
        Literal["real", "dreamgym", "s2r"],
        Meta(description="real: RL in the real env; dreamgym: synthetic only; s2r: synthetic then real."),
    ] = "dreamgym"
    iterations: Annotated[NonNegativeInt, Meta(description="Policy updates in total (0: warm start only, the SFT baseline).")] = 10
    tasks_per_iteration: Annotated[PositiveInt, Meta(description="Tasks per batch (paper: 16).")] = 4
    group_size: Annotated[PositiveInt, Meta(description="Rollouts per task (GRPO group; paper: 8).")] = 4
    max_steps: Annotated[PositiveInt, Meta(description="Step cap per episode (verl-agent: 15 WebShop, 50 ALFWorld).")] = 15
    history_window: Annotated[NonNegativeInt, Meta(description="Earlier (state, action) pairs shown to models.")] = 4
    top_k: Annotated[NonNegativeInt, Meta(description="Retrieved transitions per experience-model step.")] = 4
    demos: Annotated[
        Literal["nearest", "same-world-first"],
        Meta(description=(
            "Which retrieved transitions the experience model is shown, in training, RL and fidelity scoring alike: the "
            "top_k nearest by (state, action), or the episode's own world's first and in it the same action's (among the "
            "nearest 256; the domain's world_of, else the task id without a variation's ~syn), since rooms that read alike lead elsewhere in each "
            "world and the nearest stored step is often another exit of the same room."
        )),
    ] = "nearest"
    store_synthetic: Annotated[
        bool,
        Meta(description=(
            "Add RL's synthetic transitions to the replay buffer, where later synthetic steps retrieve them as demos "
            "(the paper's buffer, enriched during RL). false keeps the buffer to real transitions (the offline seed and "
            "s2r's real phase), so the experience model is only ever shown real steps, never its own earlier answers."
        )),
    ] = True
    real_budget: Annotated[
        NonNegativeInt, Meta(description="s2r: real transitions allowed after the synthetic phase (a hard cap: a real iteration runs only the groups that fit even at max_steps).")
    ] = 0
    s2r_synthetic_share: Annotated[
        Probability, Meta(description="s2r: share of iterations run in the synthetic environment first.")
    ] = 0.75
    warmstart_epochs: Annotated[NonNegativeInt, Meta(description="SFT epochs before RL on the offline episodes of loop.warmstart_demos (by default every one that won, whichever data policy played it: expert, noisy or random).")] = 1
    world_model_epochs: Annotated[
        NonNegativeInt,
        Meta(description=(
            "Early Experience's implicit world modelling: epochs of SFT that teach the policy the next observation "
            "of each branch (data.branch_actions) from its state and action, before the warm start's imitation (0: off)."
        )),
    ] = 0
    self_reflection: Annotated[
        Literal["off", "rule", "teacher"],
        Meta(description=(
            "Early Experience's self-reflection: the warm start's demos think, in <think>, about what their action and "
            "the branches' (data.branch_actions) led to; written by rule (the outcomes) or by experience.teacher (why "
            "the demo's action is better). Raise the algo's max_new_tokens to fit them."
        )),
    ] = "off"
    warmstart_demos: Annotated[
        Literal["winners", "expert"],
        Meta(description=(
            "Which offline episodes the warm start imitates: every one that won, whichever data policy played it "
            "(winners), or only the expert's (expert: the paper's SFT on expert demonstrations)."
        )),
    ] = "winners"
    warmstart_lr: Annotated[PositiveFloat, Meta(description="Learning rate of the warm-start SFT.")] = 1e-3
    warmstart_select_episodes: Annotated[
        NonNegativeInt,
        Meta(description="Greedy episodes on the 'valid' split after each warm-start epoch; the best epoch is kept (0: the last)."),
    ] = 0
    checkpoint_every: Annotated[PositiveInt, Meta(description="Iterations between checkpoints.")] = 1
    keep_checkpoints: Annotated[
        NonNegativeInt,
        Meta(description="Newest checkpoints kept on disk (0: all). One of a 135M policy with its optimizer is about 2 GB."),
    ] = 0
    sampling_temperature: Annotated[PositiveFloat, Meta(description="Policy temperature in rollouts.")] = 1.0
    experience_temperature: Annotated[PositiveFloat, Meta(description="M_exp temperature.")] = 0.7
    experience_draw: Annotated[
        NonNegativeInt,
        Meta(description="Which sampling draw of M_exp RL's synthetic steps use: 0 is the seed's own; k > 0 another draw of the same trained model (fidelity scoring and the replay keep theirs)."),
    ] = 0
    action_choice: Annotated[
        Literal["generate", "listed"],
        Meta(description="How the policy acts: generate its answer freely, or (listed) pick one of the state's listed actions by the probability it gives each one's answer (<think></think><action>...</action>), sampled at the rollout's temperature, the likeliest at temperature 0; a state that lists none is generated. The algorithm's act() must take candidates (the local trainers do)."),
    ] = "generate"
    reject_unlisted_actions: Annotated[
        bool,
        Meta(description="Synthetic steps: an action missing from the state's action list fails without asking M_exp."),
    ] = False
    reject_unlisted_at: Annotated[
        Literal["every-step", "start"],
        Meta(description="Where reject_unlisted_actions applies: every state, or only the start state (its list is the real reset's; later ones are M_exp's)."),
    ] = "every-step"
    check_transitions: Annotated[
        bool,
        Meta(description="Synthetic steps: the domain's implausible(state=, action=, next_state=) judges each M_exp answer, and one it rules out (TextWorld: a look or inventory that changes the inventory, score or action list) is by default M_exp's failure, as an unparsable answer is (not stored; its episode handled by unanswered_episodes), or corrected (loop.implausible_answers). Needs a domain with implausible."),
    ] = False
    implausible_answers: Annotated[
        Literal["fail", "correct"],
        Meta(description="What loop.check_transitions does with an M_exp answer the domain rules out: fail it as M_exp's failure, or play the domain's correction instead (domain.correct(state=, action=, answer=) -> ExperienceResult; TextWorld: the state unchanged), which is stored as the step's answer."),
    ] = "fail"
    state_variation: Annotated[
        Probability,
        Meta(description="Synthetic states: strength of the domain's vary_state (TextWorld: chance of dropping each furniture sentence; 0: off)."),
    ] = 0.0
    unanswered_episodes: Annotated[
        Literal["penalise", "drop"],
        Meta(description="Episodes ended by a step the environment could not answer (M_exp's unparsable answer, an engine error): penalise them as failures (reward 0), or drop them from the policy update and the curriculum's groups."),
    ] = "penalise"
    real_envs_at_once: Annotated[
        NonNegativeInt,
        Meta(description="Real envs open at once in one play (an evaluation, a real RL rollout): a play of more episodes runs in batches of this many, each batch's envs closed before the next opens. Bounds the simulators' memory (a ScienceWorld env is a JVM of about 0.27 GB); smaller batches mean more, smaller policy calls. A sampled play (real RL, eval.temperature > 0) draws from one seed per policy call, so another value samples other actions. 0: every episode of a play at once."),
    ] = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        episodes = self.tasks_per_iteration * self.group_size
        if episodes > ROLLOUT_SEED_STRIDE:
            raise ValueError(
                f"loop.tasks_per_iteration * loop.group_size = {self.tasks_per_iteration} * {self.group_size} = {episodes} "
                f"episodes an iteration; at most {ROLLOUT_SEED_STRIDE} keep their rollout seeds apart (each iteration's "
                f"seeds start {ROLLOUT_SEED_STRIDE} after the last one's), else two iterations' episodes share seeds: "
                "lower loop.tasks_per_iteration or loop.group_size"
            )


class EvalConfig(Config):
    """Evaluation on held-out real tasks with the training rollout code."""

    split: Annotated[str, Meta(description="Task split to evaluate on.")] = "test"
    episodes: Annotated[NonNegativeInt, Meta(description="Episodes (0 disables evaluation).")] = 32
    temperature: Annotated[float, Meta(ge=0.0, description="Policy temperature; 0 is greedy (paper val: 0.4).")] = 0.0
    before_training: Annotated[bool, Meta(description="Also evaluate the untrained and the warm-started policy.")] = True
    fidelity_episodes: Annotated[
        NonNegativeInt,
        Meta(description="Held-out real episodes per fidelity policy scoring the experience model's fidelity; 0: off."),
    ] = 0
    fidelity_policies: Annotated[
        list[Literal["expert", "noisy", "random", "explore"]],
        Meta(description="Data policies of the held-out fidelity episodes ('explore' adds actions the engine refuses)."),
    ] = msgspec.field(default_factory=lambda: ["expert", "random"])
    valid_every: Annotated[
        NonNegativeInt,
        Meta(description="Iterations between greedy plays of the 'valid' split during RL; the warm start and the last iteration are scored too (0: off)."),
    ] = 0
    valid_episodes: Annotated[PositiveInt, Meta(description="Greedy episodes of each validation play (valid_every).")] = 16
    keep: Annotated[
        Literal["last", "best-valid"],
        Meta(description="The policy the final evaluation plays: the last iteration's, or the one that scored best on validation (the warm start included; ties keep the earliest). best-valid needs valid_every."),
    ] = "last"
    synthetic_agreement: Annotated[
        bool,
        Meta(description=(
            "Also play the evaluated tasks in the synthetic environment (the warm-started and the trained "
            "policy) and report how often its success agrees with the real one: fidelity on the policy's own play."
        )),
    ] = False


# torch seeds are unsigned 64-bit, and RL seeds from seed * 1_000_003 + 17 (loop.rl_seed): a
# larger seed would fail only after the data, experience model and warm start were built.
MAX_SEED = (2**64 - 1 - 17) // 1_000_003


class PipelineConfig(Config):
    """A whole run: which plugins, which components, and the loop settings."""

    plugins: Annotated[list[str], Meta(description="Entry-point names in group 'dreamgym' to load.")]
    env: ComponentRef
    policy: ComponentRef
    algo: ComponentRef
    experience_model: ComponentRef | None = None
    encoder: ComponentRef | None = None
    buffer: ComponentRef | None = None
    curriculum: ComponentRef | None = None
    loggers: list[ComponentRef] = []
    data: DataConfig = DataConfig()
    experience: ExperienceTrainingConfig = ExperienceTrainingConfig()
    loop: LoopConfig = LoopConfig()
    eval: EvalConfig = EvalConfig()
    seed: Annotated[int, Meta(ge=0, le=MAX_SEED, description="Seeds every RNG of the run.")] = 0
    run_dir: Annotated[str, Meta(description="Where the run writes config, metrics, checkpoints, report.")] = "runs/default"

    def __post_init__(self) -> None:
        super().__post_init__()
        repeated = sorted({p for p in self.plugins if self.plugins.count(p) > 1})
        if repeated:  # loaded once either way, but the copy changes the config hash: a resume without it is refused
            raise ValueError(f"plugins names {', '.join(map(repr, repeated))} more than once")
        for option, on in (("world_model_epochs", self.loop.world_model_epochs), ("self_reflection", self.loop.self_reflection != "off")):
            if on and not self.data.branch_actions:
                raise ValueError(f"loop.{option} needs branch transitions to learn from: set data.branch_actions > 0")
            if on and not self.loop.warmstart_epochs:
                raise ValueError(f"loop.{option} is part of the warm start: set loop.warmstart_epochs > 0")
        if self.experience.train_demos == "other-tasks" and self.loop.demos == "same-world-first":
            raise ValueError("experience.train_demos='other-tasks' contradicts loop.demos='same-world-first'")
        if self.experience.branches and not self.data.branch_actions:
            raise ValueError("experience.branches needs branch transitions: set data.branch_actions > 0")
        if self.loop.self_reflection == "teacher" and self.experience.teacher is None:
            raise ValueError("loop.self_reflection='teacher' needs experience.teacher (the model that writes them)")
        if self.experience.annotator == "teacher" and self.experience.teacher is None:
            raise ValueError("experience.annotator='teacher' needs experience.teacher (the model that writes the reasoning traces)")
        defaults = ExperienceTrainingConfig()
        teacher_options = [
            f"{name}={getattr(self.experience, name)!r}" for name in ("teacher_max_new_tokens", "teacher_fallback")
            if getattr(self.experience, name) != getattr(defaults, name)
        ]
        if teacher_options and self.experience.annotator != "teacher":
            raise ValueError(
                f"experience.{', experience.'.join(teacher_options)} only apply to experience.annotator='teacher' "
                f"(it is {self.experience.annotator!r}); drop them or set the annotator"
            )
        loop_defaults = LoopConfig()
        s2r_options = [
            f"{name}={getattr(self.loop, name)!r}" for name in ("real_budget", "s2r_synthetic_share")
            if getattr(self.loop, name) != getattr(loop_defaults, name)
        ]
        if s2r_options and self.loop.mode != "s2r":  # read by nothing else: the run would differ from what the file says
            raise ValueError(
                f"loop.{', loop.'.join(s2r_options)} only apply to loop.mode='s2r' (it is {self.loop.mode!r}); "
                "drop them or set the mode"
            )
        # A run writes config.json, offline.jsonl, checkpoints/ ... into run_dir, replacing what is
        # there: the working directory or a filesystem root would have its files overwritten.
        # Resolved, so that 'x/..' or the working directory's own absolute path is caught too.
        if self.run_dir.startswith("~"):  # nothing expands it: a directory named "~" was made in the working directory
            raise ValueError(f"run_dir={self.run_dir!r}: '~' is not expanded in a pipeline; write the home directory out")
        try:
            where = Path(self.run_dir.strip() or ".").resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte
            raise ValueError(f"run_dir={self.run_dir!r} is not a usable path: {exc}") from None
        try:
            cwd = Path.cwd().resolve()
        except OSError:  # the working directory was deleted: there is none to protect
            cwd = None
        if where == cwd or where == Path(where.anchor):
            what = "the working directory" if where == cwd else "a filesystem root"
            raise ValueError(f"run_dir={self.run_dir!r} must name a directory of the run's own, not {what}")
        # What a synthetic environment is made of, for training in it or for replaying games in it.
        missing = [f for f in ("experience_model", "encoder", "buffer") if getattr(self, f) is None]
        if missing and self.loop.mode in ("dreamgym", "s2r"):
            raise ValueError(f"loop.mode={self.loop.mode!r} needs {', '.join(missing)}; set them or use mode 'real'")
        if missing and self.eval.synthetic_agreement:
            raise ValueError(f"eval.synthetic_agreement replays games in the synthetic environment and needs {', '.join(missing)}")
        if self.eval.fidelity_episodes and self.experience_model is None:
            raise ValueError("eval.fidelity_episodes scores the experience model and needs experience_model; set it or eval.fidelity_episodes: 0")
        if self.eval.fidelity_episodes and not self.eval.fidelity_policies:
            raise ValueError("eval.fidelity_episodes needs at least one policy in eval.fidelity_policies (none plays the held-out episodes)")
        repeated = sorted({p for p in self.eval.fidelity_policies if self.eval.fidelity_policies.count(p) > 1})
        if repeated:  # the same episodes (same ids) twice: each step's copy is in the other's history, and scored twice
            raise ValueError(f"eval.fidelity_policies names {', '.join(repeated)} more than once")
        if self.eval.keep == "best-valid" and not self.eval.valid_every:
            raise ValueError("eval.keep='best-valid' needs eval.valid_every > 0 (no validation play would score a policy)")
        group_cap = self.loop.group_size * self.loop.max_steps
        synthetic = s2r_synthetic_iterations(self.loop.iterations, self.loop.s2r_synthetic_share)
        if self.loop.mode == "s2r" and 0 < self.loop.iterations <= synthetic:
            # The synthetic share is rounded up, so a short run can leave no real phase: real_budget
            # would go unused and the run would be a plain DreamGym run under the name s2r.
            raise ValueError(
                f"loop.mode='s2r' leaves no real iteration: ceil(loop.iterations={self.loop.iterations} * "
                f"loop.s2r_synthetic_share={self.loop.s2r_synthetic_share}) = {synthetic}; "
                "raise loop.iterations or lower loop.s2r_synthetic_share"
            )
        if self.loop.mode == "s2r" and self.loop.real_budget < group_cap:
            raise ValueError(
                f"loop.mode='s2r' needs loop.real_budget >= group_size * max_steps = {group_cap} "
                f"(one real group at most; got {self.loop.real_budget})"
            )


def s2r_synthetic_iterations(iterations: int, share: float) -> int:
    """s2r: how many of the first iterations run in the synthetic environment (the share rounded up).
    Rounded up from the exact product of the share as written: 100 * 0.55 is 55.00000000000001 in
    floats, whose ceiling played a 56th synthetic iteration."""
    return math.ceil(Fraction(repr(share)) * iterations)


# Components of a pipeline and the kind each one is, in build order.
COMPONENT_FIELDS: tuple[tuple[str, ComponentKind], ...] = (
    ("env", "env"),
    ("encoder", "encoder"),
    ("buffer", "buffer"),
    ("experience_model", "model"),
    ("policy", "model"),
    ("curriculum", "curriculum"),
    ("algo", "algo"),
)


class ResolvedPipeline(msgspec.Struct, frozen=True, kw_only=True):
    """Phase-2 result: the outer config plus each component's typed config."""

    source: str
    pipeline: PipelineConfig
    components: dict[str, Any]  # field name ("algo", "loggers.0", ...) -> config Struct instance

    def to_builtins(self) -> dict[str, Any]:
        """The fully resolved config: every default filled in, as plain JSON types."""
        data = msgspec.to_builtins(self.pipeline)
        for field, cfg in self.components.items():
            target = data
            parts = field.split(".")
            for part in parts[:-1]:
                target = target[int(part)] if isinstance(target, list) else target[part]
            last = parts[-1]
            slot = target[int(last)] if isinstance(target, list) else target[last]
            slot["config"] = msgspec.to_builtins(cfg)
        return data


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-5`` as a float (YAML 1.2), as ML configs expect, and
    refuses a key given twice in one mapping (PyYAML would keep the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            self._refuse_duplicate_keys(node)
        return super().construct_mapping(node, deep=deep)

    def _refuse_duplicate_keys(self, node: yaml.MappingNode) -> None:
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                # "<<" merges are meant to be overridden, but each merged mapping's own keys are
                # checked: PyYAML merges an inline one ({<<: {a: 1, a: 2}}) without constructing it
                merged = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for mapping in merged:
                    if isinstance(mapping, yaml.MappingNode):
                        self._refuse_duplicate_keys(mapping)
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
                )


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)$"),
    list("-+0123456789."),
)
# Integers as YAML 1.2 reads them: decimal (a leading zero is decimal: a zero-padded seed 010 is
# 10, not octal 8), 0o octal and 0x hex; underscores between digits are kept from YAML 1.1
# (100_000), as the float rule above keeps them. YAML 1.1's 1:30 (base 60, 90) stays a string.
_YAML12_INT = re.compile(r"^(?:[-+]?[0-9][0-9_]*|0o[0-7]+|0x[0-9a-fA-F]+)$")
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _YAML12_INT, list("-+0123456789"))


def _yaml12_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text.replace("_", ""), 10)


_Loader.add_constructor("tag:yaml.org,2002:int", _yaml12_int)
# Nor does YAML 1.2 read dates: a run_dir or a name such as 2026-12-05 stays a string (PyYAML
# would make it a datetime, and an impossible one such as 2026-13-45 a ValueError).
# Booleans as YAML 1.2 reads them too: true and false only. YAML 1.1's on/off/yes/no made the
# documented `loop.self_reflection: off` a bool, refused as "Expected `str`, got `bool`".
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:bool")]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


# A pipeline file is a few hundred values; aliases that expand past this are a mistake or an
# attack ("billion laughs": nine aliases of nine aliases ... expand to 9**9 values).
MAX_YAML_VALUES = 100_000
# and a pipeline file a few kilobytes (the commented examples are under 10 KiB).
MAX_PIPELINE_BYTES = 2**20


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many values ``node`` becomes once its aliases are expanded (shared nodes counted
    each time they are used, each computed once); an alias inside the node it names is refused."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise yaml.constructor.ConstructorError(
            None, None, "an alias refers to a collection that contains it (a recursive value)", node.start_mark
        )
    size = 1
    if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
        open_nodes.add(key)
        children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
        for child in children:
            size += _expanded_size(child, sizes, open_nodes)
            if size > MAX_YAML_VALUES:
                raise yaml.constructor.ConstructorError(
                    None, None, f"more than {MAX_YAML_VALUES} values once aliases are expanded", node.start_mark
                )
        open_nodes.discard(key)
    sizes[key] = size
    return size


def yaml_load(text: str) -> Any:
    """One YAML document, its aliases expanded only when the result stays small and finite.

    Raises ``yaml.YAMLError`` (also for an explicitly tagged value its constructor refuses), and
    ``RecursionError`` for collections nested too deeply to parse."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set())
        try:
            return loader.construct_document(node)
        except (ValueError, OverflowError) as exc:  # an explicit tag on a value it cannot read (!!float abc)
            raise yaml.constructor.ConstructorError(None, None, f"a tagged value cannot be read: {exc}", None) from exc
    finally:
        loader.dispose()


# Where msgspec says an error is: "- at `$.loop`", or for a mapping's key "- at `key` in `$.loop`".
_LOCATION = re.compile(r" - at `(?:key` in `)?\$")


def _located(error: Exception, where: str, prefix: str = "$") -> ConfigError:
    message = str(error)
    if not _LOCATION.search(message):
        message += f" - at `{prefix}`"  # msgspec omits the location of root-level errors
    elif prefix != "$":
        message = message.replace("`$", f"`{prefix}")
    return ConfigError(f"{where}: {message}")


def set_path(data: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    """Apply one ``--set key.path=value`` to raw settings (list items by index)."""
    keys = dotted.split(".")
    target: Any = data
    for depth, key in enumerate(keys[:-1]):
        if isinstance(target, list) and key.isdigit():
            if int(key) >= len(target):
                raise ConfigError(f"{where}: --set {dotted}: index {key} is past the end of a list of {len(target)}")
            target = target[int(key)]
            continue
        if not isinstance(target, dict):
            raise ConfigError(f"{where}: --set {dotted}: {'.'.join(keys[:depth])!r} is not a mapping")
        if target.get(key) is None:  # absent, or left empty in the file (`experience_model:`): filled here
            target[key] = {}
        target = target[key]
    if isinstance(target, list) and keys[-1].isdigit():
        if int(keys[-1]) >= len(target):
            raise ConfigError(f"{where}: --set {dotted}: index {keys[-1]} is past the end of a list of {len(target)}")
        target[int(keys[-1])] = value
        return
    if not isinstance(target, dict):
        raise ConfigError(f"{where}: --set {dotted}: {'.'.join(keys[:-1])!r} is not a mapping")
    target[keys[-1]] = value


def parse_overrides(overrides: Sequence[str], where: str) -> list[tuple[str, Any]]:
    """``key.path=value`` strings; values are parsed as YAML scalars (1e-5, true, [a])."""
    if isinstance(overrides, (str, bytes)):  # was read as a list of one-character overrides
        raise ConfigError(f"{where}: overrides must be a list of 'key.path=value' strings, got {overrides!r:.80}")
    overrides = list(overrides)  # a generator is read once
    if not all(isinstance(item, str) for item in overrides):
        raise ConfigError(f"{where}: overrides must be a list of 'key.path=value' strings, got {overrides!r:.80}")
    parsed = []
    for item in overrides:
        if "=" not in item or not re.match(r"^[A-Za-z_][\w.]*=", item):
            raise ConfigError(f"{where}: --set expects key.path=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml_load(raw) if raw else ""
        except RecursionError as exc:
            raise ConfigError(f"{where}: --set {key}=...: the value is nested too deeply") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: --set {item!r}: the value is not valid YAML: {getattr(exc, 'problem', exc)}") from exc
        parsed.append((key, value))
    return parsed


def load_pipeline(path: str | Path, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Phase 1: read YAML, apply ``--set`` overrides, decode the outer schema."""
    where = str(path)
    try:
        with open(path, "rb") as f:  # bounded: a device or a huge file is not read whole
            raw = f.read(MAX_PIPELINE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read pipeline file: {exc.strerror or exc}") from exc
    if len(raw) > MAX_PIPELINE_BYTES:
        raise ConfigError(f"{where}: not a pipeline file: larger than {MAX_PIPELINE_BYTES // 2**20} MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not a text file (byte {exc.start} is not UTF-8)") from exc
    try:
        data = yaml_load(text)
    except RecursionError as exc:
        raise ConfigError(f"{where}: not valid YAML: collections nested too deeply") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{where}: not valid YAML{loc}: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a pipeline file must be a mapping at the top level")
    return pipeline_from_dict(data, overrides, where=where)


def pipeline_from_dict(data: Mapping[str, Any], overrides: Sequence[str] = (), *, where: str = "<pipeline dict>") -> PipelineConfig:
    """Phase 1 for a pipeline built in Python: the mapping a pipeline file holds (paths may be
    ``pathlib.Path``s), with ``--set``-style ``overrides`` (``"loop.iterations=2"``) applied to a
    copy (``data`` is left as it was). Errors are a :class:`ConfigError` naming ``where`` and the field, as for a file."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: a pipeline must be a mapping, got {type(data).__name__}")
    data = _with_paths_as_str(copy.deepcopy(dict(data)))
    for key, value in parse_overrides(overrides, where):
        set_path(data, key, value, where)
    _refuse_non_finite(data, where)
    _refuse_glued_colons(data, where)
    try:
        return msgspec.convert(data, type=PipelineConfig)
    except msgspec.ValidationError as exc:
        raise _located(exc, where) from exc


def _with_paths_as_str(value: Any) -> Any:
    """``value`` with every path object (``run_dir=Path(...)``) as the str a file would hold."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {key: _with_paths_as_str(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_with_paths_as_str(item) for item in value]
    return value


def load_resolved(source: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()) -> tuple[ResolvedPipeline, Plugins]:
    """A pipeline file (a path) or mapping, with ``overrides``, resolved with its plugins loaded:
    what ``dreamgym run`` and ``dreamgym eval`` start from, to pass to
    :func:`dreamgym_core.loop.run_pipeline` or :func:`dreamgym_core.loop.evaluate_run`."""
    from .plugins import Plugins

    if not isinstance(source, (str, os.PathLike, Mapping)):
        raise ConfigError(f"a pipeline is a file path or a mapping, got {type(source).__name__}")
    if isinstance(source, Mapping):
        where = "<pipeline dict>"
        pipeline = pipeline_from_dict(source, overrides, where=where)
    else:
        where = str(source)
        pipeline = load_pipeline(source, overrides)
    plugins = Plugins.for_names(pipeline.plugins, where=f"{where}: plugins")
    return resolve(pipeline, plugins, where=where), plugins


def _refuse_non_finite(value: Any, where: str) -> None:
    """YAML's ``.inf`` and ``.nan`` are floats that pass ``gt=0``: an ``lr`` of inf would train
    on NaN weights, and the config's JSON record (``Infinity``) is not JSON. No setting means
    them, so they are refused wherever they appear, components' settings included."""
    found = non_finite(value)
    if found is not None:
        raise ConfigError(f"{where}: {found[0]} is {found[1]}; settings must be finite numbers")


# ``{numLocations:3}``: YAML reads a colon without a space after it as part of the key, so the
# mapping holds the key "numLocations:3" with no value, and the error would only say "got null".
_GLUED_COLON = re.compile(r"^[A-Za-z_][\w.-]*:[^\s:/]")


def _refuse_glued_colons(value: Any, where: str, path: str = "") -> None:
    """A key like ``numLocations:3`` with no value anywhere in the pipeline is refused with the fix."""
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            if item is None and isinstance(key, str) and _GLUED_COLON.match(key):
                name, _, rest = key.partition(":")
                raise ConfigError(
                    f"{where}: {path or 'top level'}: key {key!r} has no value; YAML needs a space after the colon "
                    f"({name}: {rest})"
                )
            _refuse_glued_colons(item, where, here)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _refuse_glued_colons(item, where, f"{path}[{i}]")


def convert_config(raw: dict[str, Any], config_type: type, where: str, path: str) -> Any:
    """Phase-2 conversion of one component's raw settings, errors located at ``path``."""
    try:
        return msgspec.convert(raw, type=config_type)
    except msgspec.ValidationError as exc:
        raise _located(exc, where, prefix=path) from exc


def resolve(pipeline: PipelineConfig, plugins: Plugins, where: str) -> ResolvedPipeline:
    """Phase 2: decode every component's settings into its plugin's config Struct."""
    components: dict[str, Any] = {}
    refs: list[tuple[str, ComponentKind, ComponentRef]] = [
        (field, kind, getattr(pipeline, field))
        for field, kind in COMPONENT_FIELDS
        if getattr(pipeline, field) is not None
    ]
    refs += [(f"loggers.{i}", "logger", ref) for i, ref in enumerate(pipeline.loggers)]
    if pipeline.experience.teacher is not None:
        refs.append(("experience.teacher", "model", pipeline.experience.teacher))
    for field, kind, ref in refs:
        try:
            spec = plugins.component(kind, ref.name, where=f"{where}: {field}.name")
        except ComponentNotFound as exc:  # the usual cause: its plugin is not in `plugins:`
            loaded = ", ".join(pipeline.plugins) or "none"
            hint = f"Components come from the plugins listed in `plugins:` ({loaded}); add the one that registers {ref.name!r}."
            raise ComponentNotFound(kind, ref.name, plugins.components(kind), where=f"{where}: {field}.name", hint=hint) from exc
        json_path = re.sub(r"\.(\d+)", r"[\1]", f"$.{field}.config")
        try:
            components[field] = convert_config(ref.config, spec.config_type, where, json_path)
        except ConfigError as exc:
            if "unknown field" not in str(exc):
                raise
            # Often another component's settings: `--set algo.name=X` keeps the file's algo.config.
            fields = ", ".join(f.name for f in msgspec.structs.fields(spec.config_type)) or "none"
            raise ConfigError(f"{exc} ({kind} {ref.name!r} takes: {fields})") from exc
    return ResolvedPipeline(source=where, pipeline=pipeline, components=components)


def refuse_inside_run_dir(path: str | Path, option: str, pipeline: PipelineConfig) -> None:
    """A ConfigError naming ``option`` for a command's output ``path`` inside ``pipeline``'s run
    directory, whatever its name: it could replace a file the run reads back (RUN/offline.jsonl
    is a resume's training data)."""
    if Path(path).resolve().is_relative_to(Path(pipeline.run_dir).resolve()):
        raise ConfigError(f"{option} {path}: is inside the run directory {pipeline.run_dir}, whose files the run reads back; write elsewhere")
    refuse_inside_a_run(path, option)  # run_dir names where the run was made: stale once it is moved or copied


def is_run_directory(path: Path) -> bool:
    """Whether ``path`` is a run directory, by what it holds, wherever it was moved or copied to:
    its config.json beside its replay buffer, or beside config.sha256 (which every run writes
    with it; a run of a pipeline without a buffer has no buffer/)."""
    return (path / "config.json").is_file() and ((path / "buffer").is_dir() or (path / "config.sha256").is_file())


def refuse_inside_a_run(path: str | Path, option: str = "", *, advice: str = "write elsewhere") -> None:
    """A ConfigError (naming ``option``, when given) for an output ``path`` inside any run
    directory (:func:`is_run_directory`), not only the one a pipeline's ``run_dir`` names: on a
    moved or copied run, ``RUN/config.json`` still names the old place, and an output written
    to RUN/offline.jsonl replaced the training data its resume reads back. A stream
    (``/dev/stdout``) is written where the shell sent it, and is left alone."""
    from .checkpoint import is_stream_path  # here: checkpoint loads numpy, which reading a pipeline does not need

    if is_stream_path(path):
        return
    for parent in Path(path).resolve().parents:
        if is_run_directory(parent):
            named = f"{option} {path}" if option else str(path)
            raise ConfigError(f"{named}: is inside the run directory {parent}, whose files the run reads back; {advice}")


def config_hash(resolved: dict[str, Any], *, with_run_dir: bool = False) -> str:
    """sha256 of the canonical JSON of a resolved config (keys sorted), without ``run_dir``:
    where a run lives is not what it is, so a moved or copied run directory still resumes.
    ``with_run_dir``: the hash that run directories stored before that was so."""
    identity = resolved if with_run_dir else {k: v for k, v in resolved.items() if k != "run_dir"}
    return hashlib.sha256(msgspec.json.encode(identity, order="sorted")).hexdigest()
