"""The policy's warm start on the driver: SFT on the offline episodes that won (any data policy's) before verl's RL.

verl's agent loop plays an episode as one chat (agent_loop.py): the first agent prompt is a
user turn, each policy reply an assistant turn, each next agent prompt a user turn, all
rendered by the policy tokenizer's chat template. The warm start trains on the successful
expert episodes in that same layout, with the loss on the assistant turns only, so SFT sees
what RL's rollouts will see. (The local loop trains on each step's prompt alone, the layout
its own rollouts use.) With ``loop.world_model_epochs``, Early Experience's implicit world
modelling on the branch transitions comes first, and with ``loop.self_reflection`` the
replies think why the demo's action beats the branches', as in the local loop.

The policy component is trained as configured (device, dtype, LoRA, micro-batches) and saved
as an HF directory, ``run_dir/policy_init`` (LoRA merged), which translate.py names as verl's
actor weights. It must fit the driver's device: for a model that does not, warm-start it
elsewhere and give it as ``algo.config.model_path`` with ``loop.warmstart_epochs: 0``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from dreamgym_core import checkpoint, stages
from dreamgym_core.config import ResolvedPipeline
from dreamgym_core.errors import ConfigError, DataError
from dreamgym_core.early import world_model_examples, write_reflections
from dreamgym_core.experience import Segments
from dreamgym_core.loop import demo_conversations
from dreamgym_core.plugins import Plugins
from dreamgym_core.progress import step_progress
from dreamgym_core.records import Trajectory, Transition

from .translate import WARMSTART_DIR, model_path

__all__ = ["chat_segments", "warm_start"]


def chat_segments(tokenizer: Any, turns: Sequence[tuple[str, str]]) -> Segments:
    """(text, trained) segments of one episode as the chat template renders it: each
    assistant reply up to its end-of-turn tokens is trained, everything else is not.

    The segments join to the template's rendering of the whole conversation; a template
    that renders earlier turns differently once later ones follow (some drop past
    reasoning) cannot be cut so and is refused in one line.
    """
    messages: list[dict[str, str]] = []
    segments: Segments = []
    done = ""
    for prompt, reply in turns:
        messages.append({"role": "user", "content": prompt})
        head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        messages.append({"role": "assistant", "content": reply})
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if not head.startswith(done) or not full.startswith(head):
            raise DataError(
                f"warm start: the chat template of {tokenizer.name_or_path!r} renders a conversation's earlier turns "
                "differently once later turns follow, so its replies cannot be marked for SFT; set loop.warmstart_epochs: 0"
            )
        answer = full[len(head):]
        trained = answer.rstrip()  # the template's line break after a turn is the next prompt's (verl masks it)
        segments += [(head[len(done):], False), (trained, True)]
        if answer != trained:
            segments.append((answer[len(trained):], False))
        done = full
    return segments


def _policy(resolved: ResolvedPipeline, plugins: Plugins) -> Any:
    """The policy component as configured, loading verl's weights (:func:`model_path`),
    taking the segments as rendered (no chat template of its own on top, no EOS after the
    template's end of turn) and as long as verl lets an episode be."""
    config = resolved.components["policy"]
    name = resolved.pipeline.policy.name
    verl = resolved.components["algo"]
    base = model_path(resolved, verl)
    if not hasattr(config, "path"):
        raise ConfigError(
            f"{resolved.source}: the warm start loads {base!r} into policy {name!r}, which has no `path`; "
            "use policy 'hf', or set loop.warmstart_epochs: 0"
        )
    # As long as a whole episode may be in verl, so that SFT keeps what RL's rollouts keep.
    fields = {"path": base, "chat_template": False, "sft_append_eos": False, "max_length": verl.max_prompt_length + verl.max_response_length}
    policy = plugins.build("model", name, msgspec.structs.replace(config, **{k: v for k, v in fields.items() if hasattr(config, k)}))
    missing = [attr for attr in ("sft", "save", "tokenizer") if not hasattr(policy, attr)]
    if missing:
        raise ConfigError(
            f"{resolved.source}: policy {name!r} has no {missing[0]!r}, so the warm start cannot train it; "
            "set loop.warmstart_epochs: 0"
        )
    if not getattr(policy.tokenizer, "chat_template", None):
        raise ConfigError(
            f"{resolved.source}: the tokenizer of {base!r} has no chat template, and verl's agent loop renders "
            "every turn with it; use an instruct model"
        )
    return policy


def _reflections(
    resolved: ResolvedPipeline, plugins: Plugins, branches: Sequence[Transition], offline: list[Trajectory], say: Callable[[str], None],
) -> dict | None:
    """The demos' self-reflections (``loop.self_reflection``), or None when off."""
    cfg = resolved.pipeline
    return write_reflections(
        cfg.loop.self_reflection, branches, offline, seed=cfg.seed, say=say,
        build_teacher=lambda: plugins.build("model", cfg.experience.teacher.name, resolved.components["experience.teacher"]),
    )


def _world_model(policy: Any, world: list, *, resolved: ResolvedPipeline, say: Callable[[str], None]) -> dict[str, float]:
    """Implicit world modelling, each branch one exchange (see :func:`warm_start`)."""
    cfg = resolved.pipeline
    say(f"implicit world modelling: {len(world)} branch transitions, epochs: {cfg.loop.world_model_epochs}")
    trained = policy.sft(
        examples=[chat_segments(policy.tokenizer, [(ask, seen)]) for (ask, _), (seen, _) in world],
        epochs=cfg.loop.world_model_epochs, lr=cfg.loop.warmstart_lr, batch_size=cfg.experience.batch_size,
    )
    return {f"world_model/{k.split('/')[-1]}": v for k, v in trained.items()}


def warm_start(
    resolved: ResolvedPipeline, plugins: Plugins, offline: list[Trajectory], *, run_dir: Path, say: Callable[[str], None],
    branches: Sequence[Transition] = (),
) -> dict[str, float]:
    """SFT of the policy component on the expert episodes of ``offline``, saved to
    ``run_dir/policy_init``; an earlier attempt's finished one is kept (``--resume``).

    With ``loop.world_model_epochs``, implicit world modelling on ``branches`` comes first
    (dreamgym_core.early), each branch one exchange: its prompt and action as the user turn,
    the observation that followed as the reply. With ``loop.self_reflection``, the replies
    think about what their action and the branches' led to."""
    target = run_dir / WARMSTART_DIR
    if checkpoint.stage_done(target):
        say(f"reusing the warm-started policy in {target}")
        return {}
    loop = resolved.pipeline.loop
    policy = _policy(resolved, plugins)
    thoughts = _reflections(resolved, plugins, branches, offline, say)
    if thoughts is not None:
        say(f"self-reflection: {len(thoughts)} demo states think about their branches")
    demos = stages.warmstart_demos(offline, loop.warmstart_demos, where=str(run_dir / stages.OFFLINE_FILE))
    conversations = demo_conversations(demos, max_steps=loop.max_steps, history_window=loop.history_window, thoughts=thoughts)
    world = world_model_examples(branches, offline, max_steps=loop.max_steps, history_window=loop.history_window) if loop.world_model_epochs else []
    metrics = _world_model(policy, world, resolved=resolved, say=say) if world and conversations else {}
    if conversations:
        say(f"warm-starting the policy on the driver (SFT on {len(conversations)} expert episodes, verl's chat layout)")
        trained = policy.sft(
            examples=[chat_segments(policy.tokenizer, turns) for turns in conversations],
            epochs=loop.warmstart_epochs, lr=loop.warmstart_lr, batch_size=resolved.pipeline.experience.batch_size,
            on_epoch=lambda epoch, loss: say(f"warm start epoch {epoch}/{loop.warmstart_epochs}: loss {loss:.4g}"),
            **step_progress(policy.sft, say, "warm start", loop.warmstart_epochs),
        )
        metrics |= {f"warmstart/{k.split('/')[-1]}": v for k, v in trained.items()}
    else:
        say("no successful expert episode in the offline data: verl starts from the policy's weights as they are")
    policy.save(path=str(target))
    checkpoint.atomic_write(target / "done", b"1\n")
    say(f"warm-started policy in {target}")
    return metrics
