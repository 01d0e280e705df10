"""The miniwob domain on real MiniWoB++ pages in Debian's headless Chromium.

Every test but the pure ones needs Chromium and ChromeDriver (``apt-get install chromium
chromium-driver``, which .ci/run does); without them they skip, naming what is missing.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import numpy as np
import pytest

from dreamgym_core.errors import ConfigError
from dreamgym_core.plugins import Plugins
from dreamgym_core.records import Task, Transition
from dreamgym_core.testing import check_domain
from dreamgym_core.testing.processes import bounded, ctrl_c_run, stop_process
from dreamgym_plugin_miniwob import BrowserError, MiniWoBConfig, MiniWoBDomain, parse_action, render_state
from dreamgym_plugin_miniwob.domain import annotate_transition
from dreamgym_plugin_miniwob.env import MiniWoBEnv, unsendable_character
from dreamgym_plugin_miniwob.experts import EXPERTS
from dreamgym_plugin_miniwob.page import (
    Element, Page, _processes_with_argument, find_browser, kill_processes_using, reap_orphaned_browsers, task_names,
)

try:
    find_browser()
    NO_BROWSER = ""
except BrowserError as exc:
    NO_BROWSER = str(exc)
browser = pytest.mark.skipif(bool(NO_BROWSER), reason=NO_BROWSER)

def _our_browsers() -> set[str]:
    """Profile directories of the running browsers this plugin started (one per browser)."""
    listing = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"--user-data-dir=(\S*dreamgym-chromium-\S+)", listing))


CONFIG = MiniWoBConfig(tasks=["login-user"], train_seeds=4, valid_seeds=2, test_seeds=3)


def _task(payload: dict) -> Task:
    """A task with ``payload``, as a synthetic task or a stored one could carry."""
    return Task(id="miniwob/x/1", instruction="x", domain="miniwob", payload=payload)


@pytest.fixture(scope="module")
def domain():
    if NO_BROWSER:
        pytest.skip(NO_BROWSER)
    built = MiniWoBDomain(CONFIG)
    yield built
    built.close()


@pytest.fixture
def env(domain):
    made = domain.make_env()
    yield made
    made.close()


def test_registered_through_the_entry_point():
    spec = Plugins.for_names(["miniwob"]).components("env")["miniwob"]
    assert spec.plugin == "miniwob" and spec.config_type is MiniWoBConfig


def test_action_parsing():
    assert parse_action('type [5] "Myron"') == ("type", 5, "Myron")
    assert parse_action("type 5 two words") == ("type", 5, "two words")
    assert parse_action("Click [12]") == ("click", 12, "")
    assert parse_action("click 3") == ("click", 3, "")
    for bad in ("click [4] now", "type [5]", 'type [5] ""', "press enter", "click [x]", ""):
        assert parse_action(bad) is None, bad


def test_state_rendering_lists_text_and_inputs_only():
    elements = [
        Element(ref=1, tag="body"), Element(ref=2, tag="div"),  # layout only: left out
        Element(ref=4, tag="button", text="no"),
        Element(ref=5, tag="input_text", value="ab", focused=True),
        Element(ref=6, tag="input_checkbox", value=False),
        Element(ref=7, tag="label", text="91YPF"),
    ]
    assert render_state(elements, max_elements=10) == (
        '[4] button "no"\n[5] input_text value="ab" (focused)\n[6] input_checkbox unchecked\n[7] label "91YPF"'
    )
    assert render_state(elements, max_elements=2).splitlines()[-1] == "... 2 more elements"
    assert render_state(elements[:2], max_elements=2) == "(empty page)"


def test_a_select_shows_its_choice_and_a_drop_downs_options():
    elements = [
        Element(ref=4, tag="select", value="B b", options=("A", 'B "b"'), focused=True),  # a drop-down
        Element(ref=5, tag="select"),  # a list box: its options are elements
        Element(ref=6, tag="option", text="C", selected=True), Element(ref=7, tag="option", text="D"),
    ]
    assert render_state(elements, max_elements=10).splitlines() == [
        '[4] select value="B b" options: "A", "B \\"b\\"" (focused)', "[5] select", '[6] option "C" (selected)', '[7] option "D"',
    ]


def test_a_text_less_leaf_is_listed_by_what_tells_it_apart():
    """Icons, colour boxes and SVG shapes show no text, and were never listed: email-inbox's
    star and trash, click-color's boxes, grid-coordinate's points could not be clicked."""
    elements = [
        Element(ref=1, tag="div", classes="email-actions", background="rgb(0, 0, 0)"),  # a container: left out
        Element(ref=2, tag="span", classes="star", leaf=True),
        Element(ref=3, tag="div", classes="color", background="rgb(0, 255, 255)", leaf=True),
        Element(ref=4, tag="span", background="rgb(161, 33, 33)", leaf=True),  # a shade has no name
        Element(ref=5, tag="circle", id="(-2,1)", classes="plot-point", background="rgb(0, 0, 255)", leaf=True),
        Element(ref=6, tag="span", leaf=True),  # nothing tells it apart: left out
        Element(ref=7, tag="div", text="Audrey", id="x", classes="email-sender", leaf=True),  # as before
        Element(ref=8, tag="input_text", value="", id="tags", classes="ui-autocomplete-input", leaf=True),  # as before
        Element(ref=9, tag="div", id='a "b"', background="rgba(255, 0, 0, 0.5)", leaf=True),
    ]
    assert render_state(elements, max_elements=10).splitlines() == [
        '[2] span class="star"', '[3] div class="color" background=aqua/cyan', "[4] span background=rgb(161, 33, 33)",
        '[5] circle id="(-2,1)" class="plot-point" background=blue', '[7] div "Audrey"', '[8] input_text value=""',
        '[9] div id="a \\"b\\"" background=rgba(255, 0, 0, 0.5)',
    ]
    assert render_state(elements, max_elements=2).splitlines()[-1] == "... 5 more elements"  # the cap counts them too


def test_the_page_tree_marks_leaves_that_are_click_targets():
    """From getDOMInfo's tree (as :class:`miniwob.dom.DOMElement` reads it): a leaf at least
    8 px each way with an id, classes or a painted box is listed; a container, a sliver (a 2 px
    resize handle) and a transparent unnamed leaf are not. An SVG element's classes and a
    shape's fill come beside the tree (getDOMInfo gives an object for its classes)."""
    from miniwob.dom import DOMElement

    from dreamgym_plugin_miniwob.page import _flatten

    def node(ref, tag, w=12, h=12, children=(), **more):
        return {"ref": ref, "tag": tag, "left": 0, "top": 0, "width": w, "height": h, "children": list(children),
                "bgColor": "rgba(0, 0, 0, 0)", "fgColor": "rgb(0, 0, 0)", **({} if children else {"text": ""}), **more}

    tree = node(1, "BODY", 780, 210, [
        node(2, "DIV", 160, 40, [node(3, "SPAN", classes="star"), node(4, "SPAN", classes="trash", bgColor="rgb(255, 0, 0)")],
             classes="email-actions"),
        node(5, "DIV", 2, 96, classes="ui-resizable-handle ui-resizable-e"),
        node(6, "SPAN", 14, 14),
        node(7, "DIV", 52, 52, id="area", bgColor="rgb(128, 128, 128)"),
        node(8, "svg", 150, 150, [node(9, "circle", 8, 8, id="(0,1)", classes={"baseVal": "plot-point"})]),
    ])  # fmt: skip
    extra = {"8": {"classes": "", "fill": ""}, "9": {"classes": "plot-point", "fill": "rgb(0, 0, 255)"}}
    assert render_state(_flatten(DOMElement(tree), extra), max_elements=10).splitlines() == [
        '[3] span class="star"', '[4] span class="trash" background=red', '[7] div id="area" background=gray/grey',
        '[9] circle id="(0,1)" class="plot-point" background=blue',
    ]

@browser
def test_splits_are_disjoint_page_seeds_and_instructions_are_the_utterances(domain):
    seeds = {split: [t.payload["seed"] for t in domain.tasks(split=split)] for split in ("train", "valid", "test")}
    assert seeds == {"train": [0, 1, 2, 3], "valid": [100000, 100001], "test": [200000, 200001, 200002]}
    task = domain.tasks(split="test")[0]
    assert task.instruction.startswith('Enter the username "') and task.instruction.endswith("then type TEXT).")
    assert len({t.instruction for t in domain.tasks(split="train")}) == 4  # each seed another problem


@browser
def test_conformance(domain):
    check_domain(domain)


@browser
@pytest.mark.parametrize("task", sorted(EXPERTS))
def test_each_scripted_expert_solves_its_task(task):
    domain = MiniWoBDomain(MiniWoBConfig(tasks=[task], train_seeds=3, valid_seeds=0, test_seeds=1))
    try:
        for trajectory in domain.collect(tasks=domain.tasks(split="train"), policy="expert", episodes=3, seed=0):
            last = trajectory.transitions[-1]
            assert last.done and last.success and last.reward == 1.0, (trajectory.task.instruction, [t.action for t in trajectory.transitions])
            assert all(t.valid and not t.done and t.reward == 0.0 for t in trajectory.transitions[:-1])
    finally:
        domain.close()


def _clicks_on_an_icon(utterance: str, state: str) -> str:
    """The click that wins click-color, grid-coordinate, email-inbox-delete or -important, read
    off the state's lines: the box of the named colour, the point of the named id, or the trash
    or star icon of the email by the named sender (the first icon line after the sender's)."""
    lines = state.splitlines()
    if (color := re.fullmatch(r"Click on the (\w+) colored box\.", utterance)) is not None:
        found = [ln for ln in lines if color[1] in ln.partition(" background=")[2].split("/")]
    elif (point := re.fullmatch(r"Click on the grid coordinate (\(\S+\))\.", utterance)) is not None:
        found = [ln for ln in lines if f'id="{point[1]}"' in ln]
    else:
        sender, icon = re.fullmatch(r"Find the email by (\w+) and click the (trash|star) icon .*", utterance).groups()
        start = lines.index(next(ln for ln in lines if ln.endswith(f' div "{sender}"')))
        found = [ln for ln in lines[start:] if ln.endswith(f'class="{icon}"')][:1]
    assert len(found) == 1, (utterance, state)
    return "click " + found[0].split()[0]


@browser
@pytest.mark.parametrize("task", ["click-color", "grid-coordinate", "email-inbox-delete", "email-inbox-important"])
def test_a_click_on_a_text_less_element_the_state_lists_wins(env, task):
    """These pages' targets show no text (colour boxes, SVG points, icons): the state left them
    out, every seed started as "(empty page)" or without its target, and no agent could win."""
    for seed in range(3):
        state = env.reset(task=_task({"task": task, "seed": seed})).text
        result = env.step(action=_clicks_on_an_icon(env.page.utterance(), state))
        assert result.valid and result.done and result.success and result.reward == 1.0, (task, seed, state)


@browser
def test_the_state_names_the_colours_the_pages_draw_in_exactly():
    """The colour names the state writes are the browser's own: a box painted with each name the
    pages use (ui_utils.COLORS, shapes.COLORS, click-color's) shows that name."""
    names = ["black", "white", "aqua", "cyan", "blue", "gray", "grey", "green", "lime", "maroon", "navy", "olive",
             "purple", "red", "silver", "teal", "yellow", "pink", "magenta", "fuchsia", "gold", "orange"]  # fmt: skip
    page = Page()
    try:
        page.start("click-color", 0)
        page._script(
            f"var area = document.getElementById('area'); area.innerHTML = ''; {names!r}.forEach(function (n) {{"
            " var d = document.createElement('div'); d.className = n; d.style.cssText = 'width: 9px; height: 9px;"
            " background-color: ' + n; area.appendChild(d); });"
        )
        lines = render_state(page.elements(), max_elements=100).splitlines()
    finally:
        page.close()
    shown = {ln.split('class="')[1].split('"')[0]: ln.partition(" background=")[2].split("/") for ln in lines}
    assert sorted(shown) == sorted(names) and all(name in painted for name, painted in shown.items()), lines

@browser
def test_several_tasks_interleave_and_one_browser_plays_them_all():
    domain = MiniWoBDomain(MiniWoBConfig(tasks=["click-button", "enter-text", "focus-text"], train_seeds=2, valid_seeds=0, test_seeds=1))
    try:
        tasks = domain.tasks(split="train")
        assert [t.id for t in tasks] == [
            "miniwob/click-button/0", "miniwob/enter-text/0", "miniwob/focus-text/0",
            "miniwob/click-button/1", "miniwob/enter-text/1", "miniwob/focus-text/1",
        ]
        first = [domain.initial_observation(t).text for t in tasks]
        trajectories = domain.collect(tasks=tasks, policy="expert", episodes=6, seed=0)  # the page changes every episode
        assert all(t.transitions[-1].success for t in trajectories)
        assert [t.transitions[0].state for t in trajectories] == first
        parent = tasks[1]
        child = domain.make_variation(parent, domain.propose_variations(parent, n=1, rng=np.random.default_rng(0))[0])
        assert child.payload["task"] == "enter-text" and child.instruction.startswith("Enter ")
    finally:
        domain.close()


@browser
def test_a_seed_shows_the_same_page_whatever_was_played_before(domain):
    tasks = domain.tasks(split="train")
    first = [domain.initial_observation(t).text for t in tasks]
    domain.collect(tasks=tasks, policy="random", episodes=5, seed=1)  # episodes that end, and one cut off
    assert [domain.initial_observation(t).text for t in reversed(tasks)] == list(reversed(first))
    refs = [line.split("]")[0] for line in first[0].splitlines()]
    assert len(refs) == len(set(refs))


@browser
def test_a_seed_shows_the_same_page_after_an_episode_that_left_a_widget_open(env):
    """book-flight's and choose-date's date picker (jQuery UI, not rebuilt by genProblem) stayed
    open into the next episodes: the same seed showed 35 more elements after one click."""
    for name in ("book-flight", "choose-date"):
        first = env.reset(task=_task({"task": name, "seed": 7}))
        utterance = env.page.utterance()
        date = [e.ref for e in env.shown() if e.tag == "input_text"][-1]
        opened = env.step(action=f"click [{date}]")
        assert opened.valid and '"Prev"' in opened.observation.text and '"Prev"' not in first.text
        assert (env.reset(task=_task({"task": name, "seed": 7})).text, env.page.utterance()) == (first.text, utterance)


@browser
def test_the_state_is_read_once_the_pages_images_have_loaded(tmp_path, monkeypatch):
    """email-inbox's icons are spans drawn by a CSS image: one still loading is 0 px wide, and
    core.getDOMInfo leaves it out, so every later ref moved (email-inbox-delete seed 7 once showed
    the second email's sender as [18], not [19]). Here click-button's problem starts with such an
    icon, served 0.5 s late from localhost (the one host Chromium resolves)."""
    import http.server
    import threading

    import dreamgym_plugin_miniwob.page as page_module

    icon = (page_module._html_dir().parent / "common" / "special" / "email-inbox" / "star.png").read_bytes()

    class LateIcon(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(0.5)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(icon)))
            self.end_headers()
            try:
                self.wfile.write(icon)
            except OSError:  # the page asking for it was closed meanwhile
                pass

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LateIcon)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    real = page_module._html_dir()
    for shared in ("core", "common"):
        (tmp_path / shared).symlink_to(real.parent / shared)
    (tmp_path / "miniwob").mkdir()
    source = (real / "click-button.html").read_text()
    clear = "  div.html(''); // clear previous problem, if any\n"
    assert source.count(clear) == 1
    drawn = f"http://localhost:{server.server_port}/star.png?' + Date.now() + '"  # a new image every episode
    (tmp_path / "miniwob" / "icon-button.html").write_text(source.replace(
        clear, clear + f"  div.append('span').attr('style', 'float: right; height: 12px; content: url({drawn})');\n"
    ))
    monkeypatch.setattr(page_module, "_html_dir", lambda: tmp_path / "miniwob")
    monkeypatch.setattr(page_module, "task_names", lambda: ("icon-button",))
    page = Page()
    try:
        for _ in range(2):
            page.start("icon-button", 3)
            first = page.elements()
            assert [e.tag for e in first[:4]] == ["body", "div", "div", "span"]  # #wrap, #area, the icon
            time.sleep(0.6)
            assert page.elements() == first
    finally:
        page.close()
        server.shutdown()
        server.server_close()


@browser
def test_typing_and_invalid_actions(domain, env):
    first = env.reset(task=domain.tasks(split="train")[0])
    field = next(line for line in first.text.splitlines() if "input_text" in line)
    ref = int(field[1:].split("]")[0])
    typed = env.step(action=f'type [{ref}] "abc"')
    assert typed.valid and f'[{ref}] input_text value="abc" (focused)' in typed.observation.text and not typed.done
    for bad in ("click [999]", "press the login button"):
        result = env.step(action=bad)
        assert not result.valid and result.observation.text == typed.observation.text and result.reward == 0.0


@browser
def test_an_element_the_state_does_not_list_and_a_lone_surrogate_are_invalid_and_reach_no_browser(domain, env):
    """A click on a layout container did nothing and counted as valid; a lone surrogate
    typed killed the browser (ChromeDriver refuses it, and the call's failure closes the page)."""
    first = env.reset(task=domain.tasks(split="train")[0])
    listed = [int(line[1:].split("]")[0]) for line in first.text.splitlines()]
    unlisted = [ref for ref in range(1, max(listed)) if ref not in listed]  # body, divs, forms
    assert unlisted and listed == [6, 7, 9, 10, 11]
    profile = env.page._profile.name
    for bad in (f"click [{unlisted[0]}]", f'type [{unlisted[-1]}] "karrie"', 'type [7] "a\ud800b"'):
        result = env.step(action=bad)
        assert not result.valid and result.observation.text == first.text, bad
    assert env.step(action="click [7]").valid and env.page._profile.name == profile  # the same browser
    env.max_elements = 2  # an element past the state's last one is not listed either
    assert env.reset(task=domain.tasks(split="train")[0]).text.endswith("... 3 more elements")
    assert not env.step(action="click [9]").valid


@browser
def test_a_private_use_character_is_a_webdriver_key_so_the_action_is_invalid_and_reaches_no_browser(domain, env):
    """WebDriver reads U+E000-U+F8FF as keys: 'abcd' + Backspace, Backspace, Tab + 'zz' typed "ab"
    into the username and "zz" into the password, and counted as a valid step."""
    first = env.reset(task=domain.tasks(split="train")[0])
    result = env.step(action='type [7] "abcd\ue003\ue003\ue004zz"')
    assert not result.valid and result.observation.text == first.text
    assert result.info["invalid"] == "private-use character U+E003 (WebDriver would send it as the key BACKSPACE, not as text)"
    unnamed = env.step(action='type [7] "ab\uf8ff"')
    assert not unnamed.valid and unnamed.info["invalid"].startswith("private-use character U+F8FF (WebDriver would send it as a key,")
    typed = env.step(action='type [7] "karrie"')  # the same field takes plain text
    assert typed.valid and '[7] input_text value="karrie" (focused)' in typed.observation.text and "invalid" not in typed.info


@browser
def test_a_partial_answer_is_no_success(env):
    """click-checkboxes-large pays 1/11 for a Submit with nothing checked when 6 of its 11 boxes
    are to stay unchecked; a positive raw reward counted as the task's success (reward 1.0)."""
    first = env.reset(task=_task({"task": "click-checkboxes-large", "seed": 6}))
    submit = next(line for line in first.text.splitlines() if '"Submit"' in line)
    result = env.step(action=submit.split()[0].replace("[", "click ["))
    assert result.done and not result.success and result.reward == 0.0 and result.info["raw_reward"] == pytest.approx(1 / 11)


class _ScoredPage:
    """A page with one button whose click ends the episode with the raw reward it is given (no
    browser), for the env's own reading of that reward."""

    def __init__(self, raw_reward: float) -> None:
        self.raw_reward = raw_reward
        self.over = False

    def start(self, task: str, seed: int) -> None:
        self.over = False

    def elements(self) -> list[Element]:
        return [Element(ref=4, tag="button", text="Submit")]

    def click(self, ref: int) -> bool:
        self.over = True
        return True

    def outcome(self) -> tuple[bool, float]:
        return self.over, self.raw_reward if self.over else 0.0

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("raw_reward", "success"), [
    (1.0, True), (1.0 - 1e-12, True),  # a full score summed in fractions can land a rounding error below 1
    (0.999, False), (1 / 11, False), (0.1, False), (0.0, False), (-1.0, False),
])  # fmt: skip
def test_only_miniwobs_full_raw_reward_is_a_success(raw_reward, success):
    """MiniWoB's own success is a raw reward of 1.0 (miniwob.reward.get_binary_reward); find-greatest
    pays 0.1 for the wrong card, click-checkboxes-large 1/11 for a partly right answer."""
    env = MiniWoBEnv(max_steps=4, max_elements=40)
    env.page = _ScoredPage(raw_reward)
    env.reset(task=_task({"task": "click-checkboxes-large", "seed": 6}))
    result = env.step(action="click [4]")
    assert (result.done, result.success, result.reward, result.info["raw_reward"]) == (True, success, float(success), raw_reward)


_NO_TASK = f"it names a MiniWoB++ task page ({len(task_names())} tasks, e.g. 'click-button')"
_SEED_RULE = "a MiniWoB++ page seed is an int from 0 to 9007199254740991 (2**53 - 1, the largest integer JavaScript holds exactly)"


@pytest.mark.parametrize(("payload", "message"), [
    ({}, f"payload['task'] is missing; {_NO_TASK}"),
    ({"seed": 0, "game": "x/game.tw-pddl"}, f"payload['task'] is missing; {_NO_TASK}"),
    ({"task": "click-buton", "seed": 0}, "payload['task'] is 'click-buton'; it names a MiniWoB++ task page; did you mean 'click-button'?"),
    ({"task": 5, "seed": 0}, f"payload['task'] is 5; {_NO_TASK}"),
    ({"task": "click-button"}, f"payload['seed'] is missing; {_SEED_RULE}"),
    ({"task": "click-button", "seed": "seven"}, f"payload['seed'] is 'seven'; {_SEED_RULE}"),
    ({"task": "click-button", "seed": "7"}, f"payload['seed'] is '7'; {_SEED_RULE}"),
    ({"task": "click-button", "seed": 7.9}, f"payload['seed'] is 7.9; {_SEED_RULE}"),
    ({"task": "click-button", "seed": True}, f"payload['seed'] is True; {_SEED_RULE}"),
    ({"task": "click-button", "seed": -1}, f"payload['seed'] is -1; {_SEED_RULE}"),
    ({"task": "click-button", "seed": 2**53}, f"payload['seed'] is 9007199254740992; {_SEED_RULE}"),
], ids=[
    "no-task", "another-domains-payload", "misspelt-task", "int-task", "no-seed", "str-seed", "numeric-str-seed",
    "float-seed", "bool-seed", "negative-seed", "seed-past-2**53",
])  # fmt: skip
def test_a_bad_payload_is_a_config_error_naming_the_task_and_the_field_before_any_browser_starts(payload, message):
    """{} was a bare KeyError, a non-numeric seed failed in the started browser, a float seed
    was cut to an int: the rollout counted each as one more failed episode."""
    env = MiniWoBEnv(max_steps=4, max_elements=40, chromium="/nonexistent/chromium")  # a start would fail loudly
    try:
        with pytest.raises(ConfigError) as err:
            env.reset(task=_task(payload))
        assert str(err.value) == f"miniwob: task 'miniwob/x/1': {message}"
        assert env.page._driver is None
    finally:
        env.close()


@browser
def test_a_non_str_action_is_a_type_error_and_the_episode_goes_on(domain, env):
    first = env.reset(task=domain.tasks(split="train")[1])
    with pytest.raises(TypeError, match=r"^miniwob env: step\(action=\.\.\.\) takes a str, got NoneType$"):
        env.step(action=None)
    result = env.step(action="click [999]")
    assert result.info["steps"] == 1 and not result.done and result.observation.text == first.text


@browser
def test_a_wrong_submission_fails_and_the_step_cap_ends_an_episode(domain, env):
    first = env.reset(task=domain.tasks(split="train")[1])
    login = next(line for line in first.text.splitlines() if '"Login"' in line)
    result = env.step(action=login.split()[0].replace("[", "click ["))  # empty fields
    assert result.done and not result.success and result.reward == 0.0 and result.info["raw_reward"] < 0
    with pytest.raises(Exception, match="needs reset"):
        env.step(action="click [4]")
    env.reset(task=domain.tasks(split="train")[1])
    results = [env.step(action="click [999]") for _ in range(CONFIG.max_steps)]
    assert [r.done for r in results] == [False] * (CONFIG.max_steps - 1) + [True]
    assert results[-1].info["truncated"] and not results[-1].success


def _browser_pids(page: Page) -> list[int]:
    """The Chromium processes (browser and helpers) of a started page."""
    return _processes_with_argument(f"--user-data-dir={page._profile.name}".encode())


@browser
def test_a_crashed_driver_fails_the_step_in_one_line_and_the_next_reset_starts_another(domain):
    from dreamgym_core.errors import DreamGymError

    env = domain.make_env()
    try:
        first = env.reset(task=domain.tasks(split="train")[0])
        profile = env.page._profile.name
        env.page._driver.service.process.kill()  # ChromeDriver dies under the adapter
        env.page._driver.service.process.wait()
        with pytest.raises(BrowserError, match=r"miniwob login-user: the browser failed") as err:
            env.step(action="click [4]")
        assert "\n" not in str(err.value)
        assert profile not in _our_browsers() and not os.path.exists(profile)  # the orphaned browser went with it
        # the episode is over: a step now says so, where it started a browser on a blank page
        with pytest.raises(DreamGymError, match=r"step\(\) needs reset\(\) first"):
            env.step(action="click [4]")
        assert env.reset(task=domain.tasks(split="train")[0]) == first  # a new browser
    finally:
        env.close()


@browser
def test_the_probe_replaces_a_killed_browser():
    """The domain's probe env answers initial_observation for every synthetic episode: a dead
    browser must cost one call, not every later one."""
    probe_domain = MiniWoBDomain(CONFIG)
    try:
        task = probe_domain.tasks(split="train")[0]
        first = probe_domain.initial_observation(task)
        for pid in _browser_pids(probe_domain._probe.page):
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(BrowserError, match=r"^miniwob login-user: the browser failed") as err:
            probe_domain.initial_observation(task)
        assert "\n" not in str(err.value)
        assert probe_domain.initial_observation(task) == first
        child = probe_domain.make_variation(task, "seed=77")
        assert child is not None and child.payload["seed"] == 77
    finally:
        probe_domain.close()


@browser
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="stops the browser with SIGSTOP, watched in /proc")
def test_a_stopped_browser_fails_the_call_after_call_timeout_s_and_the_next_reset_starts_another():
    stopped_domain = MiniWoBDomain(msgspec.structs.replace(CONFIG, call_timeout_s=3.0))
    env = stopped_domain.make_env()
    try:
        task = stopped_domain.tasks(split="train")[0]
        first = env.reset(task=task)
        profile = env.page._profile.name
        pids = _browser_pids(env.page)
        for pid in pids:
            stop_process(pid)

        def unblock() -> None:
            for pid in pids:
                os.kill(pid, signal.SIGKILL)

        error, elapsed = bounded(lambda: env.step(action="click [11]"), limit_s=60, unblock=unblock)
        assert isinstance(error, BrowserError), error
        assert str(error).startswith(
            "miniwob login-user: the browser failed: no answer within 3 s (env.config.call_timeout_s): "
        ) and "\n" not in str(error)
        assert 3 <= elapsed < 15
        assert profile not in _our_browsers() and not os.path.exists(profile)  # killed, profile removed
        assert env.reset(task=task) == first  # a new browser
    finally:
        env.close()
        stopped_domain.close()


HUNG_CHROMIUM = """#!{python}
# A Chromium that never comes up: ChromeDriver waits 60 s for it on its own.
import time
time.sleep(600)
"""


@browser
def test_a_browser_that_never_starts_fails_after_start_timeout_s_and_leaves_nothing_running(tmp_path):
    fake = tmp_path / "chromium"
    fake.write_text(HUNG_CHROMIUM.format(python=sys.executable))
    fake.chmod(0o755)
    hung = MiniWoBDomain(msgspec.structs.replace(CONFIG, chromium=str(fake), start_timeout_s=2.0))
    env = hung.make_env()
    before = _our_browsers()
    try:
        def unblock() -> None:
            if env.page._profile is not None:
                kill_processes_using(env.page._profile.name)

        # the limit only keeps a hang from stalling the suite: without start_timeout_s this waits 60 s
        error, _ = bounded(lambda: env.reset(task=hung.tasks(split="train")[0]), limit_s=30, unblock=unblock)
        assert isinstance(error, BrowserError), error
        assert str(error) == (
            "miniwob: Chromium did not start within 2 s (env.config.start_timeout_s); its ChromeDriver and browser were killed"
        )
        assert _our_browsers() == before and env.page._profile is None  # the fake browser killed, its profile removed
        assert str(fake) not in subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    finally:
        env.close()
        hung.close()


def test_start_timeout_s_is_a_checked_config_field():
    assert MiniWoBConfig().start_timeout_s == 30.0
    with pytest.raises(msgspec.ValidationError, match="start_timeout_s"):
        msgspec.convert({"start_timeout_s": 0}, type=MiniWoBConfig)


def test_seed_counts_are_bounded_so_the_splits_never_overlap():
    for field in ("train_seeds", "valid_seeds", "test_seeds"):
        with pytest.raises(msgspec.ValidationError, match=rf"<= 100000 - at `\$.{field}`"):
            msgspec.convert({field: 100_001}, type=MiniWoBConfig)
    widest = MiniWoBDomain(MiniWoBConfig(train_seeds=100_000, valid_seeds=100_000, test_seeds=100_000))  # no browser yet
    train, valid, test = (set(widest.seeds(split)) for split in ("train", "valid", "test"))
    assert len(train) == len(valid) == len(test) == 100_000
    assert not train & valid and not train & test and not valid & test


def test_call_timeout_s_is_a_checked_config_field():
    assert MiniWoBConfig().call_timeout_s == 10.0
    with pytest.raises(msgspec.ValidationError, match="call_timeout_s"):
        msgspec.convert({"call_timeout_s": 0}, type=MiniWoBConfig)


def test_kill_processes_using_kills_only_that_profiles_processes_and_waits_for_them(tmp_path):
    def started(profile):
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"--user-data-dir={profile}"])

    mine, other = started(tmp_path / "mine"), started(tmp_path / "other")
    try:
        time.sleep(0.2)  # let both exec, so /proc shows their command lines
        assert kill_processes_using(str(tmp_path / "mine")) == 1
        assert mine.wait(timeout=5) == -signal.SIGKILL
        assert other.poll() is None
        assert kill_processes_using(str(tmp_path / "nobody")) == 0
    finally:
        for proc in (mine, other):
            proc.kill()
            proc.wait()


def test_an_expert_that_cannot_read_the_problem_names_task_and_utterance():
    from dreamgym_core.errors import DreamGymError
    from dreamgym_plugin_miniwob.experts import NoPlan, plan

    page = [Element(ref=4, tag="button", text="yes")]
    with pytest.raises(NoPlan, match=r"click-button: cannot read 'Click on the button\.'") as err:
        plan("click-button", "Click on the button.", page)  # no quoted label
    assert isinstance(err.value, DreamGymError)
    with pytest.raises(NoPlan, match=r"no element with tag=button text='no'"):
        plan("click-button", 'Click on the "no" button.', page)


def test_missing_browser_is_one_line_naming_the_fix(tmp_path):
    env = MiniWoBDomain(MiniWoBConfig(chromium=str(tmp_path / "no-chromium"), chromedriver=str(tmp_path / "no-driver"))).make_env()
    task = Task(id="miniwob/click-button/0", instruction="x", domain="miniwob", payload={"task": "click-button", "seed": 0})
    with pytest.raises(BrowserError, match=r"no Chromium or ChromeDriver found \(install Debian's packages: apt-get install chromium"):
        env.reset(task=task)


def test_unknown_task_and_tasks_without_an_expert_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"env.config.tasks\[0\]: unknown MiniWoB\+\+ task 'click-buton'; did you mean 'click-button'"):
        MiniWoBDomain(MiniWoBConfig(tasks=["click-buton"]))
    with pytest.raises(ConfigError, match=r"env.config.tasks: a task is named twice"):
        MiniWoBDomain(MiniWoBConfig(tasks=["click-button", "click-button"]))
    no_expert = MiniWoBDomain(MiniWoBConfig(tasks=["click-button", "use-slider"], chromium=str(tmp_path / "x")))
    with pytest.raises(ConfigError, match=r"'use-slider' has no scripted expert for policy 'noisy'.*collect it with policy 'random'"):
        no_expert.collect(tasks=[], policy="noisy", episodes=1, seed=0)


@browser
def test_unknown_split_and_policy(domain):
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        domain.tasks(split="dev")
    with pytest.raises(ConfigError, match="unknown data policy 'oracle'"):
        domain.collect(tasks=domain.tasks(split="train"), policy="oracle", episodes=1, seed=0)


@browser
def test_variations_are_train_seeds_beyond_the_seed_tasks(domain):
    parent = domain.tasks(split="train")[0]
    texts = domain.propose_variations(parent, n=3, rng=np.random.default_rng(0))
    seeds = {t.payload["seed"] for t in domain.tasks(split="train")}
    children = [domain.make_variation(parent, text) for text in texts]
    assert all(c is not None and c.origin == "synthetic" and c.parent_id == parent.id and c.split == "train" for c in children)
    assert all(c.payload["seed"] not in seeds and c.payload["seed"] < 100000 for c in children)
    assert len({c.instruction for c in children}) == 3 and parent.instruction not in {c.instruction for c in children}
    assert domain.make_variation(parent, "seed=99999") is not None
    for text in ("seed=0", "seed=100000", "something else"):  # the parent, a validation seed, no seed
        assert domain.make_variation(parent, text) is None


def test_a_variation_never_copies_a_seed_task():
    """seed=K of a seed task played it again as a synthetic task; the generator was told 0-99999."""
    unstarted = MiniWoBDomain(CONFIG)  # rejecting a seed starts no browser
    parent = Task(id="miniwob/login-user/0", instruction="", domain="miniwob", payload={"task": "login-user", "seed": 0})
    assert all(unstarted.make_variation(parent, f"seed={seed}") is None for seed in range(CONFIG.train_seeds))
    assert "seed=K with K a train seed that no seed task uses, 4-99999 (now 0)" in unstarted.describe_variation(parent)


@browser
def test_a_select_shows_its_options_and_a_click_on_an_option_chooses_it(env):
    """The state showed a drop-down as a bare "select", and a click on a list box's option chose
    nothing (click-scroll-list then scored the empty choice)."""
    def task(name: str, seed: int) -> Task:
        return Task(id=f"miniwob/{name}/{seed}", instruction="", domain="miniwob", payload={"task": name, "seed": seed})

    first = env.reset(task=task("choose-list", 0))  # a drop-down: its options have no box
    assert first.text.splitlines()[0] == (
        '[4] select value="Theodora" options: "Theodora", "Catherine", "Marilee", "Fredra", "Deeanne", "Helli", "Corrine", "Ludovika"'
    )
    assert env.page.utterance() == "Select Helli from the list and click Submit."
    chosen = env.step(action='type [4] "Helli"')
    assert chosen.observation.text.splitlines()[0].startswith('[4] select value="Helli" options: "Theodora", ')
    assert env.step(action="click [5]").success
    env.reset(task=task("click-scroll-list", 0))  # a list box that takes several options
    assert env.page.utterance() == "Select Corrine, Catherine from the scroll list and click Submit."
    options = {e.text: e.ref for e in env.elements() if e.tag == "option"}
    env.step(action=f"click [{options['Theodora']}]")
    unchosen = env.step(action=f"click [{options['Theodora']}]")  # a second click takes it back
    assert '"Theodora" (selected)' not in unchosen.observation.text
    env.step(action=f"click [{options['Corrine']}]")
    both = env.step(action=f"click [{options['Catherine']}]").observation.text
    assert {line for line in both.splitlines() if "(selected)" in line} == {
        f'[{options["Corrine"]}] option "Corrine" (selected)', f'[{options["Catherine"]}] option "Catherine" (selected)',
    }
    submit = next(e.ref for e in env.elements() if e.text == "Submit")
    assert env.step(action=f"click [{submit}]").success


@browser
def test_annotation_names_the_element_and_the_change(domain):
    trajectory = domain.collect(tasks=domain.tasks(split="train")[:1], policy="expert", episodes=1, seed=0)[0]
    traces = [domain.annotate(transition=t) for t in trajectory.transitions]
    assert traces[0].startswith("Clicking [") and "and typing" in traces[0] and "The page now shows:" in traces[0]
    assert traces[-1].endswith("This completes the task: the page scores the episode a success, reward 1.")
    invalid = trajectory.transitions[0].__class__(**{**{f: getattr(trajectory.transitions[0], f) for f in trajectory.transitions[0].__struct_fields__}, "valid": False})
    assert annotate_transition(invalid).startswith("'type [")
    # a step-cap ending is no ending of the page's episode: the trace agrees with its done=false target
    cut = msgspec.structs.replace(trajectory.transitions[0], done=True, truncated=True, success=False, reward=0.0)
    assert annotate_transition(cut).endswith("the episode continues with reward 0.")


@browser
def test_the_last_state_of_an_episode_keeps_the_refs_of_the_episode(domain):
    """MiniWoB counts an ended episode done before the last state is read, and would give every
    element a new ref in it: the terminal state named elements the episode never had."""
    trajectory = domain.collect(tasks=domain.tasks(split="train")[:1], policy="expert", episodes=1, seed=0)[0]
    last = trajectory.transitions[-1]
    assert last.done and last.success
    refs = [re.match(r"\[(\d+)\] (\S+)", line).groups() for line in last.state.splitlines()]
    assert [re.match(r"\[(\d+)\] (\S+)", line).groups() for line in last.next_state.splitlines()] == refs
    # the trace names only what changed: the focus, from the password field to the button
    changed = f'[{refs[-2][0]}] input_password value="AU"; [{refs[-1][0]}] button "Login" (focused).'
    assert f"The page now shows: {changed}" in annotate_transition(last)
    env = domain.make_env()  # and the next episode of the page is numbered as before
    try:
        task = domain.tasks(split="train")[0]
        assert env.reset(task=task).text == trajectory.transitions[0].state
        env.step(action=f"click [{refs[-1][0]}]")  # ends it (a wrong submission)
        assert env.reset(task=task).text == trajectory.transitions[0].state
    finally:
        env.close()


def test_values_and_texts_are_escaped_so_each_element_is_one_line():
    elements = [
        Element(ref=5, tag="textarea", value='line one\n[99] button "Submit"'),
        Element(ref=6, tag="label", text='say "hi" \\o/'),
        Element(ref=7, tag="input_text", value="a\rb\u2028c\x0bd"),
        Element(ref=8, tag="input_text", value="plain é\tvalue", focused=True),  # no escape: as it was
    ]
    state = render_state(elements, max_elements=10)
    assert state.splitlines() == [
        '[5] textarea value="line one\\n[99] button \\"Submit\\""',
        '[6] label "say \\"hi\\" \\\\o/"',
        '[7] input_text value="a\\rb\\u2028c\\x0bd"',
        '[8] input_text value="plain é\tvalue" (focused)',
    ]
    typed = Transition(task_id="t", episode_id="e", step=0, state='[5] textarea value=""', action='type [5] "a\nb"',
                       next_state=state, reward=0.0, done=False)  # fmt: skip
    trace = annotate_transition(typed)
    assert 'typing "a\\nb"' in trace and "\n" not in trace  # the typed text quoted as the state quotes it


@browser
def test_a_typed_line_break_stays_in_the_elements_line(domain, env):
    task = Task(id="miniwob/copy-paste/0", instruction="", domain="miniwob", payload={"task": "copy-paste", "seed": 0})
    first = env.reset(task=task)
    area = next(e for e in env.elements() if e.tag == "textarea")
    result = env.step(action=f'type [{area.ref}] "line one\n[99] button "Submit""')
    assert len(result.observation.text.splitlines()) == len(first.text.splitlines())
    line = next(line for line in result.observation.text.splitlines() if line.startswith(f"[{area.ref}] textarea "))
    assert line.endswith(' line one\\n[99] button \\"Submit\\"" (focused)')  # typed after the page's text


@browser
@pytest.mark.parametrize("when", ["reset", "step"])
def test_a_browser_failure_reading_the_state_ends_the_episode(domain, env, monkeypatch, when):
    from dreamgym_core.errors import DreamGymError

    task = domain.tasks(split="train")[0]
    first = env.reset(task=task) if when == "step" else None
    script = env.page._script

    def dies_reading_the_elements(js: str):
        if "getDOMInfo" in js:  # ChromeDriver dies under the adapter as it reads the state
            env.page._driver.service.process.kill()
            env.page._driver.service.process.wait()
        return script(js)

    monkeypatch.setattr(env.page, "_script", dies_reading_the_elements)
    with pytest.raises(BrowserError, match=r"the browser failed"):
        env.reset(task=task) if when == "reset" else env.step(action="click [4]")
    monkeypatch.undo()
    assert env.page._driver is None  # the page is closed, so the episode is over
    with pytest.raises(DreamGymError, match=r"step\(\) needs reset\(\) first"):
        env.step(action="click [4]")
    assert env.page._driver is None  # no blank browser started
    assert env.reset(task=task).text == (first.text if first else domain.initial_observation(task).text)


def reduced_example(run_dir: Path) -> list[str]:
    """``dreamgym run`` arguments for examples/miniwob.yaml cut to a few minutes, on two tasks."""
    example = Path(__file__).parents[4] / "examples" / "miniwob.yaml"
    reduced = [
        f"run_dir={run_dir}", "env.config.tasks=[click-button, click-tab]", "env.config.train_seeds=4",
        "env.config.valid_seeds=2", "env.config.test_seeds=2",
        "data.expert_episodes=4", "data.noisy_episodes=2", "data.random_episodes=2", "experience.epochs=1",
        # a warm start that writes actions, so that RL's synthetic steps reach the experience model:
        # one epoch (one step of batch 16 on ~6 demo steps) wrote none, and no epoch of six won either
        # of 2 validation pages, so picking by them kept the first
        "experience.batch_size=2", "loop.warmstart_epochs=6", "loop.warmstart_select_episodes=0",
        "loop.iterations=1", "loop.tasks_per_iteration=2",
        "loop.group_size=2", "eval.episodes=4", "policy.config.cpu_threads=1", "experience_model.config.cpu_threads=1",
    ]
    return ["run", str(example)] + [x for item in reduced for x in ("--set", item)]


@browser
@pytest.mark.slow
def test_reduced_example_pipeline_runs_in_the_browser(tmp_path):
    """examples/miniwob.yaml, reduced: collect -> buffer -> annotate -> joint SFT -> warm start
    -> GRPO in DreamGym with domain variations -> evaluate, on real pages in Chromium."""
    import json

    pytest.importorskip("dreamgym_plugin_hf")
    pytest.importorskip("dreamgym_plugin_local")
    args = [sys.executable, "-m", "dreamgym_core.cli", *reduced_example(tmp_path / "run")]
    result = subprocess.run(args, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["eval/episodes"] == 4.0 and summary["counters/synthetic_transitions"] > 0
    assert summary["counters/offline_transitions"] > 0 and summary["counters/real_transitions"] == 0.0
    # both tasks' test seeds were played (interleaved), and the report shows each
    assert summary["eval/episodes/miniwob/click-button"] == summary["eval/episodes/miniwob/click-tab"] == 2.0
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| after RL |" in report and "| miniwob/click-tab |" in report


@browser
@pytest.mark.slow
@pytest.mark.parametrize("lands", ["in_a_call", "after_the_simulators"])
@pytest.mark.parametrize("marker", ["collecting offline real data", "evaluating the untrained policy"])
def test_ctrl_c_of_the_example_ends_in_one_line_and_leaves_no_browser(tmp_path, marker, lands):
    """Ctrl-C as a terminal sends it (to the run, ChromeDriver and Chromium at once) while the
    run drives the browser: one line, exit 130, no browser process left."""
    pytest.importorskip("dreamgym_plugin_hf")
    pytest.importorskip("dreamgym_plugin_local")
    before = _our_browsers()
    stopped = ctrl_c_run(reduced_example(tmp_path / "run"), marker, 0.2, tmp_path / "stdout", lands=lands)
    stopped.assert_stopped_in_one_line()
    assert not _our_browsers() - before


def _children(pid: int, program: str) -> list[int]:
    listing = subprocess.run(["ps", "-eo", "pid,ppid,comm"], capture_output=True, text=True, check=True).stdout
    rows = [line.split(None, 2) for line in listing.splitlines()[1:]]
    return [int(child) for child, parent, comm in rows if int(parent) == pid and program in comm]


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie has exited; its parent has not collected it yet)."""
    try:
        return open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


_KILLED_OWNER = """
from dreamgym_plugin_miniwob.page import Page
page = Page()
page.start("click-button", 0)
print(page._profile.name, flush=True)
input()
"""


@browser
def test_the_browser_of_a_killed_run_is_reaped_by_the_next_browser_started():
    """SIGKILL leaves the browser running (Chromium outlives ChromeDriver, nothing runs in the
    killed process); the next Page started finds its owner gone and removes both."""
    owner = subprocess.Popen([sys.executable, "-c", _KILLED_OWNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        profile = owner.stdout.readline().strip()
        assert profile in _our_browsers() and os.path.isdir(profile)
        driver = _children(owner.pid, "chromedriver")
        assert len(driver) == 1
    finally:
        owner.kill()
        owner.wait()
    assert profile in _our_browsers() and _running(driver[0])  # orphaned
    page = Page()
    try:
        page.start("click-button", 0)
        assert profile not in _our_browsers() and not os.path.exists(profile)
        assert not _running(driver[0])
        assert page._profile.name in _our_browsers()  # a live owner's browser is kept
        assert reap_orphaned_browsers() == 0
    finally:
        page.close()


def _pages_with_changed_genproblem(tmp_path: Path, monkeypatch) -> None:
    """Serve task pages from ``tmp_path``: click-button, and two copies of it whose inline
    script defines genProblem 0.5 s after the page has loaded (late) or never (never)."""
    import dreamgym_plugin_miniwob.page as page_module

    real = page_module._html_dir()
    for shared in ("core", "common"):  # the pages' ../core and ../common scripts
        (tmp_path / shared).symlink_to(real.parent / shared)
    (tmp_path / "miniwob").mkdir()
    source = (real / "click-button.html").read_text()
    definition = "var genProblem = function()"
    assert source.count(definition) == 1
    (tmp_path / "miniwob" / "click-button.html").write_text(source)
    (tmp_path / "miniwob" / "late.html").write_text(source.replace(
        definition, "setTimeout(function () { window.genProblem = generate; }, 500);\nvar generate = function()"
    ))
    (tmp_path / "miniwob" / "never.html").write_text(source.replace(definition, "var generate = function()"))
    monkeypatch.setattr(page_module, "_html_dir", lambda: tmp_path / "miniwob")
    monkeypatch.setattr(page_module, "task_names", lambda: ("click-button", "late", "never"))


@browser
def test_a_page_that_defines_genproblem_late_still_starts_its_problem(tmp_path, monkeypatch):
    """ChromeDriver's get() can return before the page's inline script has run (once in about
    twenty runs of the reduced example, "genProblem is not defined"): a start waits for it."""
    _pages_with_changed_genproblem(tmp_path, monkeypatch)
    page = Page()
    try:
        page.start("late", 3)
        late = (page.utterance(), page.elements())
        page.start("click-button", 3)
        assert late == (page.utterance(), page.elements())  # the same generator and seed: the same problem
        assert late[0].startswith('Click on the "') and any(e.tag == "button" for e in late[1])
    finally:
        page.close()


@browser
def test_a_page_that_never_defines_genproblem_fails_in_one_line_and_the_next_start_opens_another(tmp_path, monkeypatch):
    _pages_with_changed_genproblem(tmp_path, monkeypatch)
    page = Page(call_timeout_s=2.0)
    try:
        with pytest.raises(BrowserError) as err:
            page.start("never", 0)
        assert str(err.value) == (
            "miniwob: task page never.html did not load with core and genProblem defined within 2 s (env.config.call_timeout_s)"
        )
        assert page.task == ""  # the next start opens its page again
        profile = page._profile.name
        page.start("click-button", 0)
        assert page.utterance().startswith('Click on the "')
        assert page._profile.name == profile  # the browser worked: it was kept
        with pytest.raises(BrowserError, match=r"^miniwob: task page never\.html did not load"):
            page.start("never", 0)
    finally:
        page.close()


@browser
@pytest.mark.slow
def test_a_terminated_run_closes_its_browser(tmp_path):
    """SIGTERM (a scheduler's stop) mid-run: exit 143 after the run's cleanup, no browser left."""
    pytest.importorskip("dreamgym_plugin_hf")
    example = Path(__file__).parents[4] / "examples" / "miniwob.yaml"
    before = _our_browsers()
    args = [sys.executable, "-m", "dreamgym_core.cli", "run", str(example), "--set", f"run_dir={tmp_path / 'run'}",
            "--set", "data.expert_episodes=8", "--set", "experience.epochs=50", "--set", "experience_model.config.cpu_threads=1"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stderr:  # the browser is up once collection is over
            if "training the experience model" in line:
                break
        assert _our_browsers() - before, "the run's browser should be running"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
    finally:
        proc.kill()
    deadline = time.monotonic() + 10
    while _our_browsers() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _our_browsers() - before


@browser
@pytest.mark.slow
def test_chromium_resolves_no_host_name(tmp_path):
    """The task pages are local files: a run touches no network, so Chromium must not look up
    its vendor's hosts (it did at every start, background-networking flags or not: DNS queries
    for accounts.google.com, www.google.com, clients2.google.com). Seen with strace: no connect
    to a DNS server (port 53) from any process of the browser."""
    import shutil

    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    log = tmp_path / "strace.log"
    script = "from dreamgym_plugin_miniwob.page import Page\np = Page()\np.start('login-user', 1)\nimport time; time.sleep(3)\np.close()\n"
    done = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(log), sys.executable, "-c", script],
        capture_output=True, text=True, timeout=300,
    )
    if done.returncode != 0 and "ptrace" in done.stderr:
        pytest.skip(f"strace cannot trace here: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr[-500:]
    lookups = [line for line in log.read_text().splitlines() if "htons(53)" in line]
    assert lookups == [], f"{len(lookups)} connections to a DNS server, e.g. {lookups[0]}"


# --- what a typed text may hold and where it goes ---

LOGIN_USER = Task(id="miniwob/login-user/0", instruction="", domain="miniwob", payload={"task": "login-user", "seed": 0})


@pytest.mark.parametrize(("text", "code"), [
    ("karrie\tAU", "U+0009"), ("karriex\b", "U+0008"), ("a\x00b", "U+0000"), ("a\x01b", "U+0001"),
    ("a\x7fb", "U+007F"), ("a\rb", "U+000D"), ("a\x1bb", "U+001B"), ("a\x1fb", "U+001F"),
])  # fmt: skip
def test_a_control_character_is_refused_naming_it(text, code):
    """Tab typed into one field and went on in the next; Backspace deleted; NUL, U+0001, DEL and
    a carriage return were dropped: each counted as a valid step."""
    reason = unsendable_character(text)
    assert reason is not None and reason.startswith(f"control character {code} (") and "\n" not in reason


def test_tab_and_backspace_are_named_as_the_keys_they_are_typed_as():
    assert "the key Tab" in unsendable_character("a\tb")
    assert "the key Backspace" in unsendable_character("a\bb")


@pytest.mark.parametrize("text", ["line one\nline two", "é中文😀", "a\u200bb", "a\u0301", " spaced ", "\x80\xa0"])
def test_a_line_break_and_printable_text_are_typed(text):
    assert unsendable_character(text) is None


@browser
def test_typing_into_an_element_that_takes_no_text_types_nothing_and_is_invalid():
    """A label, a button, takes no focus (or no text): the keys went to the field focused before,
    and the step counted as valid."""
    env = MiniWoBEnv(max_steps=8, max_elements=40)
    try:
        first = env.reset(task=LOGIN_USER)
        assert first.text.splitlines()[:2] == ["[6] label \"Username\"", "[7] input_text value=\"\""]
        typed = env.step(action='type [10] "AU"')  # the password field, which then holds the focus
        assert typed.valid and '[10] input_password value="AU" (focused)' in typed.observation.text
        for ref in (6, 11):  # the "Username" label, the Login button
            result = env.step(action=f'type [{ref}] "karrie"')
            assert not result.valid and not result.done, ref
            assert result.info["invalid"].startswith(f"element [{ref}] takes no text ("), ref
            assert result.observation.text == typed.observation.text, ref  # nothing typed, nothing clicked
        into_field = env.step(action='type [7] "karrie"')
        assert into_field.valid and '[7] input_text value="karrie" (focused)' in into_field.observation.text
        assert "invalid" not in into_field.info
    finally:
        env.close()
