"""Which stored transition top-1 retrieval shows each synthetic step of a DreamGym run: an offline
(real) one or an earlier iteration's synthetic answer, and whether it has the step's own (state, action).

    dreamgym buffer export --path RUN/buffer RUN.jsonl
    python benchmarks/table1/demo_sources.py RUN/config.json RUN.jsonl

The run's buffer is rebuilt iteration by iteration in memory with the run's own buffer and encoder
(the offline seed, then each iteration's synthetic transitions after its rollout, as the loop stores
them), and each iteration's steps are asked for their nearest demo before their own are added.
"""

from __future__ import annotations

import collections
import sys

from dreamgym_core.checkpoint import read_transitions
from dreamgym_core.commands.eval_model import _build_buffer
from dreamgym_core.config import load_pipeline, resolve
from dreamgym_core.plugins import Plugins
from dreamgym_core.records import Transition


def iteration_of(episode_id: str) -> int:
    """The loop tags RL's episodes ``it<iteration>-<n>``."""
    return int(episode_id.split("-", 1)[0].removeprefix("it"))


def main(config: str, export: str) -> None:
    pipeline = load_pipeline(config, ())
    plugins = Plugins.for_names(pipeline.plugins, where=config)
    rows = read_transitions(export)
    buffer = _build_buffer(resolve(pipeline, plugins, where=config), plugins, [t for t in rows if t.source != "synthetic"])
    by_iteration: dict[int, list[Transition]] = collections.defaultdict(list)
    for t in rows:
        if t.source == "synthetic":
            by_iteration[iteration_of(t.episode_id)].append(t)
    print("| iteration | synthetic steps | top-1 demo synthetic | of them with the step's (state, action) | top-1 demo offline | of them with the step's (state, action) |")
    print("|---|---|---|---|---|---|")
    for it in sorted(by_iteration):
        steps = by_iteration[it]
        counts: collections.Counter[tuple[str, bool]] = collections.Counter()
        for t, hits in zip(steps, buffer.retrieve(queries=[(t.state, t.action) for t in steps], k=1), strict=True):
            top = hits[0]
            counts[(top.source, (top.state, top.action) == (t.state, t.action))] += 1
        synthetic = counts[("synthetic", True)] + counts[("synthetic", False)]
        print(f"| {it + 1} | {len(steps)} | {synthetic} | {counts[('synthetic', True)]} | {len(steps) - synthetic} | {counts[('offline', True)]} |")
        buffer.add(transitions=steps)


if __name__ == "__main__":
    main(*sys.argv[1:3])
