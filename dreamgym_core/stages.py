"""Stages before RL that every trainer backend runs alike: the offline real data and the
experience model's joint SFT.

The local loop (:mod:`dreamgym_core.loop`) and a backend that runs its own trainer (verl)
both call these, so one pipeline file collects the same data and trains the same
experience model whichever trainer runs it. Each stage writes its output to the run
directory and reuses it when it is there, so a resumed run does not redo it.
"""

from __future__ import annotations

import logging
import math

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from . import checkpoint
from .config import DataConfig, PipelineConfig
from .contracts import checked_metrics, checked_saved
from .errors import ConfigError, ConformanceError, DataError, DreamGymError
from .progress import step_progress
from .records import BRANCH_TAG, Task, Trajectory, Transition

__all__ = [
    "OFFLINE_FILE", "BRANCHES_FILE", "EXPERIENCE_DIR", "collect_offline", "collect_branch_data", "experience_data", "annotate_offline",
    "train_experience_model", "reload_trained", "evaluation_tasks", "played_splits", "check_splits", "seed_task_of", "valid_pickers",
    "warmstart_demos",
]

log = logging.getLogger(__name__)

# Run-directory names of the stages' outputs.
OFFLINE_FILE = "offline.jsonl"
BRANCHES_FILE = "branches.jsonl"
EXPERIENCE_DIR = "experience_model"


def collect_offline(domain: Any, tasks: Sequence[Task], data: DataConfig, *, seed: int, run_dir: Path) -> list[Trajectory]:
    """Real offline data: expert, noisy-expert, random and explore episodes on ``tasks``
    (or ``data.path``'s transitions), stored in ``run_dir/offline.jsonl`` and read back
    from there when that file exists.

    The file is written whole (a kill leaves none), so one that holds fewer collected episodes
    than the config asks for was cut short elsewhere (a copy that stopped part way): it is
    refused, not trained on as if it were the data the config describes."""
    path = run_dir / OFFLINE_FILE
    episodes = data.expert_episodes + data.noisy_episodes + data.random_episodes + data.explore_episodes
    wanted = data.path or episodes
    if path.exists():
        stored = checkpoint.read_trajectories(path)
        if wanted and not stored:
            raise DataError(f"{path}: holds no episodes, but the config asks for offline data; delete it to collect again")
        if not data.path and len(stored) < episodes:
            raise DataError(
                f"{path}: holds {len(stored)} episodes, but data.expert/noisy/random/explore_episodes ask for {episodes} "
                "(the file was cut short); restore it, or delete it to collect again"
            )
        return stored
    if data.path:
        trajectories = _read_offline_file(Path(data.path), domain, tasks)
    else:
        trajectories = []
        policies = (
            ("expert", data.expert_episodes), ("noisy", data.noisy_episodes),
            ("random", data.random_episodes), ("explore", data.explore_episodes),
        )
        for policy, episodes in policies:
            if episodes:
                played = collect(domain, tasks=list(tasks), policy=policy, episodes=episodes, seed=seed)
                if policy == "expert":
                    _warn_repeated_demos(played, len(tasks))
                trajectories += played
    checkpoint.write_trajectories(path, trajectories)
    return trajectories


def _warn_repeated_demos(expert: Sequence[Trajectory], tasks: int) -> None:
    """Log a warning when expert episodes repeat an earlier one exactly (same task id, same
    actions). Domains play their tasks in turn and an expert is often deterministic per task,
    so ``data.expert_episodes`` beyond the number of train tasks replays the same demos. They
    are kept (a run's data is what its config asks for, and runs keep their numbers); the user
    learns that they weigh those demos more in training and add no new step."""
    seen: set[tuple[str, tuple[str, ...]]] = set()
    copies = 0
    for episode in expert:
        key = (episode.task.id, tuple(t.action for t in episode.transitions))
        copies += key in seen
        seen.add(key)
    if copies:
        log.warning(
            "data.expert_episodes: %d of the %d expert episodes repeat an earlier one exactly (same task, same actions; "
            "%d train tasks played in turn): the copies add weight to those demos, not data",
            copies, len(expert), tasks,
        )


def offline_step_problem(t: Transition) -> str | None:
    """Why ``t`` cannot be a real offline step, or None. The experience model learns the outcome
    flags and the outcome reward (1 on the final step of a success, else 0) from such steps, and
    fidelity scores its answers against them, so a step must carry them consistently."""
    if t.model_failed:
        return "is model_failed (an experience model's failed answer, not real data)"
    if t.source == "synthetic":
        return "is synthetic (an experience model's answer): offline data is real"
    if t.step < 0:
        return "has a negative step number"
    if not t.next_state.strip():
        return "has an empty next_state (a model trained on it answers an empty state, which its parser rates failed)"
    if t.success and not t.done:
        return "is a success that is not done (success is the outcome of an episode's final step)"
    from .experience import outcome_reward

    if t.reward != outcome_reward(done=t.done, success=t.success):
        return f"has reward {t.reward}, but the outcome reward is 1.0 on a success's final step and 0.0 elsewhere"
    return None


def _read_offline_file(path: Path, domain: Any, tasks: Sequence[Task]) -> list[Trajectory]:
    """``data.path``'s transitions as episodes, refused (one line naming the file) where they
    cannot be real offline data: steps of a valid or test task, which the evaluation plays
    (trained on, they are not held out), an experience model's failed answers, or an episode
    whose step numbers do not run 0, 1, 2, ... (a gap, or a start after 0)."""
    transitions = checkpoint.read_transitions(path)
    if not transitions:
        raise DataError(f"data.path {path}: no transitions")
    for t in transitions:
        problem = offline_step_problem(t)
        if problem:
            raise DataError(f"data.path {path}: step {t.step} of episode {t.episode_id!r} {problem}")
    held_out = {t.id: split for split in ("valid", "test") for t in domain.tasks(split=split)}
    leaked = sorted({t.task_id for t in transitions if t.task_id in held_out})
    if leaked:
        raise DataError(
            f"data.path {path}: holds steps of {len(leaked)} {held_out[leaked[0]]}-split task(s) (e.g. {leaked[0]!r}), which "
            "the run evaluates on: trained on, they would not be held out"
        )
    try:
        episodes = checkpoint.trajectories_from_transitions(transitions, list(tasks))
    except DataError as exc:
        raise DataError(f"data.path {path}: {exc}") from None
    # The experience model's prompts rebuild a step's history by recorded step number, Early
    # Experience's branches by position in the episode: the two agree only on 0, 1, 2, ...
    for e in episodes:
        bad = next((i for i, t in enumerate(e.transitions) if t.step != i), None)
        if bad is not None:
            raise DataError(
                f"data.path {path}: episode {e.transitions[0].episode_id!r} of task {e.task.id!r} has step "
                f"{e.transitions[bad].step} where step {bad} belongs; an episode's steps run 0, 1, 2, ... without gaps"
            )
    # A row may leave out its instruction (docs/offline-data.md): it keeps its task's. The episode
    # has it, and so must the row: the experience model's training prompts read it there, and
    # read "Task: " with nothing after it, where RL's synthetic steps send the instruction.
    return [
        msgspec.structs.replace(e, transitions=[
            t if t.instruction else msgspec.structs.replace(t, instruction=e.task.instruction) for t in e.transitions
        ])
        for e in episodes
    ]


def collect(domain: Any, *, tasks: Sequence[Task], policy: str, episodes: int, seed: int) -> list[Trajectory]:
    """``domain.collect``, its answer checked: a list of ``episodes`` Trajectory records (a
    domain that returns something else would fail deep in the core, far from its cause)."""
    got = domain.collect(tasks=list(tasks), policy=policy, episodes=episodes, seed=seed)
    if not isinstance(got, list) or not all(isinstance(t, Trajectory) for t in got):
        kinds = "/".join(sorted({type(t).__name__ for t in got})) if isinstance(got, list) else type(got).__name__
        raise ConformanceError(
            f"env {getattr(domain, 'name', type(domain).__name__)!r}: collect(policy={policy!r}) returned {kinds}"
            f"{' items' if isinstance(got, list) else ''}, expected a list of Trajectory (dreamgym check runs the conformance kit)"
        )
    if len(got) != episodes:
        raise ConformanceError(
            f"env {getattr(domain, 'name', type(domain).__name__)!r}: collect(policy={policy!r}, episodes={episodes}) "
            f"returned {len(got)} episodes"
        )
    got = [msgspec.structs.replace(t, data_policy=policy) for t in got]  # which episodes the expert played (loop.warmstart_demos)
    # offline.jsonl writes NaN as null, which no resume can read back
    unfit = next((t for traj in got for t in traj.transitions if not math.isfinite(t.reward)), None)
    if unfit is not None:
        raise ConformanceError(
            f"env {getattr(domain, 'name', type(domain).__name__)!r}: collect(policy={policy!r}) returned step {unfit.step} "
            f"of episode {unfit.episode_id!r} with reward {unfit.reward}, expected a finite number"
        )
    return got


def collect_branch_data(
    domain: Any, offline: Sequence[Trajectory], data: DataConfig, *, seed: int, run_dir: Path, say: Callable[[str], None],
) -> list[Transition]:
    """Early Experience's branch transitions at the states of the successful episodes of
    ``offline``, the demos the warm start imitates (:mod:`dreamgym_core.early`), stored in
    ``run_dir/branches.jsonl`` and read back from there when that file exists; none when
    ``data.branch_actions`` is 0."""
    from .early import collect_branches

    path = run_dir / BRANCHES_FILE
    if not data.branch_actions:
        return []
    if path.exists():
        return checkpoint.read_transitions(path)
    demos = [t for t in offline if t.success]  # the episodes the warm start imitates
    branches, diverged = collect_branches(domain.make_env, demos, k=data.branch_actions, seed=seed)
    if not branches:  # a world model with nothing to learn from would pass for one that learnt
        raise DataError(
            f"data.branch_actions={data.branch_actions}: no branch transitions from the {len(demos)} successful offline "
            f"episodes of env {getattr(domain, 'name', '?')!r} (their states list no other actions, or every replay diverged)"
        )
    say(f"{len(branches)} branch transitions at the states of {len(demos)} successful episodes"
        + (f"; {diverged} states not branched (the replay reached another state)" if diverged else ""))
    checkpoint.write_transitions(path, branches)
    return branches


def experience_data(offline: Sequence[Trajectory], branches: Sequence[Transition], pipeline: PipelineConfig) -> list[Transition]:
    """The real transitions that seed the replay buffer and train the experience model: the
    offline episodes' and, with ``experience.branches``, the branch transitions at their states."""
    transitions = [t for traj in offline for t in traj.transitions]
    return transitions + list(branches) if pipeline.experience.branches else transitions


def annotate_offline(
    transitions: list[Transition], *, domain: Any, pipeline: PipelineConfig, build_teacher: Callable[[], Any], source: str,
    who: str = "env",
) -> list[Transition]:
    """Reasoning traces for joint SFT: the domain's rule-based annotator or a teacher model
    (``build_teacher()`` builds ``experience.teacher``; ``source`` names the pipeline file in errors)."""
    from .experience import TeacherAnnotator, annotate_with_domain

    mode = pipeline.experience.annotator
    if mode == "none":
        return transitions
    if mode == "rule":
        return annotate_with_domain(transitions, domain, who)
    cfg = pipeline.experience
    if cfg.teacher is None:
        raise ConfigError(f"{source}: experience.annotator='teacher' needs experience.teacher")
    teacher = TeacherAnnotator(
        build_teacher(), fallback=domain if cfg.teacher_fallback == "rule" else None,
        max_new_tokens=cfg.teacher_max_new_tokens, seed=pipeline.seed,
    )
    annotated = teacher.annotate(transitions=transitions)
    counts = teacher.counters
    if counts["fallback"]:
        log.warning(
            "teacher annotation: %d of %d episodes unusable after retries, annotated by the domain's rules instead "
            "(experience.teacher_fallback: rule); a larger experience.teacher_max_new_tokens helps if answers were cut",
            counts["fallback"], counts["episodes"],
        )
    return annotated


def reload_trained(backend: Any, run_dir: Path) -> bool:
    """Swap the weights a finished joint SFT saved in ``run_dir`` into ``backend``; False when
    there are none (its ``done`` marker is written last)."""
    ckpt = run_dir / EXPERIENCE_DIR
    if not checkpoint.stage_done(ckpt):
        return False
    if not hasattr(backend, "reload"):
        raise DreamGymError(f"{ckpt}: the experience model's backend cannot load trained weights (no reload method)")
    backend.reload(path=str(ckpt))
    return True


def train_experience_model(
    model: Any, backend: Any, transitions: Sequence[Transition], *, annotate: Callable[[list[Transition]], list[Transition]],
    buffer: Any, pipeline: PipelineConfig, run_dir: Path, say: Callable[[str], None], who: str = "",
) -> dict[str, float]:
    """Joint SFT (paper Eq. 5) of ``model`` (an :class:`~dreamgym_core.experience.LMExperienceModel`
    over ``backend``) on the annotated offline ``transitions``, saved to ``run_dir/experience_model``.

    A checkpoint that an earlier attempt finished is reloaded instead (``--resume``, or a
    verl run started again). Returns the training metrics under ``experience/``.
    """
    from .experience import successes_repeated, training_examples, world_namer

    if reload_trained(backend, run_dir):
        return checkpoint.read_stage_metrics(run_dir / EXPERIENCE_DIR)
    annotated = annotate(list(transitions))
    checkpoint.write_transitions(run_dir / "offline_annotated.jsonl", annotated)
    exp, loop = pipeline.experience, pipeline.loop
    other_tasks = exp.train_demos == "other-tasks"
    # Passed only when asked for: an experience model of another plugin need not take it.
    world = {"world_of": world_namer(getattr(model, "domain", None))} if loop.demos == "same-world-first" else {}
    if hasattr(backend, "prepare"):
        # Unshortened prompts: shortening them to the budget needs the tokenizer this trains.
        examples = training_examples(
            annotated, buffer, history_window=loop.history_window, k=loop.top_k, other_tasks=other_tasks, **world
        )
        backend.prepare(corpus=["".join(seg for seg, _ in ex) for ex in examples])
    shown = successes_repeated(annotated, exp.success_repeats)
    if exp.success_repeats > 1:
        wins = sum(t.success for t in annotated)
        say(f"joint SFT shows each of the {wins} successful transitions {exp.success_repeats} times "
            f"(experience.success_repeats): {len(shown)} examples an epoch from {len(annotated)}")
    metrics = model.train(
        transitions=shown, buffer=buffer, epochs=exp.epochs, lr=exp.lr, batch_size=exp.batch_size, other_tasks=other_tasks, **world,
        on_epoch=lambda epoch, loss: say(f"experience model epoch {epoch}/{exp.epochs}: loss {loss:.3f}"),
        **step_progress(model.train, say, "experience model", exp.epochs),
    )
    who = who or "the experience model"
    metrics = checked_metrics(metrics, who, "sft()")
    ckpt = run_dir / EXPERIENCE_DIR
    backend.save(path=str(ckpt))
    checked_saved(ckpt, who, "save(path=...)")
    trained = {f"experience/{k.split('/')[-1]}": v for k, v in metrics.items()}
    checkpoint.write_stage_metrics(ckpt, trained)
    checkpoint.atomic_write(ckpt / "done", b"1\n")
    return trained


def evaluation_tasks(tasks: Sequence[Task], episodes: int, temperature: float) -> list[Task]:
    """The task of each of an evaluation's ``episodes``, cycling through ``tasks``; in greedy play
    (``temperature`` 0) each task once at most, as a repeated task replays the same episode and
    would only narrow the interval falsely. The local loop and verl's validation both play these."""
    if temperature <= 0:
        episodes = min(episodes, len(tasks))
    return [tasks[i % len(tasks)] for i in range(episodes)]


def played_splits(cfg: PipelineConfig) -> dict[str, str]:
    """The splits a run plays besides RL's (evaluation, validation, fidelity scoring), each with
    the field that plays it."""
    played = {}  # split -> the field that plays it
    if cfg.eval.episodes:
        played[cfg.eval.split] = "eval.split"
    if cfg.loop.warmstart_select_episodes:
        played.setdefault("valid", "loop.warmstart_select_episodes")
    if cfg.eval.valid_every:
        played.setdefault("valid", "eval.valid_every")
    if cfg.eval.fidelity_episodes:
        played.setdefault(cfg.eval.split, "eval.fidelity_episodes")
    return played


def check_splits(resolved: Any, domain: Any, train: Sequence[Task], played: dict[str, str], *, who: str) -> None:
    """The ``played`` splits (:func:`played_splits`) have tasks, and the held-out ones share no
    task id with the ``train`` tasks: a misspelt eval.split or an empty valid split fails here,
    naming its field, not after minutes of training, and neither a trained task nor one the
    policy was picked on (:func:`valid_pickers`) is scored as held out. Every trainer backend
    checks so before its first stage. ``who`` names the env plugin."""
    cfg, where, env = resolved.pipeline, resolved.source, resolved.pipeline.env.name
    if cfg.eval.fidelity_episodes and cfg.eval.split == "train":  # the experience model trained on these very tasks' episodes
        raise ConfigError(f"{where}: eval.fidelity_episodes scores the experience model on held-out tasks, "
                          "and eval.split is 'train'; use 'test' or 'valid'")
    # The policy picked on 'valid' scores as well there as it was picked to: evaluated there, its
    # "held-out" success would be the selection's own.
    pickers = " and ".join(valid_pickers(cfg)) if cfg.eval.episodes and cfg.eval.split != "train" else ""
    if pickers and cfg.eval.split == "valid":
        raise ConfigError(f"{where}: eval.split is 'valid', and the policy is picked on it by {pickers}; evaluate on another split ('test')")
    _check_task_ids(where, who, "train", train)
    train_ids = {task.id for task in train}
    listed: dict[str, set[str]] = {}
    for split, field in played.items():
        try:
            tasks = domain.tasks(split=split)
        except Exception as exc:  # a domain may raise for a split it does not know
            raise ConfigError(f"{where}: {field} plays the {split!r} split, and env {env!r} cannot list it: {type(exc).__name__}: {exc}") from exc
        if not tasks:
            raise ConfigError(f"{where}: {field} plays the {split!r} split, and env {env!r} has no tasks in it")
        _check_task_ids(where, who, split, tasks)
        shared = [task.id for task in tasks if task.id in train_ids] if split != "train" else []  # train: "not held out"
        if shared:
            raise ConfigError(
                f"{where}: env {env!r}: {len(shared)} of its {split!r} tasks are train tasks too (first: {shared[0]!r}); "
                "play on them would be scored as held out"
            )
        listed[split] = {task.id for task in tasks}
    # a picker plays 'valid', and eval.episodes the eval split: both were listed above
    shared = sorted(listed.get("valid", set()) & listed.get(cfg.eval.split, set())) if pickers else []
    if shared:
        raise ConfigError(
            f"{where}: env {env!r}: {len(shared)} of its {cfg.eval.split!r} tasks (eval.split) are 'valid' tasks too "
            f"(first: {shared[0]!r}), and the policy is picked on 'valid' by {pickers}; its evaluation would not be held out"
        )


def seed_task_of(task: Task, train_tasks: Sequence[Task]) -> Task | None:
    """The train task whose world ``task`` plays: itself for a seed task, else the train task with
    its payload (a curriculum's written copy on a domain without make_variation keeps its root's
    payload with a new instruction, which the real environment does not score); None when no
    train task has it.

    Of the train tasks with that payload, the copy's root comes first: the one whose id the copy
    is named after (``web/1~syn3`` of ``web/1``, see ``world_namer``). Seed tasks may share a
    payload (a domain whose tasks need no reset data keeps Task's default ``{}``), and the first
    match played a variation of ``web/1`` as ``web/0``."""
    from .experience import world_namer

    if task.origin == "seed":
        return task
    same_world = [t for t in train_tasks if t.payload == task.payload]
    root = world_namer(None)(task.id)  # as the reward-entropy curriculum names its copies
    return next((t for t in same_world if t.id == root), same_world[0] if same_world else None)


def valid_pickers(cfg: PipelineConfig) -> list[str]:
    """The fields that choose the evaluated policy by its score on the 'valid' split (as
    report's heading names them; eval.valid_every alone scores the policies and keeps the last)."""
    pickers = []
    if cfg.loop.warmstart_select_episodes and cfg.loop.warmstart_epochs:  # as Runner._check_validation
        pickers.append("loop.warmstart_select_episodes")
    if cfg.eval.keep == "best-valid":
        pickers.append("eval.keep")
    return pickers


def _check_task_ids(where: str, who: str, split: str, tasks: Sequence[Task]) -> None:
    """No task id holds BRANCH_TAG: an episode id is its task's id and more, and one holding
    the tag is read as an Early Experience branch of another episode (``branch_parent``),
    which mixes up whose history and which demos a training example is shown."""
    tagged = next((task.id for task in tasks if BRANCH_TAG in task.id), None)
    if tagged is not None:
        raise ConfigError(
            f"{where}: {who}: {split!r} task id {tagged!r} holds {BRANCH_TAG!r}, which marks "
            f"Early Experience's branch episodes, so this task's episodes would be read as branches of others; "
            f"give the env's task ids no {BRANCH_TAG!r}"
        )


def warmstart_demos(offline: Sequence[Trajectory], which: str, *, where: str = OFFLINE_FILE) -> list[Trajectory]:
    """The offline episodes the warm start imitates (``loop.warmstart_demos``): every one that
    won (``winners``: the noisy and random data policies' wins too), or the expert's only
    (``expert``, the paper's SFT on expert demonstrations). Episodes that record no data policy
    (an offline file that does not say, a run directory collected before it was recorded) cannot
    be told apart: ``expert`` is then refused, naming ``where``."""
    won = [t for t in offline if t.success]
    if which == "winners":
        return won
    if offline and not any(t.data_policy for t in offline):
        raise DataError(
            f"{where}: its episodes record no data policy, so loop.warmstart_demos='expert' cannot tell the expert's "
            "apart; collect it again (delete the file), or use loop.warmstart_demos='winners'"
        )
    return [t for t in won if t.data_policy == "expert"]
