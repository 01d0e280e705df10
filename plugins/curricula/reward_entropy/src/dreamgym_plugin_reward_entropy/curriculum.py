"""The reward-entropy curriculum (DreamGym section 4.3).

``observe`` values every observed task by the reward variance of its group (or of
its cluster, for PPO), ranks the tasks by value, and asks ``M_task`` for variations
of the top ones: ``vary_tasks`` writes ``n_candidates`` candidates, ``select_task``
(the selection prompt) picks one, and the domain builds the Task (origin
"synthetic", ``parent_id`` set). ``next_tasks(n)`` draws at most floor(lambda * n)
synthetic tasks and the rest from the seed tasks, both weighted by value with a
uniform exploration share (``seed_sampling: uniform``: the seed tasks uniformly).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import msgspec
import numpy as np

from dreamgym_core.errors import ConfigError, ConformanceError, DataError
from dreamgym_core.experience import world_namer
from dreamgym_core.records import VARIATION_SUFFIX, Task, TaskOutcome

from .config import RewardEntropyConfig
from .maths import PROPOSAL_STREAM, SAMPLING_STREAM, kmeans, nearest, sampling_weights, stream_key, synthetic_quota, task_value

__all__ = ["RewardEntropyCurriculum"]

log = logging.getLogger(__name__)


class RewardEntropyCurriculum:
    """Reward-variance task values, M_task variations, a lambda-capped synthetic share."""

    def __init__(
        self, config: RewardEntropyConfig, *, tasks: Sequence[Task], task_generator: Any = None,
        encoder: Any = None, seed: int = 0, domain: Any = None,
    ) -> None:
        if not tasks:
            raise ConfigError("curriculum 'reward-entropy' (plugin reward-entropy): no seed tasks to draw from")
        missing = [m for m in ("propose_variations", "make_variation") if not callable(getattr(domain, m, None))]
        if config.generator == "domain" and missing:
            raise ConfigError(
                "curriculum 'reward-entropy': generator='domain' needs a domain with propose_variations and "
                f"make_variation; {getattr(domain, 'name', domain)!r} has no {' or '.join(missing)} (use generator: model)"
            )
        # A run always passes its env's domain; `dreamgym check` passes none, and no task generator.
        if config.generator == "model" and task_generator is None and domain is not None:
            raise ConfigError(
                "curriculum 'reward-entropy': generator='model' needs an experience_model (M_task writes the variations); "
                "the pipeline has none (set experience_model, or use generator: domain)"
            )
        if config.grouping == "cluster" and encoder is None:
            raise ConfigError("curriculum 'reward-entropy': grouping='cluster' needs an encoder; set `encoder` or grouping: task")
        self.config, self.seed_tasks, self.seed = config, list(tasks), seed
        self.generator, self.encoder, self.domain = task_generator, encoder, domain
        self.synthetic: list[Task] = []
        self.values: dict[str, float] = {}
        self.draws = 0
        self.stats = dict(_FRESH_STATS)
        self.centroids: np.ndarray | None = None
        self.cluster_of: dict[str, int] = {}
        if config.grouping == "cluster":
            labels, self.centroids = kmeans(self._embed(self.seed_tasks), config.n_clusters, seed=seed)
            self.cluster_of = {t.id: int(c) for t, c in zip(self.seed_tasks, labels)}

    # --- choosing tasks -----------------------------------------------------------------

    def next_tasks(self, *, n: int) -> list[Task]:
        """``n`` tasks: at most floor(lambda * n) synthetic, the rest seed tasks."""
        rng = np.random.default_rng(stream_key(SAMPLING_STREAM, self.draws, self.seed))
        self.draws += 1
        quota = min(synthetic_quota(self.config.synthetic_share, n), len(self.synthetic))
        synthetic = self._draw(self.synthetic, quota, rng)  # first: the order of the rng's draws is part of a run
        chosen = synthetic + self._draw(self.seed_tasks, n - quota, rng, by_value=self.config.seed_sampling == "value")
        self.stats["synthetic_share"] = quota / n if n else 0.0
        return [chosen[i] for i in rng.permutation(len(chosen))]

    def _value(self, task: Task) -> float:
        return self.values.get(task.id, self.config.unseen_value)

    def _draw(self, pool: list[Task], k: int, rng: np.random.Generator, *, by_value: bool = True) -> list[Task]:
        if k <= 0:
            return []
        # A batch larger than the pool takes every task as often, then draws the rest: drawn with
        # replacement, some tasks came 3-4 times while others were left out of the batch. A batch
        # within the pool draws as before (the same rng calls: committed runs replay).
        whole, rest = divmod(k, len(pool)) if k > len(pool) else (0, k)
        index = list(range(len(pool))) * whole
        if rest:
            p = sampling_weights([self._value(t) for t in pool], self.config.exploration) if by_value else None
            index += rng.choice(len(pool), size=rest, replace=False, p=p).tolist()
        return [pool[i] for i in index]

    # --- learning from outcomes ------------------------------------------------------------

    def observe(self, *, outcomes: Sequence[TaskOutcome]) -> None:
        """Value the observed tasks, then vary the top-value ones."""
        observed = {o.task.id: o.task for o in outcomes}
        if self.config.grouping == "task":
            # A task drawn twice in one batch (more draws than tasks) is valued on all its
            # rewards, not on whichever group came last.
            pooled: dict[str, list[float]] = {}
            for o in outcomes:
                pooled.setdefault(o.task.id, []).extend(o.rewards)
            fresh = {task_id: task_value(rewards) for task_id, rewards in pooled.items()}
        else:
            fresh = self._cluster_values(outcomes)
        self.values.update(fresh)
        values = [fresh[i] for i in observed]
        self.stats["mean_value"] = float(np.mean(values)) if values else 0.0
        self.stats["max_value"] = float(np.max(values)) if values else 0.0
        # Also at lambda 0, whose variations are never drawn: in the local loop M_task is the
        # experience model, whose call count seeds every synthetic step, so skipping these calls
        # would change a lambda-0 run's rollouts and value-weighted draws (README: lambda).
        for parent in self.rank(observed.values())[: self.config.tasks_to_vary]:
            self._vary(parent)

    def _cluster_values(self, outcomes: Sequence[TaskOutcome]) -> dict[str, float]:
        """Every member of an observed cluster gets the variance of the cluster's pooled rewards."""
        pooled: dict[int, list[float]] = {}
        for o in outcomes:
            pooled.setdefault(self._cluster(o.task), []).extend(o.rewards)
        value = {c: task_value(r) for c, r in pooled.items()}
        out = {tid: value[c] for tid, c in self.cluster_of.items() if c in value}
        out.update({o.task.id: value[self._cluster(o.task)] for o in outcomes})
        return out

    def _cluster(self, task: Task) -> int:
        if task.id not in self.cluster_of:
            self.cluster_of[task.id] = int(nearest(self._embed([task]), self.centroids)[0])
        return self.cluster_of[task.id]

    def rank(self, tasks) -> list[Task]:
        """Tasks with value above the threshold, highest value first (ties by id);
        one per cluster when grouping by cluster."""
        ranked = sorted((t for t in tasks if self._value(t) > self.config.value_threshold), key=lambda t: (-self._value(t), t.id))
        if self.config.grouping == "cluster":
            first: dict[int, Task] = {}
            for task in ranked:
                first.setdefault(self._cluster(task), task)
            ranked = list(first.values())
        return ranked

    # --- task generation (M_task) -------------------------------------------------------------

    def _vary(self, parent: Task) -> None:
        if self.config.generator == "model" and self.generator is None:
            return
        known = {t.instruction for t in self.seed_tasks + self.synthetic}
        candidates = list(dict.fromkeys(c.strip() for c in self._candidates(parent)))
        candidates = [c for c in candidates if c and c not in known]
        choice = self._choose(parent, candidates) if candidates else None
        task = self._build(parent, candidates[choice]) if choice is not None and 0 <= choice < len(candidates) else None
        if task is None:
            self.stats["rejected"] += 1
            log.info("reward-entropy: no acceptable variation of task %s", parent.id)
            return
        self._add(task)

    def _candidates(self, parent: Task) -> list[str]:
        if self.config.generator == "domain":
            tried = self.stats["generated"] + self.stats["rejected"]
            rng = np.random.default_rng(stream_key(PROPOSAL_STREAM, self.draws, tried, self.seed))
            texts = self.domain.propose_variations(parent, n=self.config.n_candidates, rng=rng)
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise ConformanceError(
                    f"env {getattr(self.domain, 'name', '?')!r}: propose_variations() returned {texts!r:.80}, expected a list of str"
                )
            return texts
        return self.generator.vary_tasks(task=parent, n=self.config.n_candidates)

    def _choose(self, parent: Task, candidates: list[str]) -> int | None:
        """M_task's selection prompt; the domain's proposals are already in random order."""
        if self.config.generator == "domain":
            return 0
        return self.generator.select_task(task=parent, candidates=candidates)

    def _build(self, parent: Task, text: str) -> Task | None:
        """The domain builds the Task; without a domain, the parent with the new instruction (its
        id the parent's world's + VARIATION_SUFFIX + a number, so that world_namer finds its world)."""
        if self.domain is not None and hasattr(self.domain, "make_variation"):
            task = self.domain.make_variation(parent, text)
            if task is not None and not isinstance(task, Task):
                raise ConformanceError(
                    f"env {getattr(self.domain, 'name', '?')!r}: make_variation() returned {type(task).__name__}, expected a Task or None"
                )
            if task is None or task.payload in [t.payload for t in self.seed_tasks + self.synthetic]:
                return None  # not a valid variation, or the same world as a task already in the pools
        else:  # the parent's world with a new instruction: named as a variation of that world
            n = self.stats["generated"] + 1
            variation_id = f"{world_namer(None)(parent.id)}{VARIATION_SUFFIX}{n}"
            return msgspec.structs.replace(parent, id=variation_id, instruction=text, origin="synthetic", parent_id=parent.id)
        known_ids = {t.id for t in self.seed_tasks + self.synthetic}
        new_id = task.id if task.id not in known_ids else f"{parent.id}~v{self.stats['generated'] + 1}"
        return msgspec.structs.replace(task, id=new_id, origin="synthetic", parent_id=parent.id)

    def _add(self, task: Task) -> None:
        self.synthetic.append(task)
        self.stats["generated"] += 1
        if self.centroids is not None:
            self._cluster(task)
        if len(self.synthetic) > self.config.max_synthetic_tasks:
            worst = min(range(len(self.synthetic)), key=lambda i: (self._value(self.synthetic[i]), -i))
            self.synthetic.pop(worst)

    def _embed(self, tasks: Sequence[Task]) -> np.ndarray:
        return np.asarray(self.encoder.encode(texts=[t.instruction for t in tasks]), dtype=np.float64)

    # --- metrics and state -----------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        return {
            "curriculum/synthetic_tasks": float(len(self.synthetic)),
            "curriculum/generated_tasks": float(self.stats["generated"]),
            "curriculum/rejected_variations": float(self.stats["rejected"]),
            "curriculum/synthetic_share": float(self.stats["synthetic_share"]),
            "curriculum/mean_value": float(self.stats["mean_value"]),
            "curriculum/max_value": float(self.stats["max_value"]),
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain-JSON state (tasks via msgspec.to_builtins); seed tasks come from the factory."""
        return {
            "draws": self.draws,
            "values": dict(self.values),
            "synthetic": msgspec.to_builtins(self.synthetic),
            "stats": dict(self.stats),
            "cluster_of": dict(self.cluster_of),
            "centroids": self.centroids.tolist() if self.centroids is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s state; a damaged one is a DataError naming what is wrong,
        raised before anything is set, so a refused state leaves the curriculum as it was."""
        try:
            state = _mapping(state, "state")
            draws = _count(state["draws"], "draws")
            values = {str(k): _number(v, f"values[{k!r}]") for k, v in _mapping(state["values"], "values").items()}
            try:
                synthetic = msgspec.convert(state["synthetic"], type=list[Task])
            except msgspec.ValidationError as err:
                raise ValueError(f"synthetic: {err}") from err
            # each counter its type: a damaged entry failed only in the first resumed observe(),
            # minutes later, as a traceback
            saved_stats = _mapping(state["stats"], "stats")
            stats: dict[str, Any] = {}
            for key, fresh in _FRESH_STATS.items():
                if key not in saved_stats:
                    raise ValueError(f"stats: missing {key!r}")
                what = f"stats[{key!r}]"
                stats[key] = _count(saved_stats[key], what) if isinstance(fresh, int) else _number(saved_stats[key], what)
            cluster_of = {str(k): _count(v, f"cluster_of[{k!r}]") for k, v in _mapping(state["cluster_of"], "cluster_of").items()}
            centroids = self._saved_centroids(state["centroids"], cluster_of)
        except KeyError as err:
            raise DataError(f"curriculum 'reward-entropy': malformed state: missing {err}") from err
        except ValueError as err:
            raise DataError(f"curriculum 'reward-entropy': malformed state: {err}") from err
        self.draws, self.values, self.synthetic, self.stats = draws, values, synthetic, stats
        self.cluster_of, self.centroids = cluster_of, centroids

    def _saved_centroids(self, saved: Any, cluster_of: dict[str, int]) -> np.ndarray | None:
        """The saved centroids as this curriculum uses them (ValueError otherwise, which
        load_state_dict reports). Null, [] or another width was accepted, then failed in
        observe() as a traceback or put every task in cluster 0."""
        if self.config.grouping == "task":
            if saved is not None:
                raise ValueError(f"centroids: expected null with grouping 'task', got {_show(saved)}")
            return None
        try:
            centroids = np.asarray(saved, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"centroids: {err}") from err
        # the width of the encoder's embeddings, as the k-means of __init__ measured it
        width = self.centroids.shape[1] if self.centroids is not None else None
        if centroids.ndim != 2 or len(centroids) == 0 or centroids.shape[1] != width or not np.isfinite(centroids).all():
            raise ValueError(f"centroids: expected rows of {width} finite numbers (grouping 'cluster'), got {_show(saved)}")
        beyond = next((k for k, c in cluster_of.items() if c >= len(centroids)), None)
        if beyond is not None:
            raise ValueError(f"cluster_of[{beyond!r}]: cluster {cluster_of[beyond]}, and the state has {len(centroids)} centroids")
        return centroids


# The generation counters and value summaries a new curriculum starts from.
_FRESH_STATS = {"generated": 0, "rejected": 0, "synthetic_share": 0.0, "mean_value": 0.0, "max_value": 0.0}


def _show(value: Any) -> str:
    """A saved value in an error message: its repr, on one line and at most 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _mapping(value: Any, what: str) -> dict:
    """A saved mapping as it is (ValueError otherwise, which load_state_dict reports)."""
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected a mapping, got {type(value).__name__}")
    return value


def _number(value: Any, what: str) -> float:
    """A saved finite number as a float (ValueError otherwise, which load_state_dict reports)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what}: expected a number, got {_show(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{what}: expected a finite number, got {_show(value)}")
    return float(value)


def _count(value: Any, what: str) -> int:
    """A saved counter as an int >= 0 (ValueError otherwise, which load_state_dict reports)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or value != int(value):
        raise ValueError(f"{what}: expected a whole number, got {_show(value)}")
    return int(value)
