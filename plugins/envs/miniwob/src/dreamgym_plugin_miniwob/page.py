"""Real MiniWoB++ task pages in headless Chromium, driven through the page's own ``core`` API.

MiniWoB++ ships each task as an HTML page whose script generates a problem from
``Math.random`` and scores the episode itself (``WOB_DONE_GLOBAL``, ``WOB_RAW_REWARD_GLOBAL``).
This module starts Debian's Chromium through its ChromeDriver (never a browser download),
seeds the generator so that a seed names one problem, and reads the page's element tree
(``core.getDOMInfo``) through :class:`miniwob.dom.DOMElement`. Clicks go through
``core.elementClick`` (the element's own click handler, as MiniWoB's element actions do) and
typing through real key events.
"""

from __future__ import annotations

import functools
import os
import pathlib
import re
import shutil
import signal
import tempfile
import threading
import time
from typing import Any

import msgspec

from dreamgym_core.errors import ConfigError, DreamGymError

from .config import DEFAULT_CALL_TIMEOUT_S, DEFAULT_START_TIMEOUT_S

__all__ = ["BrowserError", "Element", "Page", "task_names", "find_browser", "kill_processes_using", "reap_orphaned_browsers"]

# The flags a closed network needs: without the background-networking ones Chromium keeps
# trying to reach its vendor's hosts at every start, and even with them it still looked up
# accounts.google.com, www.google.com and clients2.google.com at every start. The task pages
# are local files and need no host name, so none is resolved at all (the resolver rules).
_CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost", "--no-pings", "--disable-domain-reliability",
)
# A MiniWoB episode ends by itself after 10 s of wall time; a language-model agent on a CPU
# thinks for longer than that, so the episode's length is bounded by steps instead. The limit
# is a setTimeout delay, whose largest value is 2**31 - 1 ms (24.8 days): a larger one fires at once.
_NO_TIME_LIMIT = "core.EPISODE_MAX_TIME = 2147483647;"
# The page of task {task} is showing (not the one shown before, even when that was the same
# task's: no episode was started in it yet) and can start an episode: loaded (its onload made
# the start cover that core.startEpisodeReal hides), with core's script and its genProblem defined.
_READY = (
    "return location.pathname.endsWith('/{task}.html') && document.readyState === 'complete'"
    " && typeof core !== 'undefined' && typeof genProblem === 'function' && !window.dreamgymStarted;"
)
# Every image the page shows, loaded (or failed to load): an <img>, or an element drawn by a CSS
# image (email-inbox's icons are spans with ``content: url(...)``). An element whose image is still
# loading is 0 px wide, and core.getDOMInfo leaves out such an element: every later ref moved, so a
# seed's first state on a page just opened (every reset's, :meth:`Page.start`) could show other
# refs when the file was slow to read (email-inbox-delete, once in a run over all 130 tasks).
# A promise (an expression), which ChromeDriver waits for.
_IMAGES_LOADED = (
    "(function () { var urls = Array.from(document.images, function (i) { return i.src; }), url = /url\\(\"([^\"]*)\"\\)/g;"
    " document.querySelectorAll('body, body *').forEach(function (e) { var s = getComputedStyle(e), m;"
    " [s.content, s.backgroundImage].forEach(function (v) { while ((m = url.exec(v)) !== null) { urls.push(m[1]); } }); });"
    " return Promise.all(urls.filter(Boolean).map(function (u) { var i = new Image(); i.src = u;"
    " return i.decode().catch(function () {}); })); })()"
)
# core.getDOMInfo, the refs of an episode that has ended kept (Page.elements), once the page's
# images have loaded (:data:`_IMAGES_LOADED`). endEpisode increments WOB_EPISODE_ID once per
# episode (a second call finds no timer and returns).
# getDOMInfo gives no value for a <select> and no choice for an <option>: they come beside it,
# by ref. A drop-down's options have no box, so getDOMInfo leaves them out: the select carries
# their texts; a list box's options are elements of their own (:data:`_CLICK`).
# Nor does it give an SVG element's classes (an SVGAnimatedString, which arrives as an object) or
# a shape's colour (its fill: an SVG shape has no background): click-shape's shapes and
# click-pie's slices are told apart by them (:attr:`Element.marked`). Every SVG element has a
# computed fill, inherited; only a shape (SVGGeometryElement) is painted with it.
_DOM_INFO = (
    f"return {_IMAGES_LOADED}.then(function () {{"
    " if (WOB_DONE_GLOBAL) { var ended = 'e' + (WOB_EPISODE_ID - 1);"
    " document.querySelectorAll('[data-wob_eps=\"' + ended + '\"]')"
    ".forEach(function (e) { e.dataset.wob_eps = 'e' + WOB_EPISODE_ID; }); }"
    " var info = core.getDOMInfo(), extra = {};"
    " var texts = function (os) { return Array.from(os, function (o) { return o.text; }); };"
    " var boxed = function (o) { var r = o.getBoundingClientRect(); return r.width > 0 && r.height > 0; };"
    " Object.keys(core.previousDOMInfo).forEach(function (ref) { var e = core.previousDOMInfo[ref];"
    " if (e instanceof HTMLOptionElement) { extra[ref] = {selected: e.selected}; }"
    " else if (e instanceof HTMLSelectElement) { extra[ref] = {"
    " value: e.multiple ? null : texts(e.selectedOptions).join(''),"
    " options: Array.from(e.options).some(boxed) ? [] : texts(e.options)}; }"
    " else if (e instanceof SVGElement) { extra[ref] = {classes: e.getAttribute('class') || '',"
    " fill: e instanceof SVGGeometryElement ? getComputedStyle(e).fill : ''}; } });"
    " return [info, extra]; });"
)
# core.elementClick runs an <option>'s click handlers, but a script's click() chooses nothing
# (click-scroll-list then scored the empty choice). The click chooses it as a user's does; in a
# list that takes several choices it adds or removes the option, as a Ctrl-click does, since
# the agent has no modifier keys. The select hears input and change, as after a user's choice.
_CLICK = (
    "var e = core.previousDOMInfo[ref], clicked = core.elementClick(ref);"
    " var list = e instanceof HTMLOptionElement && !e.disabled ? e.closest('select') : null;"
    " if (clicked === true && list) { e.selected = list.multiple ? !e.selected : true; list.focus();"
    " ['input', 'change'].forEach(function (t) { list.dispatchEvent(new Event(t, {bubbles: true})); }); }"
    " return clicked;"
)
# Keys go to the focused element, whatever the action named: typed into a label, a button or a
# div, the text landed in the field focused before. So a typed text goes only to an element that
# takes text (a text-like input, a textarea, a select's typeahead, an editable element) and that
# holds the focus once clicked; a label is no field (its field is listed beside it). The answer
# is "typed" (go ahead), "missing", "no text" (not clicked) or "no focus" (clicked, focus elsewhere).
_TYPE_INTO = (
    "var e = core.previousDOMInfo[ref]; if (!e) return 'missing';"
    " var field = e.isContentEditable || e instanceof HTMLTextAreaElement || e instanceof HTMLSelectElement"
    " || (e instanceof HTMLInputElement && !/^(button|submit|reset|checkbox|radio|image|file|range|color|hidden)$/"
    ".test(e.type)); if (!field) return 'no text';"
    f" if ((function () {{ {_CLICK} }})() !== true) return 'missing';"
    " var a = document.activeElement; return a === e || (e.isContentEditable && a.contains(e)) ? 'typed' : 'no focus';"
)
# An action's effects can land after the action returns: use-autocomplete's suggestions appear
# after jQuery UI's 300 ms delay, click-collapsible-2's sections slide for about 0.4 s. A state
# read at once showed the page before them, and the next step showed a change it did not make.
# So after an action the state waits until the page is quiet (Page.settle): no short timer of
# the page pending (a setTimeout of at most _SETTLE_CAP_MS, or an animation frame, counted from
# the episode's start on: Raphael's animations run on frames), no jQuery animation running, and
# no change to the document for _SETTLE_QUIET_MS (MiniWoB's own reward and timer display, which
# ticks every second, and the refs getDOMInfo writes left aside). Watching timers keeps the
# wait short on a page that has nothing under way, which is settled at the first look one
# _SETTLE_POLL_MS after the action when nothing changed since: catching the autocomplete's delay
# by changes alone would take a quiet window above 300 ms at every step. A page that never
# settles (moving-items, chase-circle) returns after _SETTLE_CAP_MS.
_SETTLE_POLL_MS = 20
_SETTLE_QUIET_MS = 50
_SETTLE_CAP_MS = 2000
_WATCH = (
    "(function () { var set = window.setTimeout, clear = window.clearTimeout, pending = new Set();"
    " var frame = window.requestAnimationFrame, unframe = window.cancelAnimationFrame;"
    " window.dreamgymPending = pending; window.dreamgymPoll = set; window.dreamgymChanged = 0;"
    " window.setTimeout = function (fn, delay) {"
    f" if (typeof fn !== 'function' || !((+delay || 0) <= {_SETTLE_CAP_MS})) {{ return set.apply(window, arguments); }}"
    " var args = Array.prototype.slice.call(arguments, 2);"
    " var id = set(function () { pending.delete(id); return fn.apply(window, args); }, delay);"
    " pending.add(id); return id; };"
    " window.clearTimeout = function (id) { pending.delete(id); return clear(id); };"
    " window.requestAnimationFrame = function (fn) {"
    " var id = frame(function (t) { pending.delete('f' + id); return fn(t); }); pending.add('f' + id); return id; };"
    " window.cancelAnimationFrame = function (id) { pending.delete('f' + id); return unframe(id); };"
    " new MutationObserver(function (records) { if (records.some(function (r) {"
    " var e = r.target.nodeType === 1 ? r.target : r.target.parentElement;"
    " return !(r.attributeName || '').startsWith('data-wob_') && !(e && e.closest('#reward-display')); }))"
    " { window.dreamgymChanged = performance.now(); } }).observe(document.documentElement,"
    " {subtree: true, childList: true, attributes: true, characterData: true}); })();"
)
# A promise (ChromeDriver waits for it) that resolves once the page is quiet, or at the cap.
_SETTLED = (
    "return new Promise(function (settled) { var start = performance.now();"
    " if (window.dreamgymPending === undefined) { return settled(); }"
    " (function check() { var now = performance.now(), changed = window.dreamgymChanged;"
    " var animated = window.jQuery && jQuery.fn && jQuery.fn.animate && jQuery(':animated').length > 0;"
    " var busy = window.dreamgymPending.size > 0 || animated"
    f" || (changed > start ? now - changed < {_SETTLE_QUIET_MS} : now - start < {_SETTLE_POLL_MS});"
    f" if (!busy || now - start >= {_SETTLE_CAP_MS}) {{ settled(); }}"
    f" else {{ window.dreamgymPoll(check, {_SETTLE_POLL_MS}); }} }})(); }});"
)
_INTERACTIVE = ("button", "textarea", "select", "option", "a")
# A text-less element is a click target only when it is at least this wide and this high: the
# thinner ones on the package's pages are no target a task names (jQuery UI's 1 px screen-reader
# helpers and 2-7 px resize handles, social-media's 3 px spacers, click-pie's slices while the
# menu is shut), while the smallest targets are grid-coordinate's 8 px points and click-shape's
# 10 px shapes (measured on every task's page, README).
_MIN_TARGET_PX = 8
# A browser's profile directory is named after the process that started it, so that a later
# run can tell a profile whose owner died without closing it (SIGKILL, the OOM killer).
_PROFILE_PREFIX = "dreamgym-chromium-"


class BrowserError(DreamGymError):
    """Chromium or its driver is missing, failed to start, or failed during an episode."""


class Element(msgspec.Struct, frozen=True):
    """One page element as the agent sees it (a ``core.getDOMInfo`` node)."""

    ref: int
    tag: str
    text: str = ""
    value: str | bool | None = None
    focused: bool = False
    selected: bool = False  # an <option> that is chosen
    options: tuple[str, ...] = ()  # a drop-down <select>'s choices (its options are not elements)
    # What tells a text-less element apart (an icon, a colour box, an SVG shape): its id, its
    # classes, and the colour its box is painted (background, or an SVG shape's fill; "" when
    # transparent). Defaults, so that elements recorded before they were read still decode.
    id: str = ""
    classes: str = ""
    background: str = ""  # a CSS colour, "rgb(255, 0, 0)"
    leaf: bool = False  # no child element has a ref, and its box is a click target (_MIN_TARGET_PX)

    @property
    def interactive(self) -> bool:
        return self.tag.startswith("input") or self.tag in _INTERACTIVE

    @property
    def marked(self) -> bool:
        """A text-less leaf that something tells apart: email-inbox's star and trash icons (a
        class), click-color's boxes (a background), grid-coordinate's points (an id). A
        container is not one: what it holds is listed instead."""
        return self.leaf and bool(self.id or self.classes or self.background)

    @property
    def listed(self) -> bool:
        """Shown in the abstract state: it shows text, takes input, or is a marked leaf
        (layout-only containers and unmarked leaves are not)."""
        return bool(self.text) or self.interactive or self.marked

    @property
    def takes_text(self) -> bool:
        return self.tag in ("input_text", "input_password", "textarea")


def _html_dir() -> pathlib.Path:
    import miniwob

    return pathlib.Path(miniwob.__file__).parent / "html" / "miniwob"


@functools.cache
def task_names() -> tuple[str, ...]:
    """The MiniWoB++ tasks that run from the package's own files (FlightWoB's need a server);
    read once, since a multi-task run checks a name at every change of page."""
    return tuple(sorted(p.stem for p in _html_dir().glob("*.html")))


def find_browser(chromium: str = "", chromedriver: str = "") -> tuple[str, str]:
    """The Chromium and ChromeDriver binaries: the given paths, else MiniWoB's environment
    variables, else ``chromium`` and ``chromedriver`` on PATH."""
    binary = chromium or os.environ.get("MINIWOB_CHROME_BINARY", "") or shutil.which("chromium") or ""
    driver = chromedriver or os.environ.get("MINIWOB_CHROMEDRIVER", "") or shutil.which("chromedriver") or ""
    missing = [name for name, path in (("Chromium", binary), ("ChromeDriver", driver)) if not path or not os.path.exists(path)]
    if missing:
        raise BrowserError(
            f"miniwob: no {' or '.join(missing)} found (install Debian's packages: apt-get install chromium "
            "chromium-driver, or set env.config.chromium/chromedriver or MINIWOB_CHROME_BINARY/MINIWOB_CHROMEDRIVER)"
        )
    return binary, driver


def _flatten(node: Any, extra: dict[str, Any]) -> list[Element]:
    """Document-order elements with a ref, each with its own text: a leaf's text, or the text
    of its text-node children (``t`` nodes, which cannot be clicked); selects and options with
    their choices, SVG elements with their classes and fill (``extra``, :data:`_DOM_INFO`)."""
    out: list[Element] = []

    def visit(e: Any) -> None:
        if e.ref > 0:
            text = e.text if e.text is not None else " ".join(c.text for c in e.children if c.tag == "t" and c.text)
            more = extra.get(str(e.ref), {})
            svg = "fill" in more  # getDOMInfo's classes and background say nothing of an SVG element
            out.append(Element(
                ref=e.ref, tag=e.tag, text=" ".join(text.split()), value=more.get("value", e.value),
                focused=bool(e.focused), selected=bool(more.get("selected")),
                options=tuple(" ".join(o.split()) for o in more.get("options", ())),
                id=" ".join(e.id.split()), classes=" ".join((more["classes"] if svg else e.classes).split()),
                background=_css_color(more["fill"]) if svg else _painted(e.bg_color),
                leaf=min(e.width, e.height) >= _MIN_TARGET_PX and not any(c.ref > 0 for c in e.children),
            ))  # fmt: skip
        for child in e.children:
            visit(child)

    visit(node)
    return out


_RGBA = re.compile(r"rgba?\(([\d.]+), ([\d.]+), ([\d.]+)(?:, ([\d.]+))?\)")


def _css_color(text: str) -> str:
    """A computed CSS colour (``rgb(...)``/``rgba(...)``) as :func:`_painted` writes it; "" for
    a transparent one or no colour (an SVG fill of ``none`` or of a gradient, ``url(...)``)."""
    match = _RGBA.fullmatch(text.strip())
    if match is None:
        return ""
    r, g, b, a = (float(v) if v is not None else 1.0 for v in match.groups())
    return _painted((r / 255, g / 255, b / 255, a))


def _painted(rgba: tuple[float, float, float, float]) -> str:
    """``DOMElement.bg_color`` (0-1 floats, as :class:`miniwob.dom.DOMElement` reads the computed
    colour) back as the CSS colour it was, ``rgb(255, 0, 0)``; "" when it is transparent."""
    r, g, b = (round(c * 255) for c in rgba[:3])
    alpha = rgba[3]
    if alpha <= 0:
        return ""
    return f"rgb({r}, {g}, {b})" if alpha >= 1 else f"rgba({r}, {g}, {b}, {alpha:g})"


def _timed_out(exc: Exception) -> bool:
    """``exc`` ended a call at ``call_timeout_s``: Selenium's wait for ChromeDriver's answer
    (urllib3's read timeout), or ChromeDriver's own for a page load or a script."""
    from selenium.common.exceptions import TimeoutException
    from urllib3.exceptions import TimeoutError as RequestTimeout

    return isinstance(exc, (TimeoutError, TimeoutException, RequestTimeout))


class Page:
    """One headless Chromium (started on first use) showing the page of the task last started.

    Every call to the browser is bounded by ``call_timeout_s`` (ChromeDriver's answer, the
    page's load, a script), and its start by ``start_timeout_s``. A call that fails (a crashed
    or stopped browser, a dead ChromeDriver, a limit passed) raises :class:`BrowserError` and
    closes the page, killing what is left of the browser: the next ``start`` launches a new one.
    """

    def __init__(
        self, *, chromium: str = "", chromedriver: str = "", call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
    ) -> None:  # fmt: skip
        self.task = ""  # the task whose page is open
        self.call_timeout_s = call_timeout_s
        self.start_timeout_s = start_timeout_s
        self._binaries = (chromium, chromedriver)
        self._driver: Any = None
        self._profile: tempfile.TemporaryDirectory[str] | None = None

    def _failed(self, what: str, exc: Exception) -> BrowserError:
        """``exc`` of a browser call as a one-line BrowserError, the browser closed first."""
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        task = self.task or "(no page)"
        self.close(broken=True)
        if _timed_out(exc):  # the limit is the user's to raise: say which field set it
            what += f": no answer within {self.call_timeout_s:g} s (env.config.call_timeout_s)"
        return BrowserError(f"miniwob {task}: {what}: {type(exc).__name__}: {message}")

    def _script(self, script: str) -> Any:
        driver = self._started()
        try:
            return driver.execute_script(script)
        except Exception as exc:  # a crashed or stopped browser, a closed window, a dead driver
            raise self._failed("the browser failed", exc) from exc

    def _started(self) -> Any:
        if self._driver is None:
            from selenium import webdriver
            from selenium.webdriver.chrome.service import Service

            binary, driver = find_browser(*self._binaries)
            reap_orphaned_browsers()
            self._profile = tempfile.TemporaryDirectory(prefix=f"{_PROFILE_PREFIX}{os.getpid()}-")
            options = webdriver.ChromeOptions()
            for flag in (*_CHROMIUM_FLAGS, f"--user-data-dir={self._profile.name}"):
                options.add_argument(flag)
            options.binary_location = binary
            service = Service(executable_path=driver)
            try:
                self._driver = self._launch(lambda: webdriver.Chrome(service=service, options=options), service)
                # Selenium waits 120 s for ChromeDriver's answer, which a stopped browser never
                # sends; the page's load and a script get the same limit on ChromeDriver's side.
                self._driver.command_executor.client_config.timeout = self.call_timeout_s
                self._driver.set_page_load_timeout(self.call_timeout_s)
                self._driver.set_script_timeout(self.call_timeout_s)
                # A headless window need not hold the system focus (Debian's Chromium 150 does
                # not), and then an element's focus() fires no focus event: tasks that score
                # focus (focus-text-2) never ended. The page is told it has the focus, as on a screen.
                self._driver.execute_cdp_cmd("Emulation.setFocusEmulationEnabled", {"enabled": True})
            except BrowserError:
                self.close(broken=True)
                raise
            except Exception as exc:
                self.close(broken=True)
                raise BrowserError(f"miniwob: Chromium did not start: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
        return self._driver

    def _launch(self, start: Any, service: Any) -> Any:
        """``start()`` (ChromeDriver, then Chromium through it) within ``start_timeout_s``.

        Selenium and ChromeDriver bound a start only by their own fixed limits (60 s for a
        browser that never comes up, 120 s or more for a ChromeDriver that never answers), so
        the start runs in a thread; past the limit its ChromeDriver and browser are killed,
        which ends the thread's wait, and the start fails in one line."""
        outcome: list[Any] = []
        # Waited on instead of Thread.join: a join interrupted by Ctrl-C marks a thread that is
        # still running as stopped (CPython 3.11), so a later join would not wait for it.
        ended = threading.Event()

        def run() -> None:
            try:
                outcome.append(start())
            except BaseException as exc:  # handed to the caller's thread
                outcome.append(exc)
            finally:
                ended.set()

        threading.Thread(target=run, name="miniwob-browser-start", daemon=True).start()
        try:
            up = ended.wait(self.start_timeout_s)
        except BaseException:  # Ctrl-C: nothing may outlive the run
            self._kill_start(service, ended)
            raise
        if not up:
            self._kill_start(service, ended)
            raise BrowserError(
                f"miniwob: Chromium did not start within {self.start_timeout_s:g} s (env.config.start_timeout_s); "
                "its ChromeDriver and browser were killed"
            )
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    def _kill_start(self, service: Any, ended: threading.Event) -> None:
        """Kill a start still under way: its ChromeDriver and every process of the profile
        (twice, for a process spawned while the first kill ran)."""
        for wait_s in (5.0, 5.0):
            process = getattr(service, "process", None)
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
            if self._profile is not None:
                kill_processes_using(self._profile.name)
            if ended.wait(wait_s):
                return

    def start(self, task: str, seed: int) -> None:
        """Start the episode whose problem ``task``'s page generates from ``seed``, on the task's
        page opened afresh (0.1-0.2 s on 2 busy cores).

        A seed must show the same page whatever was played before, and an episode's page keeps
        more than MiniWoB's own reset undoes: the refs stored on surviving elements (the page
        numbers elements from 1 at every episode but keeps an old element's number), the focus,
        and widgets a genProblem does not rebuild (book-flight's and choose-date's date picker
        stayed open, listing 35 more elements). Only a new document is sure to hold none of it."""
        if task not in task_names():
            raise ConfigError(f"miniwob: unknown MiniWoB++ task {task!r}")
        self.task = ""
        driver = self._started()
        try:
            driver.get((_html_dir() / f"{task}.html").as_uri())
        except Exception as exc:
            self.task = task
            raise self._failed("the browser failed to open the page", exc) from exc
        self.task = task
        self._wait_until_ready()
        # as before, no element holds the focus when the episode starts but one its genProblem
        # focuses; the watch (_WATCH) starts first, so that it counts the timers genProblem sets
        self._script(
            "window.dreamgymStarted = true; if (document.activeElement) { document.activeElement.blur(); }"
            f" {_WATCH} Math.seedrandom({int(seed)}); {_NO_TIME_LIMIT} core.startEpisodeReal();"
        )
        # the first state too: terminal's genProblem focuses its input from a timer, so the
        # state read at once showed it unfocused and the first step showed the focus it did not give
        self.settle()

    def _wait_until_ready(self) -> None:
        """Wait, within ``call_timeout_s``, until the page just opened can start an episode.

        ChromeDriver's get() can return before the page has run its inline script, which
        defines the ``genProblem`` that ``core.startEpisodeReal`` calls (every task page does):
        a start at once then failed with "genProblem is not defined"."""
        deadline = time.monotonic() + self.call_timeout_s
        while self._script(_READY.format(task=self.task)) is not True:
            if time.monotonic() > deadline:
                task, self.task = self.task, ""  # the next start opens the page again
                raise BrowserError(
                    f"miniwob: task page {task}.html did not load with core and genProblem defined "
                    f"within {self.call_timeout_s:g} s (env.config.call_timeout_s)"
                )
            time.sleep(0.05)

    def utterance(self) -> str:
        answer = self._script("return core.getUtterance();")
        return answer["utterance"] if isinstance(answer, dict) else str(answer)

    def elements(self) -> list[Element]:
        """The page's elements now (this also renews the refs ``click`` accepts).

        After the episode ends the elements keep the refs they had in it. ``core.endEpisode``
        counts the episode done (``WOB_EPISODE_ID++``), and ``getDOMInfo`` keeps an element's ref
        only when it was given in the current episode (``data-wob_eps``): the last state would
        renumber every element. The ended episode's elements are moved to the new count first.
        ``start`` is unaffected: it opens a new page, whose ``core.startEpisodeReal`` numbers from 1."""
        from miniwob.dom import DOMElement

        info, extra = self._script(_DOM_INFO)
        return _flatten(DOMElement(info), extra)

    def click(self, ref: int) -> bool:
        """Click element ``ref`` of the last ``elements()`` (an option is chosen, :data:`_CLICK`);
        False when the page has no such element. Returns once the page has settled."""
        clicked = self._script(f"var ref = {int(ref)}; {_CLICK}") is True
        if clicked:
            self.settle()
        return clicked

    def focus_to_type(self, ref: int) -> str:
        """Click element ``ref`` to type into it, if it takes text: :data:`_TYPE_INTO`'s answer.
        A click that took no focus returns once the page has settled; "typed" leaves that to
        ``type_text``, which follows."""
        answer = str(self._script(f"var ref = {int(ref)}; {_TYPE_INTO}"))
        if answer == "no focus":
            self.settle()
        return answer

    def type_text(self, text: str) -> None:
        """Real key events into the focused element; returns once the page has settled."""
        from miniwob.selenium_actions import execute_type_text

        driver = self._started()
        try:
            execute_type_text(text, driver)
        except Exception as exc:
            raise self._failed("typing failed", exc) from exc
        self.settle()

    def settle(self) -> None:
        """Wait until the page is quiet after an action, at most ``_SETTLE_CAP_MS`` (:data:`_SETTLED`)."""
        self._script(_SETTLED)

    def outcome(self) -> tuple[bool, float]:
        """(episode over, the page's raw reward in [-1, 1])."""
        answer = self._script('return [WOB_DONE_GLOBAL, WOB_RAW_REWARD_GLOBAL];')
        return bool(answer[0]), float(answer[1])

    def close(self, *, broken: bool = False) -> None:
        """Quit the browser and remove its profile. A ``broken`` one (a call to it failed) is
        killed first: asking a stopped browser to quit would wait out the time limit again."""
        driver, self._driver = self._driver, None
        self.task = ""  # a new browser opens the page again
        if broken and self._profile is not None:
            kill_processes_using(self._profile.name)
        if driver is not None:
            try:
                driver.quit()
            except Exception:  # a dead ChromeDriver cannot quit its browser: done below
                pass
        if self._profile is not None:
            kill_processes_using(self._profile.name)
            try:
                self._profile.cleanup()
            except OSError:  # a write still in flight at the last scan: once more
                time.sleep(0.5)
                self._profile.cleanup()
            self._profile = None


def kill_processes_using(profile: str, wait_s: float = 10.0) -> int:
    """Kill every process started with ``--user-data-dir=<profile>`` (this page's Chromium and
    its helpers) and wait until none is left: when ChromeDriver dies first, the browser outlives
    it with no parent to stop it. A killed process is not gone at once (a write it had under way
    can still land in the profile, which CI once saw as a failed removal), and a helper forked
    after the scan is not in it: so it scans again until nothing matches. Reads /proc; elsewhere
    it finds nothing. Returns how many were killed."""
    flag = f"--user-data-dir={profile}".encode()
    killed: set[int] = set()
    deadline = time.monotonic() + wait_s
    while pids := _with_driver_parents(_processes_with_argument(flag)):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except OSError:  # it ended meanwhile, or is not ours to kill
                continue
        if time.monotonic() > deadline:
            raise BrowserError(f"miniwob: {len(pids)} browser processes of {profile} survived SIGKILL")
        time.sleep(0.05)
    return len(killed)


def reap_orphaned_browsers(tmp_dir: str | None = None) -> int:
    """Kill the browsers, and remove the profiles, that runs which died without closing left
    behind (nothing runs on SIGKILL, and Chromium outlives its ChromeDriver): a profile whose
    owner process is gone belongs to no one. Only this user's profiles are touched, and a
    reused owner pid only keeps a profile a while longer. Returns how many were removed."""
    removed = 0
    for profile in pathlib.Path(tmp_dir or tempfile.gettempdir()).glob(f"{_PROFILE_PREFIX}*-*"):
        owner = profile.name[len(_PROFILE_PREFIX):].split("-", 1)[0]
        try:
            mine = profile.is_dir() and profile.stat().st_uid == os.getuid()
        except OSError:  # removed meanwhile by another run's sweep
            continue
        if not owner.isdigit() or not mine or _alive(int(owner)):
            continue
        try:
            kill_processes_using(str(profile))
        except BrowserError:  # stuck in the kernel: left for a later sweep, not this run's failure
            continue
        shutil.rmtree(profile, ignore_errors=True)  # another run may be sweeping it too
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _with_driver_parents(pids: list[int]) -> list[int]:
    """``pids`` and the ChromeDriver that started them, when it still runs: the owner of a run
    killed with SIGKILL leaves its ChromeDriver behind too, and that one carries no profile."""
    parents = []
    for pid in pids:
        try:
            parent = int(pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
            program = pathlib.Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0")[0]
        except (OSError, ValueError, IndexError):  # ended meanwhile
            continue
        if b"chromedriver" in program.rpartition(b"/")[2]:
            parents.append(parent)
    return list(dict.fromkeys([*pids, *parents]))


def _processes_with_argument(argument: bytes) -> list[int]:
    """Live processes whose command line holds ``argument`` (a zombie's reads empty)."""
    found = []
    for cmdline in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if argument in cmdline.read_bytes().split(b"\0"):
                found.append(int(cmdline.parent.name))
        except (OSError, ValueError):  # the process ended meanwhile
            continue
    return found
