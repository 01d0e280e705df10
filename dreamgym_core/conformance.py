"""``dreamgym check PLUGIN``: run the conformance kit on a plugin's components."""

from __future__ import annotations

import tempfile
from typing import Iterator

import msgspec
import msgspec.inspect

from . import testing
from .contracts import missing_members
from .errors import ConfigError, ConformanceError, DataUnavailable, DreamGymError, ModelUnavailable
from .plugins import Plugins
from .records import Task


def _required_fields(spec) -> list[str]:
    """The config fields without a default: the kit cannot guess a model path or a server URL
    (the plugin's own tests run its check)."""
    fields = getattr(msgspec.inspect.type_info(spec.config_type), "fields", ())
    return [field.name for field in fields if field.required]


def _default_config(spec):
    """The component's config with every default, as a pipeline that names it without settings
    gets it; a default that its own config refuses fails the check, as it fails that run."""
    try:
        return msgspec.convert({}, type=spec.config_type)
    except msgspec.ValidationError as exc:
        raise ConformanceError(f"its default config is invalid: {exc}") from exc


def _built(kind: str, component):
    """``component`` if a run would take it: the members the core calls on a built component
    are the ones ``Plugins.build`` requires (contracts.REQUIRED_MEMBERS)."""
    if component is None:
        raise ConformanceError("its factory returned None")
    missing = missing_members(kind, component)
    if missing:
        raise ConformanceError(f"{type(component).__name__}: has no {', '.join(missing)} (a run refuses to build it; {testing.DOCS})")
    return component


class _Skip(Exception):
    """A check that cannot run here, and why."""


# The policy an algorithm is checked with: the smallest hf-tiny model (the hf plugin's; random
# weights, byte-level tokenizer), built in a second, updated in a second.
STAND_IN_POLICY = {"hidden_size": 32, "layers": 1, "heads": 2, "intermediate_size": 64, "vocab_size": 300,
                   "max_positions": 1024, "max_length": 512, "cpu_threads": 1}


def _stand_in_tasks(n: int) -> list[Task]:
    return [Task(id=f"check-{i}", instruction=f"find the coin number {i}", domain="check") for i in range(n)]

# The summary line of a check that skipped every component (the CLI then exits 5).
NOTHING_CHECKED = "nothing checked"


def check_plugin(name: str) -> Iterator[str]:
    """Yield one line per component checked (``ok   kind:name``, ``FAIL kind:name: message``
    or ``skip ...``), checking every component whatever fails, then a summary line. A caller
    (the CLI) counts the ``FAIL`` lines to set its exit status."""
    plugins = Plugins.for_names([name])
    checked = failed = registered = 0
    for kind, specs in plugins.all_components().items():
        for spec in specs.values():
            if spec.plugin != name:
                continue
            registered += 1
            if _required_fields(spec):
                yield f"skip {kind}:{spec.name} ({spec.config_type.__name__} has required fields; the plugin's own tests run its check)"
                continue
            if kind not in _CHECKS:
                yield f"skip {kind}:{spec.name} (needs collaborators; the plugin's own tests run its check)"
                continue
            try:
                _CHECKS[kind](spec, _default_config(spec))
            except _Skip as why:
                yield f"skip {kind}:{spec.name} ({why})"
                continue
            except (Exception, SystemExit) as exc:  # a failure of this component, whatever it raised
                checked += 1
                failed += 1
                message = _failure(exc)
                yield f"FAIL {kind}:{spec.name}: {' '.join(message.split())}"
            else:
                checked += 1
                yield f"ok   {kind}:{spec.name}"
    if not registered:  # a register hook without @hookimpl is a plain function pluggy never calls
        yield f"FAIL plugin {name!r} registers no components (is each dreamgym_register_* function marked @hookimpl?)"
        return
    if failed:
        yield f"{failed} of {checked} component(s) of plugin {name!r} failed"
    elif not checked:  # "0 component(s) passed" read as a pass
        yield f"{NOTHING_CHECKED}: each of the {registered} component(s) of plugin {name!r} was skipped"
    else:
        yield f"{checked} component(s) of plugin {name!r} passed"


def _failure(exc: BaseException) -> str:
    """What a component's check raised, as its FAIL line says it."""
    if isinstance(exc, ConformanceError):
        return str(exc)
    if isinstance(exc, SystemExit):  # sys.exit() in a component would end `dreamgym check` (exit 0 for code 0 or None)
        return f"SystemExit({exc.code!r}): it called sys.exit() (or raised SystemExit) while checked, which would end a run"
    return f"{type(exc).__name__}: {exc}"


def _check_env(spec, config) -> None:
    try:
        built = spec.factory(config)
    except DataUnavailable as exc:  # its default data (e.g. a download) is not on this machine: nothing to check
        raise _Skip(f"its default data is not here: {exc}") from exc
    domain = _built("env", built)
    # closed as the loop closes it (a domain's probe env holds a simulator or a browser); after a
    # failed check, a close() that fails too is logged, not raised over the check's failure
    with testing.closed_on_failure(domain):
        testing.check_domain(domain)
    close = getattr(domain, "close", None)
    if close is not None:
        close()


def _check_encoder(spec, config) -> None:
    testing.check_encoder(_built("encoder", spec.factory(config)))


def _check_buffer(spec, config) -> None:
    """``check_buffer`` of buffers kept at a path (a run's ``RUN/buffer``) and of in-memory ones
    (path None: the hookspec's, as ``dreamgym eval-model`` builds one), ``check_buffer_reopens``."""
    encoder = testing.BagOfWordsEncoder()

    def in_memory():
        try:
            buffer = spec.factory(config, encoder=encoder, path=None)
        except Exception as exc:
            raise ConformanceError(
                f"buffer {spec.name!r}: factory(config, encoder=..., path=None) raised {type(exc).__name__}: {exc}; path=None asks for "
                f"an in-memory buffer (the hookspec's; dreamgym eval-model builds one so) ({testing.DOCS})"
            ) from exc
        return _built("buffer", buffer)

    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(1000))
        testing.check_buffer(lambda: _built("buffer", spec.factory(config, encoder=encoder, path=f"{tmp}/{next(counter)}")))
        testing.check_buffer(in_memory)
        testing.check_buffer_reopens(lambda: _built("buffer", spec.factory(config, encoder=encoder, path=f"{tmp}/reopened")))


def _check_curriculum(spec, config) -> None:
    tasks = _stand_in_tasks(8)

    def build():  # what the loop passes; no domain here (a curriculum must allow None: the hookspec's default)
        return _built("curriculum", spec.factory(config, tasks=tasks, task_generator=None, encoder=None, seed=0, domain=None))

    testing.check_curriculum(build(), rebuild=build)


def _check_model(spec, config) -> None:
    try:
        model = spec.factory(config)
    except ModelUnavailable as exc:  # its default model is not on this machine: nothing to check
        raise _Skip(f"its default model is not here: {exc}") from exc
    testing.check_language_model(_built("model", model))


def _check_algo(spec, config) -> None:
    """``check_algorithm`` with a stand-in policy: hf-tiny (needs the hf plugin) and the kit's
    stand-in groups; an algorithm that runs its own loop (verl) is checked by its plugin's tests."""
    if getattr(spec.factory, "runs_own_loop", False):
        raise _Skip("runs its own training loop; the plugin's own tests run its check")
    try:
        models = Plugins.for_names(["hf"])
        policy_spec = models.component("model", "hf-tiny")
    except DreamGymError as exc:
        raise _Skip(f"checked with an hf-tiny policy, and the hf plugin is not there: {exc}") from exc
    policy_config = msgspec.convert(STAND_IN_POLICY, type=policy_spec.config_type)

    def build():
        """A new stand-in policy and the algorithm on it, as a run (and its ``--resume``) builds them."""
        policy = models.build("model", "hf-tiny", policy_config)
        try:
            algo = spec.factory(config, policy=policy, seed=0)
        except ConfigError as exc:  # an algorithm for another kind of policy (a served model, prompts) says so
            raise _Skip(f"its factory refuses the hf-tiny stand-in policy: {exc}") from exc

        def parameters():
            import torch

            return torch.cat([p.detach().flatten().clone() for p in policy.model.parameters()])

        return _built("algo", algo), parameters

    algo, parameters = build()
    testing.check_algorithm(algo, testing.stand_in_groups(), parameters, rebuild=build)


_CHECKS = {
    "env": _check_env, "encoder": _check_encoder, "buffer": _check_buffer, "curriculum": _check_curriculum,
    "model": _check_model, "algo": _check_algo,
}
