"""The offline data stage (``dreamgym_core.stages.collect_offline``) on the real
TextWorldExpress engine: what a run stores in ``offline.jsonl`` and what ``--resume``
accepts back from there."""

from __future__ import annotations

import pytest

from dreamgym_core.config import DataConfig
from dreamgym_core.errors import DataError
from dreamgym_core.stages import OFFLINE_FILE, collect_offline


def test_offline_data_cut_at_a_line_break_is_refused_and_kept(twx_domains, tmp_path) -> None:
    domain = twx_domains["coin"]
    tasks, data = domain.tasks(split="train"), DataConfig(expert_episodes=3, noisy_episodes=1, random_episodes=1)
    collected = collect_offline(domain, tasks, data, seed=0, run_dir=tmp_path)
    assert len(collected) == 5
    path = tmp_path / OFFLINE_FILE
    assert collect_offline(domain, tasks, data, seed=0, run_dir=tmp_path) == collected  # read back whole
    # cut between two episode lines (a copy that stopped part way): every line left is a whole episode
    cut = b"".join(path.read_bytes().splitlines(keepends=True)[:3])
    path.write_bytes(cut)
    with pytest.raises(DataError, match=r"offline.jsonl: holds 3 episodes, but data.expert/noisy/random/explore_episodes ask for 5"):
        collect_offline(domain, tasks, data, seed=0, run_dir=tmp_path)
    assert path.read_bytes() == cut  # what is there stays
