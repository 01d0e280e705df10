import msgspec
import pytest

from dreamgym_core.testing import make_transitions


def _distinct(n, *, source="offline", prefix="t"):
    return [
        msgspec.structs.replace(t, state=f"[{prefix}] {t.state}", next_state=f"[{prefix}] {t.next_state}")
        for t in make_transitions(n, source=source, prefix=prefix)
    ]


@pytest.fixture
def distinct():
    """make_transitions whose texts carry ``prefix``, so batches never collide on content."""
    return _distinct
