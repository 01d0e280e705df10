"""``dreamgym eval-model``: fidelity of an experience model on held-out real transitions."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click
import msgspec

from .. import checkpoint
from ..errors import ConfigError, DataError
from ..records import Transition

__all__ = ["command", "read_transitions", "build_experience_model"]


def read_transitions(path: str) -> list[Transition]:
    """Transitions from a JSONL file, one record a line; errors name file and line. A step held
    twice (two files joined, one appended to itself) is refused: its second copy would have the
    first in its history, and both would be scored."""
    out = checkpoint.read_transitions(Path(path))
    if not out:
        raise DataError(f"{path}: no transitions")
    try:
        checkpoint.episodes_of(out)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc
    return out


def build_experience_model(resolved: Any, plugins: Any, model_dir: str | None = None, **settings: Any) -> Any:
    """The pipeline's experience-model backend as an :class:`LMExperienceModel`.

    ``model_dir``: trained weights to load in place, as the run loop does with a run's
    ``experience_model/`` (so it works for every backend with ``reload``, hf-tiny included).
    Settings are the pipeline's, as a run uses them (history window, k, temperature, answer
    budget, retries, seed); ``settings`` replace some of them (:class:`ExperienceModelConfig`
    fields; None keeps the pipeline's).
    """
    from ..experience import LMExperienceModel, model_config_of

    pipeline = resolved.pipeline
    if pipeline.experience_model is None:
        raise ConfigError(f"{resolved.source}: experience_model is not set; eval-model needs one")
    name = pipeline.experience_model.name
    backend = plugins.build("model", name, resolved.components["experience_model"])
    if model_dir is not None:
        if not Path(model_dir).is_dir():
            raise DataError(f"--model-dir {model_dir}: not a directory (expected a run's experience_model/)")
        if not callable(getattr(backend, "reload", None)):
            raise ConfigError(f"{resolved.source}: experience_model {name!r} cannot load trained weights (--model-dir)")
        backend.reload(path=model_dir)
    given = {key: value for key, value in settings.items() if value is not None}
    return LMExperienceModel(backend, msgspec.structs.replace(model_config_of(pipeline), **given))


def _build_buffer(resolved: Any, plugins: Any, train: list[Transition]) -> Any:
    """An in-memory buffer of the pipeline's kind holding the training transitions (demos)."""
    pipeline = resolved.pipeline
    if not train:
        return None
    if pipeline.buffer is None or pipeline.encoder is None:  # else the demos were dropped, yet reported as used
        raise ConfigError(f"{resolved.source}: --train-data needs the pipeline's buffer and encoder to retrieve demos from it")
    encoder = plugins.build("encoder", pipeline.encoder.name, resolved.components["encoder"])
    buffer = plugins.build("buffer", pipeline.buffer.name, resolved.components["buffer"], encoder=encoder, path=None)
    buffer.add(transitions=train)
    return buffer


def _world_of(resolved: Any, plugins: Any) -> Any:
    """The world each task id plays in, by the pipeline's domain (``loop.demos: same-world-first``)."""
    from ..experience import world_namer

    pipeline = resolved.pipeline
    return world_namer(plugins.build("env", pipeline.env.name, resolved.components["env"]))


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """FloatRange lets nan through (every comparison with it is false) and inf (no upper bound)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number")
    return value


@click.command("eval-model")
@click.argument("pipeline", type=click.Path())
@click.option("--heldout", required=True, type=click.Path(), help="JSONL of held-out real Transition records.")
@click.option("--train-data", type=click.Path(), help="JSONL of training transitions; retrieved as demos (top-k).")
@click.option("--model-dir", help="A trained experience model directory, e.g. a run's experience_model/.")
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate the first N held-out transitions only.")
@click.option(
    "--temperature", type=click.FloatRange(min=0.0), callback=_finite,
    help="Sampling temperature [default: the pipeline's loop.experience_temperature]."
)
@click.option("--max-new-tokens", type=click.IntRange(min=1), help="Answer budget [default: the pipeline's experience.max_new_tokens].")
@click.option("--retries", type=click.IntRange(min=0), help="Re-generations of unparsable answers [default: the pipeline's experience.max_retries].")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Requests per model call.")
@click.option(
    "--failures", type=click.Path(dir_okay=False),
    help="Write the answers that stayed unparsable to this JSONL file (raw text beside the real next state).",
)
@click.option(
    "--predictions", type=click.Path(dir_okay=False),
    help="Write every answer beside its held-out transition, scored, to this JSONL file (to read where the model errs).",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a pipeline field.")
def command(
    pipeline: str, heldout: str, train_data: str | None, model_dir: str | None, limit: int | None,
    temperature: float | None, max_new_tokens: int | None, retries: int | None, batch_size: int, failures: str | None,
    predictions: str | None, overrides: tuple[str, ...],
) -> None:  # fmt: skip
    """Print reward/success agreement and next-state fidelity of PIPELINE's experience model as JSON.

    History comes from the held-out episodes themselves, demos from --train-data, and
    prompts are built exactly as in training. Temperature, answer budget and retries are
    the pipeline's unless given (the report's "settings"). Baselines are the best constant
    (majority-class) predictors on the same labels. With --failures, every answer that
    stayed unparsable after the retries is written out beside its held-out transition; with
    --predictions, every answer, scored. ``fidelity/seen_in_demos`` is the share of held-out
    steps --train-data also holds (their top demo can be the answer itself).
    """
    from ..config import load_pipeline, refuse_inside_run_dir, resolve
    from ..fidelity import FIDELITY_STREAM, fidelity_metrics, predict_all, scored_answers, seen_in_demos, unparsed_answers
    from ..plugins import Plugins

    inputs = {"PIPELINE": pipeline, "--heldout": heldout, "--train-data": train_data}
    # before the model runs, so a typo costs no generation; a link is written through to its file
    failures = str(checkpoint.check_output_file(Path(failures), "--failures", inputs=inputs)) if failures is not None else None
    predictions = str(checkpoint.check_output_file(Path(predictions), "--predictions", inputs=inputs)) if predictions is not None else None
    if failures is not None and predictions is not None and checkpoint.same_file(Path(failures), Path(predictions)):
        raise ConfigError(f"--failures and --predictions name one file, {failures}: one would overwrite the other")
    outer = load_pipeline(pipeline, overrides)
    for option, path in (("--failures", failures), ("--predictions", predictions)):
        if path is not None:
            refuse_inside_run_dir(path, option, outer)
    plugins = Plugins.for_names(outer.plugins, where=f"{pipeline}: plugins")
    resolved = resolve(outer, plugins, where=pipeline)
    transitions = read_transitions(heldout)[:limit]
    # The sampling stream a run's fidelity scoring draws from: on a run's own held-out set and
    # demos (its fidelity_heldout.jsonl and offline_annotated.jsonl) this repeats its fidelity/*.
    model = build_experience_model(
        resolved, plugins, model_dir, temperature=temperature, max_new_tokens=max_new_tokens, max_retries=retries
    ).stream(FIDELITY_STREAM)
    demos = read_transitions(train_data) if train_data else []
    buffer = _build_buffer(resolved, plugins, demos)
    loop = resolved.pipeline.loop
    results = predict_all(
        model, transitions, buffer, history_window=loop.history_window, k=loop.top_k, batch_size=batch_size,
        world_of=_world_of(resolved, plugins) if loop.demos == "same-world-first" else None,
    )
    metrics = fidelity_metrics(results, transitions)
    if demos:
        metrics["fidelity/seen_in_demos"] = seen_in_demos(transitions, demos)
    used = model.config
    settings = {"temperature": used.temperature, "max_new_tokens": used.max_new_tokens, "max_retries": used.max_retries}
    report = {
        "model_id": model.model_id, "model_dir": model_dir, "heldout": heldout, "demos_from": train_data,
        "settings": settings, **metrics, **model.metrics(),
    }
    # The report first (as curve prints its rows before the plot): a file that fails to write
    # (a full disk) must not lose the minutes of generation it sums up.
    click.echo(json.dumps(report, indent=2, sort_keys=True))
    if failures is not None:
        checkpoint.write_records(Path(failures), unparsed_answers(results, transitions))
    if predictions is not None:
        checkpoint.write_records(Path(predictions), scored_answers(results, transitions))
