"""The experience model's output format, parser, prompts, SFT examples and M_task role."""

from __future__ import annotations

import re
import threading

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dreamgym_core.config import Config
from dreamgym_core.contracts import WrongReturn
from dreamgym_core.errors import DreamGymError
from dreamgym_core.experience import (
    fit_request,
    END_TAG,
    AnnotationError,
    ExperienceModelConfig,
    LMExperienceModel,
    TeacherAnnotator,
    annotate_with_domain,
    annotation_prompt,
    build_prompt,
    call_seed,
    draw_seed,
    model_config_of,
    parse_annotation,
    parse_output,
    parse_selection,
    parse_variation,
    render_output,
    render_target,
    requests_for,
    same_world_first,
    stream_seed,
    successes_repeated,
    world_namer,
    training_examples,
)
from dreamgym_core.records import ExperienceRequest, ExperienceResult, HistoryStep, Task, Transition, branch_episode_id
from dreamgym_core.testing import check_experience_model, make_transitions
from test_experience_doubles import ListBuffer, ScriptedLM

GOOD = (
    "<think>The door is unlocked, so opening it works.</think>\n<state>You are in the hall. The door is open.</state>\n"
    "<valid>true</valid> <done>false</done> <success>false</success> <reward>0</reward>"
)


def result(**kw) -> ExperienceResult:
    base = dict(reasoning="r", next_state="s", reward=0.0, done=False, success=False, valid=True)
    return ExperienceResult(**{**base, **kw})


# --- parser: exact format ----------------------------------------------------------


def test_parse_ok_exact_format() -> None:
    r = parse_output(GOOD)
    assert r.parse_status == "ok"
    assert r.next_state == "You are in the hall. The door is open."
    assert r.reasoning.startswith("The door is unlocked")
    assert (r.reward, r.done, r.success, r.valid) == (0.0, False, False, True)


def test_an_answer_without_its_reasoning_block_is_repaired_not_ok() -> None:
    # "ok" is the documented format exactly; a missing <think> block is format drift to count
    r = parse_output(GOOD[GOOD.index("</think>") + len("</think>"):])
    assert r.parse_status == "repaired" and r.next_state == "You are in the hall. The door is open."


def test_missing_final_tag_is_ok_because_generation_stops_on_it() -> None:
    r = parse_output(GOOD.removesuffix(END_TAG))
    assert r.parse_status == "ok"


@pytest.mark.parametrize(
    "text, expect",
    [
        (GOOD.replace("<valid>true</valid>", "<valid>True</valid>"), dict(valid=True)),
        (GOOD.replace("<done>false</done>", "<done>NO</done>"), dict(done=False)),
        (GOOD.replace("</think>", ""), dict(reasoning="The door is unlocked, so opening it works.")),
        (GOOD.replace("</state>", ""), dict(next_state="You are in the hall. The door is open.")),
        (GOOD.replace("<valid>true</valid> ", ""), dict(valid=True)),
        (GOOD.replace("<reward>0</reward>", "<reward>0.7</reward>"), dict(reward=0.0)),
        (GOOD.replace("<reward>0</reward>", ""), dict(reward=0.0)),
    ],
)
def test_bounded_repairs(text: str, expect: dict) -> None:
    r = parse_output(text)
    assert r.parse_status == "repaired"
    for key, value in expect.items():
        assert getattr(r, key) == value


def test_reward_follows_done_and_success() -> None:
    win = GOOD.replace("<done>false</done>", "<done>true</done>").replace("<success>false</success>", "<success>true</success>")
    assert parse_output(win).reward == 1.0 and parse_output(win).parse_status == "repaired"  # flags win
    fixed = win.replace("<reward>0</reward>", "<reward>1</reward>")
    assert parse_output(fixed).parse_status == "ok" and parse_output(fixed).reward == 1.0
    # reward 1 claimed on a step that is not done: recomputed to 0
    claim = GOOD.replace("<reward>0</reward>", "<reward>1</reward>")
    assert parse_output(claim).reward == 0.0
    # success without done: the episode is over
    odd = GOOD.replace("<success>false</success>", "<success>true</success>")
    r = parse_output(odd)
    assert r.done and r.success and r.reward == 1.0 and r.parse_status == "repaired"


def test_invalid_action_cannot_succeed() -> None:
    text = (
        "<think>x</think><state>Nothing happens.</state><valid>false</valid> <done>true</done> "
        "<success>true</success> <reward>1</reward>"
    )
    r = parse_output(text)
    assert not r.valid and not r.success and r.reward == 0.0


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I think the door opens.",
        "<think>only reasoning</think>",
        "<think>x</think><state>   </state><done>true</done><success>false</success>",
        "<think>x</think><state>s</state><valid>true</valid>",  # no done/success
        "<think>x</think><state>s</state><done>maybe</done><success>false</success>",
        None,
        12,
    ],
)
def test_failed_outputs_end_the_episode_as_failure(text) -> None:
    r = parse_output(text)
    assert r.parse_status == "failed"
    assert r.done and not r.success and r.reward == 0.0


def test_failed_keeps_what_was_parsed() -> None:
    r = parse_output("<think>why</think><state>the hall</state><valid>true</valid><done>perhaps</done>")
    assert r.parse_status == "failed" and r.next_state == "the hall" and r.reasoning == "why" and r.valid


def test_overlong_state_is_cut() -> None:
    r = parse_output(GOOD.replace("You are in the hall.", "x" * 10_000))
    assert r.parse_status == "repaired" and len(r.next_state) <= 4000


FLAGS = "<valid>true</valid> <done>false</done> <success>false</success> <reward>0</reward>"


@pytest.mark.parametrize(
    "text, expect",
    [
        (GOOD, ("The door is unlocked, so opening it works.", "You are in the hall. The door is open.", True, False, False, 0.0, "ok")),
        (
            "<think>2 < 3, and a -> b.</think>\n<state>Room: hall\nItems: key, lamp\nActions (2): look, take key</state>\n"
            "<valid>true</valid> <done>false</done> <success>false</success> <reward>0",
            ("2 < 3, and a -> b.", "Room: hall\nItems: key, lamp\nActions (2): look, take key", True, False, False, 0.0, "ok"),
        ),
        (
            "<think>Taking the coin wins.</think>\n<state>You hold the coin.</state>\n"
            "<valid>true</valid> <done>true</done> <success>true</success> <reward>1</reward>",
            ("Taking the coin wins.", "You hold the coin.", True, True, True, 1.0, "ok"),
        ),
        (
            "<think></think>\n<state>Nothing happens.</state>\n"
            "<valid>false</valid> <done>false</done> <success>false</success> <reward>0</reward>",
            ("", "Nothing happens.", False, False, False, 0.0, "ok"),
        ),
        (
            "<think>Out of moves.</think>\n<state>The game is over.</state>\n"
            "<valid>true</valid> <done>true</done> <success>false</success> <reward>0</reward>\n",
            ("Out of moves.", "The game is over.", True, True, False, 0.0, "ok"),
        ),
    ],
    ids=["good", "symbols-and-lines", "win", "invalid", "lost"],
)
def test_well_formed_answers_parse_to_fixed_expectations(text: str, expect: tuple) -> None:
    # the format render_target trains on; results measured with this parser depend on it
    r = parse_output(text)
    assert (r.reasoning, r.next_state, r.valid, r.done, r.success, r.reward, r.parse_status) == expect


@pytest.mark.parametrize(
    "text, state",
    [
        ("<think>Taking it would give <done>true</done> <success>true</success>, but it is elsewhere.</think>\n"
         f"<state>No coin here.</state>\n{FLAGS}", "No coin here."),
        (f"<think>Unlike 'fly', which gives <valid>false</valid>, 'look' is listed.</think>\n<state>A kitchen.</state>\n{FLAGS}",
         "A kitchen."),
        (f"<think>The <state> will show the hallway.</think>\n<state>A hallway.</state>\n{FLAGS}", "A hallway."),
        (f"<think>r</think>\n<state>A sign reads <valid>false</valid> <done>true</done>.</state>\n{FLAGS}",
         "A sign reads <valid>false</valid> <done>true</done>."),
    ],
    ids=["flags-in-think", "valid-in-think", "state-tag-in-think", "flags-in-state"],
)
def test_tags_quoted_in_reasoning_or_state_are_not_read(text: str, state: str) -> None:
    r = parse_output(text)
    assert (r.next_state, r.valid, r.done, r.success, r.reward, r.parse_status) == (state, True, False, False, 0.0, "ok")


@pytest.mark.parametrize(
    "text, expect",
    [
        # the quoted flags once read as the answer: a success with reward 1
        ("<think>If taking the key wins, the answer is <done>true</done> <success>true</success>. Not yet.\n"
         "<state>You hold the key.</state>\n<valid>true</valid> <reward>0", ("You hold the key.", "failed", False)),
        # the quoted state once read as the next state
        ("<think>Now <state>You are in the hall</state>; north is the kitchen.\n"
         f"<state>You are in the kitchen.</state>\n{FLAGS}", ("You are in the kitchen.", "repaired", False)),
    ],
    ids=["flags-quoted", "state-quoted"],
)
def test_without_a_closing_think_the_reasoning_runs_to_the_last_state(text: str, expect: tuple) -> None:
    r = parse_output(text)
    assert (r.next_state, r.parse_status, r.success) == expect
    assert r.reasoning.startswith(text[len("<think>"): len("<think>") + 10])


def test_a_closing_think_in_another_case_still_ends_the_reasoning() -> None:
    # </Think>: the reasoning was cut at the first tag it quoted, so a quoted <valid>false</valid>
    # was read as the answer's flag and a valid action ended its episode as invalid
    text = f"<think>typing xyzzy would give <valid>false</valid>, but open door is listed</Think>\n<state>Door open</state>\n{FLAGS}"
    r = parse_output(text)
    assert (r.next_state, r.valid, r.parse_status) == ("Door open", True, "repaired")
    assert r.reasoning == "typing xyzzy would give <valid>false</valid>, but open door is listed"
    assert parse_output(text.replace("</Think>", "</think>")).parse_status == "ok"


def test_a_state_inside_the_reasoning_only_is_no_state() -> None:
    r = parse_output("<think>It should say <state>A hall.</state></think>\n<valid>true</valid> <done>false</done> <success>false</success>")
    assert r.parse_status == "failed"


@pytest.mark.parametrize("flag", ["done", "success"])
def test_a_flag_written_twice_with_different_values_fails(flag: str) -> None:
    text = GOOD.replace(f"<{flag}>false</{flag}>", f"<{flag}>true</{flag}><{flag}>false</{flag}>")
    r = parse_output(text)
    assert r.parse_status == "failed" and r.done and not r.success and r.reward == 0.0


@pytest.mark.parametrize("word", ["invalid", "false (not listed)", "maybe", ""])
def test_an_unreadable_valid_fails_like_an_unreadable_done(word: str) -> None:
    # a missing <valid> is taken as true; one that is there but unreadable is not guessed
    r = parse_output(GOOD.replace("<valid>true</valid>", f"<valid>{word}</valid>"))
    assert r.parse_status == "failed" and not r.valid and r.done and r.reward == 0.0
    assert parse_output(GOOD.replace("<done>false</done>", f"<done>{word}</done>")).parse_status == "failed"


def test_a_flag_written_twice_alike_is_a_repair() -> None:
    r = parse_output(GOOD.replace("<done>false</done>", "<done>false</done><done>false</done>"))
    assert r.parse_status == "repaired" and not r.done


@pytest.mark.parametrize(
    "text",
    [
        "<think>" * 128_000,
        "<think>a</think>" + "<state>" * 128_000,
        "<think>a</think><state>s</state>" + "<done>" * 128_000,
    ],
    ids=["think", "state", "done"],
)
def test_repeated_opening_tags_do_not_hang_the_parser(text: str) -> None:
    # A lazy regex tried from every repeated opening tag is quadratic: about 20 s for 32,000
    # tags here, so about 5 minutes for these 128,000. The guard only catches that hang (a
    # linear parse takes well under a second); it is not a speed target.
    results: list = []
    worker = threading.Thread(target=lambda: results.append(parse_output(text)), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "parse_output did not finish in 60 s: quadratic on repeated tags"
    assert results[0].parse_status == "failed"


def test_lone_surrogates_become_replacement_characters() -> None:
    # a server's JSON can carry "\\ud800"; records must always encode as UTF-8 (buffer files)
    r = parse_output(GOOD.replace("the hall", "the hall \ud800").replace("unlocked", "unlocked\udfff"))
    assert r.parse_status == "ok" and r.next_state == "You are in the hall \ufffd. The door is open."
    for text in (r.next_state, r.reasoning, r.raw):
        text.encode("utf-8")


# --- parser: fuzz ---------------------------------------------------------------

FRAGMENTS = st.sampled_from(
    ["<think>", "</think>", "<state>", "</state>", "<valid>", "</valid>", "<done>", "</done>", "<success>",
     "</success>", "<reward>", "</reward>", "true", "false", "True", "NO", "1", "0", "-3", "nan", "1e9", " ", "\n",
     "room", "<STATE>", "</Done>", "<", ">"]
)  # fmt: skip


def _check_invariants(r: ExperienceResult) -> None:
    assert isinstance(r, ExperienceResult)
    assert r.parse_status in ("ok", "repaired", "failed")
    assert r.reward in (0.0, 1.0)
    assert r.reward == (1.0 if r.done and r.success and r.valid else 0.0)
    assert not r.success or r.done
    if r.parse_status == "failed":
        assert r.done and not r.success
    else:
        assert r.next_state.strip()


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_fuzz_random_text_never_raises(text: str) -> None:
    _check_invariants(parse_output(text))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(FRAGMENTS, st.text(max_size=8)), max_size=30).map("".join))
def test_fuzz_tag_soup_never_raises(text: str) -> None:
    _check_invariants(parse_output(text))


_TEXT = st.text(alphabet=st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)), max_size=60)


@settings(max_examples=200, deadline=None)
@given(
    reasoning=_TEXT,
    state=_TEXT.filter(lambda s: s.strip()),
    valid=st.booleans(),
    done=st.booleans(),
    success=st.booleans(),
    cut=st.integers(min_value=0, max_value=400),
)
def test_fuzz_truncated_outputs(reasoning, state, valid, done, success, cut) -> None:
    success = success and done and valid
    full = render_output(result(reasoning=reasoning, next_state=state, valid=valid, done=done, success=success,
                                reward=float(done and success)))  # fmt: skip
    parsed = parse_output(full)
    assert parsed.parse_status == "ok"
    assert (parsed.next_state, parsed.done, parsed.success, parsed.valid) == (state.strip(), done, success, valid)
    _check_invariants(parse_output(full[: min(cut, len(full))]))


# --- prompt and SFT examples -----------------------------------------------------


def test_prompt_has_every_context_in_order() -> None:
    demo = make_transitions(1)[0]
    request = ExperienceRequest(
        instruction="find the coin", history=[HistoryStep(state="in the kitchen", action="go north")],
        state="You are in the pantry.", action="take coin", admissible_actions=["take coin", "go south"], demos=[demo],
    )  # fmt: skip
    prompt = build_prompt(request)
    positions = [prompt.index(s) for s in ("Task: find the coin", demo.next_state, "go north", "pantry", "Admissible actions: take coin, go south", "Action: take coin")]
    assert positions == sorted(positions)
    assert prompt.endswith("Answer:\n")


def test_target_segments_train_reasoning_and_next_state() -> None:
    segments = render_target(reasoning="why", next_state="next", valid=True, done=True, success=True, reward=1.0)
    assert [train for _, train in segments] == [True, True]
    assert segments[0][0] == "<think>why</think>\n"
    assert segments[1][0].startswith("<state>next</state>")
    assert parse_output("".join(s for s, _ in segments)).parse_status == "ok"


def test_a_step_cap_ending_is_neither_trained_nor_shown_as_the_games_end() -> None:
    # The model's prompt has no step count: a target or demo saying done at the cap would
    # teach it to end episodes on ordinary moves.
    capped = [msgspec.structs.replace(t, truncated=t.done) for t in _episode("a", 3)]
    capped = [msgspec.structs.replace(t, success=False, reward=0.0) for t in capped]
    last = training_examples(capped, ListBuffer([]), history_window=0, k=0)[-1]
    assert parse_output("".join(text for text, _ in last[1:])).done is False
    demo = build_prompt(ExperienceRequest(instruction="x", history=[], state="s", action="a", demos=[capped[-1]]))
    assert "valid=true done=false success=false" in demo
    assert capped[-1].done and not capped[-1].game_over and _episode("a", 3)[-1].game_over


def _episode(ep: str, n: int, instruction: str = "collect the coin") -> list[Transition]:
    return [
        Transition(task_id="t", episode_id=ep, step=i, state=f"room {ep}{i}", action=f"go {i}",
                   next_state=f"room {ep}{i + 1}", reward=float(i == n - 1), done=i == n - 1, success=i == n - 1,
                   reasoning=f"moving {i}", source="offline", instruction=instruction)
        for i in range(n)
    ]  # fmt: skip


def test_training_examples_use_the_inference_prompt_history_and_demos() -> None:
    data = _episode("a", 4) + _episode("b", 3)
    buffer = ListBuffer(data)
    examples = training_examples(data, buffer, history_window=2, k=2)
    requests = requests_for(data, buffer, history_window=2, k=2)
    assert len(examples) == len(data)
    for example, request, t in zip(examples, requests, data):
        prompt, train = example[0]
        assert train is False and prompt == build_prompt(request)
        assert all(train for _, train in example[1:])
        assert t not in request.demos and len(request.demos) == 2  # itself (and its episode) excluded
        assert [h.action for h in request.history] == [f"go {i}" for i in range(max(0, t.step - 2), t.step)]
        assert example[1][0] == f"<think>{t.reasoning}</think>\n"
        parsed = parse_output("".join(s for s, _ in example[1:]))
        assert (parsed.next_state, parsed.reward, parsed.done) == (t.next_state, t.reward, t.done)


def test_training_demos_from_other_tasks_never_show_the_same_task() -> None:
    data = [msgspec.structs.replace(t, task_id=t.episode_id) for t in _episode("a", 4) + _episode("b", 3) + _episode("c", 2)]
    requests = requests_for(data, ListBuffer(data), history_window=1, k=2, other_tasks=True)
    for request, t in zip(requests, data):
        assert len(request.demos) == 2 and all(d.task_id != t.task_id for d in request.demos)
    # the default keeps the same task's other episodes (a stored twin can be a demo)
    twins = _episode("a", 4) + _episode("b", 3)
    same = requests_for(twins, ListBuffer(twins), history_window=1, k=2)
    assert any(d.task_id == t.task_id for r, t in zip(same, twins) for d in r.demos)


def _world(ep: str, word: str, n: int) -> list[Transition]:
    """An episode whose states share ``word``: its own steps are each other's nearest neighbours."""
    return [
        Transition(task_id="t", episode_id=ep, step=i, state=f"{word} room {i}", action="look",
                   next_state=f"{word} room {i + 1}", reward=0.0, done=False, reasoning="", source="offline")
        for i in range(n)
    ]  # fmt: skip


def test_training_demos_never_come_from_the_examples_own_episode() -> None:
    """At inference the buffer never holds the current episode (the loop and verl store an
    episode after it ends), so a training example must not see its own episode as a demo:
    step t+1 of it shows the very next state the example is trained to write."""
    data = _world("a", "alpha", 5) + _world("b", "beta", 5)
    requests = requests_for(data, ListBuffer(data), history_window=1, k=2)
    for request, t in zip(requests, data):
        assert len(request.demos) == 2, "own-episode neighbours must not starve the demos"
        assert all(d.episode_id != t.episode_id for d in request.demos)


def test_training_demos_never_come_from_the_examples_episode_branches() -> None:
    """Early Experience branches carry their own episode ids (``<demo>/branch<t>.<j>``): a branch
    at a later step starts from the demo's next state, the very state the example is trained to
    write, and at inference neither the episode nor its branches are in the buffer."""
    demo = _world("a", "alpha", 3)
    branches = [msgspec.structs.replace(t, episode_id=branch_episode_id("a", t.step, 0), action="wait", next_state=t.state)
                for t in demo]  # fmt: skip
    data = demo + branches + _world("b", "beta", 4)
    requests = requests_for(data, ListBuffer(data), history_window=1, k=2)
    for request, t in zip(requests, data):
        assert len(request.demos) == 2
        if t.episode_id.startswith("a"):
            assert all(d.episode_id == "b" for d in request.demos), (t.episode_id, [d.episode_id for d in request.demos])


def _kitchen_move(task: str, ep: str, where: str) -> Transition:
    """The same (state, action) in every world; where the move leads is the world's own."""
    return Transition(task_id=task, episode_id=ep, step=0, state="You are in the kitchen.", action="move north",
                      next_state=f"You are in the {where}.", reward=0.0, done=False, source="offline")  # fmt: skip


def test_same_world_first_puts_the_worlds_own_then_the_same_action_ahead() -> None:
    found = [_kitchen_move(t, e, "x") for t, e in (("w0", "a"), ("w1", "b"), ("w0", "c"), ("w1", "d"), ("w1", "e"))]
    found[4] = msgspec.structs.replace(found[4], action="move south")
    found[2] = msgspec.structs.replace(found[2], action="move south")
    same = lambda task_id: task_id
    order = same_world_first(found, world="w1", action="move south", world_of=same)
    assert [d.episode_id for d in order] == ["e", "b", "d", "c", "a"]
    assert same_world_first(found, world="w9", action="move north", world_of=same) == [found[i] for i in (0, 1, 3, 2, 4)]
    assert same_world_first(found, world="w9", action="look", world_of=same) == found


def test_same_world_demos_show_where_the_episodes_own_world_leads() -> None:
    """Kitchens read alike in every world, so the nearest stored move is the first stored (the
    ties go to the earlier row) and comes from another world; same-world-first shows the
    episode's own world's, also for a variation (``~syn``) of that world."""
    stored = [_kitchen_move(f"w{i}", f"e{i}", f"room {i}") for i in range(6)] + [_kitchen_move("w4", "e4b", "room 4")]
    strip = lambda task_id: task_id.removesuffix("~syn")
    asked = [msgspec.structs.replace(stored[4], episode_id="now"), msgspec.structs.replace(stored[4], task_id="w4~syn", episode_id="v")]
    nearest = requests_for(asked, ListBuffer(stored), history_window=0, k=1)
    assert [r.demos[0].next_state for r in nearest] == ["You are in the room 0."] * 2
    own = requests_for(asked, ListBuffer(stored), history_window=0, k=2, world_of=strip)
    assert [[d.next_state for d in r.demos] for r in own] == [["You are in the room 4."] * 2] * 2
    # an example's own episode stays out: its world's other episode is shown, then the nearest others
    trained = requests_for([stored[4]], ListBuffer(stored), history_window=0, k=2, world_of=strip)[0]
    assert [d.episode_id for d in trained.demos] == ["e4b", "e0"]
    with pytest.raises(ValueError, match="other tasks"):
        requests_for(asked, ListBuffer(stored), history_window=0, k=1, other_tasks=True, world_of=strip)


def test_a_variation_plays_in_its_seed_tasks_world_unless_the_domain_says_otherwise() -> None:
    assert world_namer(None)("twx/coin/7~syn") == world_namer(None)("twx/coin/7") == "twx/coin/7"
    assert world_namer(type("D", (), {"world_of": staticmethod(lambda t: "w")})())("t") == "w"


def test_training_demos_from_other_tasks_are_found_past_a_large_task() -> None:
    """A task with more nearest neighbours than the first fetch still gets k demos."""
    data = _world("big", "alpha", 70) + [msgspec.structs.replace(t, task_id="u") for t in _world("small", "beta", 3)]
    data = [msgspec.structs.replace(t, task_id="t2") if t.episode_id == "big" else t for t in data]
    request = requests_for(data[:1], ListBuffer(data), history_window=0, k=2, other_tasks=True)[0]
    assert [d.task_id for d in request.demos] == ["u", "u"]


def test_successes_repeated_oversamples_only_the_wins() -> None:
    data = _episode("a", 4) + _episode("b", 3)  # each episode's last step wins
    repeated = successes_repeated(data, 4)
    assert len(repeated) == len(data) + 2 * 3
    assert repeated.count(data[3]) == repeated.count(data[6]) == 4
    assert [t for t in repeated if not t.success] == [t for t in data if not t.success]
    assert successes_repeated(data, 1) == data
    with pytest.raises(ValueError, match="repeats=0"):
        successes_repeated(data, 0)


def test_training_examples_without_buffer_or_history() -> None:
    data = _episode("a", 3)
    examples = training_examples(list(reversed(data)), None, history_window=0, k=3)
    assert all("History:" not in e[0][0] and "Similar transitions" not in e[0][0] for e in examples)


def _long_request(n_demos: int = 4, n_history: int = 3) -> ExperienceRequest:
    demos = [msgspec.structs.replace(t, state=f"demo{i} " + "word " * 40) for i, t in enumerate(make_transitions(n_demos))]
    history = [HistoryStep(state=f"past{i}", action=f"go {i}") for i in range(n_history)]
    return ExperienceRequest(instruction="find the coin", history=history, state="You are in the pantry.", action="take coin", demos=demos)


def test_fit_request_drops_the_least_similar_demos_then_the_oldest_history() -> None:
    request = _long_request()
    full = len(build_prompt(request))
    budget = full - 1  # one demo must go: the last (least similar), never the role or task
    fitted = fit_request(request, lambda p: len(p) <= budget)
    assert [d.state.split()[0] for d in fitted.demos] == ["demo0", "demo1", "demo2"]
    assert fitted.history == request.history
    prompt = build_prompt(fitted)
    assert prompt.startswith("You simulate a text environment.") and "Task: find the coin" in prompt
    bare = msgspec.structs.replace(request, demos=[], history=request.history[2:])
    fitted = fit_request(request, lambda p: len(p) <= len(build_prompt(bare)))
    assert fitted.demos == [] and [h.state for h in fitted.history] == ["past2"]
    assert fit_request(request, None) is request and fit_request(request, lambda p: True) is request
    # nothing left to drop: returned as it is, the backend cuts it
    assert fit_request(request, lambda p: False) == msgspec.structs.replace(request, demos=[], history=[])


class BudgetLM(ScriptedLM):
    """A backend with a prompt budget in characters (the hf backend's is in tokens)."""

    def __init__(self, budget: int, **kw) -> None:
        super().__init__(**kw)
        self.budget = budget
        self.sft_examples: list = []

    def prompt_fits(self, prompt: str, *, max_new_tokens: int) -> bool:
        return len(prompt) + max_new_tokens <= self.budget

    def sft(self, *, examples, epochs, lr, batch_size, on_epoch=None):
        self.sft_examples = list(examples)
        return {}


def test_training_and_inference_prompts_are_shortened_alike_to_the_backends_budget() -> None:
    data = _episode("a", 4) + _episode("b", 4) + _episode("c", 4)
    buffer = ListBuffer(data)
    full = [build_prompt(r) for r in requests_for(data, buffer, history_window=3, k=3)]
    budget = sorted(len(p) for p in full)[len(full) // 2] + 8  # about half the prompts are too long
    lm = BudgetLM(budget, answer=lambda p: GOOD)
    model = LMExperienceModel(lm, ExperienceModelConfig(history_window=3, top_k=3, max_new_tokens=8))
    model.train(transitions=data, buffer=buffer, epochs=1, lr=1e-3, batch_size=2)
    trained = [example[0][0] for example in lm.sft_examples]
    assert all(len(p) + 8 <= budget for p in trained) and trained != full
    assert all(p.startswith("You simulate") and "Task: collect the coin" in p for p in trained)
    model.predict(requests=requests_for(data, buffer, history_window=3, k=3))
    assert lm.calls[0]["prompts"] == trained  # the prompt a transition was trained on is the one it is asked
    shortened = sum(len(p) + 8 > budget for p in full)
    assert 0 < shortened < len(full) and model.metrics()["experience/prompts_shortened"] == shortened


# --- LMExperienceModel ------------------------------------------------------------


def test_predict_batches_and_retries_only_failures() -> None:
    lm = ScriptedLM(queue=[GOOD, "garbage", GOOD.replace("true", "TRUE"), "still garbage", GOOD])
    model = LMExperienceModel(lm, ExperienceModelConfig(max_retries=2))
    requests = [ExperienceRequest(instruction="x", history=[], state=f"s{i}", action="a") for i in range(3)]
    results = model.predict(requests=requests)
    assert [r.parse_status for r in results] == ["ok", "ok", "repaired"]
    assert [len(c["prompts"]) for c in lm.calls] == [3, 1, 1]
    assert lm.calls[0]["stop"] == [END_TAG]
    assert len({c["seed"] for c in lm.calls}) == 3  # a retry samples afresh
    assert [c["temperature"] for c in lm.calls] == [0.7, 0.7, 0.7]
    m = model.metrics()
    assert m["experience/retries"] == 2 and m["experience/requests"] == 3 and m["experience/parse_failed"] == 0


def test_a_backend_that_answers_fewer_prompts_than_it_was_given_is_named() -> None:
    # Its answers were zipped with the requests: the last steps went unanswered without a word.
    from dreamgym_core.contracts import ComponentError

    class Short(ScriptedLM):
        def generate(self, *, prompts, **kwargs):
            return super().generate(prompts=prompts, **kwargs)[:-1]

    model = LMExperienceModel(Short(queue=[GOOD, GOOD]), ExperienceModelConfig(max_retries=0))
    requests = [ExperienceRequest(instruction="x", history=[], state=f"s{i}", action="a") for i in range(2)]
    with pytest.raises(ComponentError, match=r"^experience model backend '.*': generate\(\) returned 1 texts for 2 prompts"):
        model.predict(requests=requests)


def test_predict_gives_up_after_max_retries_and_counts() -> None:
    lm = ScriptedLM(answer=lambda p: "no format at all")
    model = LMExperienceModel(lm, ExperienceModelConfig(max_retries=1, temperature=0.0, retry_temperature=0.5))
    requests = [ExperienceRequest(instruction="x", history=[], state="s", action="a")]
    check_experience_model(model, requests)
    assert len(lm.calls) == 2 * 1  # check_experience_model calls predict once: 1 try + 1 retry
    assert [c["temperature"] for c in lm.calls] == [0.0, 0.5]  # greedy first, sampled retry
    assert model.metrics()["experience/parse_failure_rate"] == 1.0


def test_a_stream_has_its_own_seeds_and_leaves_the_models_count_alone() -> None:
    lm = ScriptedLM(answer=lambda p: GOOD)
    model = LMExperienceModel(lm, ExperienceModelConfig(seed=3))
    request = [ExperienceRequest(instruction="x", history=[], state="s", action="a")]
    model.predict(requests=request)
    fidelity = model.stream("fidelity")
    fidelity.predict(requests=request * 2)
    model.predict(requests=request)
    first, measured, second = (c["seed"] for c in lm.calls)
    # the model's own count goes on as if the measurement had not run
    assert (first, second) == (call_seed(3, 1), call_seed(3, 2))
    assert measured == call_seed(stream_seed(3, "fidelity"), 1) and measured not in (first, second)
    model.stream("fidelity").predict(requests=request)
    assert lm.calls[-1]["seed"] == measured  # a stream is a function of its name, not of what ran before
    assert model.metrics()["experience/requests"] == 2 and fidelity.metrics()["experience/requests"] == 2


def test_a_draw_moves_the_main_stream_only() -> None:
    request = [ExperienceRequest(instruction="x", history=[], state="s", action="a")]
    seeds = {}
    for draw in (0, 1, 2):
        lm = ScriptedLM(answer=lambda p: GOOD)
        model = LMExperienceModel(lm, ExperienceModelConfig(seed=3, draw=draw))
        model.predict(requests=request)
        model.stream("fidelity").predict(requests=request)
        seeds[draw] = [c["seed"] for c in lm.calls]
    assert seeds[0] == [call_seed(3, 1), call_seed(stream_seed(3, "fidelity"), 1)]  # draw 0: the seed's own stream
    assert seeds[1][0] == call_seed(draw_seed(3, 1), 1) and len({seeds[d][0] for d in seeds}) == 3
    assert seeds[0][1] == seeds[1][1] == seeds[2][1]  # measurement streams ignore the draw


def test_model_config_of_a_pipeline() -> None:
    from dreamgym_core.config import PipelineConfig

    pipeline = msgspec.convert(
        {"plugins": [], "env": {"name": "e"}, "policy": {"name": "p"}, "algo": {"name": "a"}, "seed": 7,
         "loop": {"mode": "real", "history_window": 1, "top_k": 2, "experience_temperature": 0.3, "experience_draw": 2},
         "experience": {"max_new_tokens": 99, "max_retries": 0}},
        type=PipelineConfig,
    )
    config = model_config_of(pipeline)
    assert (config.history_window, config.top_k, config.temperature) == (1, 2, 0.3)
    assert (config.max_new_tokens, config.max_retries, config.seed, config.draw) == (99, 0, 7, 2)


def test_replicate_seeds_share_no_sampling_noise() -> None:
    # With base + call, run s + 1's call c sampled with run s's call c + 1's seed.
    calls = {s: {call_seed(draw_seed(s, 0), c) for c in range(1, 1001)} for s in range(3)}
    assert len(calls[0] | calls[1] | calls[2]) == 3000
    assert all(0 <= seed < 2**63 for seed in calls[0])


def test_stream_seeds_differ_by_name_and_base_seed() -> None:
    names = ["fidelity", "replay/eval_before", "replay/eval"]
    seeds = {stream_seed(s, n) for s in range(3) for n in names}
    assert len(seeds) == 9 and min(seeds) > 2**24


def test_config_decodes_from_empty_and_rejects_bad_values() -> None:
    assert issubclass(ExperienceModelConfig, Config)
    assert msgspec.convert({}, type=ExperienceModelConfig).max_retries == 2
    with pytest.raises(msgspec.ValidationError, match="temperature"):
        msgspec.convert({"temperature": -1}, type=ExperienceModelConfig)


def test_train_runs_joint_sft_on_segments() -> None:
    class Trainable(ScriptedLM):
        def sft(self, *, examples, epochs, lr, batch_size):
            self.examples = examples
            return {"losses/sft_loss": 1.0}

    lm = Trainable(answer=lambda p: GOOD)
    data = _episode("a", 3)
    model = LMExperienceModel(lm, ExperienceModelConfig(top_k=1, history_window=1))
    assert model.train(transitions=data, buffer=ListBuffer(data), epochs=1, lr=1e-3, batch_size=2) == {"losses/sft_loss": 1.0}
    assert lm.examples == training_examples(data, ListBuffer(data), history_window=1, k=1)


def test_train_passes_step_progress_only_to_a_backend_that_takes_it() -> None:
    class Stepping(ScriptedLM):
        def sft(self, *, examples, epochs, lr, batch_size, on_batch=None):
            on_batch(1, 1, 1, 0.5)
            return {"losses/sft_loss": 0.5}

    class Old(ScriptedLM):
        def sft(self, *, examples, epochs, lr, batch_size):
            return {"losses/sft_loss": 1.0}

    data, seen = _episode("a", 3), []
    for lm in (Stepping(answer=lambda p: GOOD), Old(answer=lambda p: GOOD)):
        model = LMExperienceModel(lm, ExperienceModelConfig(top_k=1, history_window=1))
        model.train(transitions=data, buffer=ListBuffer(data), epochs=1, lr=1e-3, batch_size=2, on_batch=lambda *step: seen.append(step))
    assert seen == [(1, 1, 1, 0.5)]


def test_training_answers_longer_than_the_answer_budget_are_warned_of(caplog) -> None:
    # A new env's states can outgrow the max_new_tokens its pipeline copied: every answer
    # was then cut at generation and failed to parse, with no word why.
    class Counting(ScriptedLM):
        def sft(self, *, examples, epochs, lr, batch_size):
            return {"losses/sft_loss": 1.0}

        def count_tokens(self, texts):
            return [len(text.split()) for text in texts]  # a word a token

    data = _episode("a", 3)
    lengths = Counting().count_tokens(["".join(t for t, trained in ex if trained) for ex in training_examples(data, None, history_window=1, k=1)])
    for budget, warned in ((max(lengths), False), (max(lengths) - 1, True)):
        caplog.clear()
        model = LMExperienceModel(Counting(answer=lambda p: GOOD), ExperienceModelConfig(top_k=1, history_window=1, max_new_tokens=budget))
        with caplog.at_level("WARNING"):
            model.train(transitions=data, buffer=ListBuffer(data), epochs=1, lr=1e-3, batch_size=2)
        said = f"training answers are longer than experience.max_new_tokens={budget} tokens (the longest {max(lengths)})"
        assert (said in caplog.text) is warned
    assert f"raise it to at least {max(lengths)}" in caplog.text


# --- M_task -------------------------------------------------------------------------


TASK = Task(id="t1", instruction="Collect the coin in the kitchen.", domain="twx")


@pytest.mark.parametrize(
    "text, n, expect",
    [
        ("SELECTION: 2\nREASONING: harder", 3, 1),
        (" 3\nREASONING: ok", 3, 2),
        ("selection - candidate #1", 2, 0),
        ("**Selection:** 2", 2, 1),
        ("SELECTION: 0\nREASONING: none fits", 3, None),
        ("SELECTION: 7", 3, None),
        ("I like the second one", 3, None),
        ("SELECTION: " + "9" * 5000, 3, None),  # past Python's int-conversion digit limit
        ("SELECTION: 0002", 3, 1),
        ("SELECTION: -1 (none qualifies)", 3, None),  # was candidate 1
        ("SELECTION: 2.5", 3, None),  # was candidate 2
        ("SELECTION: 2.\nREASONING: harder", 3, 1),
        ("SELECTION: none\nREASONING: selection 1 is a rewording", 3, None),  # was candidate 1
        ("SELECTION: -1\nREASONING: selection 2 would repeat", 3, None),  # was candidate 2
        ("SELECTION:SELECTION 2\nREASONING: harder", 3, 1),  # the label written twice
        ("SELECTION: <2>", 3, 1),  # the prompt's own "SELECTION: <n>" with its brackets kept: was none
        ("SELECTION: [3]", 3, 2),
        ("SELECTION: (1)", 3, 0),
        ("SELECTION: <-1>", 3, None),
    ],
)
def test_parse_selection_is_tolerant(text: str, n: int, expect) -> None:
    assert parse_selection(text, n) == expect


def test_parse_variation() -> None:
    assert parse_variation("\n New task: \"Find two coins.\"\nmore") == "Find two coins."
    assert parse_variation("1. seed=12, numLocations=5") == "seed=12, numLocations=5"
    assert parse_variation("   \n") is None
    # a numbered list item that carries the label too
    assert parse_variation('1. New task: "Find two coins."') == "Find two coins."
    assert parse_variation("New task: 2) seed=3") == "seed=3"
    # a chat model's layout: bold label, a preamble, a lone number, a quote before the full stop
    assert parse_variation("**New task:** Find the key") == "Find the key"
    assert parse_variation("Sure! Here is a new, harder task:") is None
    assert parse_variation("Sure! Here is one:\nFind the red key") == "Find the red key"
    assert parse_variation("1.") is None
    assert parse_variation('New task: "Open the door".') == "Open the door."


def test_vary_and_select_use_domain_description() -> None:
    class Domain:
        def describe_variation(self, task):
            return "write key=value pairs"

    lm = ScriptedLM(queue=["seed=4", "seed=4", Task.__name__, TASK.instruction, "SELECTION 2"])
    model = LMExperienceModel(lm, domain=Domain())
    variations = model.vary_tasks(task=TASK, n=4)
    assert variations == ["seed=4", "Task"]  # duplicates and the original dropped
    assert "write key=value pairs" in lm.calls[0]["prompts"][0]
    assert model.select_task(task=TASK, candidates=variations) == 1
    assert "1. seed=4\n2. Task" in lm.calls[1]["prompts"][0]
    assert model.select_task(task=TASK, candidates=[]) is None


def test_vary_tasks_drops_copies_that_differ_in_case_spacing_or_closing_stop() -> None:
    # "Collect the coin in the kitchen" (no full stop) and its double-spaced or "!" copies were
    # returned as variations of the task itself.
    lm = ScriptedLM(queue=["Collect the coin in the kitchen", "collect the  coin in the kitchen!", "Find two coins.",
                           "find two coins"])
    assert LMExperienceModel(lm).vary_tasks(task=TASK, n=4) == ["Find two coins."]


# --- reasoning annotation ----------------------------------------------------------


def _teacher_json(n: int) -> str:
    steps = ", ".join(f'{{"step_id": {i}, "transition_plan": "plan {i}"}}' for i in range(n))
    return (
        'Sure! {"task_tutorial": {"overall_plan": "p", "success_mode": "s", "failure_mode": "f"}, '
        f'"state_transitions": [{steps}]}}'
    )


def test_parse_annotation_requires_one_plan_per_step() -> None:
    assert parse_annotation(_teacher_json(3), 3) == ["plan 0", "plan 1", "plan 2"]
    assert parse_annotation(_teacher_json(2), 3) is None
    assert parse_annotation("not json {", 1) is None
    assert parse_annotation('{"task_tutorial": {}, "state_transitions": [{"step_id": 0}]}', 1) is None
    # a teacher backend may return a lone surrogate (JSON can escape one): a plan, not a UnicodeEncodeError
    assert parse_annotation(_teacher_json(1).replace("plan 0", "plan \udcff 0"), 1) == ["plan \ufffd 0"]
    assert parse_annotation('{"oops": "\ud800"}', 1) is None


def test_teacher_annotates_and_retries() -> None:
    data = _episode("a", 3) + _episode("b", 2)
    lm = ScriptedLM(queue=[_teacher_json(3), "oops", _teacher_json(2)])
    annotator = TeacherAnnotator(lm)
    out = annotator.annotate(transitions=data)
    assert [t.reasoning for t in out] == ["plan 0", "plan 1", "plan 2", "plan 0", "plan 1"]
    assert [(t.episode_id, t.step) for t in out] == [(t.episode_id, t.step) for t in data]
    assert annotator.counters == {"episodes": 2, "teacher": 2, "fallback": 0, "retries": 1}
    assert "Task succeeded: true" in lm.calls[0]["prompts"][0] and "transition_plan" in annotation_prompt(data[:3])


def test_the_teacher_is_told_of_a_step_cap_ending() -> None:
    """Only a truncated step is marked: the teacher's plan should not call it the end of the game
    (the experience model is trained on done=false there)."""
    data = _episode("a", 3)
    cut = data[:-1] + [msgspec.structs.replace(data[-1], done=True, success=False, reward=0.0, truncated=True)]
    marker = "the step limit cut the episode here"
    assert marker not in annotation_prompt(data)
    prompt = annotation_prompt(cut)
    assert prompt.count(marker) == 1 and prompt.index(marker) > prompt.index("Step 2:")


def test_teacher_retries_are_sampled_not_greedy_repeats() -> None:
    # a greedy retry repeats the answer that failed: retries run at least at retry_temperature
    data = _episode("a", 2)
    lm = ScriptedLM(queue=["oops", "oops", _teacher_json(2)])
    annotator = TeacherAnnotator(lm)
    assert [t.reasoning for t in annotator.annotate(transitions=data)] == ["plan 0", "plan 1"]
    assert [c["temperature"] for c in lm.calls] == [0.0, 0.7, 0.7]
    lm = ScriptedLM(queue=["oops", _teacher_json(2)])
    TeacherAnnotator(lm, temperature=0.9, retry_temperature=0.5).annotate(transitions=data)
    assert [c["temperature"] for c in lm.calls] == [0.9, 0.9]  # never below the configured temperature


def test_teacher_reflection_retries_are_sampled_not_greedy_repeats() -> None:
    from dreamgym_core.early import TeacherReflector

    step = _episode("a", 1)[0]
    branch = msgspec.structs.replace(step, episode_id="a/branch-0", action="look", next_state="nothing")
    lm = ScriptedLM(queue=["", "Taking it wins."])
    teacher = TeacherReflector(lm, max_retries=2)
    assert teacher.reflect({("a", 0): (TASK, step, [branch])}) == {("a", 0): "Taking it wins."}
    assert [c["temperature"] for c in lm.calls] == [0.0, 0.7]
    lm = ScriptedLM(queue=["", "Taking it wins."])
    TeacherReflector(lm, retry_temperature=0.3).reflect({("a", 0): (TASK, step, [branch])})
    assert [c["temperature"] for c in lm.calls] == [0.0, 0.3]


def test_teacher_failure_is_never_silent() -> None:
    data = _episode("a", 2)
    with pytest.raises(AnnotationError, match="episode 'a'"):
        TeacherAnnotator(ScriptedLM(answer=lambda p: "no"), max_retries=1).annotate(transitions=data)

    class Rules:
        def annotate(self, *, transition):
            return f"rule {transition.step}"

    annotator = TeacherAnnotator(ScriptedLM(answer=lambda p: "no"), fallback=Rules(), max_retries=0)
    assert [t.reasoning for t in annotator.annotate(transitions=data)] == ["rule 0", "rule 1"]
    assert annotator.counters["fallback"] == 1
    assert [t.reasoning for t in annotate_with_domain(data, Rules())] == ["rule 0", "rule 1"]

    class NoRules:
        def annotate(self, *, transition):
            return None

    # a fallback that returns no str fails here, naming it, not later in the prompt builder
    with pytest.raises(WrongReturn, match="annotator fallback: annotate.*returned NoneType"):
        TeacherAnnotator(ScriptedLM(answer=lambda p: "no"), fallback=NoRules(), max_retries=0).annotate(transitions=data)


@pytest.mark.parametrize(
    "answers, message",
    [
        (lambda n: [_teacher_json(2)] * (n - 1), r"returned 1 texts for 2 prompts"),
        (lambda n: None, r"returned NoneType, expected a list of 2 str"),
        (lambda n: [{"text": _teacher_json(2)}] * n, r"returned dict at position 0, expected str"),
    ],
    ids=["short", "none", "not-str"],
)
def test_a_teacher_backend_that_gives_no_text_per_episode_is_named(answers, message) -> None:
    # its answers were zipped with the episodes: a short list sent the last ones to the rules (or
    # failed them as bad JSON) without a word, and None or a dict was a bare TypeError
    from dreamgym_core.contracts import ComponentError

    class Wrong(ScriptedLM):
        def generate(self, *, prompts, **kwargs):
            return answers(len(prompts))

    class Rules:
        def annotate(self, *, transition):
            return "rule"

    data = _episode("a", 2) + _episode("b", 2)
    with pytest.raises(ComponentError, match=rf"^teacher backend 'scripted-lm': generate\(\) {message}") as info:
        TeacherAnnotator(Wrong(), fallback=Rules()).annotate(transitions=data)
    assert "\n" not in str(info.value)


def test_the_pipeline_sets_the_teachers_budget_and_its_rule_fallback(caplog) -> None:
    from dreamgym_core.config import pipeline_from_dict
    from dreamgym_core.stages import annotate_offline
    from stand_ins import pipeline_dict

    class Rules:
        def annotate(self, *, transition):
            return f"rule {transition.step}"

    data = _episode("a", 2) + _episode("b", 1)
    # episode a gets a plan; b's answer is cut short every time (no JSON)
    answer = lambda prompt: _teacher_json(2) if "room a0" in prompt else '{"task_tutorial": {"overall'  # noqa: E731
    experience = {"annotator": "teacher", "teacher": {"name": "x"}}

    def annotate(lm, **teacher):
        config = pipeline_from_dict({**pipeline_dict("runs/x"), "experience": {**experience, **teacher}})
        return annotate_offline(data, domain=Rules(), pipeline=config, build_teacher=lambda: lm, source="p.yaml")

    lm = ScriptedLM(answer=answer)
    with pytest.raises(AnnotationError, match="episode 'b' after 3 tries"):
        annotate(lm)  # by default an unusable episode stops the run
    assert {c["max_new_tokens"] for c in lm.calls} == {1024}
    lm = ScriptedLM(answer=answer)
    with caplog.at_level("WARNING", logger="dreamgym_core.stages"):
        out = annotate(lm, teacher_max_new_tokens=3000, teacher_fallback="rule")
    assert [t.reasoning for t in out] == ["plan 0", "plan 1", "rule 0"]
    assert {c["max_new_tokens"] for c in lm.calls} == {3000}
    assert "1 of 2 episodes unusable after retries" in caplog.text


def test_prompt_renders_reward_consistently() -> None:
    demo = _episode("a", 1)[0]
    text = build_prompt(ExperienceRequest(instruction="x", history=[], state="s", action="a", demos=[demo]))
    assert re.search(r"done=true success=true reward=1", text)


def test_training_a_backend_without_sft_names_the_setting_that_uses_it_as_it_is():
    # A served model (the openai backend) has no sft; the error says how to run with it untrained.
    model = LMExperienceModel(ScriptedLM(lambda p: ""), ExperienceModelConfig())
    with pytest.raises(DreamGymError, match=r"'scripted-lm' cannot be trained .*set experience.skip: true"):
        model.train(transitions=make_transitions(2), buffer=ListBuffer(), epochs=1, lr=1e-3, batch_size=2)


# --- parser: cases each rule of the docstring decides -------------------------------


@pytest.mark.parametrize(
    "text, expect",
    [
        # a flag tag in another case, or left open before the next tag: read, and a repair
        (GOOD.replace("<done>false</done>", "<DONE>false</DONE>"), dict(done=False)),
        (GOOD.replace("<done>false</done>", "<Done>false</done>"), dict(done=False)),
        (GOOD.replace("<success>false</success>", "<success>false"), dict(success=False)),
        (GOOD.replace("<done>false</done>", "<done>true</done>").replace("</done>", ""), dict(done=True)),
        # a boolean with a trailing full stop
        (GOOD.replace("<done>false</done>", "<done>false.</done>"), dict(done=False)),
    ],
)
def test_flags_read_with_a_repair(text: str, expect: dict) -> None:
    r = parse_output(text)
    assert r.parse_status == "repaired"
    for key, value in expect.items():
        assert getattr(r, key) == value


def test_a_flag_written_twice_once_unreadable_fails() -> None:
    # the readable copy is not trusted over the unreadable one
    r = parse_output(GOOD.replace("<done>false</done>", "<done>false</done><done>maybe</done>"))
    assert r.parse_status == "failed" and r.done and r.reward == 0.0


def test_flags_written_before_the_reasoning_are_read() -> None:
    # outside the think and state blocks means before the reasoning too
    text = "<valid>false</valid>\n" + GOOD.replace("<valid>true</valid> ", "")
    r = parse_output(text)
    assert r.parse_status == "ok" and r.valid is False and (r.done, r.success, r.reward) == (False, False, 0.0)


def test_a_stray_closing_state_tag_before_the_state_does_not_empty_it() -> None:
    text = GOOD.replace("<state>", "</state>\n<state>", 1)
    r = parse_output(text)
    assert r.parse_status != "failed" and r.next_state == "You are in the hall. The door is open."


def test_a_state_of_exactly_the_limit_is_kept_whole() -> None:
    from dreamgym_core.experience import MAX_TEXT_CHARS

    state = "x" * MAX_TEXT_CHARS
    r = parse_output(GOOD.replace("You are in the hall. The door is open.", state))
    assert r.parse_status == "ok" and r.next_state == state
    r = parse_output(GOOD.replace("You are in the hall. The door is open.", state + "y"))
    assert r.parse_status == "repaired" and r.next_state == state


def test_the_outcome_reward_is_one_only_on_the_valid_final_step_of_a_success() -> None:
    from dreamgym_core.experience import outcome_reward

    assert outcome_reward(done=True, success=True) == 1.0
    assert outcome_reward(done=False, success=True) == 0.0  # not the final step
    assert outcome_reward(done=True, success=True, valid=False) == 0.0
    assert outcome_reward(done=True, success=False) == 0.0


@pytest.mark.parametrize("reward, shown", [(0.0, "0"), (0.49, "0"), (0.5, "1"), (1.0, "1")])
def test_a_fractional_reward_is_shown_rounded_half_up(reward: float, shown: str) -> None:
    segments = render_target(reasoning="r", next_state="s", valid=True, done=True, success=True, reward=reward)
    assert segments[1][0].endswith(f"<reward>{shown}</reward>")


def test_no_flag_tag_forms_across_a_cut_out_state_block() -> None:
    # "<su" before the state block and "ccess>..." after it are not a <success> tag
    text = "<think>x</think>\n<valid>true</valid> <done>false</done> <su<state>room</state>ccess>true</success>"
    assert parse_output(text).parse_status == "failed"  # no <success> was written


def test_parse_annotation_refuses_a_step_planned_twice() -> None:
    twice = ('{"task_tutorial": {}, "state_transitions": [{"step_id": 0, "transition_plan": "a"}, '
             '{"step_id": 0, "transition_plan": "b"}, {"step_id": 1, "transition_plan": "c"}]}')
    assert parse_annotation(twice, 2) is None


def test_a_reward_written_twice_alike_is_a_repair() -> None:
    r = parse_output(GOOD.replace("<reward>0</reward>", "<reward>0</reward><reward>0</reward>"))
    assert r.parse_status == "repaired" and r.reward == 0.0


def test_parse_annotation_refuses_an_empty_plan() -> None:
    blank = '{"task_tutorial": {}, "state_transitions": [{"step_id": 0, "transition_plan": "  "}]}'
    assert parse_annotation(blank, 1) is None


class RankedBuffer:
    """Neighbours by a fixed rank, kept in ``reasoning`` (lower is nearer)."""

    def __init__(self, transitions):
        self.transitions = sorted(transitions, key=lambda t: float(t.reasoning))

    def retrieve(self, *, queries, k):
        return [self.transitions[:k] for _ in queries]


def _ranked_step(task: str, episode: str, index: int, rank: int) -> Transition:
    return Transition(task_id=task, episode_id=episode, step=index, state=f"s{index}", action="go",
                      next_state=f"n{index}", reward=0.0, done=False, reasoning=str(rank))  # fmt: skip


def test_same_world_training_demos_are_those_inference_shows_whatever_the_episode_holds() -> None:
    # The episode's own steps took places of the same-world pool when training (they are in the
    # buffer then, and excluded only after the fetch), so its nearest same-world demos from
    # another episode fell out: training prompts showed other worlds, inference its own.
    from dreamgym_core.experience import SAME_WORLD_POOL, world_namer

    step = _ranked_step
    own = [step("W/1", "E", i, i) for i in range(20)]  # nearest: the episode being annotated
    others = [step(f"V/{i}", f"F{i}", 0, 20 + i) for i in range(SAME_WORLD_POOL - 20)]
    same_world = [step("W/1", "G", i, SAME_WORLD_POOL + i) for i in range(4)]
    world_of = world_namer(None)
    trained = requests_for(own, RankedBuffer(own + others + same_world), history_window=0, k=4, world_of=world_of)[0]
    played = requests_for(own[:1], RankedBuffer(others + same_world), history_window=0, k=4, world_of=world_of)[0]
    assert [d.episode_id for d in played.demos] == ["G"] * 4
    assert trained.demos == played.demos


def test_same_world_demos_come_from_the_pool_inference_sorts_whatever_the_other_families_hold() -> None:
    # The fetch was the pool plus the largest family of the batch, sorted whole: a one-step
    # episode batched with a 20-step one saw a same-world demo ranked past the pool (which
    # inference never shows), and fidelity, whose episode is not in the buffer, always did.
    from dreamgym_core.experience import SAME_WORLD_POOL, world_namer

    step = _ranked_step
    short = [step("W/1", "E", 0, 0)]
    others = [step(f"V/{i}", f"F{i}", 0, 1 + i) for i in range(SAME_WORLD_POOL)]
    past_pool = [step("W/1", "G", 0, SAME_WORLD_POOL + 5)]
    long = [step("X/9", "L", i, 10_000 + i) for i in range(20)]
    world_of = world_namer(None)
    buffer = RankedBuffer(short + others + past_pool + long)
    trained = requests_for(short + long, buffer, history_window=0, k=1, world_of=world_of)[0]
    played = requests_for(short, RankedBuffer(others + past_pool + long), history_window=0, k=1, world_of=world_of)[0]
    assert played.demos[0].episode_id == "F0"
    assert trained.demos == played.demos


def test_a_buffer_that_drops_queries_is_named_not_zipped_away() -> None:
    from dreamgym_core.contracts import ComponentError

    class ShortBuffer(ListBuffer):
        def retrieve(self, *, queries, k):
            return super().retrieve(queries=queries, k=k)[:1]

    data = _episode("a", 3) + _episode("b", 3)
    with pytest.raises(ComponentError, match=r"^buffer ShortBuffer: retrieve\(\) returned 1 lists for 6 queries"):
        requests_for(data, ShortBuffer(data), history_window=1, k=2)



def test_a_resumed_model_keeps_its_backends_call_counters() -> None:
    # The checkpoint kept the model's own counters but not the backend's (an openai server's
    # calls, retries, failed calls): a resumed run logged experience/backend_* from 0 again.
    class CountingLM(ScriptedLM):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.stats = {"calls": 0, "failed_calls": 0}

    used = LMExperienceModel(CountingLM(queue=[]))
    used.backend.stats.update(calls=13, failed_calls=2)
    state = msgspec.json.decode(msgspec.json.encode(used.state_dict()))
    resumed = LMExperienceModel(CountingLM(queue=[]))
    resumed.load_state_dict(state)
    assert resumed.metrics()["experience/backend_calls"] == 13.0 and resumed.backend.stats["failed_calls"] == 2
    old = {k: v for k, v in state.items() if k != "backend_stats"}  # a checkpoint from before they were kept
    LMExperienceModel(CountingLM(queue=[])).load_state_dict(old)
    with pytest.raises(ValueError, match="backend_stats must map names to finite numbers"):
        LMExperienceModel(CountingLM(queue=[])).load_state_dict(state | {"backend_stats": {"calls": "13"}})
