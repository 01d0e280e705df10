"""Does the experience model put the coin where the real game does after a move?

Reads ``dreamgym eval-model --predictions`` files (every answer beside its held-out real
transition) and, over the real moves the game accepted, prints how often the real next room and
the model's show a coin, how often they agree on it, and how many answers parsed:

    python benchmarks/table1/move_outcomes.py predictions-T0.3.jsonl predictions-T1.0.jsonl

A move's destination is hidden until the agent enters it, so a model can only know the coin's
room from its demos of the same world; always answering "no coin" agrees as often as the real
rooms lack one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def shows_coin(state: str | None) -> bool:
    """The observation part of a TextWorldExpress state mentions a coin."""
    return "coin" in (state or "").split("\nInventory", 1)[0]


def move_outcomes(rows: list[dict]) -> dict[str, float]:
    """Counts and rates over the accepted real moves of one predictions file."""
    moves = [r for r in rows if r["action"].startswith("move") and r["real_valid"]]
    parsed = [r for r in moves if r["parse_status"] == "ok"]
    real = sum(shows_coin(r["real_next_state"]) for r in parsed)
    model = sum(shows_coin(r["model_next_state"]) for r in parsed)
    agree = sum(shows_coin(r["real_next_state"]) == shows_coin(r["model_next_state"]) for r in parsed)
    n = max(len(parsed), 1)
    return {
        "steps": len(rows), "steps_parsed": sum(r["parse_status"] == "ok" for r in rows),
        "moves": len(moves), "moves_parsed": len(parsed),
        "real_coin_rate": real / n, "model_coin_rate": model / n, "coin_agreement": agree / n,
        "no_coin_agreement": (len(parsed) - real) / n,  # what always answering "no coin" would get
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", nargs="+", type=Path)
    for path in parser.parse_args().predictions:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        print(json.dumps({"file": str(path), **{k: round(v, 3) for k, v in move_outcomes(rows).items()}}))


if __name__ == "__main__":
    main()
