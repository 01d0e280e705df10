"""Write random pick-and-place games in ALFWorld's format, for running examples/alfworld.yaml
where ALFWorld's own games cannot be downloaded.

Each game is a room of 3-6 ALFRED receptacle classes holding 2-4 objects, each placed where
ALFRED allows it (``alfworld.gen.constants.VAL_RECEPTACLE_OBJECTS``); the goal puts one of the
objects in another receptacle that can hold it. These are not ALFWorld's ALFRED-derived games
(those have 10-40 receptacles and six task types): they exercise the same engine on smaller rooms.

    python benchmarks/alfworld/make_games.py OUT [--train 64 --valid 8 --test 32 --seed 0]

writes OUT/json_2.1.1/{train,valid_seen,valid_unseen}/...; pass OUT/json_2.1.1 as env.config.data_path.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from dreamgym_plugin_alfworld.scenes import PickAndPlace, write_game

# Receptacles that stand in a room (not carried), and small objects to move between them.
RECEPTACLES = ["CounterTop", "Cabinet", "Drawer", "Fridge", "Shelf", "Desk", "SideTable", "DiningTable", "Sofa", "Bed", "Dresser", "Microwave", "Safe", "Box", "GarbageCan"]
OBJECTS = ["Apple", "Mug", "Book", "Pen", "Pencil", "CellPhone", "KeyChain", "Egg", "Potato", "Tomato", "Cup", "Bowl", "CreditCard", "Pillow", "Vase", "Watch"]


def random_scene(rng: random.Random, fits: dict[str, set[str]]) -> PickAndPlace:
    while True:
        receptacles = rng.sample(RECEPTACLES, rng.randint(3, 6))
        objects = []
        for cls in rng.sample(OBJECTS, rng.randint(2, 4)):
            homes = [i for i, r in enumerate(receptacles) if cls in fits.get(r, ())]
            if homes:
                objects.append((cls, rng.choice(homes)))
        goals = [(cls, r) for cls, home in objects for r in set(receptacles) if r != receptacles[home] and cls in fits.get(r, ())]
        if objects and goals:
            return PickAndPlace(receptacles=receptacles, objects=objects, target=rng.choice(sorted(goals)))


def main() -> None:
    from alfworld.gen.constants import VAL_RECEPTACLE_OBJECTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=64)
    parser.add_argument("--valid", type=int, default=8)
    parser.add_argument("--test", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    fits = {r: set(objs) for r, objs in VAL_RECEPTACLE_OBJECTS.items()}
    root = args.out / "json_2.1.1"
    number = 1
    for split, n in (("train", args.train), ("valid_seen", args.valid), ("valid_unseen", args.test)):
        for _ in range(n):
            write_game(root, split, random_scene(rng, fits), number=number)
            number += 1
    print(root)


if __name__ == "__main__":
    main()
