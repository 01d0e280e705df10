import pytest

from dreamgym_plugin_encoders import MiniLMConfig, MiniLMEncoder


@pytest.fixture(scope="session")
def minilm():
    """One loaded MiniLM for the whole session (loading dominates these tests' time)."""
    return MiniLMEncoder(MiniLMConfig(batch_size=2))
