"""The experience model M_exp: output format, prompts, strict parser, joint SFT data.

One text format is what every experience model emits (docs/experience-format.md)::

    <think>why the action leads where it does</think>
    <state>the next abstract state</state>
    <valid>true</valid> <done>false</done> <success>false</success> <reward>0</reward>

:func:`build_prompt` is the only prompt code: inference (:class:`LMExperienceModel`)
and training (:func:`training_examples`) both call it, so SFT prompts carry history
and retrieved demos exactly as at inference (paper Eq. 5). A backend with a token budget
(``prompt_fits``) gets prompts shortened by :func:`fit_request`, at training and inference
alike: the least similar demos go first, then the oldest history steps, never the role,
task, state or action. :func:`parse_output`
never raises: it returns an :class:`ExperienceResult` whose ``parse_status`` is
``ok``, ``repaired`` (a bounded set of fixes was applied) or ``failed`` (the episode
ends as a failure with reward 0).

The same weights also play the task generator M_task (:meth:`LMExperienceModel.vary_tasks`,
:meth:`LMExperienceModel.select_task`), and :class:`TeacherAnnotator` writes the
reasoning traces R*_t that joint SFT trains on.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import zlib
from collections import Counter, defaultdict
from typing import Annotated, Any, Callable, Iterable, NamedTuple, Sequence

import msgspec
from msgspec import Meta

from .config import Config, NonNegativeInt, PositiveInt
from .contracts import WrongReturn, checked_retrieval, checked_texts
from .errors import DataError, DreamGymError
from .progress import OnBatch, takes
from .records import VARIATION_SUFFIX, ExperienceRequest, ExperienceResult, HistoryStep, Task, Transition, branch_parent

log = logging.getLogger(__name__)

__all__ = [
    "utf8_safe",
    "ExperienceModelConfig",
    "AnnotationError",
    "END_TAG",
    "build_prompt",
    "fit_request",
    "render_output",
    "render_target",
    "parse_output",
    "outcome_reward",
    "request_for",
    "requests_for",
    "training_examples",
    "same_world_first",
    "world_namer",
    "SAME_WORLD_POOL",
    "LMExperienceModel",
    "stream_seed",
    "call_seed",
    "draw_seed",
    "model_config_of",
    "variation_prompt",
    "selection_prompt",
    "parse_variation",
    "parse_selection",
    "TeacherAnnotator",
    "annotation_prompt",
    "parse_annotation",
    "annotate_with_domain",
]

# Generation stops on this string; a missing final closing tag is therefore not a repair.
END_TAG = "</reward>"
FLAG_TAGS = ("valid", "done", "success")
MAX_TEXT_CHARS = 4000  # a state or reasoning span longer than this is cut (repaired)

Segments = list[tuple[str, bool]]


class ExperienceModelConfig(Config):
    """How the experience model builds prompts, samples and retries."""

    history_window: Annotated[
        NonNegativeInt, Meta(description="Earlier (state, action) pairs of the episode shown in the prompt.")
    ] = 4
    top_k: Annotated[NonNegativeInt, Meta(description="Retrieved buffer transitions shown as demos.")] = 4
    max_new_tokens: Annotated[PositiveInt, Meta(description="Token budget of one model answer.")] = 256
    temperature: Annotated[
        Annotated[float, Meta(ge=0.0)], Meta(description="Sampling temperature; 0 is greedy.")
    ] = 0.7
    max_retries: Annotated[
        NonNegativeInt, Meta(description="Re-generations of an answer that fails to parse, per request.")
    ] = 2
    retry_temperature: Annotated[
        Annotated[float, Meta(ge=0.0)],
        Meta(description="Least temperature of a re-generation (a greedy retry would repeat the failure)."),
    ] = 0.7
    task_temperature: Annotated[
        Annotated[float, Meta(ge=0.0)], Meta(description="Temperature of the task-variation role (M_task).")
    ] = 1.0
    task_max_new_tokens: Annotated[PositiveInt, Meta(description="Token budget of one task variation.")] = 64
    seed: Annotated[int, Meta(description="Base seed of generation; each call derives its own.")] = 0
    draw: Annotated[
        NonNegativeInt,
        Meta(description="Which draw of the main stream: 0 is the seed's own, k > 0 another one; streams for measurements ignore it, "
             "a seeded synthetic episode's stream (episode/<seed>, named episode/<seed>/draw/<k> for k > 0) follows it."),
    ] = 0


class AnnotationError(DreamGymError):
    """A teacher's annotation stayed unusable and no rule-based fallback was configured."""


# --- prompt --------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _outcome(t: Transition) -> tuple[bool, float]:
    """(success, reward) of a stored transition as the format defines them: success only on a
    valid action, reward 1 only when valid, done and success. A real engine may carry out an
    unlisted action (``valid=false``) and win with it; written as stored, its training target
    (success=true, reward=0) never parsed ``ok``, and its demo showed reward=1 with valid=false.
    Training targets and demos both take it from here, so they say the same. A valid
    transition's target is as before, and so is its demo wherever the stored reward follows the
    rule (every built-in env stores 1 exactly on a win)."""
    success = t.success and t.valid
    return success, outcome_reward(done=t.game_over, success=success, valid=t.valid)


def _render_demo(demo: Transition) -> str:
    success, reward = _outcome(demo)
    outcome = f"valid={_bool(demo.valid)} done={_bool(demo.game_over)} success={_bool(success)} reward={_reward_text(reward)}"
    return f"- state: {_one_line(demo.state)}\n  action: {_one_line(demo.action)}\n  next: {_one_line(demo.next_state)}\n  {outcome}"


def build_prompt(request: ExperienceRequest) -> str:
    """The experience-model prompt for one step (the only prompt code, train and infer).

    Sections in order: role, task, retrieved demos, history window, current state,
    admissible actions (when known), action, then the opening of the answer format.
    """
    parts = [
        "You simulate a text environment. Given the task, similar past transitions, the "
        "history and the agent's action, reason about the effect, then write the next state "
        "and the outcome.",
        f"Task: {_one_line(request.instruction)}",
    ]
    if request.demos:
        parts.append("Similar transitions:\n" + "\n".join(_render_demo(d) for d in request.demos))
    if request.history:
        steps = [f"{i}. {_one_line(h.state)} -> {_one_line(h.action)}" for i, h in enumerate(request.history)]
        parts.append("History:\n" + "\n".join(steps))
    parts.append(f"State: {request.state.strip()}")
    if request.admissible_actions:
        parts.append("Admissible actions: " + ", ".join(request.admissible_actions))
    parts.append(f"Action: {_one_line(request.action)}")
    return "\n\n".join(parts) + "\n\nAnswer:\n"


def fit_request(request: ExperienceRequest, fits: Callable[[str], bool] | None) -> ExperienceRequest:
    """``request`` shortened until ``fits(build_prompt(request))``: its least similar demo
    (demos come best first) is dropped first, then its oldest history step.

    Why: a backend that cuts an over-long prompt keeps its end, which loses the role, the
    task and the most similar demos first, the parts the model most needs. A request that
    still does not fit with no demo and no history is returned so, and the backend cuts it.
    """
    if fits is None:
        return request
    while not fits(build_prompt(request)) and (request.demos or request.history):
        if request.demos:
            request = msgspec.structs.replace(request, demos=request.demos[:-1])
        else:
            request = msgspec.structs.replace(request, history=request.history[1:])
    return request


def request_for(transition: Transition, history: Sequence[Transition], demos: Sequence[Transition]) -> ExperienceRequest:
    """The request a transition answers: its own episode's history and the given demos."""
    return ExperienceRequest(
        instruction=transition.instruction,
        history=[HistoryStep(state=h.state, action=h.action) for h in history],
        state=transition.state,
        action=transition.action,
        admissible_actions=list(transition.admissible_actions),
        demos=list(demos),
    )


# --- output format ---------------------------------------------------------------


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _reward_text(reward: float) -> str:
    return "1" if reward >= 0.5 else "0"


def outcome_reward(*, done: bool, success: bool, valid: bool = True) -> float:
    """The paper's outcome reward: 1.0 only on the final step of a success, else 0.0."""
    return 1.0 if done and success and valid else 0.0


def _flags_text(*, valid: bool, done: bool, success: bool, reward: float) -> str:
    return (
        f"<valid>{_bool(valid)}</valid> <done>{_bool(done)}</done> "
        f"<success>{_bool(success)}</success> <reward>{_reward_text(reward)}{END_TAG}"
    )


def render_target(*, reasoning: str, next_state: str, valid: bool, done: bool, success: bool, reward: float) -> Segments:
    """The answer as trainable segments: the reasoning span, then the next-state span.

    Eq. 5's two terms: -log P(R* | ...) on the first segment and -log P(s', r | R*, ...)
    on the second (the outcome flags are serialised with the next state).
    """
    return [
        (f"<think>{reasoning.strip()}</think>\n", True),
        (f"<state>{next_state.strip()}</state>\n" + _flags_text(valid=valid, done=done, success=success, reward=reward), True),
    ]


def render_output(result: ExperienceResult) -> str:
    """The exact text a perfect model emits for ``result``."""
    segments = render_target(
        reasoning=result.reasoning, next_state=result.next_state, valid=result.valid,
        done=result.done, success=result.success, reward=result.reward,
    )
    return "".join(text for text, _ in segments)


# --- parser ----------------------------------------------------------------------

_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}
_ANY_TAG = re.compile(r"</?(think|state|valid|done|success|reward)>", re.IGNORECASE)
# Lone UTF-16 surrogates (a server's JSON may carry "\ud800") cannot be written as UTF-8.
_SURROGATES = re.compile("[\ud800-\udfff]")


class _Span(NamedTuple):
    text: str
    start: int  # where its opening tag starts
    end: int  # after its closing tag; at the next known tag when repaired
    repaired: bool


def _span(text: str, tag: str) -> _Span | None:
    """The first ``<tag>...</tag>`` of ``text``; None when no ``<tag>`` opens.

    A missing closing tag (or one in another case) is repaired by ending the span at
    the next known tag (or the end of the text). Plain ``find`` calls keep this linear
    in the text's length, whatever it repeats (a lazy regex from every repeated
    opening tag is quadratic).
    """
    opening, closing = f"<{tag}>", f"</{tag}>"
    start = text.find(opening)
    if start >= 0:
        close = text.find(closing, start + len(opening))
        if close >= 0:
            return _Span(text[start + len(opening): close], start, close + len(closing), False)
    opened = re.search(re.escape(opening), text, re.IGNORECASE)
    if opened is None:
        return None
    following = _ANY_TAG.search(text, opened.end())
    stop = following.start() if following else len(text)
    return _Span(text[opened.end(): stop], opened.start(), stop, True)


def _think_span(body: str) -> _Span | None:
    """The reasoning block. Without any ``</think>``, it ends where the *last* ``<state>``
    opens: the answer's state block comes after the reasoning, so a tag the reasoning
    quotes (``<done>true</done>``, an example ``<state>``) stays reasoning and is never
    read as the answer. Cutting at the first known tag instead turned a quoted
    ``<success>true</success>`` into a success. Closed in another case (``</Think>``), it
    ends at that closing tag, for the same reason."""
    think = _span(body, "think")
    if think is None or not think.repaired:
        return think
    text_start = think.start + len("<think>")
    closed = re.compile("</think>", re.IGNORECASE).search(body, text_start)
    if closed is not None:  # closed in another case: the reasoning still ends there, not at a tag it quotes
        return _Span(body[text_start: closed.start()], think.start, closed.end(), True)
    states = [m.start() for m in re.finditer("<state>", body[think.start:], re.IGNORECASE)]
    if not states:
        return think
    stop = think.start + states[-1]
    return _Span(body[text_start: stop], think.start, stop, True)


def _tag_readings(region: str) -> dict[str, list[tuple[str, bool]]]:
    """Every tag's contents in ``region``, in order, each with whether reading it needed a
    repair (a tag in another case, or no closing tag before the next known tag)."""
    tags = list(_ANY_TAG.finditer(region))
    readings: dict[str, list[tuple[str, bool]]] = defaultdict(list)
    for tag, following in zip(tags, [*tags[1:], None]):
        if tag.group(0).startswith("</"):
            continue
        name = tag.group(1).lower()
        exact = tag.group(0) == f"<{name}>" and following is not None and following.group(0) == f"</{name}>"
        readings[name].append((region[tag.end(): following.start() if following else len(region)], not exact))
    return readings


def _parse_bool(raw: str | None) -> tuple[bool | None, bool]:
    """(value, repaired); value None when unreadable. Only exact ``true``/``false`` is ok."""
    if raw is None:
        return None, False
    word = raw.strip()
    if word in ("true", "false"):
        return word == "true", False
    value = _BOOL_WORDS.get(word.lower().rstrip("."))
    return value, value is not None


def _flag(readings: list[tuple[str, bool]]) -> tuple[bool | None, bool]:
    """(value, repaired) of one flag from all its readings; value None when it is missing,
    unreadable, or written twice with different values (neither can be trusted)."""
    values: set[bool] = set()
    repaired = len(readings) > 1
    for raw, fix in readings:
        value, fix_value = _parse_bool(raw)
        if value is None:
            return None, repaired
        values.add(value)
        repaired |= fix or fix_value
    return (values.pop(), repaired) if len(values) == 1 else (None, repaired)


def _parse_reward(raw: str | None) -> tuple[float | None, bool]:
    if raw is None:
        return None, False
    word = raw.strip()
    if word in ("0", "1"):
        return float(word), False
    try:
        value = float(word)
    except ValueError:
        return None, False
    if value != value:  # NaN
        return None, False
    return min(max(value, 0.0), 1.0), True


def _failed(raw: str, *, reasoning: str = "", next_state: str = "", valid: bool = False) -> ExperienceResult:
    return ExperienceResult(
        reasoning=reasoning, next_state=next_state, reward=0.0, done=True, success=False,
        valid=valid, parse_status="failed", raw=raw,
    )


def _clip(text: str) -> tuple[str, bool]:
    text = text.strip()
    return (text[:MAX_TEXT_CHARS], True) if len(text) > MAX_TEXT_CHARS else (text, False)


def utf8_safe(text: str) -> str:
    """``text`` with lone surrogates replaced by U+FFFD, so it can always be encoded as UTF-8."""
    return _SURROGATES.sub("\ufffd", text)


def parse_output(text: Any) -> ExperienceResult:
    """Parse one model answer; never raises.

    Where tags are read: the reasoning is the first ``<think>`` block (without a
    ``</think>``, everything up to the last ``<state>``); the next state is
    the first ``<state>`` block after it (anywhere when there is no ``<think>``); the
    outcome flags are read only outside those two blocks, so reasoning or a state that
    quotes a tag (``<done>true</done>``, ``<state>``) changes nothing.

    Repairs (status ``repaired``): a missing closing tag, a boolean written in another
    case or as yes/no/1/0, a missing ``<valid>`` (taken as true), a reward that is not
    exactly 0 or 1 or that disagrees with done/success (reward is recomputed from them),
    success on a step that is not done (done is set), an over-long span (cut), a flag
    or reward written more than once with the same value, a second ``<think>`` or ``<state>``
    block or other text outside the blocks (read as ever: the first blocks, the flags from outside them).
    Anything else is ``failed``: done, not success, reward 0. That includes a
    ``<valid>``, ``<done>`` or ``<success>`` that is present but unreadable, or written
    twice with different values. Lone surrogates in ``text`` become U+FFFD.
    """
    if not isinstance(text, str):
        return _failed(repr(text)[:200])
    text = utf8_safe(text)
    try:
        return _parse(text)
    except Exception:  # the contract is "never raises"; a parser bug must not crash a run
        return _failed(text)


def _outside(body: str, think: _Span | None, after: int, state: _Span) -> str:
    """``body`` without the think block and the state block (``state`` is relative to ``after``).
    The newlines keep a tag from forming across a cut."""
    before = body[: think.start] if think else ""
    return "\n".join((before, body[after: after + state.start], body[after + state.end:]))


# A flag block as the format writes it: the exact lower-case tag, closed, nothing nested.
_FLAG_BLOCK = re.compile(r"<(valid|done|success|reward)>[^<]*</\1>")


def _stray(outside: str) -> bool:
    """Whether the text outside the reasoning and the state holds more than the flag blocks and
    whitespace: a second ``<think>`` or ``<state>`` block, or words between the tags. The first
    blocks are still read; such an answer is only not the format exactly, so not ``ok``."""
    return bool(_FLAG_BLOCK.sub("", outside).strip())


def _parse(text: str) -> ExperienceResult:
    body = text if END_TAG in text or "<reward>" not in text else text + END_TAG
    think = _think_span(body)
    after = think.end if think else 0
    state = _span(body[after:], "state")  # the state follows the reasoning, never inside it
    reasoning, repaired = _clip(think.text if think else "")
    repaired |= think is None or think.repaired  # "ok" is the documented format exactly, reasoning included
    if state is None or not state.text.strip():
        return _failed(text, reasoning=reasoning)
    next_state, fix = _clip(state.text)
    repaired |= fix or state.repaired
    outside = _outside(body, think, after, state)
    readings = _tag_readings(outside)
    repaired |= _stray(outside)
    flags: dict[str, bool | None] = {}
    for tag in FLAG_TAGS:
        flags[tag], fix = _flag(readings[tag])
        repaired |= fix
    if not readings["valid"]:
        flags["valid"], repaired = True, True  # a missing <valid> is documented as true
    if None in flags.values():
        return _failed(text, reasoning=reasoning, next_state=next_state, valid=bool(flags["valid"]))
    rewards = readings["reward"]
    reward, fix = _parse_reward(rewards[0][0] if rewards else None)
    repaired |= fix or len(rewards) > 1
    done, success, valid = bool(flags["done"]), bool(flags["success"]), bool(flags["valid"])
    if success and not done:
        done, repaired = True, True
    if success and not valid:
        success, repaired = False, True
    expected = outcome_reward(done=done, success=success, valid=valid)
    if reward != expected:
        reward, repaired = expected, True
    return ExperienceResult(
        reasoning=reasoning, next_state=next_state, reward=reward, done=done, success=success,
        valid=valid, parse_status="repaired" if repaired else "ok", raw=text,
    )


# --- training data (joint SFT, Eq. 5) ---------------------------------------------


def _episodes(transitions: Iterable[Transition]) -> dict[tuple[str, str], list[Transition]]:
    episodes: dict[tuple[str, str], list[Transition]] = defaultdict(list)
    for t in transitions:
        episodes[(t.task_id, t.episode_id)].append(t)
    for steps in episodes.values():
        steps.sort(key=lambda t: t.step)
    return episodes


def _family(t: Transition) -> tuple[str, str]:
    """A transition's episode with its Early Experience branches: (task id, demo episode id)."""
    return t.task_id, branch_parent(t.episode_id) or t.episode_id


def _history(transitions: Sequence[Transition], history_window: int) -> dict[int, list[Transition]]:
    """For each transition (by id) the window of earlier steps of its own episode; a branch
    transition's (Early Experience) are its demo's steps before it, when the demo is among
    ``transitions``, as the real environment it was run in had been through them."""
    episodes = _episodes(transitions)
    out: dict[int, list[Transition]] = {}
    for (task_id, episode_id), steps in episodes.items():
        parent = episodes.get((task_id, branch_parent(episode_id) or ""), [])  # a branch's demo, else none
        before = [t for t in parent if t.step < steps[0].step]
        steps = before + steps
        for i, t in enumerate(steps[len(before):], start=len(before)):
            out[id(t)] = steps[max(0, i - history_window): i] if history_window else []
    return out


# How many extra neighbours to fetch at first when a training example may not use its own task's:
# a task holds a few dozen stored transitions at most in the offline data of a seed task.
_OTHER_TASKS_OVERFETCH = 64
# How many nearest neighbours are searched for the episode's own world's transitions
# (``loop.demos: same-world-first``): a world holds a few dozen in a seed task's offline data.
SAME_WORLD_POOL = 256


# A variation's id ends in VARIATION_SUFFIX, numbered when it keeps its parent's world (reward-entropy
# without make_variation copies the parent with a new instruction: ``.../7~syn3``).
_VARIATION_ID = re.compile(re.escape(VARIATION_SUFFIX) + r"\d*\Z")


def world_namer(domain: Any) -> Callable[[str], str]:
    """The world a task id plays in: the domain's ``world_of(task_id)``, else the id without a
    variation's :data:`~dreamgym_core.records.VARIATION_SUFFIX` and its number, if any
    (``.../7~syn`` and ``.../7~syn3`` play in the world of the seed task ``.../7``). That names a
    task's family of variations, for demos; a domain's optional ``world_key(task)`` instead
    digests the world a task generates, which seeds of a small game share."""
    world_of = getattr(domain, "world_of", None)
    return world_of if callable(world_of) else (lambda task_id: _VARIATION_ID.sub("", task_id))


def same_world_first(
    found: Sequence[Transition], *, world: str, action: str, world_of: Callable[[str], str]
) -> list[Transition]:
    """``found`` (best first) with the transitions of ``world`` moved ahead, and in each part
    those of ``action``; otherwise in the order found.

    The (state, action) query alone cannot tell apart worlds whose rooms read alike: a move
    from a kitchen leads elsewhere in each world, and the nearest stored move from a kitchen
    is often another world's. And the state outweighs the action in the embedding: the nearest
    stored step is often another exit of the same room. A demo of the episode's own world and
    of the same action shows where this step leads.
    """
    return sorted(found, key=lambda d: (world_of(d.task_id) != world, d.action != action))


def _demos(
    transitions: Sequence[Transition], buffer: Any, k: int, *, other_tasks: bool = False,
    world_of: Callable[[str], str] | None = None,
) -> list[list[Transition]]:
    """Top-k buffer neighbours of each transition, never from its own episode or its branches (and, with
    ``other_tasks``, never from its task; with ``world_of``, its world's first among the
    nearest :data:`SAME_WORLD_POOL`).

    At inference the buffer never holds the episode being played (the loop and verl store an
    episode once it has ended), so a training or held-out prompt must not show it either: a
    later step of the same episode shows the very next state the prompt asks for. A query
    whose nearest neighbours are all excluded is asked again for more, until k remain or
    the buffer has no more to give.
    """
    if buffer is None or k == 0 or not transitions:
        return [[] for _ in transitions]
    if other_tasks and world_of is not None:
        raise ValueError("demos cannot be both only other tasks' and their own world's first")
    if other_tasks:
        extra = _OTHER_TASKS_OVERFETCH
        keep: Callable[[Transition, Transition], bool] = lambda d, t: d.task_id != t.task_id
    else:
        # An episode's branches too: a branch at a later step starts from the very next state
        # (its state is the demo's there), and at inference neither is in the buffer.
        extra = max(Counter(_family(t) for t in transitions).values())
        keep = lambda d, t: _family(d) != _family(t)
    out: list[list[Transition]] = [[] for _ in transitions]
    pending = list(range(len(transitions)))
    # the excluded family on top of the pool in both modes: in same-world-first it was absorbed by
    # the max, so a large family (an episode and its branches) pushed out the same-world demos
    # the prompt shows at inference, where the episode is not in the buffer
    pool = k if world_of is None else max(k, SAME_WORLD_POOL)
    fetch = pool + extra
    while pending:
        queries = [(transitions[i].state, transitions[i].action) for i in pending]
        hits = checked_retrieval(buffer.retrieve(queries=queries, k=fetch), len(queries), f"buffer {type(buffer).__name__}")
        short = []
        for i, found in zip(pending, hits):
            t = transitions[i]
            # The excluded family goes first, then the pool is cut to inference's size and only
            # then sorted: sorting the whole fetch let a same-world demo ranked past the pool
            # (257th and on) into training and fidelity prompts, never into RL's.
            kept = [d for d in found if keep(d, t)][:pool]
            if world_of is not None:
                kept = same_world_first(kept, world=world_of(t.task_id), action=t.action, world_of=world_of)
            out[i] = kept[:k]
            if len(kept) < pool and len(found) >= fetch:  # a pool not yet full; the buffer may hold more
                short.append(i)
        pending, fetch = short, fetch * 4
    return out


def requests_for(
    transitions: Sequence[Transition], buffer: Any, *, history_window: int, k: int, other_tasks: bool = False,
    world_of: Callable[[str], str] | None = None,
) -> list[ExperienceRequest]:
    """The request each transition answers, with its history and retrieved demos (with
    ``world_of``, its own world's first: ``loop.demos: same-world-first``). A transition listed
    more than once (:func:`successes_repeated`) gets the request it gets listed once."""
    unique, where = _unique(transitions)
    history = _history(unique, history_window)
    demos = _demos(unique, buffer, k, other_tasks=other_tasks, world_of=world_of)
    requests = [request_for(t, history[id(t)], d) for t, d in zip(unique, demos)]
    return [requests[i] for i in where]


def _unique(transitions: Sequence[Transition]) -> tuple[list[Transition], list[int]]:
    """Each transition object once (first place kept), and where each of ``transitions`` is in that list.

    A repeated transition must not be its own history: the episode's step list would hold the
    copies, and the last copy's window would show the earlier ones (the very state and action it
    answers) in place of the real steps before it."""
    unique: list[Transition] = []
    index: dict[int, int] = {}
    where = []
    for t in transitions:
        if id(t) not in index:
            index[id(t)] = len(unique)
            unique.append(t)
        where.append(index[id(t)])
    return unique, where


def successes_repeated(transitions: Sequence[Transition], repeats: int) -> list[Transition]:
    """``transitions`` with each successful one ``repeats`` times (beside itself; training shuffles):
    oversampling the rare positive outcome so that joint SFT's loss on the success flags is not
    swamped by the ordinary steps."""
    if repeats < 1:
        raise ValueError(f"successes_repeated: repeats={repeats}; show each success at least once")
    return [copy for t in transitions for copy in [t] * (repeats if t.success else 1)]


def training_examples(
    transitions: Sequence[Transition], buffer: Any, *, history_window: int, k: int, other_tasks: bool = False,
    fits: Callable[[str], bool] | None = None, world_of: Callable[[str], str] | None = None,
) -> list[Segments]:
    """Joint-SFT examples: the inference prompt (masked), then reasoning and next state.

    History comes from each transition's own episode, demos from the buffer with its own
    episode excluded, as at inference (with ``other_tasks``, its whole task: the model then
    learns to read the current state rather than copy a stored twin), and the prompt from
    :func:`build_prompt`, shortened by :func:`fit_request` with the inference budget ``fits``.
    A transition listed more than once (:func:`successes_repeated`) is built once and its
    example repeated: repeats change how often an example is shown, never what it shows.
    """
    unique, where = _unique(transitions)
    examples = []
    requests = requests_for(unique, buffer, history_window=history_window, k=k, other_tasks=other_tasks, world_of=world_of)
    for t, request in zip(unique, requests):
        request = fit_request(request, fits)
        success, reward = _outcome(t)
        target = render_target(
            reasoning=t.reasoning, next_state=t.next_state, valid=t.valid, done=t.game_over,
            success=success, reward=reward,
        )
        examples.append([(build_prompt(request), False), *target])
    return [list(examples[i]) for i in where]  # copies: a backend may change one example's list in place


# --- task generator (M_task) prompts ----------------------------------------------


def variation_prompt(task: Task, how: str = "") -> str:
    """Ask for one variation of a task: harder but feasible, same domain.

    ``how`` is the domain's ``describe_variation(task)`` (what a variation may change
    and how to write it), when the domain has one.
    """
    rules = f"How to write a variation: {_one_line(how)}\n\n" if how.strip() else ""
    return (
        "You write tasks for an agent in a text environment. Rewrite the task below into a new, "
        "meaningfully different task of the same kind: a little more challenging, still feasible, "
        "clear and realistic. Answer with one line.\n\n"
        f"{rules}Original task: {_one_line(task.instruction)}\n\nNew task:"
    )


def selection_prompt(task: Task, candidates: Sequence[str]) -> str:
    """The paper's selection prompt: pick the best variation, or none."""
    numbered = "\n".join(f"{i}. {_one_line(c)}" for i, c in enumerate(candidates, start=1))
    return (
        "Choose the best new task for training an agent. It must be (a) challenging but feasible, "
        "(b) clear and grammatical, (c) meaningfully different from the original, not a rewording, "
        "and (d) realistic for the environment. Answer 0 if no candidate qualifies.\n\n"
        f"Original task: {_one_line(task.instruction)}\n\nCandidates:\n{numbered}\n\n"
        "Answer in this format:\nSELECTION: <number>\nREASONING: <one or two sentences>\n\nSELECTION:"
    )


def parse_variation(text: str) -> str | None:
    """The first line that states a task, without a ``New task:``/``Task:`` label, bold marks,
    quotes or numbering. A line without a letter ("1.") or one that ends in a colon ("Sure!
    Here is a harder task:", which announces a task rather than states it) is none."""
    for line in text.splitlines():
        line = line.replace("**", "").replace("__", "")  # "**New task:** ..." from a chat model
        # numbering and label in either order ("1. New task: ..." as well as "New task: 1. ...")
        for _ in range(2):
            line = re.sub(r"^\s*(\d+[.)]|[-*])\s+", "", line)
            line = re.sub(r"^\s*(new task|task|variation)\s*[:\-]\s*", "", line, flags=re.IGNORECASE)
        # quotes round the task, a closing one also before its full stop ('"Open the door".')
        line = re.sub(r"[\"'](?=[.!?]?$)", "", line.strip().lstrip("\"'")).strip()
        if re.search(r"[^\W\d_]", line) and not line.endswith(":"):
            return line
    return None


def _variation_key(text: str) -> str:
    """What two task texts must differ in to be two tasks: not case, spacing or a closing
    full stop ("Open the door." and "open the  door" were returned as variations of "Open the door")."""
    return " ".join(text.split()).lower().rstrip(".!?").rstrip()


def parse_selection(text: str, n: int) -> int | None:
    """0-based candidate index from ``SELECTION: <n>`` (1-based), tolerant of layout; None if none."""
    # A dash only as a separator ("selection - 2"): "-1" (none) read as candidate 1, and a
    # decimal ("2.5") is no candidate number.
    # The number may keep the brackets of the prompt's own "SELECTION: <n>" ("<2>", "[2]").
    number = r"(?:candidate\s*)?#?\s*[<\[(`]?\s*(\d+)(?![.,]?\d)"
    separator = r"(?:[\s:=*]|\s-\s)*"
    match = None if re.search("selection", text, re.IGNORECASE) else re.match(r"\s*" + number, text, re.IGNORECASE)
    # The first label's answer counts ("SELECTION: none ... REASONING: selection 1 is a rewording"
    # read the reasoning's "selection 1"); a label written twice ("SELECTION: SELECTION 2") is one.
    for label in re.finditer("selection", text, re.IGNORECASE):
        rest = text[label.end() :]
        match = re.match(separator + number, rest, re.IGNORECASE)
        if match or not re.match(separator + "selection", rest, re.IGNORECASE):
            break
    if not match:
        return None
    digits = match.group(1).lstrip("0") or "0"
    if len(digits) > 9:  # no candidate list is that long; int() refuses past 4,300 digits
        return None
    choice = int(digits)
    return choice - 1 if 1 <= choice <= n else None


# --- the LM-backed experience model ------------------------------------------------


def stream_seed(seed: int, name: str) -> int:
    """Base seed of a named stream: a function of the run's seed and the name only, so it does
    not depend on what ran before."""
    return seed + ((zlib.crc32(name.encode()) + 1) << 24)


def call_seed(base: int, call: int) -> int:
    """The sampling seed of call ``call`` of the stream with base seed ``base``: a hash, so that
    no two runs or streams share noise. (``base + call`` let run s + 1 sample with run s's noise
    one call later, so replicate seeds were not independent.) 63 bits: every backend takes it."""
    digest = hashlib.blake2b(f"{base}/{call}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def model_config_of(pipeline: Any) -> ExperienceModelConfig:
    """The experience model's settings from a pipeline config, one place for every backend
    (the local loop and verl), so both prompt, parse, retry and draw alike."""
    loop = pipeline.loop
    return ExperienceModelConfig(
        history_window=loop.history_window, top_k=loop.top_k, temperature=loop.experience_temperature,
        max_new_tokens=pipeline.experience.max_new_tokens, max_retries=pipeline.experience.max_retries,
        seed=pipeline.seed, draw=loop.experience_draw,
    )


def draw_seed(seed: int, draw: int) -> int:
    """Base seed of the main stream's draw ``draw``: the seed itself for draw 0, so runs
    without draws keep their numbers, and a named stream of its own for every other."""
    return seed if draw == 0 else stream_seed(seed, f"draw/{draw}")


class LMExperienceModel:
    """M_exp (and M_task) on any :class:`~dreamgym_core.protocols.LanguageModel` backend.

    ``predict`` is batched: one ``generate`` call for all requests, then at most
    ``max_retries`` re-generations of the answers that failed to parse. Counters of
    parse outcomes are exposed by :meth:`metrics`.
    """

    def __init__(self, backend: Any, config: ExperienceModelConfig | None = None, *, domain: Any = None) -> None:
        self.backend = backend
        self.config = config or ExperienceModelConfig()
        self.domain = domain
        self.model_id = getattr(backend, "model_id", type(backend).__name__)
        self._calls = 0
        self.counters = {
            "requests": 0, "parse_ok": 0, "parse_repaired": 0, "parse_failed": 0, "retries": 0, "prompts_shortened": 0,
        }

    def stream(self, name: str) -> LMExperienceModel:
        """The same weights on a seed stream of their own, with their own call count and counters.

        Measurements (fidelity scoring, the synthetic replay of evaluated games) use one, so
        turning a measurement on or off leaves RL's synthetic draws, which come from this
        model's own count, unchanged."""
        config = msgspec.structs.replace(self.config, seed=stream_seed(self.config.seed, name), draw=0)
        return LMExperienceModel(self.backend, config, domain=self.domain)

    def _generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float, stop: Sequence[str]) -> list[str]:
        self._calls += 1
        out = self.backend.generate(
            prompts=list(prompts), max_new_tokens=max_new_tokens, temperature=temperature,
            stop=list(stop), seed=call_seed(draw_seed(self.config.seed, self.config.draw), self._calls),
        )
        # a short list was zipped with the requests: answers went to the wrong steps, or none came
        return checked_texts(out, len(prompts), f"experience model backend {self.model_id!r}", "generate()")

    def _fits(self) -> Callable[[str], bool] | None:
        """The backend's prompt budget at this model's answer length (None: the backend has none)."""
        prompt_fits = getattr(self.backend, "prompt_fits", None)
        if prompt_fits is None:
            return None
        return lambda prompt: prompt_fits(prompt, max_new_tokens=self.config.max_new_tokens)

    def _answer(self, prompts: Sequence[str], temperature: float) -> list[ExperienceResult]:
        """One attempt at every prompt: a generation each, parsed."""
        texts = self._generate(prompts, max_new_tokens=self.config.max_new_tokens, temperature=temperature, stop=[END_TAG])
        return [parse_output(text) for text in texts]

    def predict(self, *, requests: Sequence[ExperienceRequest]) -> list[ExperienceResult]:
        """One parsed result per request; unparsable answers come back ``failed``."""
        fits = self._fits()
        fitted = [fit_request(r, fits) for r in requests]
        self.counters["prompts_shortened"] += sum(f is not r for f, r in zip(fitted, requests))
        prompts = [build_prompt(r) for r in fitted]
        results: list[ExperienceResult | None] = [None] * len(prompts)
        pending = list(range(len(prompts)))
        for attempt in range(self.config.max_retries + 1):
            if not pending:
                break
            temperature = self.config.temperature
            if attempt:
                self.counters["retries"] += len(pending)
                temperature = max(temperature, self.config.retry_temperature)
            for i, result in zip(pending, self._answer([prompts[i] for i in pending], temperature)):
                results[i] = result
            pending = [i for i in pending if results[i].parse_status == "failed"]  # type: ignore[union-attr]
        self.counters["requests"] += len(prompts)
        for result in results:
            self.counters[f"parse_{result.parse_status}"] += 1  # type: ignore[union-attr]
        return results  # type: ignore[return-value]

    def state_dict(self) -> dict[str, Any]:
        """Generation call count (it seeds each call), counters and the backend's own call
        counters (``stats``, logged as ``experience/backend_*``), so a resumed run continues
        alike: without them a resumed run's backend counts started again from 0."""
        state: dict[str, Any] = {"calls": self._calls, "counters": dict(self.counters)}
        if stats := self._backend_stats():
            state["backend_stats"] = stats
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # everything checked before anything is set: a damaged value would otherwise resume and
        # fail later, mid-run (a counter of "x"), or repeat draws (a negative or fractional count)
        def count(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= 0

        calls = state.get("calls") if isinstance(state, dict) else None
        if not count(calls):
            raise DataError(f"experience_model.calls must be a non-negative integer, got {calls!r}")
        counters = state.get("counters")
        if not isinstance(counters, dict):
            raise DataError(f"experience_model.counters must map names to non-negative integers, got {counters!r}")
        for key, value in counters.items():
            if not count(value):
                raise DataError(f"experience_model.counters[{key!r}] must be a non-negative integer, got {value!r}")
        saved = state.get("backend_stats", {})  # absent from a checkpoint written before they were kept
        if not isinstance(saved, dict) or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in saved.values()):
            raise ValueError(f"backend_stats must map names to finite numbers, got {saved!r}")
        self._calls = calls
        self.counters.update(counters)
        stats = getattr(self.backend, "stats", None)
        if isinstance(stats, dict):
            stats.update({key: value for key, value in saved.items() if key in stats})

    def _backend_stats(self) -> dict[str, int | float]:
        stats = getattr(self.backend, "stats", None)
        if not isinstance(stats, dict):
            return {}
        return {key: value for key, value in stats.items() if isinstance(value, (int, float))}

    def metrics(self) -> dict[str, float]:
        """Namespaced counters: requests, parse ok/repaired/failed, retries, failure rate, and
        a backend's own call counters (``stats``: a model server's failed calls), so that a dead
        server is not mistaken for a model writing unparsable answers."""
        out = {f"experience/{key}": float(value) for key, value in self.counters.items()}
        out["experience/parse_failure_rate"] = self.counters["parse_failed"] / max(1, self.counters["requests"])
        out |= {f"experience/backend_{key}": float(value) for key, value in self._backend_stats().items()}
        return out

    def train(
        self, *, transitions: Sequence[Transition], buffer: Any, epochs: int, lr: float, batch_size: int,
        other_tasks: bool = False, on_epoch: Callable[[int, float], None] | None = None,
        on_batch: OnBatch | None = None, world_of: Callable[[str], str] | None = None,
    ) -> dict[str, float]:
        """Joint SFT (Eq. 5) of the backend on annotated transitions (``other_tasks``: demos
        only from other tasks, see :func:`training_examples`; ``world_of``: the example's own
        world's demos first, as at inference with ``loop.demos: same-world-first``; ``on_epoch(epoch, mean_loss)``
        after each epoch; ``on_batch(epoch, step, steps_per_epoch, loss)`` after each step,
        where the backend's ``sft`` takes it)."""
        if not hasattr(self.backend, "sft"):
            raise DreamGymError(
                f"experience model backend {self.model_id!r} cannot be trained (no sft method); "
                "to use it as it is (e.g. a served model), set experience.skip: true"
            )
        examples = training_examples(
            transitions, buffer, history_window=self.config.history_window, k=self.config.top_k,
            other_tasks=other_tasks, fits=self._fits(), world_of=world_of,
        )
        self._warn_of_long_answers(examples)
        progress: dict[str, Any] = {"on_epoch": on_epoch} if on_epoch is not None else {}
        if on_batch is not None and takes(self.backend.sft, "on_batch"):
            progress["on_batch"] = on_batch
        return self.backend.sft(examples=examples, epochs=epochs, lr=lr, batch_size=batch_size, **progress)

    def _warn_of_long_answers(self, examples: Sequence[Segments]) -> None:
        """An answer longer than ``max_new_tokens`` is cut at inference, and a cut answer usually
        loses its outcome flags and fails to parse, which ends its episode. Said before the training, for a
        backend that counts tokens (``count_tokens``); a new env's states may be longer than
        the budget its pipeline copied."""
        count = getattr(self.backend, "count_tokens", None)
        if not callable(count) or not examples:
            return
        lengths = count(["".join(text for text, trained in example if trained) for example in examples])
        over = [n for n in lengths if n > self.config.max_new_tokens]
        if over:
            log.warning(
                "experience model %s: %d of %d training answers are longer than experience.max_new_tokens=%d tokens "
                "(the longest %d): an answer that long is cut at generation and usually loses its outcome flags, so it fails "
                "to parse; raise it to at least %d",
                self.model_id, len(over), len(lengths), self.config.max_new_tokens, max(over), max(over),
            )

    def vary_tasks(self, *, task: Task, n: int) -> list[str]:
        """Up to ``n`` distinct variations, excluding the original instruction.

        When the model was given a domain with ``describe_variation``, its description
        goes into the prompt so the text suits the domain's ``make_variation``. Each answer
        is read whole by :func:`parse_variation` (no stop at a newline), up to
        ``task_max_new_tokens`` tokens.
        """
        how = self.domain.describe_variation(task) if hasattr(self.domain, "describe_variation") else ""
        # No stop string: the backends cut an answer before its first stop, and a stop at "\n"
        # left "" of an answer opening with a newline and only the preamble of "Sure! Here is
        # one:\n<task>"; parse_variation picks the task line out of the whole answer. The cost
        # stays bounded by task_max_new_tokens per candidate: joint SFT never trains this prompt
        # (its targets end in </reward> and the backend's EOS), so an answer ends at the
        # model's EOS or at that budget, whichever comes first.
        texts = self._generate(
            [variation_prompt(task, how)] * n, max_new_tokens=self.config.task_max_new_tokens,
            temperature=self.config.task_temperature, stop=[],
        )
        seen = {_variation_key(task.instruction)}
        out = []
        for text in texts:
            variation = parse_variation(text)
            if variation and _variation_key(variation) not in seen:
                seen.add(_variation_key(variation))
                out.append(variation)
        return out

    def select_task(self, *, task: Task, candidates: Sequence[str]) -> int | None:
        """Index of the candidate the selection prompt picks, or None."""
        if not candidates:
            return None
        text = self._generate(
            [selection_prompt(task, candidates)], max_new_tokens=self.config.task_max_new_tokens,
            temperature=0.0, stop=[],
        )[0]
        return parse_selection("SELECTION:" + text, len(candidates))


# --- reasoning annotation ----------------------------------------------------------


class _Tutorial(msgspec.Struct):
    overall_plan: str = ""
    success_mode: str = ""
    failure_mode: str = ""


class _StepPlan(msgspec.Struct):
    step_id: int
    transition_plan: str


class _Annotation(msgspec.Struct):
    task_tutorial: _Tutorial
    state_transitions: list[_StepPlan]


def annotation_prompt(steps: Sequence[Transition]) -> str:
    """The paper's annotation prompt: strict JSON, a tutorial and one plan per step."""
    first = steps[0]
    success = any(t.success for t in steps)
    # A step-cap ending is marked: the experience model learns done=false there, and a plan
    # that calls it the end of the game would contradict the answer it precedes.
    lines = [
        f"Step {i}:\n  state: {_one_line(t.state)}\n  action: {_one_line(t.action)}\n  "
        f"next state: {_one_line(t.next_state)}\n  valid action: {_bool(t.valid)}"
        + ("\n  the step limit cut the episode here; the game itself goes on" if t.truncated else "")
        for i, t in enumerate(steps)
    ]
    return (
        "You are an expert in this environment. You give actionable guidance on the state "
        "transitions of an experience model that simulates it. Read the trajectory and answer "
        "with strict JSON only, of this shape:\n"
        '{"task_tutorial": {"overall_plan": "<one sentence>", "success_mode": "<one sentence: the '
        'critical steps>", "failure_mode": "<one sentence: the typical failure to avoid>"}, '
        '"state_transitions": [{"step_id": 0, "transition_plan": "<whether the action will succeed '
        'or fail, and briefly how the environment should change>"}, ...]}\n'
        f"Give exactly one state_transitions entry per step ({len(steps)} steps, step_id 0 to {len(steps) - 1}).\n\n"
        f"Task: {_one_line(first.instruction)}\nTask succeeded: {_bool(success)}\n\n" + "\n".join(lines) + "\n\nJSON:"
    )


def parse_annotation(text: str, n_steps: int) -> list[str] | None:
    """The per-step plans of a teacher's JSON answer, or None when it breaks the format.

    Lone surrogates (a backend may pass on JSON's ``"\\ud800"``) become U+FFFD first: the JSON
    decoder and the plans' later JSONL record both need text that UTF-8 can hold."""
    text = utf8_safe(text)
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        annotation = msgspec.json.decode(text[start: end + 1], type=_Annotation)
    except msgspec.DecodeError:
        return None
    plans = {p.step_id: p.transition_plan.strip() for p in annotation.state_transitions}
    if sorted(plans) != list(range(n_steps)) or len(annotation.state_transitions) != n_steps:
        return None
    if not all(plans.values()):
        return None
    return [plans[i] for i in range(n_steps)]


def annotate_with_domain(transitions: Sequence[Transition], domain: Any, who: str = "env") -> list[Transition]:
    """Rule-based reasoning from the domain's ground truth (``domain.annotate``), which must
    give a str for each transition (``who`` names the domain if not): a None stored as the
    reasoning would fail later in the prompt builder, far from its cause."""
    annotated = []
    for t in transitions:
        reasoning = domain.annotate(transition=t)
        if not isinstance(reasoning, str):
            raise WrongReturn(
                f"{who}: annotate(transition=...) returned {type(reasoning).__name__} {reasoning!r:.60} for task {t.task_id!r} "
                f"step {t.step}, expected a str"
            )
        annotated.append(msgspec.structs.replace(t, reasoning=reasoning))
    return annotated


class TeacherAnnotator:
    """Annotates offline trajectories with a teacher's reasoning traces (paper App. C.1).

    Each episode is one prompt; the answer must be strict JSON with one
    ``transition_plan`` per step, which becomes that transition's ``reasoning``.
    An episode whose answer stays unusable after ``max_retries`` re-generations falls
    back to ``fallback.annotate`` (a domain's rule-based annotator) when one is given,
    and is counted in ``counters["fallback"]``; without a fallback it raises
    :class:`AnnotationError`. Re-generations sample at ``retry_temperature`` at least
    (as the experience model's do): a greedy retry would repeat the failure.
    """

    def __init__(
        self, backend: Any, *, fallback: Any = None, max_retries: int = 2, max_new_tokens: int = 1024,
        temperature: float = 0.0, retry_temperature: float = 0.7, seed: int = 0,
    ) -> None:
        self.backend = backend
        self.fallback = fallback
        self.max_retries = max_retries
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.retry_temperature = retry_temperature
        self.seed = seed
        self.counters = {"episodes": 0, "teacher": 0, "fallback": 0, "retries": 0}

    def annotate(self, *, transitions: Sequence[Transition]) -> list[Transition]:
        """The transitions (same order) with ``reasoning`` filled in."""
        episodes = list(_episodes(transitions).values())
        plans: dict[int, list[str] | None] = {i: None for i in range(len(episodes))}
        pending = list(plans)
        for attempt in range(self.max_retries + 1):
            if not pending:
                break
            temperature = self.temperature
            if attempt:
                self.counters["retries"] += len(pending)
                temperature = max(temperature, self.retry_temperature)
            texts = self.backend.generate(
                prompts=[annotation_prompt(episodes[i]) for i in pending], max_new_tokens=self.max_new_tokens,
                temperature=temperature, stop=[], seed=call_seed(stream_seed(self.seed, "annotate"), attempt),
            )
            # a short list was zipped with the episodes: the last ones fell back (or failed) as if their JSON were bad
            who = f"teacher backend {getattr(self.backend, 'model_id', '?')!r}"
            texts = checked_texts(texts, len(pending), who, "generate()")
            for i, text in zip(pending, texts):
                plans[i] = parse_annotation(text, len(episodes[i]))
            pending = [i for i in pending if plans[i] is None]
        reasoning: dict[int, str] = {}
        for i, steps in enumerate(episodes):
            reasoning.update(zip(map(id, steps), self._plans_or_fallback(steps, plans[i])))
        self.counters["episodes"] += len(episodes)
        return [msgspec.structs.replace(t, reasoning=reasoning[id(t)]) for t in transitions]

    def _plans_or_fallback(self, steps: list[Transition], plans: list[str] | None) -> list[str]:
        if plans is not None:
            self.counters["teacher"] += 1
            return plans
        if self.fallback is None:
            raise AnnotationError(
                f"teacher {getattr(self.backend, 'model_id', '?')!r} gave no valid JSON annotation for episode "
                f"{steps[0].episode_id!r} after {self.max_retries + 1} tries; let the domain's rules annotate such episodes "
                "(experience.teacher_fallback: rule), raise experience.teacher_max_new_tokens if answers were cut, "
                "or use a stronger teacher"
            )
        self.counters["fallback"] += 1
        # checked as annotate_with_domain checks it: a None stored here failed in the prompt builder
        return [t.reasoning for t in annotate_with_domain(steps, self.fallback, who="annotator fallback")]
