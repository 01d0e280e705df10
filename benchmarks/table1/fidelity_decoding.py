"""A cell's experience model scored again on the run's held-out fidelity transitions, under
another way of decoding its answer. Diagnosis only: it asks whether unparsable answers can be
cut at inference, without retraining (``results/diagnosis.md``).

    python benchmarks/table1/fidelity_decoding.py GAME SEED RUN_DIR [--retries N] [--staged] [--failures FILE]

RUN_DIR is a finished GRPO DreamGym run of the table (its ``experience_model/`` and
``offline.jsonl``). The held-out transitions, the buffer of demos, the prompts and the
``fidelity`` sampling stream are the run's own, so with no option the run's
``fidelity/*`` numbers come back exactly.

- ``--retries N``: re-generate an unparsable answer up to N times (the table's pipeline: 1).
- ``--staged``: write the answer in five generations instead of one. The model writes the
  reasoning up to ``</think>``; the tags are then written for it (``</think>\\n<state>``), it
  writes the state up to ``</state>``, and each flag is asked for after its opening tag
  (``<valid>``, ``<done>``, ``<success>``). An answer can only fail on an empty state or an
  unreadable flag, never on its tags.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from dreamgym_core import checkpoint
from dreamgym_core.config import load_pipeline, resolve
from dreamgym_core.experience import LMExperienceModel, outcome_reward, parse_output, render_output
from dreamgym_core.fidelity import FIDELITY_STREAM, fidelity_metrics, predict_all, unparsed_answers
from dreamgym_core.loop import Runner
from dreamgym_core.plugins import Plugins
from dreamgym_core.records import ExperienceResult

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as table1  # noqa: E402

_ANY_TAG = re.compile(r"</?(think|state|valid|done|success|reward)>", re.IGNORECASE)
_BOOL = {"true": True, "false": False}
FLAG_TOKENS = 3  # "true" or "false" and the closing tag's start; more would let it ramble


def span_before_tag(text: str) -> str:
    """A generated span up to the first tag: a leading ``<think>`` dropped, the rest cut at any tag."""
    text = re.sub(r"^\s*<think>", "", text, flags=re.IGNORECASE)
    found = _ANY_TAG.search(text)
    return (text[: found.start()] if found else text).strip()


def first_flag(text: str) -> bool | None:
    """The flag a generation starts with (exactly ``true`` or ``false``), else None."""
    words = text.split("<")[0].split()
    return _BOOL.get(words[0].lower()) if words else None


def staged_result(reasoning: str, state: str, flags: list[bool | None], *, raw: str) -> ExperienceResult:
    """The parsed answer of one staged attempt; failed, as :func:`parse_output` fails an
    answer, when the state is empty or a flag (valid, done, success) was unreadable."""
    valid, done, success = flags
    if not state or None in flags:
        return ExperienceResult(reasoning=reasoning, next_state=state, reward=0.0, done=True, success=False,
                                valid=bool(valid), parse_status="failed", raw=raw)  # fmt: skip
    answer = ExperienceResult(
        reasoning=reasoning, next_state=state, done=bool(done), success=bool(success), valid=bool(valid),
        reward=outcome_reward(done=bool(done), success=bool(success), valid=bool(valid)), parse_status="ok",
    )
    return parse_output(render_output(answer))


class StagedExperienceModel(LMExperienceModel):
    """:class:`LMExperienceModel` whose answers are written in stages, the tags given."""

    def _answer(self, prompts: Sequence[str], temperature: float) -> list[ExperienceResult]:
        """One staged attempt at every prompt (the retry loop is the base class's)."""
        budget = self.config.max_new_tokens

        def gen(ps: Sequence[str], n: int, stop: str) -> list[str]:
            return self._generate(ps, max_new_tokens=n, temperature=temperature, stop=[stop])

        reasoning = [span_before_tag(t) for t in gen(prompts, budget - 4 * FLAG_TOKENS, "</think>")]
        with_state = [p + f"<think>{r}</think>\n<state>" for p, r in zip(prompts, reasoning)]
        count = getattr(self.backend, "prompt_ids", None)
        used = max(len(count(r)) for r in reasoning) if count else 0
        states = [span_before_tag(t) for t in gen(with_state, max(8, budget - 4 * FLAG_TOKENS - used), "</state>")]
        asked = [p + s + "</state>\n<valid>" for p, s in zip(with_state, states)]
        flags: list[list[bool | None]] = [[] for _ in prompts]
        for tag, follows in (("valid", " <done>"), ("done", " <success>"), ("success", "")):
            answers = [first_flag(t) for t in gen(asked, FLAG_TOKENS, f"</{tag}>")]
            for row, value in zip(flags, answers):
                row.append(value)
            asked = [a + ("true" if v else "false") + f"</{tag}>{follows}" for a, v in zip(asked, answers)]
        return [
            staged_result(think, state, row, raw=text[len(prompt):])
            for prompt, text, think, state, row in zip(prompts, asked, reasoning, states, flags)
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("game")
    parser.add_argument("seed", type=int)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--retries", type=int)
    parser.add_argument("--staged", action="store_true")
    parser.add_argument("--failures", type=Path, help="write the answers that stayed unparsable here (JSONL)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="fidelity-decoding-"))
    items = table1.overrides(args.game, "GRPO DreamGym", args.seed, scratch)
    if args.retries is not None:
        items.append(f"experience.max_retries={args.retries}")
    outer = load_pipeline(table1.BASE, items)
    plugins = Plugins.for_names(outer.plugins, where=str(table1.BASE))
    runner = Runner(resolve(outer, plugins, where=str(table1.BASE)), plugins, scratch, progress=False)
    runner.exp_backend.reload(path=str(args.run_dir / "experience_model"))
    runner.buffer.add(transitions=[t for traj in checkpoint.read_trajectories(args.run_dir / "offline.jsonl") for t in traj.transitions])
    cfg = runner.cfg
    held_out = runner.fidelity_transitions()
    base = runner.experience_model.stream(FIDELITY_STREAM)
    model = StagedExperienceModel(base.backend, base.config, domain=base.domain) if args.staged else base
    results = predict_all(model, held_out, runner.buffer, history_window=cfg.loop.history_window, k=cfg.loop.top_k)
    if args.failures:
        checkpoint.write_records(args.failures, unparsed_answers(results, held_out))
    metrics = {**fidelity_metrics(results, held_out), **model.metrics()}
    print(json.dumps({"game": args.game, "seed": args.seed, "retries": cfg.experience.max_retries, "staged": args.staged,
                      **{k: round(v, 4) for k, v in metrics.items()}}))  # fmt: skip


if __name__ == "__main__":
    main()
