"""Fidelity of an experience model against held-out real transitions.

Theorem 1 bounds the real-vs-synthetic gap by the reward error eps_R and the
transition error eps_P. We estimate both on held-out real transitions:

- reward / success / done / valid agreement, and the mean absolute reward error
  (an empirical eps_R; the supremum is not observable on a finite sample);
- next-state exact match, token-level F1 (a proxy for domain consistency) and line recall
  (the share of the real state's lines written word for word: a room, a map, an action list);
- the accuracy of the best constant predictor (majority class) on the same labels,
  which a useful model must beat.
- an unparsable answer counts as wrong on every label (see :func:`fidelity_metrics`);
- refusal recall: of the held-out actions the real engine refused, the share the model
  calls invalid (present only when the held-out set has refused actions: expert and
  random data pick listed actions, so add explore episodes to measure it).

All functions here are pure except :func:`predict_all` and :func:`evaluate_model`,
which call the model.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Callable, Hashable, Sequence

import msgspec

from .experience import requests_for
from .records import ExperienceResult, Transition

__all__ = [
    "normalise",
    "tokens",
    "exact_match",
    "token_f1",
    "line_recall",
    "agreement",
    "majority_accuracy",
    "balanced_accuracy",
    "outcome_label",
    "fidelity_metrics",
    "refusal_recall",
    "seen_in_demos",
    "UnparsedAnswer",
    "unparsed_answers",
    "ScoredAnswer",
    "scored_answers",
    "predict_all",
    "evaluate_model",
    "FIDELITY_STREAM",
]

# The experience model's sampling stream for fidelity scoring (LMExperienceModel.stream): the run
# loop and ``dreamgym eval-model`` share it, so the command can repeat a run's numbers.
FIDELITY_STREAM = "fidelity"

_TOKEN = re.compile(r"\w+|[^\w\s]")


def normalise(text: str) -> str:
    """Lower case, whitespace collapsed."""
    return " ".join(text.lower().split())


def tokens(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens."""
    return _TOKEN.findall(text.lower())


def exact_match(prediction: str, reference: str) -> bool:
    """Equal after :func:`normalise`."""
    return normalise(prediction) == normalise(reference)


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the token multisets; 1.0 when both are empty."""
    pred, ref = tokens(prediction), tokens(reference)
    if not pred and not ref:
        return 1.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def line_recall(prediction: str, reference: str) -> float:
    """Share of the reference's non-blank lines the prediction also has, each compared whole
    after :func:`normalise`; 1.0 when the reference has none. Token F1 credits a state whose
    words are right but whose room, map or action list is wrong; a line is right or not."""
    ref = [normalise(line) for line in reference.splitlines() if line.strip()]
    if not ref:
        return 1.0
    pred = Counter(normalise(line) for line in prediction.splitlines() if line.strip())
    return sum((Counter(ref) & pred).values()) / len(ref)


def agreement(predicted: Sequence[Hashable], actual: Sequence[Hashable]) -> float:
    """Share of positions where the labels are equal (0.0 for empty input)."""
    if len(predicted) != len(actual):
        raise ValueError(f"agreement needs equal lengths, got {len(predicted)} and {len(actual)}")
    return sum(p == a for p, a in zip(predicted, actual)) / len(actual) if actual else 0.0


def majority_accuracy(labels: Sequence[Hashable]) -> float:
    """Accuracy of always predicting the most common label: the best constant predictor."""
    return Counter(labels).most_common(1)[0][1] / len(labels) if labels else 0.0


def balanced_accuracy(predicted: Sequence[Hashable], actual: Sequence[Hashable]) -> float | None:
    """Mean over the real labels of the share of each label's positions predicted right; None
    when the real labels are all one (nothing to balance). Any constant predictor scores
    1 / (number of labels), 0.5 for a yes/no label, however rare one answer is: where nine
    steps in ten are plain moves, agreement rewards a model that never says "won" with 0.9."""
    if len(predicted) != len(actual):
        raise ValueError(f"balanced_accuracy needs equal lengths, got {len(predicted)} and {len(actual)}")
    positions: dict[Hashable, list[int]] = {}
    for i, label in enumerate(actual):
        positions.setdefault(label, []).append(i)
    if len(positions) < 2:
        return None
    return sum(sum(predicted[i] == label for i in where) / len(where) for label, where in positions.items()) / len(positions)


def _balanced(name: str, predicted: Sequence[Hashable], actual: Sequence[Hashable]) -> dict[str, float]:
    value = balanced_accuracy(predicted, actual)
    return {} if value is None else {f"fidelity/{name}_balanced_accuracy": value}


def outcome_label(*, reward: float, done: bool, success: bool) -> tuple[int, bool, bool]:
    """The (reward, done, success) triple one step is scored on."""
    return int(reward >= 0.5), bool(done), bool(success)


def fidelity_metrics(results: Sequence[ExperienceResult], transitions: Sequence[Transition]) -> dict[str, float]:
    """Every fidelity metric of predictions against the real transitions (same order).

    An answer that stayed unparsable predicts nothing: it is wrong on every label and scores 0
    on every next-state measure. Its stand-in (no reward, done, not won, invalid) agreed with
    the common real labels, so a model whose answers never parsed scored 0.9 success agreement
    and a perfect refusal recall. ``eps_r_mean`` is over the parsed answers (absent when none
    parsed); ``parse_failed`` says how many were not."""
    if len(results) != len(transitions):
        raise ValueError(f"{len(results)} results for {len(transitions)} transitions")
    if not transitions:
        return {"fidelity/n": 0.0}
    parsed = [r.parse_status != "failed" for r in results]

    def said(values: Sequence[Hashable]) -> list[Hashable]:
        return [v if ok else _NO_ANSWER for v, ok in zip(values, parsed)]

    pred_outcome = said([outcome_label(reward=r.reward, done=r.done, success=r.success) for r in results])
    # a real episode cut by its step cap has not ended: the model is scored on the game's own end
    real_outcome = [outcome_label(reward=t.reward, done=t.game_over, success=t.success) for t in transitions]
    pred_reward = said([outcome_label(reward=r.reward, done=r.done, success=r.success)[0] for r in results])
    pred_success = said([r.success for r in results])
    rewards = [o[0] for o in real_outcome]
    successes = [t.success for t in transitions]
    n = len(transitions)
    answered = [(r, t) for r, t, ok in zip(results, transitions, parsed) if ok]

    def state_score(score: Callable[[str, str], float]) -> float:
        return sum(score(r.next_state, t.next_state) for r, t in answered) / n

    return {
        "fidelity/n": float(n),
        "fidelity/outcome_agreement": agreement(pred_outcome, real_outcome),
        "fidelity/outcome_majority_baseline": majority_accuracy(real_outcome),
        "fidelity/reward_agreement": agreement(pred_reward, rewards),
        "fidelity/reward_majority_baseline": majority_accuracy(rewards),
        **({"fidelity/eps_r_mean": sum(abs(r.reward - t.reward) for r, t in answered) / len(answered)} if answered else {}),
        "fidelity/success_agreement": agreement(pred_success, successes),
        "fidelity/success_majority_baseline": majority_accuracy(successes),
        "fidelity/done_agreement": agreement(said([r.done for r in results]), [t.game_over for t in transitions]),
        "fidelity/done_majority_baseline": majority_accuracy([t.game_over for t in transitions]),
        "fidelity/valid_agreement": agreement(said([r.valid for r in results]), [t.valid for t in transitions]),
        "fidelity/valid_majority_baseline": majority_accuracy([t.valid for t in transitions]),
        "fidelity/next_state_exact_match": state_score(exact_match),
        "fidelity/next_state_token_f1": state_score(token_f1),
        "fidelity/next_state_line_recall": state_score(line_recall),
        "fidelity/parse_failed": sum(not ok for ok in parsed) / n,
        "fidelity/parse_repaired": sum(r.parse_status == "repaired" for r in results) / n,
        **refusal_recall(results, transitions),
        **_balanced("reward", pred_reward, rewards),
        **_balanced("success", pred_success, successes),
    }


def seen_in_demos(transitions: Sequence[Transition], demos: Sequence[Transition]) -> float:
    """Share of ``transitions`` whose step (instruction, state, action) a demo also holds.

    Demos are excluded from a held-out step's retrieval by episode id only, so a held-out step
    played the same way in another episode (the same task in both, or another world that shows the
    same text) can find its answer in its top demo: agreement there partly measures copying.
    Reported beside the agreements so that a score on seen steps is not read as one on new ones."""
    if not transitions:
        return 0.0
    known = {(d.instruction, d.state, d.action) for d in demos}
    return sum((t.instruction, t.state, t.action) in known for t in transitions) / len(transitions)


# What an unparsable answer predicts: equal to no real label.
_NO_ANSWER = "(no answer)"


def refusal_recall(results: Sequence[ExperienceResult], transitions: Sequence[Transition]) -> dict[str, float]:
    """Share of the real engine's refusals the model also calls invalid; no key without refusals.
    An unparsable answer refused nothing (its stand-in is invalid, which counted as a refusal)."""
    if len(results) != len(transitions):
        raise ValueError(f"{len(results)} results for {len(transitions)} transitions")
    refused = [r for r, t in zip(results, transitions) if not t.valid]
    if not refused:
        return {}
    recalled = sum(not r.valid and r.parse_status != "failed" for r in refused)
    return {"fidelity/refusal_recall": recalled / len(refused), "fidelity/refused_n": float(len(refused))}


class UnparsedAnswer(msgspec.Struct, frozen=True):
    """A held-out transition whose answer stayed unparsable after every retry: the model's
    raw text beside what the real environment answered, for reading why a model fails."""

    task_id: str
    episode_id: str
    step: int
    action: str
    raw: str
    reference_state: str


def unparsed_answers(results: Sequence[ExperienceResult], transitions: Sequence[Transition]) -> list[UnparsedAnswer]:
    """The failed answers of ``results``, each with its held-out transition (same order)."""
    if len(results) != len(transitions):
        raise ValueError(f"{len(results)} results for {len(transitions)} transitions")
    return [
        UnparsedAnswer(
            task_id=t.task_id, episode_id=t.episode_id, step=t.step, action=t.action, raw=r.raw, reference_state=t.next_state
        )
        for r, t in zip(results, transitions)
        if r.parse_status == "failed"
    ]


class ScoredAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """One held-out step with the model's answer beside the real one, for reading where a
    model errs (on which actions, states, steps), beyond the averages of :func:`fidelity_metrics`."""

    task_id: str
    episode_id: str
    step: int
    state: str
    action: str
    listed: bool  # the action is on the state's list of actions (True when the state lists none)
    parse_status: str
    real_next_state: str
    model_next_state: str
    real_outcome: tuple[int, bool, bool]  # (reward >= 0.5, game over, success): what the metrics score
    model_outcome: tuple[int, bool, bool] | None  # None: the answer did not parse (no outcome, as the metrics count it)
    real_valid: bool
    model_valid: bool | None  # None: the answer did not parse (its stand-in's False is no refusal, as the metrics count it)
    next_state_exact: bool
    next_state_f1: float
    next_state_line_recall: float  # the share of the real state's lines the model wrote word for word
    reasoning: str


def scored_answers(results: Sequence[ExperienceResult], transitions: Sequence[Transition]) -> list[ScoredAnswer]:
    """Every answer of ``results`` beside its held-out transition (same order), scored as
    :func:`fidelity_metrics` scores it: an unparsable answer is wrong on every count."""
    if len(results) != len(transitions):
        raise ValueError(f"{len(results)} results for {len(transitions)} transitions")
    return [_scored(r, t) for r, t in zip(results, transitions)]


def _scored(r: ExperienceResult, t: Transition) -> ScoredAnswer:
    failed = r.parse_status == "failed"  # its partly read state and stand-in flags are no answer
    return ScoredAnswer(
        task_id=t.task_id, episode_id=t.episode_id, step=t.step, state=t.state, action=t.action,
        listed=not t.admissible_actions or t.action in t.admissible_actions, parse_status=r.parse_status,
        real_next_state=t.next_state, model_next_state=r.next_state,
        real_outcome=outcome_label(reward=t.reward, done=t.game_over, success=t.success),
        model_outcome=None if failed else outcome_label(reward=r.reward, done=r.done, success=r.success),
        real_valid=t.valid, model_valid=None if failed else r.valid,
        next_state_exact=not failed and exact_match(r.next_state, t.next_state),
        next_state_f1=0.0 if failed else token_f1(r.next_state, t.next_state),
        next_state_line_recall=0.0 if failed else line_recall(r.next_state, t.next_state), reasoning=r.reasoning,
    )


def predict_all(
    model: Any, transitions: Sequence[Transition], buffer: Any, *, history_window: int, k: int, batch_size: int = 16,
    world_of: Callable[[str], str] | None = None,
) -> list[ExperienceResult]:
    """The model's answer to every held-out transition (prompts built as in training).

    History comes from the held-out episodes themselves; demos from ``buffer`` (the
    training data), never a step of the episode being predicted (with ``world_of``, its
    own world's first, as ``loop.demos: same-world-first`` retrieves them).
    """
    requests = requests_for(transitions, buffer, history_window=history_window, k=k, world_of=world_of)
    results: list[ExperienceResult] = []
    for start in range(0, len(requests), batch_size):
        results.extend(model.predict(requests=requests[start: start + batch_size]))
    return results


def evaluate_model(
    model: Any, transitions: Sequence[Transition], buffer: Any, *, history_window: int, k: int, batch_size: int = 16
) -> dict[str, float]:
    """Predict every held-out transition (:func:`predict_all`) and score it."""
    results = predict_all(model, transitions, buffer, history_window=history_window, k=k, batch_size=batch_size)
    return fidelity_metrics(results, transitions)
