"""Table 1 of the paper at small scale, on real TextWorldExpress games.

Each (game, row, seed) is one ``dreamgym run`` of the table's base pipeline, ``base.yaml``
beside this file, with the row's ``--set`` overrides. ``base.yaml`` is the main job's
``examples/default.yaml`` as protocol 8 ran it, kept byte for byte (cells record its digest),
so tuning the main job to its time budget leaves the table alone. Runs are cached: a
finished cell's summary is stored under ``results/cells/`` (committed) and is never run
again; an interrupted run resumes.
Offline data and a trained experience model are shared between rows that would
build identical ones (same game, seed, annotation and retrieval), by copying them
into the new run directory before it starts (the loop reuses them).

A cell records the sha256 of the base pipeline it ran on, the protocol (``PROTOCOL``,
bumped when a code change makes old cells incomparable) and the commit of the code
(``<=abc123``: run on code at or before that commit). The report uses only cells of
the current base pipeline and protocol, run with their game's and row's overrides as they are
now, so editing ``base.yaml``, a row or a game, or bumping the protocol, starts a fresh table (of
those cells); cells of protocol N live in ``results/cells/pN/`` and its table in
``results/table1-pN.md``, built from the base pipeline protocol N ran on (``EARLIER_BASES``).

    python benchmarks/table1/run.py --games coin --seeds 0 1 2          # run / fill the cache
    python benchmarks/table1/run.py --games coin --seeds 0 1 2 --report # table from the cache
    python benchmarks/table1/run.py --games coin --seeds 0 1 2 --report --protocol 4  # an earlier protocol's

``--draws 0 1 2`` repeats each DreamGym row over draws of the experience model
(``loop.experience_draw``): draw k > 0 of a row reuses the data, experience model and warm
start of its draw 0 and differs only in RL's synthetic steps. Such a row's value on a seed is
the mean over the draws, and the table goes to ``results/table1-pN-draws0-1-2.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from scipy import stats

from dreamgym_core import checkpoint

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RUNS = HERE / "runs"  # large, not committed
CELLS = HERE / "results" / "cells"

GAMES = {
    "coin": ["env.config.game=coin", "env.config.params={numLocations: 2, includeDoors: 0}"],
    # Two rooms: fetch the coin from the other room and put it in the box (4 actions; the expert
    # also looks, reads the task and the map: 7). Its test fold uses only words the train fold
    # shows, which a policy trained from scratch needs (results/diagnosis.md). The default
    # offline data (1058 transitions here): with half of it the seed-0 warm start scored 0.06.
    "mapreader": [
        "env.config.game=mapreader", "env.config.params={numLocations: 2, maxDistanceApart: 1}",
        "env.config.max_steps=10", "loop.max_steps=8",
    ],
    # Coin with a quarter of the expert episodes (16; noisy and random unchanged). With the default
    # 64 the warm start already sits near the ~60% this policy reaches on coin whatever trains it,
    # leaving RL no headroom (results/diagnosis.md); the paper's SFT baselines leave plenty (WebShop
    # 32%). Scarce real data is the setting DreamGym is for. 16 was fixed before any run; measured,
    # it did not weaken the warm start (SFT 63.7 on seeds 0-4; results/diagnosis.md).
    "coin-scarce": [
        "env.config.game=coin", "env.config.params={numLocations: 2, includeDoors: 0}",
        "data={expert_episodes: 16, noisy_episodes: 32, random_episodes: 32}",
    ],
    # Coin with three rooms and three distractor items, every split's tasks worlds of their own
    # (env.config.distinct_worlds): the 32 test games of "coin" above are 8 worlds, repeated 3-6
    # times, and its validation games are train worlds. The main job's game since they were found.
    "coin-3": [
        "env.config.game=coin", "env.config.params={numLocations: 3, includeDoors: 0, numDistractorItems: 3}",
        "env.config.distinct_worlds=true",
    ],
}
# coin-3 with the expert playing its shortest winning walk (env.config.expert_path): coin's gold
# agent walks at random, and the first of its seeded walks to win, which coin-3's demos imitate,
# took 2 to 15 steps where 2 to 4 suffice (6 of the main job's 64 expert episodes ran past the
# 8-step cap). The main job plays these demos since 6d58838; a game of its own keeps coin-3's cells.
GAMES["coin-3-shortest"] = [*GAMES["coin-3"], "env.config.expert_path=shortest"]

# Row -> overrides over base.yaml (GRPO in DreamGym with the curriculum).
# Real-env rows train no experience model, so nothing replays their test games synthetically.
REAL = ["loop.mode=real", "experience.skip=true", "eval.synthetic_agreement=false"]
ROWS: dict[str, list[str]] = {
    "SFT": ["loop.iterations=0", *REAL],
    "DPO (real env)": ["algo.name=dpo", "algo.config={lr: 1.0e-4, max_new_tokens: 24, minibatch_size: 16}", *REAL],
    "GRPO (real env)": REAL,
    "PPO (real env)": ["algo.name=ppo", "algo.config={lr: 1.0e-4, max_new_tokens: 24, minibatch_size: 16, value_lr: 1.0e-3}", *REAL],
    "GRPO DreamGym": [],
    "PPO DreamGym": ["algo.name=ppo", "algo.config={lr: 1.0e-4, max_new_tokens: 24, minibatch_size: 16, value_lr: 1.0e-3}"],
    # 6 synthetic iterations, then real ones until the budget of real transitions is spent.
    # (The budget is a hard cap: one real group of 4 episodes fits 32 on both games.)
    "GRPO DreamGym-S2R": ["loop.mode=s2r", "loop.iterations=7", "loop.s2r_synthetic_share=0.85", "loop.real_budget=32"],
    "w/o retrieval": ["loop.top_k=0"],
    "w/o reasoning": ["experience.annotator=none"],
    "w/o curriculum": ["plugins=[textworld, hf, local, encoders, exact, uniform]", "curriculum.name=uniform", "curriculum.config={}"],
    # Beyond the paper: the synthetic worlds drop each furniture sentence with probability 0.5
    # (loop.state_variation; picked before any run, not tuned), since coin's test fold furnishes
    # kitchens with a table no train world shows (results/diagnosis.md).
    "GRPO DreamGym + state variation": ["loop.state_variation=0.5"],
    # Beyond the paper: the experience model's demos come from the episode's own world first, and
    # in it from the same action (loop.demos; trains its own experience model). On mapreader-4's
    # policy play one demo showed a move's real destination for 49 of the 79 moves the data
    # holds it for, and 72 with it (results/pretrained-policy).
    "GRPO DreamGym + same-world demos": ["loop.demos=same-world-first"],
}
# The paper's rows: the acceptance targets compare these.
PAPER_ROWS = [
    "SFT", "DPO (real env)", "GRPO (real env)", "PPO (real env)", "GRPO DreamGym", "PPO DreamGym", "GRPO DreamGym-S2R",
    "w/o retrieval", "w/o reasoning", "w/o curriculum",
]
# Beyond the paper: each paper row again, but the policy picks one of the state's listed actions
# by the probability it gives each one's answer (loop.action_choice=listed) instead of generating
# its answer, from the same warm-started weights (and the same experience model where the row
# trains one). The from-scratch policies that generate walk one way whatever the exits
# (results/coin-3-games-won.md).
LISTED = " (listed actions)"
ROWS.update({row + LISTED: [*ROWS[row], "loop.action_choice=listed"] for row in PAPER_ROWS})
# Beyond the paper: the domain rules out the experience model's answers the real game cannot give
# (loop.check_transitions; TextWorld: a look or inventory whose answer changes the inventory, score
# or action list). Such answers made 0-44% of RL's synthetic coin-3 wins per seed
# (results/coin-3-listed-actions.md, phantom_wins.py). The experience model is the default row's.
CHECKED = "GRPO DreamGym + checked transitions"
ROWS[CHECKED] = ["loop.check_transitions=true"]
ROWS[CHECKED + LISTED] = [*ROWS[CHECKED], "loop.action_choice=listed"]
# The same check, but an answer it rules out is replaced by the domain's (TextWorld: the state
# unchanged) instead of failing: the 2-layer model rewrites the list after most looks and
# inventories (120 of the 140 in listed seed 0's RL), so failing them ends nearly every episode.
CORRECTED = "GRPO DreamGym + corrected transitions"
ROWS[CORRECTED] = ["loop.check_transitions=true", "loop.implausible_answers=correct"]
ROWS[CORRECTED + LISTED] = [*ROWS[CORRECTED], "loop.action_choice=listed"]
# The generating policy's remaining phantom wins are unlisted actions the model accepts (in the
# checked runs, an unlisted `take coin` as the episode's only action in 26 of 53): the correction with
# the start state's real list enforced (loop.reject_unlisted_actions at the start only; later lists
# are the model's).
CORRECTED_REJECTING = CORRECTED + " + unlisted refused at the start"
ROWS[CORRECTED_REJECTING] = [*ROWS[CORRECTED], "loop.reject_unlisted_actions=true", "loop.reject_unlisted_at=start"]
# The default row with every state's action list enforced (loop.reject_unlisted_actions at every
# step; lists after the start are the model's): on mapreader (protocol 9) the experience model
# accepted 98% of the unlisted actions RL tried, which the real game refuses, and the policies
# that RL in it trained wrote more of them in real play (results/diagnosis.md).
REJECTING = "GRPO DreamGym + unlisted refused"
ROWS[REJECTING] = ["loop.reject_unlisted_actions=true"]
# The default row with an experience model trained on each winning transition 4 times
# (experience.success_repeats). On mapreader (protocol 9) the default model's success agreement,
# 96.3%, was 0.735 balanced (0.5 on seed 0: it never said "won"), and with the warm start its
# synthetic episodes succeeded 3-69% of the time against 63-91% real, so RL in it had few wins to
# learn from. Wins are ~6% of the offline steps there; 4 copies make them ~20%, still the minority.
# Asked before it ran: does its balanced accuracy rise, and RL in it stop losing to SFT?
SUCCESSES_REPEATED = "GRPO DreamGym + wins shown 4x"
ROWS[SUCCESSES_REPEATED] = ["experience.success_repeats=4"]
# Beyond the paper: the SFT row with a warm start of its own, on every winning offline episode as
# the table's (rebuilt: does this machine reproduce the shared warm start?) and on the expert's
# winning episodes only (loop.warmstart_demos=expert, the paper's SFT on expert demonstrations; the
# table's warm start also imitates the noisy and random policies' wins). Each collects its own
# offline data (the same episodes: collection is seeded) and trains no experience model.
SFT_REBUILT, SFT_EXPERT = "SFT (own warm start)", "SFT (own warm start, expert demos only)"
ROWS[SFT_REBUILT] = ROWS["SFT"]
ROWS[SFT_EXPERT] = [*ROWS["SFT"], "loop.warmstart_demos=expert"]
OWN_WARMSTART = {SFT_REBUILT, SFT_EXPERT}
# S2R with the same correction, against the listed real GRPO (the paper's S2R target).
CORRECTED_S2R = "GRPO DreamGym-S2R + corrected transitions" + LISTED
ROWS[CORRECTED_S2R] = [*ROWS["GRPO DreamGym-S2R" + LISTED], *ROWS[CORRECTED]]
# The paper's ablations with the same correction and listed actions, so that the corrected listed
# rows carry every target of the table between themselves (the report's last targets). Each plays the
# experience model of the ablation row it repeats (MODEL_FROM): w/o retrieval's and w/o reasoning's
# own, w/o curriculum's the default row's.
CORRECTED_SUFFIX = CORRECTED.removeprefix("GRPO DreamGym") + LISTED
ABLATIONS = ("w/o retrieval", "w/o reasoning", "w/o curriculum")
MODEL_FROM: dict[str, str] = {}
for _ablation in ABLATIONS:
    ROWS[_ablation + CORRECTED_SUFFIX] = [*ROWS[_ablation + LISTED], *ROWS[CORRECTED]]
    MODEL_FROM[_ablation + CORRECTED_SUFFIX] = _ablation
# Splits the curriculum's part in the corrected listed rows (asked before it ran: does w/o
# curriculum's lead come from never playing variation worlds, or from drawing seed tasks
# uniformly instead of by reward variance?): the reward-entropy curriculum with lambda = 0, so
# seed tasks are still drawn by value but no variation is ever played.
NO_VARIATIONS = "w/o task variations" + CORRECTED_SUFFIX
ROWS[NO_VARIATIONS] = [*ROWS[CORRECTED + LISTED], "curriculum.config={generator: domain, lambda: 0.0}"]
# The full corrected method again, but its seed tasks drawn uniformly (seed_sampling: uniform); the
# variations are still made from high-value tasks and drawn by value, up to lambda. Asked before it
# ran: with the original tasks covered evenly, does the method with its curriculum reach w/o
# curriculum's level, SFT + 10?
UNIFORM_SEEDS = CORRECTED + " + seed tasks drawn uniformly" + LISTED
ROWS[UNIFORM_SEEDS] = [*ROWS[CORRECTED + LISTED], "curriculum.config={generator: domain, seed_sampling: uniform}"]
# Both halves off inside the reward-entropy curriculum: lambda 0 and seed tasks drawn uniformly make
# the same generator calls as the uniform plugin (w/o curriculum), so each batch holds the same tasks
# in another order. Asked before it ran: does it give w/o curriculum's numbers?
BOTH_OFF = "w/o task variations, seed tasks drawn uniformly" + CORRECTED_SUFFIX
ROWS[BOTH_OFF] = [*ROWS[CORRECTED + LISTED], "curriculum.config={generator: domain, lambda: 0.0, seed_sampling: uniform}"]
# Beyond the paper: synthetic experience costs no real transitions, so a DreamGym row can train
# longer at no real cost. The corrected listed row with 18 iterations instead of 6 (asked before
# it ran: does three times the synthetic RL reach SFT + 10?), and real GRPO with 18 iterations as
# its reference (three times the real transitions). Every checkpoint is kept, so `dreamgym curve`
# also gives each cell's success after 6 and 12 iterations.
LONGER = " for 18 iterations"
CORRECTED_LONGER = CORRECTED + LONGER + LISTED
ROWS[CORRECTED_LONGER] = [*ROWS[CORRECTED + LISTED], "loop.iterations=18"]
REAL_LONGER = "GRPO (real env)" + LONGER + LISTED
ROWS[REAL_LONGER] = [*ROWS["GRPO (real env)" + LISTED], "loop.iterations=18"]
# Beyond the paper: GRPO trains the listed choice itself (algo listed_update: choice): the log-prob of
# the picked answer among the state's listed ones, the distribution the rollout sampled from, instead
# of the answer's own tokens over the whole vocabulary (the base algo config otherwise, same lr). Asked
# before it ran: with RL's gradient on what tells the listed answers apart, does the corrected method
# reach SFT + 10, and does real GRPO gain alike?
CHOICE = ", choice-trained"
CHOICE_ALGO = "algo.config={lr: 1.0e-4, max_new_tokens: 24, minibatch_size: 16, listed_update: choice}"
CORRECTED_CHOICE = CORRECTED + CHOICE + LISTED
ROWS[CORRECTED_CHOICE] = [*ROWS[CORRECTED + LISTED], CHOICE_ALGO]
REAL_CHOICE = "GRPO (real env)" + CHOICE + LISTED
ROWS[REAL_CHOICE] = [*ROWS["GRPO (real env)" + LISTED], CHOICE_ALGO]
# Beyond the paper: RL's synthetic steps join the buffer, and from the third iteration on about half
# of the steps' top-1 demo is the experience model's own earlier answer (demo_sources.py on a
# corrected listed coin-3 run), so its errors come back as evidence. The corrected listed row with
# the buffer kept to real transitions (loop.store_synthetic=false), for 6 and for 18 iterations.
# Asked before it ran: shown only real steps, does the method stop losing ground with longer RL
# (seeds 0-9, 18 iterations: 65.9 against 67.8 after 6), and does it reach SFT + 10?
REAL_DEMOS = ", real demos only"
CORRECTED_REAL_DEMOS = CORRECTED + REAL_DEMOS + LISTED
ROWS[CORRECTED_REAL_DEMOS] = [*ROWS[CORRECTED + LISTED], "loop.store_synthetic=false"]
CORRECTED_LONGER_REAL_DEMOS = CORRECTED + LONGER + REAL_DEMOS + LISTED
ROWS[CORRECTED_LONGER_REAL_DEMOS] = [*ROWS[CORRECTED_LONGER], "loop.store_synthetic=false"]
# Two of the paper's ablations of the 6-iteration row, each on its corrected row's experience model.
REAL_DEMOS_SUFFIX = CORRECTED_SUFFIX.removesuffix(LISTED) + REAL_DEMOS + LISTED
for _ablation in ("w/o reasoning", "w/o curriculum"):
    ROWS[_ablation + REAL_DEMOS_SUFFIX] = [*ROWS[_ablation + CORRECTED_SUFFIX], "loop.store_synthetic=false"]
    MODEL_FROM[_ablation + REAL_DEMOS_SUFFIX] = _ablation
COMMON = ["eval.fidelity_episodes=6"]
# Rows whose experience model equals the default row's (same data, annotation, retrieval).
SHARES_MODEL = {
    "GRPO DreamGym", "PPO DreamGym", "GRPO DreamGym-S2R", "w/o curriculum", "GRPO DreamGym + state variation", CHECKED, CORRECTED,
    CORRECTED_S2R, CORRECTED_REJECTING, REJECTING, CORRECTED_LONGER, "w/o curriculum" + CORRECTED_SUFFIX, NO_VARIATIONS,
    UNIFORM_SEEDS, BOTH_OFF, CORRECTED_CHOICE, CORRECTED_REAL_DEMOS, CORRECTED_LONGER_REAL_DEMOS,
    "w/o curriculum" + REAL_DEMOS_SUFFIX,
}
SHARES_MODEL |= {row + LISTED for row in SHARES_MODEL if row + LISTED in ROWS}
# Rows whose RL steps the experience model: they can be repeated over its draws
# (loop.experience_draw). One draw moved protocol-5 coin cells by up to 40 points
# (results/diagnosis.md), so ranking these rows needs several per seed.
DRAWN = SHARES_MODEL | {"w/o retrieval", "w/o reasoning", "GRPO DreamGym + same-world demos", SUCCESSES_REPEATED}
DRAWN |= {row + LISTED for row in DRAWN if row + LISTED in ROWS}
DRAWN |= set(MODEL_FROM)


def unlisted_row(row: str) -> str:
    """The row a listed-actions row repeats (the row itself for any other)."""
    return row.removesuffix(LISTED)


def sft_of(row: str) -> str:
    """The SFT row a row is paired with: the one that acts as it does."""
    return "SFT" + LISTED if row.endswith(LISTED) else "SFT"


BASE = HERE / "base.yaml"
# Bump when a code change makes earlier cells incomparable although the base pipeline is
# unchanged. 2: SFT demos and synthetic steps show the admissible-action line (c45ccc7).
# 3: the warm start keeps its best validation epoch (f352c87), S2R's real budget is a hard
# cap (2c452fe), retrieval ties go to the earliest rows (2609440).
# 4: RL starts from one random state and greedy play before RL no longer moves the policy's
# sampling seed, so rows of a seed share RL's draws (7592157, 17931f2); the curriculum's
# variations come from the domain and are no longer all rejected (f83bf41).
# 5: fidelity scoring and the synthetic replay draw from experience-model streams of their
# own, so they no longer change RL's synthetic draws (LMExperienceModel.stream).
# 6: the experience parser reads flags only outside the reasoning and the state, and fails
# conflicting or unreadable ones (77d8bbe, 05a2b88); policy and environment errors stay out
# of the replay buffer (3b85e99); GRPO gives all-equal groups exactly zero advantage (4d0b54b);
# an empty policy response keeps its penalty (64bf235). Rerun at 681828f, before the last three,
# mapreader seed 3's GRPO DreamGym cell moved from 59.4 to 40.6 (results/rerun/README.md).
# 7: the experience model's training demos never come from the example's own episode
# (b164ea6), and step-cap endings are neither trained nor scored as the game's end (4266fdb);
# its sampling seeds are hashed per call, so replicate seeds share no noise (940f3b2); its
# unparsable answers no longer cost the policy the invalid-step penalty (531f664); warm-start
# demos stop at the policy's step cap (ba563ab).
# 8: an experience-model prompt over the backend's budget drops its least similar demos instead
# of losing its start (role, task, best demos) to the backend's cut, in training and inference
# (b3081fd). With the default top_k 1 and history_window 2 that changes 23 of 441 coin seed-0
# training prompts (their one demo goes) and no mapreader one; b3081fd's message overstates it.
# 9: the rule annotators no longer call a step-cap ending the end of the episode, the answer's
# done=false it precedes (ef4639c); the curriculum's batches, variation proposals and k-means
# draw from streams of their own (34bf8fe); DPO's step-index fallback no longer pairs a winner's
# later steps with a shorter failed trajectory's last response (before any protocol-9 DPO cell).
PROTOCOL = 9
# The first protocol whose cells were run over several experience-model draws.
FIRST_DRAWN_PROTOCOL = 5
# The base pipeline each earlier protocol's cells ran on (path, sha256): the main job's pipeline
# of the time, which base.yaml copies as protocols 4-9 ran it. A bumped protocol adds its own here.
EARLIER_BASES: dict[int, tuple[str, str]] = {
    1: ("examples/default.yaml", "384b7a9b8607bbb43e83c3ccda3ce4f5d40b2f80845a1a3e10f20513a15222c7"),
    2: ("examples/default.yaml", "2701799c8e24f322a05a7f9e8b03b1a60208372a8b30f31f7c62a63aed44c629"),
    3: ("examples/default.yaml", "d301b457bb040bcf2211721bc95b05539119ecb37ffa0809eb9fd362642f4253"),
    **{p: ("examples/default.yaml", "31e79af532aff9e8271e570d1af0d2ad9fbc664f49347955a84fccc6510d9ddb") for p in (4, 5, 6, 7)},
    8: ("benchmarks/table1/base.yaml", "31e79af532aff9e8271e570d1af0d2ad9fbc664f49347955a84fccc6510d9ddb"),
}
# What a cell records for its run directory in its overrides.
RECORDED_RUN_DIR = Path("<run_dir>")


def base_sha256() -> str:
    """Fingerprint of the base pipeline: a cell run on another base is stale, not comparable."""
    return hashlib.sha256(BASE.read_bytes()).hexdigest()


def base_of(protocol: int) -> tuple[str, str]:
    """The base pipeline ``protocol``'s cells ran on (path, sha256): base.yaml for the current
    protocol, the recorded one (:data:`EARLIER_BASES`) for an earlier protocol."""
    return ("benchmarks/table1/base.yaml", base_sha256()) if protocol == PROTOCOL else EARLIER_BASES[protocol]


def git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return done.stdout.strip() or "unknown"


# Hold torch's kernels, oneDNN and MKL to AVX2 on an AVX-512 CPU: it then rounds as an AVX2 CPU does
# (../main_job/results.md: the main job's AVX2 result, 50.0 against 59.4, came back exactly). numpy's
# own loops and its OpenBLAS too (the replay buffer's similarity scores): held with torch alone,
# mapreader seeds 4 and 6 rebuilt the cached warm start but not the model's answers (success
# agreement 99.0 and 98.0 against 97.1); with these two as well, seed 4 gave every fidelity value.
HELD_TO_AVX2 = {
    "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL", "OPENBLAS_CORETYPE": "Haswell",
}  # fmt: skip


def _cpuinfo() -> str:
    return Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""


def cpu_simd() -> str:
    """This CPU's widest vector instructions, as cells record them."""
    cpuinfo = _cpuinfo()
    return "avx512" if "avx512f" in cpuinfo else "avx2" if "avx2" in cpuinfo else "no avx2"


def machine(held: bool = False) -> str:
    """The CPU a cell ran on: float rounding, hence the chaotic warm start, depends on it
    (results/diagnosis.md: the same code and seed gave 0.44 and 0.00 on two machines);
    ``held``: its kernels were held to AVX2 (or this process's are), so it rounded as an AVX2 machine."""
    models = [line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")]
    held = held or all(os.environ.get(name) == value for name, value in HELD_TO_AVX2.items())
    simd = "avx2 (avx512 held to avx2)" if held and cpu_simd() == "avx512" else cpu_simd()
    return f"{platform.machine()}, {models[0] if models else platform.processor()}, {len(models)} cpus, {simd}"


def _simd_text(machine_text: str) -> str:
    """The instructions part of a ``machine`` text, with how it was held: ``avx2 (avx512 held to avx2)``."""
    return machine_text.rsplit(", ", 1)[-1]


def simd_of(machine_text: str) -> str:
    """The instructions a cell's ``machine`` says it rounded with: avx512, avx2, ..."""
    return _simd_text(machine_text).split(" ")[0]


def kernel_env(game: str, seed: int) -> dict[str, str]:
    """Variables for a seed's runs, so that they round as the seed's cached cells did: where
    its default-row cell ran on AVX2 and this CPU has AVX-512, hold this one to AVX2 (every
    row of a seed starts from that cell's warm start, which another rounding does not rebuild)."""
    cell = current(game, "GRPO DreamGym", seed)
    if cell is not None and simd_of(cell.get("machine", "")) == "avx2" and cpu_simd() == "avx512":
        return HELD_TO_AVX2
    return {}


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def _draw_suffix(draw: int, sep: str) -> str:
    """Draw 0 keeps the names cells had before draws existed."""
    return f"{sep}draw{draw}" if draw else ""


def cell_path(game: str, row: str, seed: int, protocol: int = PROTOCOL, draw: int = 0) -> Path:
    return CELLS / f"p{protocol}" / f"{game}--{slug(row)}--seed{seed}{_draw_suffix(draw, '--')}.json"


def run_dir_of(game: str, row: str, seed: int, draw: int = 0) -> Path:
    # Keyed by the base pipeline and protocol, so neither a changed base nor a bumped protocol resumes an old run.
    return RUNS / f"{base_sha256()[:12]}-p{PROTOCOL}" / game / slug(row) / f"seed{seed}{_draw_suffix(draw, '-')}"


def overrides(game: str, row: str, seed: int, run_dir: Path, draw: int = 0) -> list[str]:
    drawn = [f"loop.experience_draw={draw}"] if draw else []
    return [*GAMES[game], *COMMON, *ROWS[row], *drawn, f"seed={seed}", f"run_dir={run_dir}"]


def share_from(game: str, row: str, seed: int, run_dir: Path, draw: int = 0) -> None:
    """Copy offline data and the warm-started policy (always) and the experience model (when
    identical) from the seed's default-row run, so every row of a seed starts RL from the
    same policy. (The SFT warm start of the from-scratch policy is chaotic: on mapreader
    seed 2 a float-rounding change moved its held-out success from 0.56 to 0.06.)
    Another draw of a row copies all three from the row's own draw-0 run: only RL differs.
    Every donor is found (or rebuilt) before anything is copied: a donor missing part way left a
    run directory without the experience model it should play, which the run then trained itself."""
    if run_dir.exists():
        return
    if draw:
        copy_parts(_before_rl(game, row, seed), run_dir, model=True)
        return
    if row == "GRPO DreamGym" or row in OWN_WARMSTART:
        return
    donor = _before_rl(game, "GRPO DreamGym", seed)
    base = model_base(row)
    # a row that plays the model of a row that trains its own (w/o retrieval, w/o reasoning): the
    # listed variant plays with the model that row trained, which the choice of actions cannot change
    model_from = _before_rl(game, base, seed) if base else None
    model = row in SHARES_MODEL and checkpoint.stage_done(donor / "experience_model")
    copy_parts(donor, run_dir, model=model, model_from=model_from)


def model_base(row: str) -> str | None:
    """The row whose own experience model ``row`` plays, where that is neither ``row``'s nor the
    default row's: ``row`` is run after it (:func:`run_order`) and copies it (:func:`share_from`)."""
    base = MODEL_FROM.get(row, unlisted_row(row))
    return base if base != row and base in DRAWN and base not in SHARES_MODEL else None


def run_order(rows: list[str]) -> list[str]:
    """The default row first (every row of a seed copies its warm start), then the rows whose
    experience model other rows of the command play, then the rest as given: a row run before
    the row whose model it plays stopped with "run draw 0 of this row first"."""
    donors = {model_base(row) for row in rows}
    return sorted(rows, key=lambda row: (row != "GRPO DreamGym", row not in donors))


def _before_rl(game: str, row: str, seed: int) -> Path:
    """A directory holding what the row's draw-0 cell built before RL: its own run directory,
    or, when that is gone (a fresh clone), one rebuilt and checked against the cached cell."""
    first = run_dir_of(game, row, seed)
    if all(checkpoint.stage_done(first / part) for part in ("policy_init", "experience_model")):
        # held to the cached cell as a rebuilt one is: a run directory from another machine or
        # code would otherwise give new cells a warm start the cached cells of the seed lack
        if (cached := current(game, row, seed)) is not None:
            check_before_rl(game, row, seed, first, cached, f"delete {first} to rebuild it from the cell")
        return first
    if row in SHARES_MODEL and row != "GRPO DreamGym":
        return _before_rl(game, "GRPO DreamGym", seed)  # its parts are copies of the donor's
    return rebuilt_before_rl(game, row, seed)


def copy_parts(donor: Path, run_dir: Path, *, model: bool, model_from: Path | None = None) -> None:
    """A donor's offline data and warm-started policy (and with ``model`` its experience
    model; ``model_from``'s instead where given) into a new run directory, which the loop
    then reuses instead of rebuilding. The parts go into a sibling renamed into place once all
    are there: :func:`share_from` takes an existing run directory as complete, and a copy killed
    part way (copytree writes policy_init/done before its weights) left a policy that looked
    trained and never loaded."""
    partial = run_dir.with_name(run_dir.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)  # what a killed copy left
    partial.mkdir(parents=True)
    shutil.copy(donor / "offline.jsonl", partial / "offline.jsonl")
    shutil.copytree(donor / "policy_init", partial / "policy_init")
    if model or model_from:
        shutil.copytree((model_from or donor) / "experience_model", partial / "experience_model")
    partial.rename(run_dir)


def rebuilt_before_rl(game: str, row: str, seed: int) -> Path:
    """What a row's draw-0 cell built before RL (offline data, experience model, warm start),
    for a cell that is cached but whose run directory is gone (a fresh clone): the row's
    pipeline up to RL (``loop.iterations=0``) in its own directory, from the donor's shared
    parts like the cell itself. It must reproduce the cached warm start and fidelity, else new
    cells (other rows, other draws) would not be paired with the cached ones of the seed."""
    cached = current(game, row, seed)
    if cached is None:
        raise SystemExit(f"{game}/{row}/seed{seed}: run draw 0 of this row first (the seed's other rows and draws reuse its parts)")
    run_dir = run_dir_of(game, row, seed).parent.parent / "before-rl" / slug(row) / f"seed{seed}"
    env = kernel_env(game, seed)
    metrics = run_dir / "metrics.jsonl"  # its first row: the warm start evaluated and the model scored
    if not (metrics.exists() and metrics.read_text().strip()):
        print(f"{game} | {row} | seed {seed}: rebuilding its data, experience model and warm start", flush=True)
        share_from(game, row, seed, run_dir)
        _dreamgym_run([*overrides(game, row, seed, run_dir), "loop.iterations=0"], run_dir, env)
    check_before_rl(game, row, seed, run_dir, cached, "delete the seed's cells of this game to rebuild them all on this machine")
    return run_dir


def check_before_rl(game: str, row: str, seed: int, run_dir: Path, cached: dict, remedy: str) -> None:
    """Stop unless ``run_dir`` built before RL what the row's cached cell did (:func:`same_before_rl`):
    new cells (other rows, other draws) would not be paired with the cached ones of the seed."""
    metrics = run_dir / "metrics.jsonl"  # its first row: the warm start evaluated and the model scored
    first = _before_rl_metrics(run_dir) if metrics.exists() and metrics.read_text().strip() else {}
    if same_before_rl(first, cached):
        return
    got = {"warmstart_success": first.get("eval_before/success_rate"),
           "success_agreement": first.get("fidelity/success_agreement")}
    expected = {"warmstart_success": cached["warmstart_success"],
                "success_agreement": cached["fidelity"].get("fidelity/success_agreement")}
    raise SystemExit(f"{game}/{row}/seed{seed}: the run in {run_dir} gives {got}, the cached cell {expected}; "
                     "new cells would not share its warm start (float rounding differs between code versions and CPUs; "
                     f"the seed's cells ran on {simd_of(cached.get('machine', ''))}, this machine is "
                     f"{_simd_text(machine(held=bool(kernel_env(game, seed))))}; {remedy})")


def same_before_rl(first: dict, cached: dict) -> bool:
    """Whether a rebuilt run's first metrics row is the cached cell's warm start and experience model.

    Equal warm-start success, fidelity sample size and share of unparsable answers; equal success
    agreement, but for the unparsable answers: cells cached before fidelity scored those as wrong counted
    each as its stand-in's labels (not won), now each counts as wrong, so the rebuilt agreement
    may be lower than the cached one by at most that share."""
    fidelity = cached["fidelity"]
    if first.get("eval_before/success_rate") != cached["warmstart_success"]:
        return False
    if first.get("fidelity/n") != fidelity.get("fidelity/n") or first.get("fidelity/parse_failed") != fidelity.get("fidelity/parse_failed"):
        return False
    now, then = first.get("fidelity/success_agreement"), fidelity.get("fidelity/success_agreement")
    if now is None or then is None:
        return now == then
    return then - fidelity.get("fidelity/parse_failed", 0.0) - 1e-9 <= now <= then + 1e-9


def _before_rl_metrics(run_dir: Path) -> dict:
    """The run's first metrics row: evaluations and fidelity before RL."""
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])


def _dreamgym_run(items: list[str], run_dir: Path, env: dict[str, str]) -> dict:
    """One ``dreamgym run`` of the base pipeline with ``--set`` items and ``env`` (:func:`kernel_env`)
    added to this environment; its JSON summary."""
    args = [sys.executable, "-m", "dreamgym_core.cli", "run", str(BASE)]
    for item in items:
        args += ["--set", item]
    if (run_dir / "checkpoints").exists():
        args.append("--resume")
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env})
    if done.returncode != 0:
        raise SystemExit(f"{run_dir} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def run_cell(game: str, row: str, seed: int, draw: int = 0) -> dict:
    run_dir = run_dir_of(game, row, seed, draw)
    share_from(game, row, seed, run_dir, draw)
    start = first_start(run_dir)
    env = kernel_env(game, seed)
    summary = _dreamgym_run(overrides(game, row, seed, run_dir, draw), run_dir, env)
    cell = {
        "game": game, "row": row, "seed": seed, **({"draw": draw} if draw else {}),
        "wall_seconds": round(time.time() - start["started"], 1),
        "base_sha256": base_sha256(), "protocol": PROTOCOL, "commit": start["commit"], "machine": machine(held=bool(env)),
        "overrides": overrides(game, row, seed, RECORDED_RUN_DIR, draw),
        **measured(summary, _before_rl_metrics(run_dir)),
    }
    path = cell_path(game, row, seed, draw=draw)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_write(path, json.dumps(cell, indent=2).encode())  # a kill leaves no cell cut short
    _start_record(run_dir).unlink(missing_ok=True)
    return cell


def _start_record(run_dir: Path) -> Path:
    # beside the run directory: the loop refuses to start in one holding files no run makes
    return run_dir.with_name(run_dir.name + ".start.json")


def first_start(run_dir: Path) -> dict:
    """When the cell's run first started and on which commit (the code it started with, not
    whatever HEAD is when it ends): a resumed run keeps its first attempt's, so its cell's
    wall_seconds count from then (the time between attempts included). A rerun after a kill
    that came once the run had ended recorded a few seconds, on the rerun's commit."""
    record = _start_record(run_dir)
    if (run_dir / "config.sha256").exists() and record.exists():  # a run began there: this one resumes it
        return json.loads(record.read_text())
    start = {"started": time.time(), "commit": git_commit()}
    record.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_write(record, json.dumps(start).encode())
    return start


def measured(summary: dict, first: dict) -> dict:
    """What a cell records of its run: the JSON summary and the first metrics row (before RL)."""
    return {
        "success": summary.get("eval/success_rate"),
        "success_ci": [summary.get("eval/success_ci_low"), summary.get("eval/success_ci_high")],
        "real_transitions": summary.get("counters/real_transitions"),
        "offline_transitions": summary.get("counters/offline_transitions"),
        "synthetic_transitions": summary.get("counters/synthetic_transitions"),
        "untrained_success": first.get("eval_untrained/success_rate"),
        "warmstart_success": first.get("eval_before/success_rate"),
        "fidelity": {k: v for k, v in first.items() if k.startswith("fidelity/")},
        # The test games replayed in the synthetic environment (eval.synthetic_agreement).
        "synthetic_success": summary.get("eval/synthetic_success_rate"),
        "synthetic_agreement": summary.get("eval/synthetic_agreement"),
        "warmstart_synthetic_success": first.get("eval_before/synthetic_success_rate"),
        "warmstart_synthetic_agreement": first.get("eval_before/synthetic_agreement"),
    }


def current(game: str, row: str, seed: int, protocol: int = PROTOCOL, draw: int = 0) -> dict | None:
    """The cached cell when it was run on ``protocol``'s base pipeline (:func:`base_of`) and, for the
    current protocol, with the game's and row's overrides as they are now (in any order), else None.
    An earlier protocol's rows had the settings of their time, so its cells are not held to today's."""
    path = cell_path(game, row, seed, protocol, draw)
    if not path.exists():
        return None
    try:
        cell = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # e.g. cut short by a kill while written in place (before atomic writes)
        raise SystemExit(f"{path}: cannot read the cell ({exc}); delete it to run the cell again") from exc
    comparable = cell.get("base_sha256") == base_of(protocol)[1] and cell.get("protocol", 1) == protocol
    if comparable and protocol == PROTOCOL:
        comparable = sorted(cell.get("overrides", [])) == sorted(overrides(game, row, seed, RECORDED_RUN_DIR, draw))
    return cell if comparable else None


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.mean(values)
    spread = f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{mean:.1f}{spread} (n={len(values)})"


def _cell_name(cell: dict) -> str:
    """``game | row | seed N[ drawK]``, as a run prints the cell."""
    return f"{cell.get('game')} | {cell.get('row')} | seed {cell.get('seed')}{_draw_suffix(cell.get('draw', 0), ' ')}"


def _over_draws(cells: list[dict]) -> dict:
    """A seed's cell over the experience model's draws: numbers averaged, the rest from the first
    draw (fidelity is scored before RL on a stream that no draw moves). A number some draws lack
    stops the report: the seed's value would silently be draw 0's, or a mean over fewer draws."""
    merged = dict(cells[0])
    numbers = {k for c in cells for k, v in c.items() if isinstance(v, (int, float)) and not isinstance(v, bool)} - {"draw"}
    for key in sorted(numbers):
        if lacking := [c for c in cells if c.get(key) is None]:
            raise SystemExit(f"{_cell_name(lacking[0])}: the cell records no {key!r}, which other draws of its seed do; run it again")
        merged[key] = statistics.mean(c[key] for c in cells)
    merged["draw_success"] = [c["success"] for c in cells]
    return merged


def _cells(games: list[str], seeds: list[int], protocol: int, draws: tuple[int, ...] = (0,)) -> dict[tuple[str, str], dict[int, dict]]:
    """(game, row) -> seed -> current cell; a DreamGym row's seed counts once every draw has run."""
    table: dict[tuple[str, str], dict[int, dict]] = {}
    for g in games:
        for row in ROWS:
            table[(g, row)] = {}
            for s in seeds:
                found = [current(g, row, s, protocol, d) for d in (draws if row in DRAWN else (0,))]
                if all(found):
                    table[(g, row)][s] = _over_draws(found)  # type: ignore[arg-type]
    return table


def _paired_diffs(cells: dict[int, dict], base: dict[int, dict]) -> list[float]:
    """Success of a row minus that of base on each seed both have: rows of a seed share the warm start."""
    return [cells[s]["success"] - base[s]["success"] for s in sorted(set(cells) & set(base))]


def _paired_delta(cells: dict[int, dict], base: dict[int, dict]) -> str:
    """Mean over seeds of (row - base) on the same seed; where base lacks some of the row's seeds,
    with the difference's n (the row's own n, beside it, is then not the difference's)."""
    diffs = _paired_diffs(cells, base)
    if not diffs:
        return "-"
    return f"{100 * statistics.mean(diffs):+.1f}" + (f" (n={len(diffs)})" if len(diffs) != len(cells) else "")


def _shared_seeds(table: dict[tuple[str, str], dict[int, dict]], game: str, a: str, b: str) -> list[int]:
    return sorted(set(table[(game, a)]) & set(table[(game, b)]))


def _pair(table: dict[tuple[str, str], dict[int, dict]], game: str, a: str, b: str, key: str = "success") -> tuple[float, float, int] | None:
    """Means of ``key`` for rows a and b over the seeds both have (None when none)."""
    seeds = _shared_seeds(table, game, a, b)
    if not seeds:
        return None
    mean = lambda row: statistics.mean(_recorded(table, game, row, s, key) for s in seeds)  # noqa: E731
    return mean(a), mean(b), len(seeds)


def _recorded(table: dict[tuple[str, str], dict[int, dict]], game: str, row: str, seed: int, key: str) -> float:
    """A cell's ``key``; a cell without it stops the report. (Read as 0, a cell without its success
    counted as 0%, and one without its real transitions met the S2R target's "at most 1/10".)"""
    got = table[(game, row)][seed].get(key)
    if got is None:
        raise SystemExit(f"{game} | {row} | seed {seed}: the cell records no {key!r}; run it again")
    return got


def _seed_signs(table: dict[tuple[str, str], dict[int, dict]], game: str, a: str, b: str) -> tuple[int, int, int]:
    """On how many shared seeds row a ends below, level with and above row b: a mean can be
    "below" because of one seed, and the target's verdict should show it."""
    diffs = _paired_diffs(table[(game, a)], table[(game, b)])
    tie = 1e-9  # draw means of the same 32 games: equal up to float rounding
    return sum(d < -tie for d in diffs), sum(abs(d) <= tie for d in diffs), sum(d > tie for d in diffs)


def paired_interval(diffs: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student-t confidence interval of the mean paired difference (row minus row on the same
    seed). It says which gains the seeds rule out: a +10 target outside the interval is missed
    beyond seed noise. None below two seeds or when every difference is equal (no spread to scale)."""
    # Draw means are not exact binary fractions, so "all equal" is judged on the spread.
    if len(diffs) < 2 or statistics.pstdev(diffs) < 1e-12:
        return None
    ci = stats.ttest_1samp(diffs, 0.0).confidence_interval(level)
    return float(ci.low), float(ci.high)


def _interval_text(table: dict[tuple[str, str], dict[int, dict]], game: str, a: str, b: str) -> str:
    """"; paired difference +d, 95% CI [lo, hi]" for row a minus row b over their shared seeds."""
    diffs = _paired_diffs(table[(game, a)], table[(game, b)])
    if not diffs:
        return ""
    text = f"; paired difference {100 * statistics.mean(diffs):+.1f}"
    if ci := paired_interval(diffs):
        text += f", 95% CI [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"
    return text


def sign_test_p(below: int, above: int) -> float:
    """Two-sided exact sign test over the seeds that are not tied: the chance, if either row
    were as likely to end above the other on a seed, of a split at least this uneven."""
    n, k = below + above, min(below, above)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def _at_least(value: float, bound: float) -> bool:
    """``value >= bound`` for means of k/32 games: a gain of exactly 10 points is met, though
    0.409375 >= 0.309375 + 0.10 is False in floats (the tolerance is _seed_signs' tie)."""
    return value >= bound - 1e-9


def _targets(game: str, table: dict[tuple[str, str], dict[int, dict]], suffix: str = "", real_suffix: str | None = None) -> list[str]:
    """The acceptance targets of the small-scale Table 1, on the seeds both compared rows have
    (``suffix``: between the rows of that variant, e.g. :data:`LISTED`; ``real_suffix``, when
    given, names the variant's SFT and real GRPO rows, which play no experience model: e.g.
    :data:`LISTED` for :data:`CORRECTED_SUFFIX`). The verdict is on the means, as the targets are
    stated; the paired interval beside it says how much of the verdict the seeds can carry."""
    real_suffix = suffix if real_suffix is None else real_suffix
    dg, s2r = "GRPO DreamGym" + suffix, "GRPO DreamGym-S2R" + suffix
    sft, real = "SFT" + real_suffix, "GRPO (real env)" + real_suffix
    out: list[str] = []
    ci = lambda a, b: _interval_text(table, game, a, b)  # noqa: E731
    if p := _pair(table, game, dg, sft):
        out.append(f"DreamGym >= SFT + 10: {100 * p[0]:.1f} vs {100 * p[1]:.1f} (n={p[2]}{ci(dg, sft)}) "
                   f"-> {'met' if _at_least(p[0] - p[1], 0.10) else 'missed'}")
    if p := _pair(table, game, dg, real):
        out.append(f"DreamGym within 10 of real GRPO: {100 * p[0]:.1f} vs {100 * p[1]:.1f} (n={p[2]}{ci(dg, real)}) "
                   f"-> {'met' if _at_least(p[0] - p[1], -0.10) else 'missed'}")
    if (p := _pair(table, game, s2r, real)) and (r := _pair(table, game, s2r, real, "real_transitions")):
        share = r[0] / max(r[1], 1)
        met = _at_least(p[0] - p[1], 0.0) and _at_least(0.1 - share, 0.0)
        out.append(f"S2R >= real GRPO with <= 1/10 of its real transitions: {100 * p[0]:.1f} vs {100 * p[1]:.1f}, "
                   f"{r[0]:.0f} vs {r[1]:.0f} real transitions ({share:.0%}) (n={p[2]}{ci(s2r, real)}) "
                   f"-> {'met' if met else 'missed'}")
    for row in (name + suffix for name in ABLATIONS):
        if p := _pair(table, game, row, dg):
            below, tied, above = _seed_signs(table, game, row, dg)
            out.append(f"{row.removesuffix(suffix)} below the full method: {100 * p[0]:.1f} vs {100 * p[1]:.1f} (n={p[2]}; "
                       f"seeds below / tied / above: {below} / {tied} / {above}, sign test p = {sign_test_p(below, above):.2f}"
                       f"{ci(row, dg)}) -> {'met' if not _at_least(p[0] - p[1], 0.0) else 'missed'}")
    return [f"- {game}{suffix}: {line}" for line in out]


def _machines(table: dict[tuple[str, str], dict[int, dict]]) -> list[str]:
    """Which machine ran which game's seeds (warm starts differ between machines)."""
    where: dict[str, set[str]] = {}
    for (game, _), cells in table.items():
        for seed, cell in cells.items():
            where.setdefault(cell.get("machine", "a machine not recorded"), set()).add(f"{game} {seed}")
    return [f"Run on {name}: " + ", ".join(sorted(runs)) + "." for name, runs in sorted(where.items())]


def table_command(games: list[str], seeds: list[int], protocol: int = PROTOCOL, draws: tuple[int, ...] = (0,), out: Path | None = None,
                  rows: list[str] | None = None, report_only: bool = False) -> str:
    """The run.py command that writes a table: every flag that changes what it runs or reads.
    Without --protocol and --report, the protocol-8 table's command ran and reported protocol 9."""
    words = ["python", "benchmarks/table1/run.py", "--games", *games, "--seeds", *map(str, seeds)]
    if rows:
        words += ["--rows", *rows]
    if draws != (0,):
        words += ["--draws", *map(str, draws)]
    if report_only or protocol != PROTOCOL:  # an earlier protocol's table is only ever a report
        words.append("--report")
    if protocol != PROTOCOL:
        words += ["--protocol", str(protocol)]
    if out:
        words += ["--out", str(out)]
    return shlex.join(words)


def report(games: list[str], seeds: list[int], protocol: int = PROTOCOL, draws: tuple[int, ...] = (0,), out: Path | None = None,
           rows: list[str] | None = None, report_only: bool = False) -> str:
    table = _cells(games, seeds, protocol, draws)
    base_path, base_digest = base_of(protocol)
    if not any(table.values()):  # a table of no cells would replace the committed one
        raise SystemExit(f"no cells of protocol {protocol} on base pipeline {base_digest[:12]} for {', '.join(games)} "
                         f"seeds {' '.join(map(str, seeds))} in {CELLS / f'p{protocol}'}: no table written")
    drawn = len(draws) > 1
    lines = [
        "# Table 1 at small scale (success % on held-out real test games, mean ± sd over seeds)",
        "",
        f"Produced by `{table_command(games, seeds, protocol, draws, out, rows, report_only)}`;",
        f"python {platform.python_version()}, torch {metadata.version('torch')}, transformers {metadata.version('transformers')},",
        f"textworld-express {metadata.version('textworld-express')}. Base pipeline: {base_path} (sha256 {base_digest[:12]}), protocol {protocol}.",
        "Cells run on another base pipeline or protocol are left out; missing cells were not run. Every row of a",
        "seed starts RL from the same warm-started policy, so \"vs SFT\" is a paired difference (mean over seeds).",
        "Rows may cover different seeds: \"vs SFT\" and the targets use the seeds both rows have.",
        *([f"A DreamGym row's value on a seed is its mean over {len(draws)} draws of the experience model (loop.experience_draw "
           f"{', '.join(map(str, draws))}; same data, experience model and warm start, only RL differs); the other rows do not use it."]
          if drawn else []),
        *_machines(table),
        "",
        "| method | " + " | ".join(f"{g} success | {g} vs SFT | {g} real transitions" for g in games) + " |",
        "|---|" + "---|---|---|" * len(games),
    ]
    for row in ROWS:
        if not any(table[(g, row)] for g in games):
            continue
        parts = []
        for g in games:
            cells = table[(g, row)]
            real = f"{statistics.mean(_recorded(table, g, row, s, 'real_transitions') for s in cells):.0f}" if cells else "-"
            success = _mean_sd([_recorded(table, g, row, s, "success") for s in cells])
            parts += [success, _paired_delta(cells, table[(g, sft_of(row))]), real]
        lines.append(f"| {row} | " + " | ".join(parts) + " |")
    # A game's seeds: those with any cell of that game (one game may have more seeds than another).
    game_seeds = {g: [s for s in seeds if any(s in table[(g, row)] for row in ROWS)] for g in games}
    missing = [(g, row, [s for s in game_seeds[g] if s not in table[(g, row)]]) for g in games for row in ROWS]
    if any(m for _, _, m in missing):
        every = f" (some of draws {', '.join(map(str, draws))} missing)" if drawn else ""
        lines += ["", "Not run: " + "; ".join(
            f"{g} / {row} seeds {', '.join(map(str, m))}{every if row in DRAWN else ''}" for g, row, m in missing if m) + "."]
    lines += ["", "Per seed (success %):", ""]
    for g in games:
        lines.append(f"- {g}, seeds {', '.join(map(str, game_seeds[g]))}:")
        for row in ROWS:
            per = [_per_seed(table[(g, row)][s], drawn) if s in table[(g, row)] else "-" for s in game_seeds[g]]
            lines.append(f"  - {row}: " + " / ".join(per))
    lines += ["", "Offline (seed) transitions, mean over seeds: " + ", ".join(
        f"{g} {statistics.mean(c['offline_transitions'] for c in table[(g, 'SFT')].values()):.0f}" for g in games if table[(g, "SFT")]
    ) + "."]
    lines += ["", "Targets (means over seeds):", ""]
    for g in games:
        lines += _targets(g, table)
    listed = [line for g in games for line in _targets(g, table, LISTED)]
    if listed:
        lines += ["", "The same targets between the rows whose policy picks among the listed actions:", "", *listed]
    corrected = [line for g in games for line in _targets(g, table, CORRECTED_SUFFIX, LISTED)]
    if corrected:
        lines += ["", "The same targets between the listed rows whose experience model's no-op answers are corrected "
                  "(SFT and real GRPO: the listed rows, which play no experience model):", "", *corrected]
    lines += ["", "Experience-model fidelity on held-out real transitions (GRPO DreamGym runs, mean over seeds):", ""]
    for g in games:
        fidelity: dict[str, list[float]] = {}
        for c in table[(g, "GRPO DreamGym")].values():
            for k, v in c["fidelity"].items():
                fidelity.setdefault(k, []).append(v)
        seeds = len(table[(g, "GRPO DreamGym")])  # a key some seeds lack (no win held out) says on how many it rests
        lines += [f"- {g} {k}: {statistics.mean(v):.3f}" + (f" ({len(v)} of {seeds} seeds)" if len(v) < seeds else "")
                  for k, v in sorted(fidelity.items())]
    lines += _replayed(games, table)
    return "\n".join(lines) + "\n"


def _per_seed(cell: dict, drawn: bool) -> str:
    """A seed's success, and with several draws each draw's in brackets."""
    text = f"{100 * cell['success']:.1f}"
    if drawn and len(cell["draw_success"]) > 1:
        text += " (" + ", ".join(f"{100 * v:.1f}" for v in cell["draw_success"]) + ")"
    return text


def _replayed(games: list[str], table: dict[tuple[str, str], dict[int, dict]]) -> list[str]:
    """The experience model on the policy's own play: the test games replayed synthetically."""
    lines = ["", "The test games replayed in the synthetic environment with the same policy (mean over seeds;",
             "agreement = share of games whose synthetic outcome equals the real one):", "",
             "| game | method | real success | synthetic success | agreement |", "|---|---|---|---|---|"]
    mean = lambda cells, key: statistics.mean(c[key] for c in cells)  # noqa: E731
    for g in games:
        donors = [c for c in table[(g, "GRPO DreamGym")].values() if c.get("warmstart_synthetic_agreement") is not None]
        if donors:
            lines.append(f"| {g} | warm start (SFT) | {100 * mean(donors, 'warmstart_success'):.1f} | "
                         f"{100 * mean(donors, 'warmstart_synthetic_success'):.1f} | {100 * mean(donors, 'warmstart_synthetic_agreement'):.1f} |")
        for row in ROWS:
            cells = [c for c in table[(g, row)].values() if c.get("synthetic_agreement") is not None]
            if cells:
                lines.append(f"| {g} | {row} | {100 * mean(cells, 'success'):.1f} | "
                             f"{100 * mean(cells, 'synthetic_success'):.1f} | {100 * mean(cells, 'synthetic_agreement'):.1f} |")
    return lines if len(lines) > 6 else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", nargs="+", default=["coin"], choices=sorted(GAMES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    # choices: a misspelled row made a run directory, then a KeyError (and, with --report, went unnoticed)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), metavar="ROW", help="Row names (default: all).")
    parser.add_argument("--draws", nargs="+", type=int, default=[0],
                        help="Draws of the experience model for the DreamGym rows (loop.experience_draw; default 0 only).")
    parser.add_argument("--report", action="store_true", help="Only write the table from cached cells.")
    parser.add_argument("--protocol", type=int, default=PROTOCOL, choices=range(1, PROTOCOL + 1),
                        help=f"With --report: the table of an earlier protocol's cells (default {PROTOCOL}, the current code's).")
    parser.add_argument("--out", type=Path, help="Write the table here instead of results/table1-pN[-drawsK].md "
                        "(a table of other games must not replace the main one).")
    args = parser.parse_args()
    if args.protocol != PROTOCOL and not args.report:
        parser.error(f"--protocol {args.protocol} needs --report: this code runs protocol {PROTOCOL} cells only")
    if args.draws != [0] and args.protocol < FIRST_DRAWN_PROTOCOL:
        parser.error(f"--draws: protocols before {FIRST_DRAWN_PROTOCOL} ran one draw")
    if any(draw < 0 for draw in args.draws):
        parser.error("--draws: a draw is 0 or more")
    if args.out and args.out.is_dir():  # found up front, not once every cell has run
        parser.error(f"--out {args.out}: a directory; name the table's file")
    draws = tuple(sorted(set(args.draws)))
    if not args.report:
        # The rows others copy from first (run_order); draw 0 of a row before its other
        # draws, which reuse its trained parts.
        rows = run_order(args.rows or list(ROWS))
        for seed in args.seeds:
            for game in args.games:
                for draw in draws:
                    for row in rows:
                        if (draw == 0 or row in DRAWN) and current(game, row, seed, draw=draw) is None:
                            cell = run_cell(game, row, seed, draw)
                            print(f"{game} | {row} | seed {seed}{_draw_suffix(draw, ' ')}: success {cell['success']} "
                                  f"({cell['wall_seconds']} s)", flush=True)
    table = report(args.games, args.seeds, args.protocol, draws, args.out, args.rows, args.report)
    out = args.out or HERE / "results" / f"table1-p{args.protocol}{'-draws' + '-'.join(map(str, draws)) if draws != (0,) else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_write(out, table.encode())  # a kill leaves the earlier table whole
    print(table)


if __name__ == "__main__":
    main()
