"""DreamGym: train LLM agents with RL on synthetic experience.

Plugins write ``from dreamgym_core import hookimpl``.
"""

from __future__ import annotations

from .hookspecs import NAME, hookimpl
from .specs import ComponentSpec

__all__ = ["NAME", "hookimpl", "ComponentSpec", "__version__"]
__version__ = "0.1.0"

#: Decorator marking a function as a DreamGym hook implementation. Plugins use it
#: on functions named after the specs in :mod:`dreamgym_core.hookspecs`.
hookimpl = hookimpl
