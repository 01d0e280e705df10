"""Write small ALFWorld games in ALFWorld's own on-disk format.

ALFWorld's games are generated from ALFRED's 3D scenes and downloaded (``alfworld-download``);
this writes a hand-made "pick and place" game the same engine loads and plays, for tests and
for custom tasks. A game is a trial folder under
``<root>/<split>/pick_and_place_simple-<Object>-None-<Receptacle>-<n>/trial_<id>/`` with

- ``traj_data.json``: the task type and ``pddl_params`` (what ALFWorld's loaders read);
- ``game.tw-pddl``: JSON with the PDDL domain and grammar shipped in the ``alfworld`` wheel,
  the goal sentence written into the grammar, the PDDL problem, and ``solvable``.

Names follow ALFRED's object ids (``Apple|x|y|z`` escaped as ``Apple_bar_...``), which the
engine shows as "apple 1"; the agent starts at a location with no receptacle, as in ALFRED.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import msgspec

__all__ = ["PickAndPlace", "write_game", "engine_files"]


class PickAndPlace(msgspec.Struct, frozen=True):
    """A room of receptacles (ALFRED class names, e.g. ``CounterTop``; repeats allowed) holding
    objects, and the goal: put an object of class ``target[0]`` in a receptacle of class ``target[1]``.

    ``objects`` pairs each object's class with the index of the receptacle it starts in.
    """

    receptacles: list[str]
    objects: list[tuple[str, int]]
    target: tuple[str, str]
    openable: tuple[str, ...] = ("Fridge", "Cabinet", "Drawer", "Microwave", "Safe", "Box")

    def __post_init__(self) -> None:
        bad = [i for _, i in self.objects if not 0 <= i < len(self.receptacles)]
        if bad:
            raise ValueError(f"object placed in receptacle {bad[0]}, but there are {len(self.receptacles)}")
        if self.target[1] not in self.receptacles or self.target[0] not in {c for c, _ in self.objects}:
            raise ValueError(f"target {self.target} names a class the scene does not have")
        # A goal that holds at reset would reward the first step, whatever it is, as the success.
        obj, rec = self.target
        solved = [i for cls, i in self.objects if cls == obj and self.receptacles[i] == rec]
        if solved:
            raise ValueError(
                f"scene 'put a {obj} in {rec}' is solved at reset: a {obj} starts in receptacle {solved[0]} ({rec}); "
                f"start every {obj} in a receptacle that is not a {rec}"
            )


def engine_files() -> tuple[str, str]:
    """The PDDL domain and the text grammar shipped in the ``alfworld`` wheel (read without
    importing ``alfworld.info``, which creates a data folder in the home directory)."""
    data = resources.files("alfworld") / "data"
    return (data / "alfred.pddl").read_text(), (data / "alfred.twl2").read_text()


def _alfred_id(name: str, n: int) -> str:
    """An ALFRED-style object id for the n-th thing of a scene, escaped as ALFWorld's files are."""
    x, z = f"{n // 10:02d}.{n % 10 * 10:02d}", f"{(n * 7) % 10:02d}.50"
    return f"{name}_bar__plus_{x.replace('.', '_dot_')}_bar__plus_00_dot_90_bar__minus_{z.replace('.', '_dot_')}"


def _problem(scene: PickAndPlace, name: str) -> str:
    recs = [_alfred_id(cls, i) for i, cls in enumerate(scene.receptacles)]
    objs = [_alfred_id(cls, 50 + i) for i, (cls, _) in enumerate(scene.objects)]
    locs = [f"loc_bar_{i}_bar_0_bar_0_bar_30" for i in range(len(recs) + 1)]  # locs[0]: the agent's start
    otypes = sorted({cls for cls, _ in scene.objects})
    rtypes = sorted(set(scene.receptacles))
    init = [f"(atLocation agent1 {locs[0]})"]
    for i, (cls, rec) in enumerate(zip(scene.receptacles, recs, strict=True)):
        init += [f"(receptacleAtLocation {rec} {locs[i + 1]})", f"(receptacleType {rec} {cls}Type)"]
        init += [f"(openable {rec})"] if cls in scene.openable else []
    for (cls, where), obj in zip(scene.objects, objs, strict=True):
        init += [f"(objectType {obj} {cls}Type)", f"(pickupable {obj})", f"(inReceptacle {obj} {recs[where]})"]
        init += [f"(objectAtLocation {obj} {locs[where + 1]})"]
    # Any object fits any receptacle here; the engine refuses to load a goal that cannot be reached.
    init += [f"(canContain {r}Type {o}Type)" for r in rtypes for o in otypes]
    objects = ["agent1 - agent"] + [f"{o} - object" for o in objs] + [f"{r} - receptacle" for r in recs]
    objects += [f"{loc} - location" for loc in locs] + [f"{t}Type - otype" for t in otypes] + [f"{t}Type - rtype" for t in rtypes]
    goal_object, goal_receptacle = scene.target
    goal = (
        "(and (exists (?r - receptacle) (exists (?o - object) (and (inReceptacle ?o ?r) "
        f"(objectType ?o {goal_object}Type) (receptacleType ?r {goal_receptacle}Type)))))"
    )
    return (
        f"(define (problem plan_{name})\n(:domain alfred)\n(:objects\n" + "\n".join(objects) + "\n)\n"
        "(:init\n" + "\n".join(init) + f"\n)\n(:goal\n{goal}\n)\n)\n"
    )


def write_game(root: str | Path, split: str, scene: PickAndPlace, *, number: int = 1, overwrite: bool = False) -> Path:
    """Write ``scene`` as a pick-and-place game of ``split`` (``train``, ``valid_seen``,
    ``valid_unseen``) under ``root`` (ALFWorld's ``json_2.1.1`` folder); returns its game file.

    The trial folder is named by the split, the target and ``number`` only, so two scenes with the
    same target and number would share it: a folder that exists is refused with a
    ``FileExistsError`` naming it, unless ``overwrite`` replaces its game. A task id leaves the
    split out (``<task folder>@<trial>``), so the same target and number in another split of
    ``root`` would give two games one id: that is refused too, ``overwrite`` or not."""
    obj, rec = scene.target
    trial = f"trial_T{number:05d}"
    name = f"pick_and_place_simple-{obj}-None-{rec}-{number}"
    folder = Path(root) / split / name / trial
    splits = sorted(p for p in Path(root).iterdir() if p.name != split) if Path(root).is_dir() else []
    for other in (p / name / trial for p in splits):
        if other.exists():
            raise FileExistsError(
                f"write_game: {other} already exists in split {other.parent.parent.name!r} (a task id names the target "
                f"and number {number}, not the split); give this scene another number"
            )
    if folder.exists() and not overwrite:
        raise FileExistsError(
            f"write_game: {folder} already exists (a game of the same split, target and number {number}); "
            "give this scene another number, or pass overwrite=True to replace it"
        )
    folder.mkdir(parents=True, exist_ok=True)
    params = {"object_target": obj, "parent_target": rec, "toggle_target": "", "mrecep_target": "", "object_sliced": False}
    (folder / "traj_data.json").write_text(json.dumps({"task_id": trial, "task_type": "pick_and_place_simple", "pddl_params": params}))
    domain, grammar = engine_files()
    game = {
        "pddl_domain": domain,
        # ALFWorld writes the goal sentence into the grammar when it generates a game.
        "grammar": grammar.replace("UNKNOWN GOAL", f"put a {obj.lower()} in {rec.lower()}"),
        "pddl_problem": _problem(scene, trial),
        "solvable": True,
    }
    path = folder / "game.tw-pddl"
    path.write_text(json.dumps(game))
    return path
