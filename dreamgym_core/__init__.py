"""DreamGym: train LLM agents with RL on synthetic experience.

Plugins write ``from dreamgym_core import hookimpl``.
"""

from __future__ import annotations

import os

# OpenMP threads spin at a barrier before they sleep. Beside any other busy process one of
# torch's threads is often descheduled and the other spins for nothing: on a 2-core machine 2
# threads ran the tiny model 24-30x slower than 1 (benchmarks/cpu_threads). OpenMP reads this
# once, when torch loads it, so it applies where dreamgym_core is imported before torch (the
# ``dreamgym`` command, plugins, the test suite); a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

from .hookspecs import NAME, hookimpl
from .specs import ComponentSpec

__all__ = ["NAME", "hookimpl", "ComponentSpec", "__version__"]
__version__ = "0.1.0"

#: Decorator marking a function as a DreamGym hook implementation. Plugins use it
#: on functions named after the specs in :mod:`dreamgym_core.hookspecs`.
hookimpl = hookimpl
