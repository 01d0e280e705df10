"""``dreamgym collect``: offline transitions from a real environment, as JSONL.

Either name the environment on the command line::

    dreamgym collect --env twx --set game=coin --policy expert --transitions 500 --out data.jsonl

or take it from a pipeline file (``--pipeline run.yaml``; its ``env`` and ``plugins``).
Episodes are played with the domain's data policy over the seed tasks of ``--split``
in turn, until exactly ``--transitions`` Transition records are written (the last
episode is cut). Each episode is a ``domain.collect`` call of its own, so the records
stream to the file as they are played; a policy that draws on what a call's earlier
episodes offered (the TextWorld domains' ``explore``) draws on its own episode's only.
The file is written next to its target and renamed when complete, so an interrupted run
never leaves a partial file under the requested name.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator, Sequence

import click
import msgspec

from ..checkpoint import is_stream_path, open_new, output_file, same_file
from ..config import convert_config, load_pipeline, parse_overrides, refuse_inside_a_run, refuse_inside_run_dir, set_path
from ..errors import ConfigError, DataError, DreamGymError, PluginBlocked
from ..plugins import Plugins, installed_plugins
from ..records import Transition
from ..stages import collect

__all__ = ["command", "collect_transitions", "write_jsonl", "EPISODES_PER_SEED", "MAX_SEED"]

# Episode e of ``--seed S`` plays from seed S * EPISODES_PER_SEED + e, so no two --seed values
# share an episode. With S + e, --seed S + k * len(tasks) replayed --seed S's episodes (same task,
# same seed, so the same actions and episode id) and ``buffer import`` dropped them as copies;
# a hash of (S, e) would keep them apart only with high probability and change --seed 0's data,
# which this keeps (S = 0 plays from e, as before). A seed playing more episodes than this is
# refused: its next episode's seed is the next --seed's first.
EPISODES_PER_SEED = 1_000_000
# Episode seeds stay in the signed 64-bit range, which a domain may hand to numpy or torch.
MAX_SEED = (2**63 - EPISODES_PER_SEED) // EPISODES_PER_SEED


def _usable_plugins() -> list[str]:
    """Without --plugin: every installed plugin but those DREAMGYM_BLOCK_PLUGINS blocks, and
    those that fail to load or to register their envs (each left out with a one-line warning),
    so that one broken plugin does not stop collecting from another's env."""
    names = []
    for name in sorted(installed_plugins()):
        try:
            Plugins.for_names([name]).components("env")
        except PluginBlocked:
            continue
        except DreamGymError as exc:
            warnings.warn(f"{exc}; collect leaves it out", stacklevel=2)
            continue
        names.append(name)
    return names


def _domain_from_cli(env: str, plugin_names: Sequence[str], overrides: Sequence[str]) -> Any:
    if plugin_names:
        plugins = Plugins.for_names(plugin_names, where="--plugin")
    else:
        plugins = Plugins.for_names(_usable_plugins(), where="installed plugins")
    spec = plugins.component("env", env, where="--env")
    raw: dict[str, Any] = {}
    for key, value in parse_overrides(overrides, "--set"):
        set_path(raw, key, value, "--set")
    config = convert_config(raw, spec.config_type, "--set", "$")
    return plugins.build("env", env, config)


def _domain_from_pipeline(path: str, overrides: Sequence[str], out: Path) -> Any:
    pipeline = load_pipeline(path, overrides)
    refuse_inside_run_dir(out, "--out", pipeline)  # before the env starts
    plugins = Plugins.for_names(pipeline.plugins, where=f"{path}: plugins")
    spec = plugins.component("env", pipeline.env.name, where=f"{path}: env.name")
    config = convert_config(pipeline.env.config, spec.config_type, path, "$.env.config")
    return plugins.build("env", pipeline.env.name, config)


def collect_transitions(
    domain: Any, *, split: str, policy: str, transitions: int, seed: int, annotate: bool = False
) -> Iterator[Transition]:
    """Yield exactly ``transitions`` offline transitions, one episode at a time: episode ``e``
    plays from seed ``seed * EPISODES_PER_SEED + e`` (see :data:`EPISODES_PER_SEED`)."""
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"--seed {seed}: takes 0 to {MAX_SEED} (episode e of seed S plays from S * {EPISODES_PER_SEED} + e)")
    tasks = domain.tasks(split=split)
    if not tasks:
        raise ConfigError(f"env {domain.name!r}: split {split!r} has no tasks")
    produced, episode, empty_in_a_row = 0, 0, 0
    while produced < transitions:
        if episode == EPISODES_PER_SEED:
            raise ConfigError(
                f"--transitions {transitions}: {EPISODES_PER_SEED} episodes of --seed {seed} hold only {produced}; a seed "
                f"plays at most {EPISODES_PER_SEED} (the next episode's seed is --seed {seed + 1}'s first): collect the "
                "rest under another --seed"
            )
        task = tasks[episode % len(tasks)]
        trajectory = collect(domain, tasks=[task], policy=policy, episodes=1, seed=seed * EPISODES_PER_SEED + episode)[0]
        # A domain whose episodes hold no step would otherwise be asked forever.
        empty_in_a_row = 0 if trajectory.transitions else empty_in_a_row + 1
        if empty_in_a_row >= len(tasks):
            raise DataError(f"env {domain.name!r}: {len(tasks)} episodes in a row on split {split!r} "
                            f"with policy {policy!r} produced no transition")
        for t in trajectory.transitions[: transitions - produced]:
            if annotate:
                t = msgspec.structs.replace(t, reasoning=domain.annotate(transition=t))
            produced += 1
            yield t
        episode += 1


def write_jsonl(records: Iterator[Transition], out: Path, total: int, *, progress: bool = True) -> int:
    """Write records as JSONL with a progress bar on stderr (none with ``progress=False``);
    atomic rename on completion."""
    from tqdm import tqdm

    encoder = msgspec.json.Encoder()
    partial = out.with_name(out.name + ".partial")
    try:  # before the first episode is played: a bad --out costs no collection
        out.parent.mkdir(parents=True, exist_ok=True)
        fh = open_new(partial)  # never through a link planted there (an --out under /tmp, say)
    except OSError as exc:
        raise DataError(f"--out {out}: cannot write there ({exc.strerror or exc})") from exc
    count = 0
    try:
        with tqdm(total=total, unit="tr", desc=f"collect {out.name}", disable=not progress) as bar:
            for record in records:  # plays the env: an OSError of its own is not one of --out
                line = encoder.encode(record) + b"\n"
                with _writing(out):
                    fh.write(line)
                count += 1
                bar.update(1)
        with _writing(out):
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            os.replace(partial, out)
    finally:
        with suppress(OSError):  # after a failed write its close fails too: the error under way names it
            fh.close()
        partial.unlink(missing_ok=True)
    return count


@contextmanager
def _writing(out: Path) -> Iterator[None]:
    """A failed write of --out (a full disk) as one line naming it, as ``checkpoint.replacing``
    has it; it was a traceback, twice over (the write's, then the close's)."""
    try:
        yield
    except OSError as exc:
        raise DataError(f"--out {out}: cannot write: {exc.strerror or exc}; the file there before is kept") from exc


@click.command("collect")
@click.option("--env", "env", metavar="NAME", help="Registered environment (e.g. twx, tw).")
@click.option("--pipeline", type=click.Path(), help="Take plugins and env settings from this pipeline file.")
@click.option("--plugin", "plugin_names", multiple=True, metavar="NAME", help="Plugins to load with --env (default: every installed one that loads and is not blocked).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Env config field (with --pipeline: any pipeline field).")
@click.option("--policy", type=click.Choice(["expert", "random", "noisy", "explore"]), default="expert", show_default=True)
@click.option("--transitions", type=click.IntRange(min=1), required=True, help="How many transitions to write.")
@click.option("--split", default="train", show_default=True, help="Task split to play.")
@click.option(
    "--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True,
    help=f"Seed of the data policy: episode e plays from seed * {EPISODES_PER_SEED} + e, so two seeds share no episode.",
)
@click.option("--annotate", is_flag=True, help="Fill Transition.reasoning with the domain's rule-based annotator.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output JSONL file of Transition records.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar on stderr (errors still show).")
def command(
    env: str | None,
    pipeline: str | None,
    plugin_names: tuple[str, ...],
    overrides: tuple[str, ...],
    policy: str,
    transitions: int,
    split: str,
    seed: int,
    annotate: bool,
    out: str,
    quiet: bool,
) -> None:
    """Collect offline transitions from a real environment into a JSONL file."""
    if (env is None) == (pipeline is None):
        raise ConfigError("collect: give exactly one of --env NAME or --pipeline FILE")
    if pipeline and plugin_names:  # read by nothing: the command ran with the pipeline's plugins and exited 0
        raise click.UsageError("--plugin chooses the plugins with --env; with --pipeline, the pipeline's plugins are loaded")
    if is_stream_path(out):
        raise ConfigError(f"--out {out}: a device or stream; --out writes a file (replaced whole when it is done)")
    target = output_file(Path(out))  # a link is written through to its file, not replaced
    if pipeline and same_file(target, Path(pipeline)):  # the collection replaced the pipeline file
        raise ConfigError(f"--out {target}: is the --pipeline file, which it would overwrite; write elsewhere")
    if env is not None:  # a run's files (RUN/offline.jsonl: its resume's data); with --pipeline, refuse_inside_run_dir checks
        refuse_inside_a_run(target, "--out")
    domain = _domain_from_pipeline(pipeline, overrides, target) if pipeline else _domain_from_cli(env, plugin_names, overrides)
    try:
        records = collect_transitions(
            domain, split=split, policy=policy, transitions=transitions, seed=seed, annotate=annotate
        )
        count = write_jsonl(records, target, transitions, progress=not quiet)
    finally:
        close = getattr(domain, "close", None)
        if close is not None:
            close()
    click.echo(f"wrote {count} transitions to {out}")
