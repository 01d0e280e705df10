"""``dreamgym check PLUGIN``: run the conformance kit on a plugin's components."""

from __future__ import annotations

import tempfile
from typing import Iterator

import msgspec

from . import testing
from .plugins import Plugins
from .records import Task


def _default_config(spec):
    """The component's config with every default, or None when some field has none (the kit
    cannot guess a model path or a server URL; the plugin's own tests run its check)."""
    try:
        return msgspec.convert({}, type=spec.config_type)
    except msgspec.ValidationError:
        return None


def _stand_in_tasks(n: int) -> list[Task]:
    return [Task(id=f"check-{i}", instruction=f"find the coin number {i}", domain="check") for i in range(n)]


def check_plugin(name: str) -> Iterator[str]:
    """Yield one line per component checked; raise ConformanceError on the first failure."""
    plugins = Plugins.for_names([name])
    checked = 0
    for kind, specs in plugins.all_components().items():
        for spec in specs.values():
            if spec.plugin != name:
                continue
            config = _default_config(spec)
            if config is None:
                yield f"skip {kind}:{spec.name} ({spec.config_type.__name__} has required fields; the plugin's own tests run its check)"
                continue
            if kind == "env":
                testing.check_domain(spec.factory(config))
            elif kind == "encoder":
                testing.check_encoder(spec.factory(config))
            elif kind == "buffer":
                encoder = testing.BagOfWordsEncoder()
                with tempfile.TemporaryDirectory() as tmp:
                    counter = iter(range(1000))
                    testing.check_buffer(
                        lambda: spec.factory(config, encoder=encoder, path=f"{tmp}/{next(counter)}")
                    )
            elif kind == "curriculum":
                tasks = _stand_in_tasks(8)
                testing.check_curriculum(
                    spec.factory(config, tasks=tasks, task_generator=None, encoder=None, seed=0),
                    rebuild=lambda: spec.factory(config, tasks=tasks, task_generator=None, encoder=None, seed=0),
                )
            else:
                yield f"skip {kind}:{spec.name} (needs collaborators; the plugin's own tests run its check)"
                continue
            checked += 1
            yield f"ok   {kind}:{spec.name}"
    yield f"{checked} component(s) of plugin {name!r} passed"
