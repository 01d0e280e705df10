"""The training loop: a short template of named stages over a pipeline's components.

Stages of a run: prepare data (collect offline real transitions, seed the buffer,
annotate), train the experience model, warm-start the policy, then iterate
(select tasks, roll out, store, update, advance curriculum, log, checkpoint), and
evaluate on held-out real tasks. Every stage's output is written to the run
directory, so ``--resume`` continues after a kill.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping, Sequence

import msgspec
import numpy as np

from . import checkpoint, report, stages
from .agent import build_agent_prompt, render_response
from .config import ROLLOUT_SEED_STRIDE, PipelineConfig, ResolvedPipeline, config_hash, s2r_synthetic_iterations
from .contracts import WrongReturn, checked_metrics, checked_saved, checked_texts
from .early import StateKey, demo_state_key, world_model_examples, write_reflections
from .errors import ConfigError, DataError, DreamGymError
from .loggers import RUN_FILES
from .plugins import Plugins
from .progress import RolloutProgress, step_progress, takes
from .provenance import VERSIONS_FILE, record_versions
from .records import HistoryStep, Observation, Task, TaskOutcome, Trajectory, Transition
from .rollout import RolloutStats, drop_unanswered, played_steps, rollout, success_by_family, sum_stats, wilson_interval
from .selection import ValidSelection
from .synthetic import storable

__all__ = ["prepare_run_dir", "run_pipeline", "Runner", "evaluate", "evaluate_run", "evaluate_checkpoints", "changed_fields"]

log = logging.getLogger(__name__)


def prepare_run_dir(resolved: ResolvedPipeline, *, resume: bool) -> Path:
    """Create the run directory and write the resolved config and its hash.

    A directory that holds another config's run is refused, with or without ``--resume``:
    continuing it would silently mix two experiments, and starting over in it would reuse its
    data and overwrite its record of the config. A directory that holds only another config's
    record (its run failed on bad input before storing anything) is taken over, so the corrected
    command can run where the first one was meant to."""
    run_dir = Path(resolved.pipeline.run_dir)
    data = resolved.to_builtins()
    digest = config_hash(data)
    stored_digest = _stored_digest(run_dir)
    another_run = stored_digest not in (None, digest, config_hash(data, with_run_dir=True))
    if another_run and _holds_run_output(run_dir):
        changed, added = _differences(run_dir, data)
        if changed or added is None:
            raise ConfigError(
                f"{resolved.source}: config differs from the one in {run_dir} (sha256 {stored_digest[:12]}..."
                + (f"; differs at {', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}" if changed else "")
                + "); "
                + ("resume with the same pipeline and --set values" if resume else "that directory holds another run")
                + ", or choose another run_dir"
            )
        if added:
            log.warning("%s: options new since this run started take their defaults: %s", run_dir, ", ".join(added))
        else:  # config.json holds this very config: the digest beside it was damaged
            log.warning("%s: does not match config.json, which holds this very config (a damaged digest)", run_dir / "config.sha256")
    has_checkpoints = (run_dir / "checkpoints").exists()
    if not resume and has_checkpoints:
        raise ConfigError(f"{run_dir} already holds a run; pass --resume or choose another run_dir")
    if resume and has_checkpoints and stored_digest is None:
        raise DataError(f"{run_dir / 'config.sha256'}: {_digest_trouble(run_dir)}, so --resume cannot check that the config is the run's")
    if resume and stored_digest is None:
        # a typo in run_dir, or the wrong working directory, would otherwise start a fresh run
        raise ConfigError(f"run_dir {run_dir}: no run to resume there (config.sha256 missing or empty); check run_dir, or drop --resume to start one")
    if resume and _finished(run_dir):
        return run_dir  # nothing to write (run_pipeline reports it)
    foreign = _foreign_entries(run_dir)
    if foreign:
        raise ConfigError(
            f"run_dir {run_dir}: holds files of no run ({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); "
            "choose an empty or new directory"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"run_dir {run_dir}: cannot create it ({exc.strerror or exc})") from exc
    checkpoint.atomic_write(run_dir / "config.json", json.dumps(data, indent=2, sort_keys=True).encode())
    checkpoint.atomic_write(run_dir / "config.sha256", (digest + "\n").encode())
    record_versions(run_dir, resolved.pipeline.plugins)
    return run_dir


_CONFIG_RECORD = ("config.json", "config.sha256", VERSIONS_FILE)
# The run's JSON summary (what `dreamgym run` prints), written last, once the run has ended
# and closed its components: a run directory that holds it holds a finished run.
SUMMARY_FILE = "summary.json"
# Kept with the warm start's stage metrics: the validation steps that picked its epoch.
_WARMSTART_VALID = "warmstart/valid_transitions"


def _foreign_entries(run_dir: Path) -> list[str]:
    """What a directory without a run's config digest holds that no run makes (sorted names): the
    directory is another's, whose files the run would write over or read as its own data. A run's
    parts copied in before it starts (offline.jsonl, policy_init/: benchmarks share a seed's warm
    start so) are its own; a directory with a digest is judged above."""
    if not run_dir.is_dir() or (run_dir / "config.sha256").exists():
        return []
    return sorted(entry.name for entry in run_dir.iterdir() if entry.name not in RUN_FILES)


def _holds_run_output(run_dir: Path) -> bool:
    """Whether a run stored anything in ``run_dir`` beyond its config record (data, logs, checkpoints)."""
    return run_dir.is_dir() and any(
        path.is_file() and path.relative_to(run_dir).as_posix() not in _CONFIG_RECORD for path in run_dir.rglob("*")
    )


def changed_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two resolved configs differ (lists compared whole)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [path for key in keys for path in changed_fields(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


# Fields every resolved pipeline config has (no default): a stored config.json without them is damaged.
_REQUIRED_FIELDS = tuple(f.encode_name for f in msgspec.structs.fields(PipelineConfig) if f.required)


def _differences(run_dir: Path, data: dict[str, Any]) -> tuple[list[str], list[str] | None]:
    """How ``data`` differs from the stored config.json: fields whose values changed, and
    fields the stored config lacks (options added by a newer version; they take their defaults
    on resume, as the rest of the newer code does). ``added`` is None when it cannot be read or
    is not a pipeline config."""
    try:
        stored = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return [], None
    if not isinstance(stored, dict) or any(field not in stored for field in _REQUIRED_FIELDS):
        # damaged ({} or [1, 2]): every field would count as new and the other run's config be taken over
        return [], None
    changed, added = [], []
    for field in changed_fields(stored, json.loads(json.dumps(data))):
        if field == "run_dir":
            continue
        (added if _absent(stored, field) else changed).append(field)
    return changed, added


def _absent(config: Any, dotted: str) -> bool:
    for key in dotted.split("."):
        if not isinstance(config, dict) or key not in config:
            return True
        config = config[key]
    return False


def _stored_digest(run_dir: Path) -> str | None:
    try:
        return (run_dir / "config.sha256").read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _digest_trouble(run_dir: Path) -> str:
    """Why ``_stored_digest`` found no digest (the file is absent, blank, or not text), for the
    error that says so."""
    path = run_dir / "config.sha256"
    if not path.is_file():
        return "missing"
    try:
        path.read_text()
    except (OSError, UnicodeDecodeError):
        return "damaged (not text)"
    return "empty"


def _read_position(path: Path) -> int | None:
    """The buffer position a marker file records; None when it is absent or unreadable."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def close_all(closers: Sequence[Callable[[], Any]], *, raise_first: bool = True) -> None:
    """Call every closer even when one raises; then raise the first error (``raise_first``),
    or drop them all (while another error is already on its way out)."""
    errors: list[BaseException] = []
    for close in closers:
        try:
            close()
        except Exception as exc:
            errors.append(exc)
    if errors and raise_first:
        raise errors[0]


def rl_seed(seed: int) -> int:
    """The seed RL starts from: apart from the pipeline seed's stream used before RL."""
    return seed * 1_000_003 + 17


class Runner:
    """Builds the components of a resolved pipeline and runs its stages."""

    def __init__(self, resolved: ResolvedPipeline, plugins: Plugins, run_dir: str | Path, *, progress: bool = True) -> None:
        self.resolved = resolved
        self.cfg: PipelineConfig = resolved.pipeline
        self.plugins = plugins
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.capped_evaluations: set[tuple[str, int]] = set()  # (split, episodes) already warned of
        self._told_as_seed = False  # said once: curriculum-written tasks are played as their seed task
        self.counters: dict[str, float] = {
            "iteration": 0,
            "real_transitions": 0,
            "synthetic_transitions": 0,
            "offline_transitions": 0,
            # real steps played on validation tasks to pick a policy (warm-start epochs,
            # eval.valid_every): real experience the method used, though not trained on
            "valid_transitions": 0,
        }
        self.history: list[dict[str, float]] = []
        self.branches: list[Transition] = []  # Early Experience's branch transitions (data.branch_actions)
        self._thoughts: dict[StateKey, str] | None = None  # their self-reflections (loop.self_reflection)
        self.selection = ValidSelection(self.run_dir / "policy_best") if self.cfg.eval.valid_every else None
        self._started = time.perf_counter()
        self.domain = self.buffer = None
        self.sinks: list[Any] = []
        try:
            self._build()
        except BaseException:
            # A component that fails to build (or a check that refuses the pipeline) leaves the
            # ones built before it to close: the domain's simulator or browser, the buffer's open
            # segment. A program that calls run_pipeline or evaluate_run again goes on without them.
            try:
                self.close()
            except Exception as exc:  # the build's failure is the one to report
                log.warning("closing the components built before the failure: %s: %s", type(exc).__name__, exc)
            raise

    # --- construction -----------------------------------------------------------

    def _say(self, message: str) -> None:
        """One progress line on stderr (stdout stays for the JSON summary)."""
        if self.progress:
            elapsed = time.perf_counter() - self._started
            print(f"[dreamgym {elapsed:7.1f}s] {message}", file=sys.stderr, flush=True)

    def _component(self, field: str) -> Any:
        return self.resolved.components.get(field)

    def who(self, field: str) -> str:
        """How errors name the component of pipeline field ``field`` (``algo``, ``policy``, ``experience_model``)."""
        kind = "model" if field in ("policy", "experience_model") else field
        return self.plugins.who(kind, getattr(self.cfg, field).name, role=field if kind == "model" else "")

    def _build(self) -> None:
        cfg, build = self.cfg, self.plugins.build
        self.hook = self.plugins.hook
        # Before any component exists, as the hookspec promises (historic: later plugins get it too).
        self.hook.dreamgym_configure.call_historic(kwargs={"config": cfg})
        seed_everything(cfg.seed)
        self.domain = build("env", cfg.env.name, self._component("env"))
        if cfg.loop.state_variation > 0 and not hasattr(self.domain, "vary_state"):
            raise ConfigError(
                f"{self.resolved.source}: loop.state_variation needs an env whose domain has vary_state; "
                f"env {cfg.env.name!r} has none"
            )
        if cfg.loop.check_transitions and not hasattr(self.domain, "implausible"):
            raise ConfigError(
                f"{self.resolved.source}: loop.check_transitions needs an env whose domain has implausible; "
                f"env {cfg.env.name!r} has none"
            )
        if cfg.loop.check_transitions and cfg.loop.implausible_answers == "correct" and not hasattr(self.domain, "correct"):
            raise ConfigError(
                f"{self.resolved.source}: loop.implausible_answers=correct needs an env whose domain has correct; "
                f"env {cfg.env.name!r} has none"
            )
        self.encoder = build("encoder", cfg.encoder.name, self._component("encoder")) if cfg.encoder else None
        self.buffer = (
            build("buffer", cfg.buffer.name, self._component("buffer"), encoder=self.encoder, path=str(self.run_dir / "buffer"))
            if cfg.buffer
            else None
        )
        self.exp_backend = (
            build("model", cfg.experience_model.name, self._component("experience_model")) if cfg.experience_model else None
        )
        self.experience_model = None
        if self.exp_backend is not None:
            from .experience import LMExperienceModel, model_config_of

            self.experience_model = LMExperienceModel(
                self.exp_backend,
                model_config_of(cfg),
                domain=self.domain,
            )
        self.policy = build("model", cfg.policy.name, self._component("policy"))
        self.algo = build("algo", cfg.algo.name, self._component("algo"), policy=self.policy, seed=cfg.seed)
        self._check_action_choice()
        self.train_tasks = self.domain.tasks(split="train")
        self._check_splits()
        self._check_worlds()
        self._check_validation()
        self._check_initial_states()
        self.curriculum = (
            build(
                "curriculum", cfg.curriculum.name, self._component("curriculum"),
                tasks=self.train_tasks, task_generator=self.experience_model, encoder=self.encoder,
                seed=cfg.seed, domain=self.domain,
            )
            if cfg.curriculum
            else None
        )
        sinks = list(cfg.loggers) or []
        self.sinks = [build("logger", ref.name, self._component(f"loggers.{i}"), run_dir=str(self.run_dir)) for i, ref in enumerate(sinks)]
        if not any(type(s).__name__ == "JsonlSink" for s in self.sinks):
            from .loggers import JsonlConfig, JsonlSink

            self.sinks.append(JsonlSink(JsonlConfig(), run_dir=str(self.run_dir)))
        self._check_sinks()

    def _check_sinks(self) -> None:
        """Two loggers writing one place wrote every row twice there (two ``jsonl`` entries): the
        run stops before it starts. A sink names its place by ``path``; both built-in ones open
        nothing until the first row, so refusing here leaves no file behind."""
        where: dict[Path, int] = {}
        for i, sink in enumerate(self.sinks):
            path = getattr(sink, "path", None)
            if path is None:
                continue
            if Path(path) in where:
                raise ConfigError(
                    f"{self.resolved.source}: loggers.{where[Path(path)]} and loggers.{i} both write {path}; "
                    "give one another filename (jsonl) or subdir (tensorboard), or drop it"
                )
            where[Path(path)] = i

    def _check_action_choice(self) -> None:
        """loop.action_choice=listed hands the algorithm each state's answers to pick from; an
        algorithm whose act() cannot take them would generate freely and the setting would do
        nothing, so the run stops before it starts."""
        if self.cfg.loop.action_choice == "listed" and not _accepts(self.algo.act, "candidates"):
            raise ConfigError(
                f"{self.resolved.source}: loop.action_choice=listed needs an algorithm whose act() takes candidates; "
                f"{self.who('algo')} does not (use action_choice: generate)"
            )

    def _check_initial_states(self) -> None:
        """The synthetic environment starts each episode from the domain's initial_observation or
        the task's payload["initial_state"]; without either, every synthetic episode would end as
        an environment error and the run would train on nothing, so it stops here instead."""
        cfg = self.cfg
        if hasattr(self.domain, "initial_observation"):
            return
        splits = (["train"] if cfg.loop.mode != "real" else []) + ([cfg.eval.split] if cfg.eval.synthetic_agreement else [])
        for split in splits:
            for task in self.train_tasks if split == "train" else self.domain.tasks(split=split):
                state = task.payload.get("initial_state")
                if not (isinstance(state, str) and state.strip()):
                    why = f"loop.mode={cfg.loop.mode!r}" if split == "train" else "eval.synthetic_agreement"
                    raise ConfigError(
                        f"{self.resolved.source}: {why} plays {split!r} tasks in the synthetic environment, which needs "
                        f"their start state: env {cfg.env.name!r} has no initial_observation(task) and task {task.id!r} "
                        "has no payload['initial_state'] string (docs/experience-format.md)"
                    )

    def _played_splits(self) -> dict[str, str]:
        return stages.played_splits(self.cfg)

    def _check_splits(self) -> None:
        """:func:`.stages.check_splits` on the splits the run plays besides RL's."""
        stages.check_splits(self.resolved, self.domain, self.train_tasks, self._played_splits(), who=self.who("env"))

    def _check_worlds(self) -> None:
        """Warn when the held-out or validation tasks repeat a world, or share one with the train
        tasks (a domain's optional ``world_key``): seeds of a small game often generate the same
        world, and then a success rate counts one world several times, or counts a trained one.
        Only the splits the run plays: with ``eval.episodes: 0`` (and no fidelity episodes) the
        eval split is never listed, which for a domain that generates its tasks is work or an error."""
        cfg = self.cfg
        if not hasattr(self.domain, "world_key"):
            return
        for split in self._played_splits():
            tasks = self.domain.tasks(split=split)
            distinct, trained = world_counts(self.domain, tasks, self.train_tasks, who=self.who("env"))
            if distinct < len(tasks):
                log.warning("env %r: the %d %r tasks are %d distinct worlds; a repeated world counts more than once", cfg.env.name, len(tasks), split, distinct)
            if trained and split != "train":
                log.warning("env %r: %d of the %r tasks' worlds are train tasks' worlds; play on them is not held out", cfg.env.name, trained, split)

    def _check_validation(self) -> None:
        """eval.valid_every's and loop.warmstart_select_episodes' needs (their split:
        :meth:`_check_splits`), checked before minutes of data and training go by."""
        cfg, where = self.cfg, self.resolved.source
        if cfg.loop.warmstart_select_episodes and cfg.loop.warmstart_epochs:
            # the selector scores each epoch from sft's on_epoch and snapshots the best one
            sft, reasons = getattr(self.policy, "sft", None), []
            if not callable(sft):
                reasons.append("it has no sft()")
            elif not takes(sft, "on_epoch"):
                reasons.append("its sft() takes no on_epoch")
            missing = [f"{name}()" for name in ("save", "reload") if not callable(getattr(self.policy, name, None))]
            if missing:
                reasons.append(f"it has no {' or '.join(missing)}")
            if reasons:
                raise ConfigError(
                    f"{where}: loop.warmstart_select_episodes scores each warm-start epoch (sft's on_epoch) and snapshots "
                    f"the best (save, reload), and {self.who('policy')} cannot: {', and '.join(reasons)}; set it to 0"
                )
        if not cfg.eval.valid_every:
            return
        if cfg.eval.keep == "best-valid" and not (hasattr(self.policy, "save") and hasattr(self.policy, "reload")):
            raise ConfigError(
                f"{where}: eval.keep='best-valid' snapshots the policy, and policy {cfg.policy.name!r} cannot save and reload"
            )

    # --- stages before the loop -----------------------------------------------------

    def _collect_offline(self) -> list[Trajectory]:
        """Real offline data on the train tasks (:func:`dreamgym_core.stages.collect_offline`)."""
        return stages.collect_offline(self.domain, self.train_tasks, self.cfg.data, seed=self.cfg.seed, run_dir=self.run_dir)

    def _seed_buffer(self, transitions: Sequence[Transition]) -> None:
        """Add the real seed transitions (:func:`dreamgym_core.stages.experience_data`) once: a run
        resumed before its first checkpoint finds them stored already (a buffer without
        deduplication would hold them twice)."""
        if self.buffer is None:
            return
        marker = self.run_dir / "buffer_seeded"
        position = getattr(self.buffer, "position", None)
        seeded_at = _read_position(marker)
        if position is not None and seeded_at is not None and position >= seeded_at:
            self._say("the replay buffer already holds the real seed transitions")
            return
        if position is not None:
            # where the buffer stands once every seed transition is stored, written first: a kill
            # after the flush but before the marker below leaves the buffer there, seeded (a
            # deduplicating buffer that stored fewer is seeded again, and drops the repeats)
            checkpoint.atomic_write(marker, f"{position + len(transitions)}\n".encode())
        self.buffer.add(transitions=list(transitions))
        self.buffer.flush()
        if position is not None:
            checkpoint.atomic_write(marker, f"{self.buffer.position}\n".encode())

    def _annotate(self, transitions: list[Transition]) -> list[Transition]:
        """Reasoning traces for joint SFT: the domain's rule-based annotator or a teacher."""
        return stages.annotate_offline(
            transitions, domain=self.domain, pipeline=self.cfg, source=str(self.resolved.source), who=self.who("env"),
            build_teacher=lambda: self.plugins.build("model", self.cfg.experience.teacher.name, self._component("experience.teacher")),
        )

    def _train_experience_model(self, transitions: list[Transition]) -> dict[str, float]:
        """Joint SFT (Eq. 5) on the annotated real seed transitions; the checkpoint is reused on resume."""
        if self.experience_model is None or self.cfg.experience.skip:
            return {}
        return stages.train_experience_model(
            self.experience_model, self.exp_backend, transitions, annotate=self._annotate,
            buffer=self.buffer, pipeline=self.cfg, run_dir=self.run_dir, say=self._say, who=self.who("experience_model"),
        )

    def fidelity_transitions(self) -> list[Transition]:
        """The held-out real transitions fidelity is scored on: ``eval.fidelity_episodes`` of
        each ``eval.fidelity_policies`` policy on the eval split, from their own seed."""
        tasks = self.domain.tasks(split=self.cfg.eval.split)
        return [
            t
            for policy in self.cfg.eval.fidelity_policies
            for traj in stages.collect(self.domain, tasks=tasks, policy=policy, episodes=self.cfg.eval.fidelity_episodes, seed=self.cfg.seed + 1)
            for t in traj.transitions
        ]

    def _fidelity(self, demos: list[Transition]) -> dict[str, float]:
        """Reward/success and next-state agreement on held-out real transitions (Theorem 1's eps),
        and the share of them the buffer's ``demos`` also hold (:func:`.fidelity.seen_in_demos`).
        The held-out transitions go to ``fidelity_heldout.jsonl`` (``dreamgym eval-model``
        scores them again), the answers that stayed unparsable to ``fidelity_unparsed.jsonl``."""
        if self.experience_model is None or not self.cfg.eval.fidelity_episodes:
            return {}
        from .experience import world_namer
        from .fidelity import FIDELITY_STREAM, fidelity_metrics, predict_all, seen_in_demos, unparsed_answers

        held_out = self.fidelity_transitions()
        self._say(f"scoring the experience model on {len(held_out)} held-out real transitions")
        checkpoint.write_transitions(self.run_dir / "fidelity_heldout.jsonl", held_out)
        loop = self.cfg.loop
        results = predict_all(
            self.experience_model.stream(FIDELITY_STREAM), held_out, self.buffer, history_window=loop.history_window, k=loop.top_k,
            world_of=world_namer(self.domain) if loop.demos == "same-world-first" else None,
        )
        checkpoint.write_records(self.run_dir / "fidelity_unparsed.jsonl", unparsed_answers(results, held_out))
        seen = seen_in_demos(held_out, demos) if self.buffer is not None else 0.0
        if seen:
            log.warning(
                "fidelity: %.0f%% of the held-out transitions (eval.split %r) are steps the buffer's real data also holds; "
                "their retrieved demos can be the answer itself (fidelity/seen_in_demos)", 100 * seen, self.cfg.eval.split,
            )
        return fidelity_metrics(results, held_out) | {"fidelity/seen_in_demos": seen}

    def _warmstart_policy(self, offline: list[Trajectory], epochs: int | None = None) -> dict[str, float]:
        """SFT on successful offline demos in the agent-prompt format (behaviour cloning),
        after implicit world modelling on the branch transitions when it is asked for, and
        with self-reflections in the demos' ``<think>`` when those are."""
        loop = self.cfg.loop
        thoughts = self._reflections(offline)
        demos = stages.warmstart_demos(offline, loop.warmstart_demos, where=str(self.run_dir / stages.OFFLINE_FILE))
        examples = demo_examples(demos, max_steps=loop.max_steps, history_window=loop.history_window, thoughts=thoughts)
        world = world_model_examples(self.branches, offline, max_steps=loop.max_steps, history_window=loop.history_window) if loop.world_model_epochs else []
        if hasattr(self.policy, "prepare"):
            corpus = [p + r for p, r in examples] + ["".join(text for text, _ in ex) for ex in world] or [build_agent_prompt(
                task=t, observation=Observation(text=""), history=[], step=0, max_steps=loop.max_steps) for t in self.train_tasks]
            self.policy.prepare(corpus=corpus)
        epochs = loop.warmstart_epochs if epochs is None else epochs
        if not epochs or not examples:
            return {}
        exp, metrics = self.cfg.experience, {}
        if thoughts is not None:
            thinking = sum(1 for _, response in examples if not response.startswith("<think></think>"))
            self._say(f"self-reflection: {thinking} of {len(examples)} demo steps think about their branches")
        if world:
            metrics = self._world_model(world)
        selector = self._epoch_selector(epochs) if loop.warmstart_select_episodes else None
        progress = step_progress(self.policy.sft, self._say, "warm start", epochs)
        if selector:
            progress["on_epoch"] = selector.after_epoch
        elif takes(self.policy.sft, "on_epoch"):
            progress["on_epoch"] = lambda epoch, loss: self._say(f"warm start epoch {epoch}/{epochs}: loss {loss:.4g}")
        trained = self.policy.sft(
            examples=[[(p, False), (r, True)] for p, r in examples],
            epochs=epochs, lr=loop.warmstart_lr, batch_size=exp.batch_size, **progress,
        )
        trained = checked_metrics(trained, self.who("policy"), "sft()")
        metrics |= {f"warmstart/{k.split('/')[-1]}": v for k, v in trained.items()}
        if selector:
            metrics.update(selector.restore_best())
        return metrics

    def _reflections(self, offline: list[Trajectory]) -> dict[StateKey, str] | None:
        """Self-reflections for the demos' states (loop.self_reflection), written once: the
        tokenizer is fitted on them before the warm start trains on them."""
        if self._thoughts is None:
            cfg = self.cfg
            self._thoughts = write_reflections(
                cfg.loop.self_reflection, self.branches, offline, seed=cfg.seed, say=self._say,
                build_teacher=lambda: self.plugins.build("model", cfg.experience.teacher.name, self._component("experience.teacher")),
            )
        return self._thoughts

    def _world_model(self, world: list) -> dict[str, float]:
        """Implicit world modelling on the branch transitions, before imitation."""
        loop = self.cfg.loop
        self._say(f"implicit world modelling: {len(world)} branch transitions, epochs: {loop.world_model_epochs}")
        trained = self.policy.sft(examples=world, epochs=loop.world_model_epochs, lr=loop.warmstart_lr, batch_size=self.cfg.experience.batch_size)
        trained = checked_metrics(trained, self.who("policy"), "sft()")
        return {f"world_model/{k.split('/')[-1]}": v for k, v in trained.items()}

    def _epoch_selector(self, epochs: int) -> EpochSelector:
        episodes = self.cfg.loop.warmstart_select_episodes
        return EpochSelector(
            # greedy, as warmstart_select_episodes says and _score_valid plays: at eval.temperature > 0
            # each epoch would be scored on another random draw
            score=lambda: self.evaluate(prefix="valid", split="valid", episodes=episodes, temperature=0.0)["valid/success_rate"],
            policy=self.policy, snapshot=self.run_dir / "policy_warmstart_best", epochs=epochs, say=self._say,
            who=self.who("policy"),
        )

    def _warm_policy(self, offline: list[Trajectory]) -> dict[str, float]:
        """The SFT warm start, or the finished one found in the run directory (an earlier
        attempt's, or one copied in so that several runs start RL from the same policy)."""
        init = self.run_dir / "policy_init"
        if checkpoint.stage_done(init) and hasattr(self.policy, "reload"):
            self._say(f"reusing the warm-started policy in {init}")
            self._reload_policy()
            metrics = checkpoint.read_stage_metrics(init)
            # the validation steps that picked its epoch: a run reusing it reported none
            self.counters["valid_transitions"] += int(metrics.get(_WARMSTART_VALID, 0))
            return metrics
        self._say("warm-starting the policy (SFT on demos)")
        before = self.counters["valid_transitions"]
        metrics = self._warmstart_policy(offline)
        if self.counters["valid_transitions"] > before:
            metrics[_WARMSTART_VALID] = float(self.counters["valid_transitions"] - before)
        self._save_policy_init(metrics)
        return metrics

    def _save_policy_init(self, metrics: dict[str, float]) -> None:
        """The warm-started policy backend (tokenizer included), which --resume rebuilds from."""
        if hasattr(self.policy, "save"):
            init = self.run_dir / "policy_init"
            self.policy.save(path=str(init))
            checked_saved(init, self.who("policy"), "save(path=...)")
            checkpoint.write_stage_metrics(init, metrics)
            checkpoint.atomic_write(init / "done", b"1\n")

    def _reload_policy(self, *, required_by: str = "") -> None:
        """The saved warm start (tokenizer included). ``required_by`` names the checkpoint that
        was trained from it: a policy that saves one must then find it, or the resumed run
        would go on from untrained weights."""
        path = self.run_dir / "policy_init"
        if not hasattr(self.policy, "reload"):
            return
        if checkpoint.stage_done(path):
            self.policy.reload(path=str(path))
        elif required_by and hasattr(self.policy, "save"):
            raise DataError(
                f"{path}: the warm-started policy is missing (no 'done' marker), and checkpoint {required_by} "
                "was trained from it; restore that directory or start the run again"
            )

    def _before_rl(self) -> dict[str, float]:
        """Data, experience model and warm start, with evaluations of the policy along the way."""
        cfg, pre = self.cfg, {}
        self._say("collecting offline real data")
        offline = self._collect_offline()
        self.counters["offline_transitions"] = sum(len(t.transitions) for t in offline)
        self._say(f"{len(offline)} episodes, {int(self.counters['offline_transitions'])} transitions")
        self.branches = stages.collect_branch_data(self.domain, offline, cfg.data, seed=cfg.seed, run_dir=self.run_dir, say=self._say)
        if self.branches:
            self.counters["branch_transitions"] = len(self.branches)
        seed_data = stages.experience_data(offline, self.branches, cfg)
        if self.buffer is not None:
            self._say(f"seeding the buffer with {len(seed_data)} real transitions")
        self._seed_buffer(seed_data)
        evaluate_before = cfg.eval.before_training and cfg.eval.episodes > 0
        if evaluate_before and hasattr(self.policy, "prepare"):
            self._warmstart_policy(offline, epochs=0)  # fits the tokenizer only
            self._say("evaluating the untrained policy on held-out real tasks")
            pre.update(self.evaluate(prefix="eval_untrained"))
        if not cfg.experience.skip and self.experience_model is not None:
            self._say("training the experience model (joint SFT)")
            pre.update(self._train_experience_model(seed_data))
            pre.update(self._fidelity(seed_data))
            self._say(f"experience model: {_brief(pre)}")
        pre.update(self._warm_policy(offline))
        if evaluate_before:
            self._say("evaluating the warm-started policy on held-out real tasks")
            pre.update(self.evaluate(prefix="eval_before", synthetic=cfg.eval.synthetic_agreement))
        self._say(f"before RL: {_brief(pre)}")
        return pre

    # --- the loop's stages ------------------------------------------------------------

    def _phase(self, iteration: int) -> str:
        mode = self.cfg.loop.mode
        if mode == "s2r":
            synthetic_iters = s2r_synthetic_iterations(self.cfg.loop.iterations, self.cfg.loop.s2r_synthetic_share)
            if iteration < synthetic_iters or not self._real_tasks_left():
                return "synthetic"
            return "real"
        return "synthetic" if mode == "dreamgym" else "real"

    def _real_tasks_left(self) -> int:
        """s2r: groups that fit in what is left of the real budget even if every episode runs
        to max_steps, so the budget is a hard cap and not overrun by a whole iteration."""
        loop = self.cfg.loop
        left = loop.real_budget - int(self.counters["real_transitions"])
        return max(0, left // (loop.group_size * loop.max_steps))

    def _select_tasks(self, phase: str) -> tuple[list[Task], int]:
        """The iteration's tasks, and how many of the curriculum's were replaced by their seed task
        for the real environment (:meth:`_as_seed_tasks`)."""
        n = self.cfg.loop.tasks_per_iteration
        if phase == "real" and self.cfg.loop.mode == "s2r":
            n = min(n, self._real_tasks_left())
        if self.curriculum is not None:
            tasks = self.curriculum.next_tasks(n=n)
            return self._as_seed_tasks(tasks) if phase == "real" else (tasks, 0)
        rng = random.Random(self.cfg.seed * 1_000_003 + int(self.counters["iteration"]))
        return [rng.choice(self.train_tasks) for _ in range(n)], 0

    def _as_seed_tasks(self, tasks: list[Task]) -> tuple[list[Task], int]:
        """The curriculum's tasks as the real environment can play them, and how many were replaced.

        On a domain without make_variation, a task the curriculum wrote (origin other than "seed")
        is its parent's world with a new instruction: the real environment scores the parent's
        goal, so real RL would reward ignoring the instruction the policy is given. Each such task
        is played as its seed task, the train task of its world (a copy keeps its root's payload);
        the update and the curriculum's observe() then see that task with its own rewards."""
        if hasattr(self.domain, "make_variation"):  # the domain built each variation's own world
            return tasks, 0
        played = [task if task.origin == "seed" else self._seed_task_of(task) for task in tasks]
        replaced = sum(task.origin != "seed" for task in tasks)
        if replaced and not self._told_as_seed:
            self._told_as_seed = True
            self._say(
                f"env {self.cfg.env.name!r} has no make_variation, so the curriculum's written tasks are played in the "
                "real environment as their seed task (counted in rollout/tasks_played_as_seed)"
            )
        return played, replaced

    def _seed_task_of(self, task: Task) -> Task:
        seed = stages.seed_task_of(task, self.train_tasks)
        if seed is None:  # a world the curriculum made itself, which the domain never built
            raise ConfigError(
                f"{self.resolved.source}: {self.who('curriculum')} gave task {task.id!r} (origin {task.origin!r}) to a real "
                f"iteration (loop.mode {self.cfg.loop.mode!r}), and env {self.cfg.env.name!r} has no make_variation to build "
                "its world nor a train task with its payload to play instead; use loop.mode 'dreamgym' or another curriculum"
            )
        return seed

    def _make_envs(self, phase: str, n: int, experience_model: Any = None) -> tuple[list[Any], Any]:
        if phase == "real":
            envs: list[Any] = []
            try:
                for _ in range(n):
                    envs.append(self.domain.make_env())
            except BaseException:  # the ones already open hold simulators or browsers
                close_all([env.close for env in envs], raise_first=False)
                raise
            return envs, None
        from .synthetic import SyntheticEnv, step_many, synthetic_config_of

        config = synthetic_config_of(self.cfg)
        model = experience_model or self.experience_model
        envs = [SyntheticEnv(model, self.buffer, self.domain, config) for _ in range(n)]
        return envs, step_many

    def act_fn(self, temperature: float, *, evaluation: bool = False, stream: str | None = None):
        """The policy as a rollout sees it: temperature 0 is greedy decoding (``evaluation``:
        tells the algorithm, whose sampled evaluations then leave RL's seed stream alone;
        ``stream``: names the evaluation's own seed stream, so one evaluation's draws do not
        depend on which other evaluations sampled before it)."""

        # Only when it is an evaluation and the algorithm takes the flag (added to the protocol
        # later): an algorithm plugin written before it keeps working, sharing one seed stream.
        flag = {"evaluation": True} if evaluation and _accepts(self.algo.act, "evaluation") else {}
        if flag and stream is not None and _accepts(self.algo.act, "stream"):
            flag["stream"] = stream

        who = self.who("algo")

        def act(prompts: list[str], listed: list[list[str]] | None = None) -> list[str]:
            # loop.action_choice=listed: the answers the policy may pick from, one list per prompt
            choice = {} if listed is None else {"candidates": [[render_response(a) for a in acts] for acts in listed]}
            out = self.algo.act(
                prompts=prompts, greedy=temperature <= 0, temperature=temperature if temperature > 0 else None, **flag, **choice,
            )
            return checked_texts(out, len(prompts), who, "act()")

        return act

    def play(
        self, tasks: list[Task], phase: str, *, temperature: float, seeds: list[int], tag: str, experience_model: Any = None,
        evaluation: bool = False, stream: str | None = None, what: str | None = None, first_episode: int = 0,
    ) -> tuple[list[Trajectory], RolloutStats]:
        """One episode per task in the real or the synthetic environment, closing its envs
        (``experience_model``: a stream of the run's model for measurements; default, RL's own;
        ``what``: the play in its progress lines, default "playing <tag>").
        Real envs open ``loop.real_envs_at_once`` at a time (0: all), batch after batch."""
        at_once = self.cfg.loop.real_envs_at_once if phase == "real" else 0
        if 0 < at_once < len(tasks):
            batches = [
                self.play(
                    tasks[i : i + at_once], phase, temperature=temperature, seeds=seeds[i : i + at_once], tag=tag,
                    experience_model=experience_model, evaluation=evaluation, stream=stream, what=what,
                    first_episode=first_episode + i,
                )
                for i in range(0, len(tasks), at_once)
            ]
            return [traj for trajs, _ in batches for traj in trajs], sum_stats([stats for _, stats in batches])
        envs, step_many = self._make_envs(phase, len(tasks), experience_model)
        try:
            played = rollout(
                tasks=tasks, envs=envs, act=self.act_fn(temperature, evaluation=evaluation, stream=stream),
                max_steps=self.cfg.loop.max_steps, history_window=self.cfg.loop.history_window,
                seeds=seeds, source="real" if phase == "real" else "synthetic", tag=tag, step_many=step_many,
                model_id=getattr(self.experience_model, "model_id", "") if phase == "synthetic" else "",
                on_step=RolloutProgress(self._say, f"{what or f'playing {tag}'} ({phase})"),
                listed_choice=self.cfg.loop.action_choice == "listed", first_episode=first_episode,
            )
        except BaseException:  # the rollout's error is the one to report; every env still closes
            close_all([env.close for env in envs], raise_first=False)
            raise
        try:
            close_all([env.close for env in envs])  # each one, even after one that raises
        except Exception as exc:
            if phase != "real":  # the core's own synthetic envs
                raise
            raise DreamGymError(
                f"{self.who('env')}: an env's close() failed after {what or f'playing {tag}'}: {type(exc).__name__}: {exc}"
            ) from exc
        return played

    def _rollout(self, tasks: list[Task], phase: str, iteration: int) -> tuple[list[list[Trajectory]], RolloutStats]:
        group = self.cfg.loop.group_size
        flat = [task for task in tasks for _ in range(group)]
        trajectories, stats = self.play(
            flat, phase, temperature=self.cfg.loop.sampling_temperature,
            seeds=[self.cfg.seed * 7919 + iteration * ROLLOUT_SEED_STRIDE + i for i in range(len(flat))], tag=f"it{iteration}",
            what=f"iteration {iteration + 1}/{self.cfg.loop.iterations} rollout",
        )
        groups = [trajectories[i * group : (i + 1) * group] for i in range(len(tasks))]
        return groups, stats

    def _store(self, groups: list[list[Trajectory]], phase: str) -> None:
        steps = [t for g in groups for traj in g for t in traj.transitions]
        played = played_steps([traj for g in groups for traj in g])
        self.counters["real_transitions" if phase == "real" else "synthetic_transitions"] += played
        if self.buffer is not None:
            self.buffer.add(transitions=storable(steps, synthetic=self.cfg.loop.store_synthetic))

    def _trainable(self, tasks: list[Task], groups: list[list[Trajectory]]) -> tuple[list[Task], list[list[Trajectory]], int]:
        """What the update and the curriculum see: every group, or (``loop.unanswered_episodes:
        drop``) the groups without the episodes their environment could not answer."""
        if self.cfg.loop.unanswered_episodes == "drop":
            return drop_unanswered(tasks, groups)
        return tasks, groups, 0

    def _update(self, groups: list[list[Trajectory]], iteration: int) -> dict[str, float]:
        what = f"iteration {iteration + 1}/{self.cfg.loop.iterations} update"
        # Said at once: an algorithm first scores every row under its old (and reference)
        # policy, minutes of silence with a pretrained policy on a CPU before its first minibatch.
        steps = sum(len(traj.transitions) for group in groups for traj in group)
        self._say(f"{what}: {sum(map(len, groups))} episodes, {steps} steps")
        metrics = self.algo.update(groups=groups, **step_progress(self.algo.update, self._say, what, None))
        return checked_metrics(metrics, self.who("algo"), "update()")

    def _advance_curriculum(self, tasks: list[Task], groups: list[list[Trajectory]]) -> dict[str, float]:
        if self.curriculum is None:
            return {}
        outcomes = [TaskOutcome(task=task, rewards=[traj.outcome_reward for traj in g]) for task, g in zip(tasks, groups)]
        self.curriculum.observe(outcomes=outcomes)
        if not hasattr(self.curriculum, "metrics"):
            return {}
        return checked_metrics(self.curriculum.metrics(), self.who("curriculum"), "metrics()")

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        self.history.append({"step": step, **metrics})
        for sink in self.sinks:
            sink.log(step=step, metrics=metrics)

    def _rewind_sinks(self) -> None:
        for sink in self.sinks:
            if hasattr(sink, "rewind"):
                sink.rewind(history=self.history)

    def _checkpoint(self, iteration: int) -> None:
        if self.buffer is not None:
            self.buffer.flush()
        checkpoint.save(self, iteration)

    def _iteration(self, iteration: int) -> dict[str, float]:
        started = time.perf_counter()
        self.counters["iteration"] = iteration
        self.hook.dreamgym_before_iteration(iteration=iteration, state=dict(self.counters))
        phase = self._phase(iteration)
        tasks, as_seed = self._select_tasks(phase)
        groups, stats = self._rollout(tasks, phase, iteration)
        self._store(groups, phase)
        tasks, groups, dropped = self._trainable(tasks, groups)
        metrics = self._update(groups, iteration)
        metrics.update(self._advance_curriculum(tasks, groups))
        metrics["rollout/dropped_unanswered_episodes"] = float(dropped)
        if self.curriculum is not None:
            metrics["rollout/tasks_played_as_seed"] = float(as_seed)
        metrics.update(stats.metrics("rollout"))
        metrics["charts/synthetic_phase"] = float(phase == "synthetic")
        metrics["perf/iteration_seconds"] = time.perf_counter() - started
        if self.experience_model is not None and hasattr(self.experience_model, "metrics"):
            metrics.update(self.experience_model.metrics())
        if self._validation_due(iteration + 1):
            metrics.update(self._score_valid(iteration + 1))
        # after the validation play, whose real steps the row counts (valid_transitions)
        metrics.update({f"counters/{k}": float(v) for k, v in self.counters.items()})
        self.counters["iteration"] = iteration + 1
        self._log(iteration, metrics)
        self._say(f"iteration {iteration + 1}/{self.cfg.loop.iterations} ({phase}): {_brief(metrics)}")
        if (iteration + 1) % self.cfg.loop.checkpoint_every == 0 or iteration + 1 == self.cfg.loop.iterations:
            self._checkpoint(iteration + 1)
        self.hook.dreamgym_after_iteration(iteration=iteration, metrics=metrics)
        return metrics

    # --- validation plays and the policy the run keeps --------------------------------

    def _validation_due(self, iteration: int) -> bool:
        every = self.cfg.eval.valid_every
        return bool(every) and (iteration % every == 0 or iteration == self.cfg.loop.iterations)

    def _score_valid(self, iteration: int) -> dict[str, float]:
        """Greedy play of the 'valid' split by the policy after ``iteration`` RL updates (0: the
        warm start), snapshotting it if it is the best so far. The global RNGs are put back, so
        RL samples what it would have sampled without this play."""
        assert self.selection is not None
        # Greedy whatever eval.temperature says: a sampled play would move the policy's seed stream.
        with checkpoint.rng_kept():
            metrics = self.evaluate(prefix="valid", split="valid", episodes=self.cfg.eval.valid_episodes, temperature=0.0)
        score = metrics["valid/success_rate"]
        snapshot = (lambda path: self.policy.save(path=str(path))) if self.cfg.eval.keep == "best-valid" else None
        better = self.selection.offer(iteration, score, save=snapshot)
        self._say(f"validation after iteration {iteration}: success {score:.3f}{' (best so far)' if better else ''}")
        return {**metrics, **self.selection.metrics()}

    def keep_selected_policy(self) -> dict[str, float]:
        """Under ``eval.keep: best-valid``, load the best validation policy for the final
        evaluation; returns the iteration whose policy that evaluation plays."""
        if self.cfg.eval.keep != "best-valid" or self.selection is None:
            return {"eval/policy_iteration": float(self.counters["iteration"])}
        path = self.selection.best_path()
        self.policy.reload(path=str(path))
        self._say(f"keeping the policy of iteration {self.selection.best} (best validation success)")
        return {"eval/policy_iteration": float(self.selection.best)}

    # --- the whole run ------------------------------------------------------------------

    def run(self, *, resume: bool) -> dict[str, Any]:
        cfg = self.cfg
        self.hook.dreamgym_run_started(run_dir=str(self.run_dir), config=cfg)
        summary: dict[str, Any] = {"run_dir": str(self.run_dir)}
        final: dict[str, float] = {}
        try:
            start = checkpoint.load_latest(self) if resume else None
            if resume:
                self._rewind_sinks()
            if start is None:  # no checkpoint yet, not even it-00000 (which follows the stages before RL)
                start = 0
                pre = self._before_rl()
                if self.selection is not None:
                    pre.update(self._score_valid(0))
                self._log(-1, pre)
                # RL starts from one random state whatever came before it (an experience model and
                # warm start trained here or reloaded from an earlier run), so runs that share
                # those parts also share RL's sampling draws. The checkpoint keeps it for --resume.
                seed_everything(rl_seed(cfg.seed))
                self._checkpoint(0)
            for iteration in range(start, cfg.loop.iterations):
                self._iteration(iteration)
            final.update(self.keep_selected_policy())
            if cfg.eval.episodes:
                self._say("evaluating the trained policy on held-out real tasks")
                final.update(self.evaluate(prefix="eval", synthetic=cfg.eval.synthetic_agreement))
                self._say(f"after RL: {_brief(final)}")
            final.update({f"counters/{k}": float(v) for k, v in self.counters.items()})
            self._log(cfg.loop.iterations, final)
            summary.update(final)
            path = report.write(self.run_dir, cfg, self.history, counters=self.counters, selection=self.selection)
            self._say(f"report: {path}")
        finally:
            try:  # a hook that raises must not leave the buffer unsealed or the simulator running
                self.hook.dreamgym_run_finished(run_dir=str(self.run_dir), metrics=final)
            finally:
                self.close()
        return summary

    def close(self) -> None:
        """Close the loggers, the buffer and the domain (whose probe env holds a simulator or a browser):
        those built so far, when construction failed. Each is closed even when an earlier one
        raises; the first error is raised after."""
        closers = [sink.close for sink in self.sinks]
        if self.buffer is not None:
            closers.append(self.buffer.close)
        close_domain = getattr(self.domain, "close", None)
        if close_domain is not None:
            closers.append(close_domain)
        close_all(closers)

    def evaluate(
        self, *, prefix: str = "eval", split: str | None = None, episodes: int | None = None, synthetic: bool = False,
        trajectories_out: Path | None = None, temperature: float | None = None,
    ) -> dict[str, float]:
        """Success rate on held-out real tasks, with the training rollout code (``synthetic``:
        and its agreement with the same tasks played in the synthetic environment;
        ``temperature``: the policy's, default ``eval.temperature``)."""
        return evaluate(
            self, prefix=prefix, split=split or self.cfg.eval.split, episodes=self.cfg.eval.episodes if episodes is None else episodes,
            synthetic=synthetic and self.experience_model is not None, trajectories_out=trajectories_out,
            temperature=self.cfg.eval.temperature if temperature is None else temperature,
        )


_BRIEF_KEYS = (
    "rollout/success_rate", "losses/policy_loss", "experience/parse_failure_rate", "eval/success_rate",
    "eval_untrained/success_rate", "eval_before/success_rate", "experience/sft_loss", "warmstart/sft_loss", "curriculum/synthetic_tasks",
    "fidelity/success_agreement", "fidelity/next_state_token_f1", "valid/success_rate",
)


def _brief(metrics: dict[str, float]) -> str:
    shown = [f"{k}={metrics[k]:.3g}" for k in _BRIEF_KEYS if isinstance(metrics.get(k), (int, float))]
    return ", ".join(shown) or "-"


class EpochSelector:
    """Keeps the SFT epoch that scores best on validation tasks (early stopping without the stop).

    The warm start of a small policy swings between epochs on held-out games while its loss is
    flat (benchmarks/warmstart), so the last epoch is a lottery ticket. The best validation
    epoch is a measured choice, but with few validation games a lead of one or two games is
    noise too (it lost to the last epoch on two of three coin seeds there). Ties keep the
    earliest such epoch: it has fitted the demos least."""

    def __init__(self, *, score: Any, policy: Any, snapshot: Path, epochs: int, say: Any, who: str = "the policy") -> None:
        self.score, self.policy, self.snapshot, self.epochs, self.say = score, policy, snapshot, epochs, say
        self.who = who  # how the warning of an sft() that scored no epoch names the policy
        self.best_epoch, self.best_score, self.scores = 0, -math.inf, []

    def after_epoch(self, epoch: int, loss: float) -> None:
        value = float(self.score())
        self.scores.append(value)
        better = value > self.best_score
        if better:
            self.best_epoch, self.best_score = epoch, value
            if epoch < self.epochs:  # the last epoch's weights are in the model anyway
                self.policy.save(path=str(self.snapshot))
        self.say(f"warm start epoch {epoch}/{self.epochs}: loss {loss:.4g}, valid success {value:.3f}{' (best)' if better else ''}")

    def restore_best(self) -> dict[str, float]:
        """Called after at least one epoch (the warm start skips SFT when it has none). An sft()
        that takes on_epoch (through ``**kwargs``, say) but never calls it scored no epoch and
        wrote no snapshot: the last epoch's weights stay, with a warning."""
        if not self.scores:
            log.warning("%s: sft() never called on_epoch, so no warm-start epoch was scored on the valid split "
                        "(loop.warmstart_select_episodes); keeping the last epoch's weights", self.who)
        elif self.best_epoch < self.epochs:
            self.policy.reload(path=str(self.snapshot))
        if self.snapshot.exists():
            shutil.rmtree(self.snapshot)
        if not self.scores:
            return {}
        return {
            "warmstart/best_epoch": float(self.best_epoch),
            "warmstart/valid_success": self.best_score,
            "warmstart/valid_success_last": self.scores[-1],
        }


def demo_conversations(
    trajectories: Sequence[Trajectory], *, max_steps: int, history_window: int, thoughts: Mapping[StateKey, str] | None = None,
) -> list[list[tuple[str, str]]]:
    """The (agent prompt, expert response) turns of each successful offline episode; a
    response's ``<think>`` holds ``thoughts[demo_state_key(trajectory, step)]`` where given (self-reflection).

    Only their first ``max_steps`` steps: the policy never meets a later one (the offline
    env's own cap may be higher), and its prompt would read "Step 7 of at most 6"."""
    thoughts = thoughts or {}
    conversations = []
    for traj in trajectories:
        if not traj.success:
            continue
        history: list[HistoryStep] = []
        turns = []
        for step, t in enumerate(traj.transitions[:max_steps]):
            obs = Observation(text=t.state, admissible_actions=list(t.admissible_actions))
            prompt = build_agent_prompt(task=traj.task, observation=obs, history=history, step=step, max_steps=max_steps, history_window=history_window)
            turns.append((prompt, render_response(t.action, thought=thoughts.get(demo_state_key(traj, step), ""))))
            history.append(HistoryStep(state=t.state, action=t.action))
        conversations.append(turns)
    return conversations


def demo_examples(
    trajectories: Sequence[Trajectory], *, max_steps: int, history_window: int, thoughts: Mapping[StateKey, str] | None = None,
) -> list[tuple[str, str]]:
    """(agent prompt, expert response) pairs from successful offline episodes, one per step
    (the local policy reads each step's prompt on its own; see :func:`demo_conversations`)."""
    conversations = demo_conversations(trajectories, max_steps=max_steps, history_window=history_window, thoughts=thoughts)
    return [pair for turns in conversations for pair in turns]


def evaluate(
    runner: Runner, *, prefix: str, split: str, episodes: int, temperature: float, synthetic: bool = False,
    trajectories_out: Path | None = None,
) -> dict[str, float]:
    """Metrics of one pass over ``split`` at ``temperature``; ``trajectories_out`` also keeps
    its real episodes (prompts, raw outputs, transitions) as JSONL, to read what the policy did."""
    if episodes < 1:
        raise ConfigError(f"evaluate: episodes={episodes}; play at least one episode")
    tasks = runner.domain.tasks(split=split)
    if not tasks:
        raise DreamGymError(f"no tasks in split {split!r} of env {runner.cfg.env.name!r}")
    chosen = stages.evaluation_tasks(tasks, episodes, temperature)
    if len(chosen) < episodes and (split, episodes) not in runner.capped_evaluations:  # once a run, not each warm-start epoch
        runner.capped_evaluations.add((split, episodes))
        log.warning("eval: %d episodes requested on %d %s tasks with greedy play; using %d", episodes, len(tasks), split, len(chosen))
    # The same rollout seeds in both environments, so a task's two episodes are comparable.
    def play(phase: str) -> tuple[list[Trajectory], RolloutStats]:
        seeds = [10_000 + i for i in range(len(chosen))]
        # The replay draws from its own stream, so evaluating leaves RL's synthetic draws alone;
        # the policy too (eval.temperature > 0), so the real play samples alike with or without it.
        model = runner.experience_model.stream(f"replay/{prefix}") if phase == "synthetic" else None
        return runner.play(
            chosen, phase, temperature=temperature, seeds=seeds, tag=prefix, experience_model=model, evaluation=True,
            stream=f"{prefix}/{phase}",
        )

    extra: dict[str, float] = {}
    trajectories, stats = play("real")
    if stats.env_errors and not any(t.transitions for t in trajectories):
        # no episode could start: a broken split or engine, not a policy that scores 0
        raise DreamGymError(
            f"env {runner.cfg.env.name!r}: none of the {len(trajectories)} {split!r} episodes of {prefix!r} could start "
            "(environment errors at reset; the warnings above name them); there is no success rate to report"
        )
    if prefix == "valid":  # a play that picks a policy (not an evaluation of the valid split)
        runner.counters["valid_transitions"] += played_steps(trajectories)
    if hasattr(runner.domain, "world_key"):
        distinct, trained = world_counts(runner.domain, chosen, runner.train_tasks, who=runner.who("env"))
        extra[f"{prefix}/worlds"], extra[f"{prefix}/train_worlds"] = float(distinct), float(trained)
    if trajectories_out is not None:
        checkpoint.write_trajectories(trajectories_out, trajectories)
    low, high = wilson_interval(stats.successes, stats.episodes)
    by_family: dict[str, float] = {}
    families = success_by_family(trajectories)
    if len(families) > 1:  # several kinds of task (a multi-task domain): success on each
        for family, (wins, n) in families.items():
            by_family.update({f"{prefix}/success_rate/{family}": wins / n, f"{prefix}/episodes/{family}": float(n)})
    if synthetic:
        imagined, imagined_stats = play("synthetic")
        # An episode that could not start in either environment has no outcome to agree on.
        pairs = [(r, s) for r, s in zip(trajectories, imagined) if r.transitions and s.transitions]
        extra[f"{prefix}/synthetic_success_rate"] = imagined_stats.successes / max(imagined_stats.episodes, 1)
        if pairs:
            extra[f"{prefix}/synthetic_agreement"] = sum(r.success == s.success for r, s in pairs) / len(pairs)
    return {
        **extra,
        **by_family,
        f"{prefix}/success_rate": stats.successes / max(stats.episodes, 1),
        f"{prefix}/success_ci_low": low,
        f"{prefix}/success_ci_high": high,
        f"{prefix}/episodes": float(stats.episodes),
        f"{prefix}/episode_length": stats.steps / max(stats.episodes, 1),
        f"{prefix}/invalid_actions": float(stats.invalid_actions),
        f"{prefix}/unparsed_actions": float(stats.unparsed_actions),
        # episodes the environment ended by failing (counted above as failures): an
        # infrastructure problem the success rate alone would pass off as the policy's
        f"{prefix}/env_errors": float(stats.env_errors),
    }


def world_counts(domain: Any, tasks: Sequence[Task], train_tasks: Sequence[Task], *, who: str = "env") -> tuple[int, int]:
    """(distinct worlds among ``tasks``, how many of those are worlds of ``train_tasks``), by the
    domain's ``world_key``, which must give a str (``who`` names the domain if not)."""

    def keys(of: Sequence[Task]) -> set[str]:
        found = [domain.world_key(t) for t in of]
        wrong = next((k for k in found if not isinstance(k, str)), None)
        if wrong is not None:
            raise WrongReturn(f"{who}: world_key(task) returned {type(wrong).__name__} {wrong!r:.60}, expected a str")
        return set(found)

    worlds = keys(tasks)
    return len(worlds), len(worlds & keys(train_tasks))


# Top-level sections ``dreamgym eval`` may set otherwise than the run did: they change how and
# where the run's policy is played (other evaluation settings, another variant of the
# environment for a transfer test), not which policy the checkpoints hold.
_EVAL_MAY_DIFFER = ("eval", "env")


def _check_evaluated_config(resolved: ResolvedPipeline, run_dir: Path) -> None:
    """Refuse to evaluate a run with components built from another config: its checkpoint
    would be loaded into them and the result reported as the run's."""
    data = resolved.to_builtins()
    stored = _stored_digest(run_dir)
    if stored in (config_hash(data), config_hash(data, with_run_dir=True)):
        return
    if stored is None:
        raise DataError(f"{run_dir / 'config.sha256'}: {_digest_trouble(run_dir)}, so eval cannot check that the config is the run's")
    changed, added = _differences(run_dir, data)
    if added is None:
        raise DataError(f"{run_dir / 'config.json'}: unreadable, so eval cannot check that the config is the run's")
    refused = [field for field in changed if field.split(".")[0] not in _EVAL_MAY_DIFFER]
    if refused:
        raise ConfigError(
            f"{resolved.source}: config differs from the run's in {run_dir} at {', '.join(refused[:5])}"
            f"{' ...' if len(refused) > 5 else ''}; evaluate with the run's pipeline and --set values "
            f"(only {', '.join(f'{s}.*' for s in _EVAL_MAY_DIFFER)} may differ)"
        )
    if changed:
        log.warning("%s: evaluating with settings other than the run's: %s", run_dir, ", ".join(changed))


def _accepts(function: Any, keyword: str) -> bool:
    """Whether ``function`` takes ``keyword`` (by name or through ``**kwargs``)."""
    parameters = inspect.signature(function).parameters.values()
    return any(p.name == keyword or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def evaluate_run(
    resolved: ResolvedPipeline, plugins: Plugins, *, split: str | None = None, episodes: int | None = None,
    trajectories: str | Path | None = None, progress: bool = True, at_checkpoint: int | None = None,
) -> dict[str, Any]:
    """``dreamgym eval``: the run's last checkpoint (under ``eval.keep: best-valid``, the policy
    the run kept), the training rollout code, real tasks (``split``, ``episodes``: None takes
    the pipeline's ``eval.split``, ``eval.episodes``; ``trajectories``: where to write the
    episodes played). Progress lines go to stderr as in a run (none with ``progress=False``):
    a pretrained policy's evaluation on a CPU takes minutes.

    ``at_checkpoint``: the policy of that iteration's checkpoint instead, as it was saved
    (a learning curve on held-out tasks after the run, which evaluates only its final policy)."""
    run_dir = Path(resolved.pipeline.run_dir)
    _check_episodes(episodes)
    root = run_dir / "checkpoints"
    if at_checkpoint is not None:
        _check_checkpoint_exists(root, at_checkpoint)
    elif not (root / "latest").exists() and not checkpoint.checkpoint_iterations(root):
        # without the pointer (a run stopped before writing its first), the newest checkpoint that
        # reads is evaluated, as --resume would continue from it
        raise DreamGymError(f"{run_dir}: no checkpoint to evaluate; run the pipeline first")
    trajectories = Path(trajectories) if trajectories is not None else None  # a str from a script
    if trajectories is not None and not trajectories.parent.is_dir():
        # Checked before playing, so a typo costs nothing.
        raise ConfigError(f"--trajectories {trajectories}: directory {trajectories.parent} does not exist")
    with torch_threads_kept(), _evaluation_runner(resolved, plugins, run_dir, progress) as runner:
        if at_checkpoint is None:
            iteration = checkpoint.load_latest(runner, roll_back_buffer=False)
            kept = runner.keep_selected_policy()  # the policy the run's own final evaluation played
        else:
            iteration = checkpoint.load(runner, checkpoint.checkpoint_name(at_checkpoint), roll_back_buffer=False)
            kept = {"eval/policy_iteration": float(iteration)}
        runner._say(f"evaluating the policy of checkpoint {iteration} on real {split or resolved.pipeline.eval.split} tasks")
        metrics = runner.evaluate(prefix="eval", split=split, episodes=episodes, trajectories_out=trajectories)
    return {"run_dir": str(run_dir), "checkpoint_iteration": iteration, **kept, **metrics}


def evaluate_checkpoints(
    resolved: ResolvedPipeline, plugins: Plugins, iterations: Sequence[int] | None = None, *, split: str | None = None,
    episodes: int | None = None, progress: bool = True,
) -> list[dict[str, Any]]:
    """``dreamgym curve``: held-out success of the policy of each checkpoint in ``iterations``
    (None: every checkpoint the run holds, 0 being the warm start), in that order, as
    :func:`evaluate_run` with ``at_checkpoint`` gives each, but with one environment and one
    set of models for them all. A run evaluates only its final policy; this is its learning
    curve on held-out tasks. Every checkpoint is looked for, and its state read, before any is played."""
    run_dir = Path(resolved.pipeline.run_dir)
    root = run_dir / "checkpoints"
    _check_episodes(episodes)
    chosen = list(iterations) if iterations is not None else checkpoint.checkpoint_iterations(root)
    if not chosen:
        raise DreamGymError(f"{run_dir}: no checkpoint to evaluate; run the pipeline first")
    for iteration in chosen:
        _check_checkpoint_exists(root, iteration)
    rows = []
    with torch_threads_kept(), _evaluation_runner(resolved, plugins, run_dir, progress) as runner:
        for at in chosen:
            iteration = checkpoint.load(runner, checkpoint.checkpoint_name(at), roll_back_buffer=False)
            runner._say(f"curve: the policy of checkpoint {iteration} on real {split or resolved.pipeline.eval.split} tasks")
            rows.append({"checkpoint_iteration": iteration, **runner.evaluate(prefix="eval", split=split, episodes=episodes)})
    return rows


def _check_episodes(episodes: int | None) -> None:
    if episodes is not None and episodes < 1:  # checked before a component is built
        raise ConfigError(f"episodes={episodes}: evaluate at least one episode (None: eval.episodes)")


@contextmanager
def _evaluation_runner(resolved: ResolvedPipeline, plugins: Plugins, run_dir: Path, progress: bool) -> Iterator[Runner]:
    """A runner of the run's own pipeline, to play its checkpoints; closed after, since the
    domain's simulator or browser would outlive the call."""
    _check_evaluated_config(resolved, run_dir)
    runner = Runner(resolved, plugins, run_dir, progress=progress)
    try:
        yield runner
    finally:
        runner.close()


def _check_checkpoint_exists(root: Path, iteration: int) -> None:
    """One line naming the checkpoints there are, or the state file that does not read, before
    anything is built: a curve meeting a damaged checkpoint after playing the earlier ones
    (minutes each) lost their results."""
    if iteration < 0:
        raise ConfigError(f"checkpoint {iteration}: iterations are numbered from 0")
    ckpt = root / checkpoint.checkpoint_name(iteration)
    if not ckpt.is_dir():
        held = ", ".join(str(n) for n in checkpoint.checkpoint_iterations(root)) or "none"
        raise DataError(f"{root}: no checkpoint of iteration {iteration} (it holds iterations {held}; loop.keep_checkpoints prunes old ones)")
    checkpoint.read_state(ckpt)  # as checkpoint.load reads it


@contextmanager
def _one_process(run_dir: Path) -> Iterator[Callable[[], None]]:
    """Hold ``run_dir`` for this process (an advisory lock on the directory itself, which the
    system drops when the process ends, even by SIGKILL): two runs in one directory would
    write the same buffer segments, checkpoints and metrics over each other. Locks it now if it
    exists; call the yielded function to lock a directory created since."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): unguarded
        yield lambda: None
        return
    held: list[int] = []

    def lock() -> None:
        if held or not run_dir.is_dir():
            return
        fd = os.open(run_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"run_dir {run_dir}: another dreamgym process is running there; wait for it to end (or stop it), or choose another run_dir"
            ) from None
        held.append(fd)

    lock()
    try:
        yield lock
    finally:
        for fd in held:
            os.close(fd)


def _finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run: its summary, and the checkpoints it came from
    (without them, a resume plays the run again from the stages it stored)."""
    return (run_dir / SUMMARY_FILE).exists() and (run_dir / "checkpoints").is_dir()


def _finished_summary(run_dir: Path) -> dict[str, Any]:
    """The summary a finished run stored, for a ``--resume`` of it (which runs nothing)."""
    path = run_dir / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable run summary ({exc}); delete it to play the run's final evaluation again") from exc
    if not isinstance(summary, dict):
        raise DataError(f"{path}: not a run summary (a JSON object); delete it to play the run's final evaluation again")
    print(
        f"[dreamgym] {run_dir}: the run is already complete ({SUMMARY_FILE}); nothing to resume. "
        "'dreamgym eval' evaluates its policy again", file=sys.stderr, flush=True,
    )
    return summary | {"run_dir": str(run_dir)}  # where it is now (a run directory may be moved)


@contextmanager
def torch_threads_kept() -> Iterator[None]:
    """torch's thread count as it was before: a backend's ``cpu_threads`` sets it for the whole
    process, and a later run in the same process with ``cpu_threads: null`` would otherwise
    get this run's count instead of torch's own."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_pipeline(
    resolved: ResolvedPipeline, plugins: Plugins, *, resume: bool = False, progress: bool = True,
) -> dict[str, Any]:
    """``dreamgym run``: run ``resolved`` (from :func:`dreamgym_core.config.load_resolved`) end to
    end in its ``run_dir``, or go on from that directory's newest checkpoint (``resume``). A
    finished run (``summary.json``) is not run again: its stored summary is returned, and nothing
    in its directory is written.

    Returns the summary the CLI prints: ``run_dir`` and the final evaluation's metrics and
    counters. Progress lines (``[dreamgym   12.3s] ...``) go to stderr; ``progress=False``
    (``dreamgym run --quiet``) leaves them out, for this run only; warnings and the line saying
    that a finished run is not run again still show.
    Raises :class:`~dreamgym_core.errors.ConfigError` for a run directory that holds another
    config's run or that another process is running in.
    """
    with _one_process(Path(resolved.pipeline.run_dir)) as lock, torch_threads_kept():
        run_dir = prepare_run_dir(resolved, resume=resume)
        lock()  # a run directory prepare_run_dir created
        if resume and _finished(run_dir):
            return _finished_summary(run_dir)
        algo_spec = plugins.component("algo", resolved.pipeline.algo.name)
        if getattr(algo_spec.factory, "runs_own_loop", False):
            # A backend with its own trainer (verl) runs the same pipeline itself.
            trainer = algo_spec.factory(resolved.components["algo"], policy=None, seed=resolved.pipeline.seed)
            option = {"progress": progress} if _accepts(trainer.run, "progress") else {}  # a trainer written before it: as it was
            return trainer.run(resolved=resolved, plugins=plugins, run_dir=str(run_dir), **option)
        runner = Runner(resolved, plugins, run_dir, progress=progress)
        summary = runner.run(resume=resume)
        checkpoint.atomic_write(run_dir / SUMMARY_FILE, (json.dumps(summary, indent=2) + "\n").encode())
        return summary
