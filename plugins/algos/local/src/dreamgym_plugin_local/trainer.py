"""What every local trainer shares: the policy, its frozen reference, the optimiser,
sampling, guarded optimiser steps, and save/load of the whole training state."""

from __future__ import annotations

import copy
import logging
import math
import pickle
import struct
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from dreamgym_core.checkpoint import plain_file_modes
from dreamgym_core.errors import ConfigError, DataError, DreamGymError
from dreamgym_core.experience import call_seed, stream_seed
from dreamgym_core.progress import OnBatch

from . import maths
from .batch import TokenBatch, response_logprobs, tokenize_steps
from .config import TrainerConfig

__all__ = ["LocalTrainer"]

log = logging.getLogger(__name__)

# loss_fn(row indices) -> (the rows' aggregated loss, its metrics)
LossFn = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]]

POLICY_FILE, HEADS_FILE, STATE_FILE = "policy.safetensors", "heads.safetensors", "trainer_state.pt"
REFERENCE_FILE = "reference.safetensors"
# A new trainer's counters (seed streams and totals); sampling streams add their own keys.
_FRESH_COUNTERS = {"updates": 0, "act_calls": 0, "sampled_calls": 0, "eval_sampled_calls": 0, "nonfinite_loss_steps": 0}
# What a damaged or foreign file raises from safetensors and torch.load(weights_only=True):
# header errors, unpickling refusals, truncated or junk pickles, and states missing their keys.
_DAMAGED_FILE_ERRORS = (
    RuntimeError, OSError, ValueError, SafetensorError, pickle.UnpicklingError, EOFError, struct.error,
    KeyError, TypeError, AttributeError,
)


class LocalTrainer:
    """Base of the local trainers. Subclasses implement ``update``.

    The model runs in eval mode throughout (dropout off) so that the log-probs
    recomputed before an update equal those of the first minibatch step.

    The optimiser steps the policy's own weights (no float32 master copy), so the
    policy must be float32: float16 or bfloat16 weights are refused (in float16 AdamW's
    eps rounds to 0 and the weights turn NaN; in bfloat16 most updates round away).
    """

    name = "local"
    uses_reference = True
    # GRPO and PPO train on the policy's own samples: a sampled empty response is a step
    # too (trained as the EOS token, see tokenize_steps). SFT and DPO train given data (in a run,
    # the rollouts' generated responses among it).
    on_policy = False

    def __init__(self, config: TrainerConfig, *, policy: Any, seed: int = 0) -> None:
        for attr in ("model", "tokenizer", "generate"):
            if not hasattr(policy, attr):
                raise ConfigError(
                    f"algo {self.name!r} (plugin local): policy backend {type(policy).__name__} has no {attr!r}; "
                    "use a local-weights backend such as 'hf'"
                )
        self._check_precision(policy.model)
        self.config, self.policy, self.seed = config, policy, seed
        self.generator = torch.Generator().manual_seed(seed)
        self.counters = dict(_FRESH_COUNTERS)
        self._bound: torch.nn.Module | None = None
        # The temperature of the latest sampled act() call (the run loop passes its
        # sampling_temperature), config.temperature before any: GRPO and PPO score the
        # responses they train on under this temperature, the distribution they came from.
        self.sampling_temperature = config.temperature
        # Token in, token out: the ids each RL response was sampled as, by (prompt, text), kept
        # from act() to the next update, which scores them instead of the text re-tokenised.
        self._sampled: dict[tuple[str, str], list[list[int]]] = {}
        top_p = getattr(getattr(policy, "config", None), "top_p", 1.0)
        if self.on_policy and top_p < 1.0:
            raise ConfigError(
                f"algo {self.name!r} (plugin local): policy top_p={top_p} samples from a nucleus the update does not "
                "score (it uses the full softmax); set the policy's top_p to 1.0"
            )
        # Every trainer trains responses act() generated (SFT and DPO on the rollouts' too), and
        # each keeps a response's first max_response_tokens: the action at a longer one's end is lost.
        if config.max_new_tokens > config.max_response_tokens:
            raise ConfigError(
                f"algo {self.name!r} (plugin local): algo.config.max_new_tokens={config.max_new_tokens} exceeds "
                f"algo.config.max_response_tokens={config.max_response_tokens}: the update would train only the first "
                f"{config.max_response_tokens} tokens of a longer generated response (the action at its end gets no "
                "gradient); set max_response_tokens >= max_new_tokens"
            )
        window = self._generation_window()
        if window is not None and window > config.max_prompt_tokens:
            log.warning(
                "%s: the policy generates from up to %d prompt tokens but max_prompt_tokens=%d: %s", self.name, window,
                config.max_prompt_tokens,
                "an update that meets a longer prompt will refuse it" if self.on_policy
                else "the update cuts longer prompts shorter than generation does",
            )

    @property
    def model(self) -> torch.nn.Module:
        """The backend's current model (a backend may replace it, e.g. the tiny preset's prepare())."""
        return self.policy.model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _bind(self) -> None:
        """Build the reference, heads and optimiser for the backend's current model.

        Called at the start of every update, save and load; it does work only when the
        model object changed. So the reference is the policy as it is at the first
        update (after any warm start), not at construction.
        """
        self.model.eval()
        if self._bound is self.model:
            return
        self._check_precision(self.model)
        self._bound = self.model
        self.ref = self._frozen_copy(self.model) if self.uses_reference else None
        self.heads = self._make_heads()
        self.optimizer = torch.optim.AdamW(self._param_groups(), weight_decay=self.config.weight_decay)

    def _check_precision(self, model: torch.nn.Module) -> None:
        low = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()} & {"float16", "bfloat16"})
        if low:
            raise ConfigError(
                f"algo {self.name!r} (plugin local): the policy's weights are {low[0]}, and these trainers step the "
                "optimiser on the weights themselves; load the policy in float32 (hf: dtype: float32), "
                "or train with verl for mixed precision"
            )

    # --- construction hooks -----------------------------------------------------------

    def _make_heads(self) -> torch.nn.ModuleDict:
        """Extra trainable modules saved with the algorithm (PPO: the value head)."""
        return torch.nn.ModuleDict()

    def _param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr": self.config.lr}]

    @staticmethod
    def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref

    # --- acting -----------------------------------------------------------------------

    def act(
        self, *, prompts: Sequence[str], greedy: bool = False, temperature: float | None = None, evaluation: bool = False,
        stream: str | None = None, candidates: Sequence[Sequence[str]] | None = None,
    ) -> list[str]:
        """Sample (or greedily decode) one response per prompt with the policy backend;
        ``temperature`` (the run loop's) overrides the configured one; ``evaluation``: an
        evaluation's play, sampled from a seed stream of its own (``stream``: named, counted
        apart from the other evaluations'). ``candidates`` (``loop.action_choice=listed``): per
        prompt, the answers to pick from (:meth:`_choose`); a prompt with none is generated."""
        if isinstance(prompts, str):  # else each of its characters is a prompt
            raise TypeError("act(prompts=...) takes a list of prompts, got one str")
        if candidates is not None and len(candidates) != len(prompts):
            raise ValueError(f"act(): {len(candidates)} candidate lists for {len(prompts)} prompts")
        temperature = 0.0 if greedy else (self.config.temperature if temperature is None else temperature)
        self.counters["act_calls"] += 1
        if evaluation and temperature > 0:
            # Sampled evaluations (eval.temperature > 0) count and seed apart from RL's calls, so
            # runs that evaluated more or less before RL sample RL's rollouts alike; a named
            # stream also apart from the other evaluations' (a synthetic replay before the real
            # play of the next evaluation must not move that play's draws).
            name, key = ("evaluation", "eval_sampled_calls") if stream is None else (f"evaluation/{stream}", f"eval_sampled_calls/{stream}")
            self.counters[key] = self.counters.get(key, 0) + 1
            seed = call_seed(stream_seed(self.seed, name), self.counters[key])
        else:
            if temperature > 0:
                self.sampling_temperature = temperature
            # Only sampled calls advance the seed stream: greedy play (evaluation, warm-start
            # validation) draws nothing, so runs that evaluated more or less before RL sample alike.
            self.counters["sampled_calls"] += int(temperature > 0)
            seed = self.seed * 1_000_003 + self.counters["sampled_calls"]
        chosen = self._choose(prompts, candidates, temperature, seed) if candidates is not None else [None] * len(prompts)
        free = [i for i, text in enumerate(chosen) if text is None]
        if free:
            # RL trains on non-evaluation samples only: keep their ids for the update
            keep_ids = self.on_policy and temperature > 0 and not evaluation
            generated = self._generate([prompts[i] for i in free], temperature, seed, keep_ids=keep_ids)
            for i, text in zip(free, generated, strict=True):
                chosen[i] = text
        return chosen

    def _generate(self, prompts: list[str], temperature: float, seed: int, *, keep_ids: bool) -> list[str]:
        """The backend's texts for ``prompts``; ``keep_ids``: also keep the ids each was sampled as,
        where the backend gives them (``generate_with_ids``), for the next update."""
        args = {
            "prompts": prompts, "max_new_tokens": self.config.max_new_tokens, "temperature": temperature,
            "stop": list(self.config.stop), "seed": seed,
        }
        if not (keep_ids and hasattr(self.policy, "generate_with_ids")):
            return self.policy.generate(**args)
        out = self.policy.generate_with_ids(**args)
        if len(out) != len(prompts):
            raise DataError(f"algo {self.name!r} (plugin local): generate_with_ids gave {len(out)} answers for {len(prompts)} prompts")
        for prompt, (text, ids) in zip(prompts, out):
            self._sampled.setdefault((prompt, text), []).append([int(i) for i in ids])
        return [text for text, _ in out]

    def _take_sampled(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int] | None]:
        """Per (prompt, response) row, the ids act() sampled it as (None: not sampled by this
        trainer since the last update, e.g. a resumed run's or a listed answer: its text is
        tokenised). The kept ids are then dropped: an update trains each sample once."""
        kept, self._sampled = self._sampled, {}
        out: list[list[int] | None] = []
        for key in zip(prompts, responses):
            queue = kept.get(key)
            out.append(queue.pop(0) if queue else None)
        return out

    def _choose(
        self, prompts: Sequence[str], candidates: Sequence[Sequence[str]], temperature: float, seed: int,
    ) -> list[str | None]:
        """Per prompt, one of its candidate answers (None where it has none): each is scored by
        the policy's log-prob of it as a response, summed over its tokens, under ``temperature``
        (1 when greedy) as the update scores a response, then picked by
        :func:`maths.pick_candidate`. The update then trains the picked answer's own log-prob
        (over the whole vocabulary), as for a generated one."""
        rows = [(i, text) for i, options in enumerate(candidates) for text in options]
        if not rows:
            return [None] * len(prompts)
        batch = self._tokenize([prompts[i] for i, _ in rows], [text for _, text in rows])
        logp, _ = self._logprobs_no_grad(self.model, batch, temperature=temperature if temperature > 0 else 1.0)
        per_prompt = logp.sum(dim=-1).cpu().split([len(options) for options in candidates])
        generator = torch.Generator().manual_seed(seed)
        return [
            options[maths.pick_candidate(scores, greedy=temperature <= 0, generator=generator)] if options else None
            for options, scores in zip(candidates, per_prompt, strict=True)
        ]

    # --- shared update machinery -----------------------------------------------------------

    def _policy_max_length(self) -> int | None:
        """The backend's token cap of prompt + generated response (hf: ``max_length``); None when unknown."""
        max_length = getattr(getattr(self.policy, "config", None), "max_length", None)
        return max_length if isinstance(max_length, int) else None

    def _generation_window(self) -> int | None:
        """How many prompt tokens the backend's generate() keeps for ``act()`` (the hf
        backends: ``max_length - max_new_tokens``); None when unknown. Every trainer encodes
        prompts so: a response is trained on the context the policy acts from."""
        max_length = self._policy_max_length()
        if not hasattr(self.policy, "encode_prompt") or max_length is None:
            return None
        return max(max_length - self.config.max_new_tokens, 1)

    def _max_row_tokens(self) -> int | None:
        """Tokens one (prompt, response) row may hold: the backend's max_length (generation never
        holds more) and the model's positions (past them a learned-position model, GPT-2, fails
        with an IndexError); None when neither is known."""
        model_config = getattr(self.model, "config", None)
        positions = [getattr(model_config, field, None) for field in ("n_positions", "max_position_embeddings")]
        limits = [n for n in (self._policy_max_length(), *positions) if isinstance(n, int) and n > 1]
        return min(limits) if limits else None

    def _encode_as_sampled(self, prompt: str, limit: int) -> list[int]:
        """The prompt's ids exactly as generation conditioned on them (its last ``limit``)."""
        ids = self.policy.encode_prompt(prompt, limit)
        if len(ids) > self.config.max_prompt_tokens:
            raise DataError(
                f"algo {self.name!r} (plugin local): a prompt was sampled from {len(ids)} tokens but "
                f"max_prompt_tokens={self.config.max_prompt_tokens} would cut it for the update; set max_prompt_tokens "
                f">= {limit} or the policy's max_length <= {self.config.max_prompt_tokens + self.config.max_new_tokens}"
            )
        return ids

    def _prompt_limit(self) -> int:
        """Prompt tokens an update keeps: the generation window (with no backend window, what a
        row of the model's positions leaves max_new_tokens, as generation would), within
        max_prompt_tokens. A longer context is one act() never conditions on."""
        window, row = self._generation_window(), self._max_row_tokens()
        if window is None and row is not None:
            window = max(row - self.config.max_new_tokens, 1)
        return self.config.max_prompt_tokens if window is None else min(window, self.config.max_prompt_tokens)

    def _prompt_encoder(self) -> Callable[[str], list[int]]:
        """A prompt's ids as the update conditions on them."""
        window = self._generation_window()
        if window is not None and self.on_policy:  # GRPO/PPO: exactly the context each response was sampled from
            return lambda prompt: self._encode_as_sampled(prompt, window)
        limit = self._prompt_limit()
        if hasattr(self.policy, "encode_prompt"):  # the backend's own encoding (chat template, BOS)
            return lambda prompt: self.policy.encode_prompt(prompt, limit)
        return lambda prompt: list(self.policy.tokenizer(prompt)["input_ids"])

    def _tokenize(
        self, prompts: Sequence[str], responses: Sequence[str], response_ids: Sequence[Sequence[int] | None] | None = None,
    ) -> TokenBatch:
        cfg = self.config
        eos = self.policy.tokenizer.eos_token_id
        batch = tokenize_steps(
            self.policy.tokenizer, self._prompt_encoder(), prompts, responses,
            max_prompt_tokens=self._prompt_limit(), max_response_tokens=cfg.max_response_tokens,
            empty_response_ids=[eos] if self.on_policy and eos is not None else (), max_row_tokens=self._max_row_tokens(),
            response_ids=response_ids,
        )
        return TokenBatch(*(t.to(self.device) for t in (batch.input_ids, batch.attention_mask, batch.positions, batch.response_mask)))

    @torch.no_grad()
    def _logprobs_no_grad(self, model: torch.nn.Module, batch: TokenBatch, *, hidden: bool = False, temperature: float = 1.0):
        """Log-probs (and hidden states) of every row, computed minibatch by minibatch."""
        logps, states = [], []
        for index in torch.arange(len(batch)).split(self.config.minibatch_size):
            logp, h = response_logprobs(model, batch.rows(index.to(self.device)), hidden=hidden, temperature=temperature)
            logps.append(logp)
            states.append(h)
        return torch.cat(logps), (torch.cat(states) if hidden else None)

    def _minibatches(self, n: int, epochs: int) -> Iterator[torch.Tensor]:
        """Shuffled row indices, ``epochs`` passes, from the trainer's own seeded RNG."""
        for _ in range(epochs):
            order = torch.randperm(n, generator=self.generator)
            yield from (index.to(self.device) for index in order.split(self.config.minibatch_size))

    def _backward(
        self, index: torch.Tensor, loss_fn: LossFn, weights: torch.Tensor | None, live: torch.Tensor | None = None,
    ) -> tuple[float, dict[str, float]] | None:
        """Gradients of the minibatch ``index``'s loss, in micro-batches of ``micro_batch_size``
        rows, each loss scaled by its share of the minibatch's (``weights``: per row, see
        ``maths.row_weights``). Returns the minibatch's loss and its metrics: the micro-batches'
        metrics weighted by their rows, as verl logs micro-batches (a token-mean of one is not
        the minibatch's exactly). A non-finite micro-batch loss stops there and is returned (its
        step is then skipped). None, and no gradients, when no row of the minibatch has a
        response token (``live``: per row, whether it has one; or the weights sum to 0): there is
        nothing to learn, and its loss would be 0/0 (token-sum: 0, but an AdamW step on a zero
        gradient still moves the weights, by weight decay and the moments of earlier steps)."""
        if live is not None and not bool(live[index.cpu()].any()):
            return None
        if weights is not None and not float(weights[index.cpu()].sum()) > 0:
            return None
        size = self.config.micro_batch_size
        chunks = list(index.split(size)) if size is not None and size < len(index) else [index]
        shares = maths.micro_shares(weights, chunks) if len(chunks) > 1 else None
        if shares is None:
            chunks, shares = [index], [1.0]
        # the rows of the micro-batches that run (a skipped one has no metrics to weigh)
        ran = sum(len(chunk) for chunk, share in zip(chunks, shares) if share != 0.0)
        self.optimizer.zero_grad(set_to_none=True)
        total, metrics = 0.0, {}
        for chunk, share in zip(chunks, shares):
            if share == 0.0:  # nothing of the loss in it (token-mean: no response token); 0/0 there
                continue
            loss, chunk_metrics = loss_fn(chunk)
            if not torch.isfinite(loss):
                return loss.item(), chunk_metrics
            (loss * share).backward()  # share 1.0: the gradients exactly as unscaled
            total += share * loss.item()
            for key, value in chunk_metrics.items():
                metrics[key] = metrics.get(key, 0.0) + value * len(chunk) / ran
        return total, metrics

    def _optimise(self, loss: float) -> bool:
        """One guarded optimiser step on the gradients of a minibatch whose loss was ``loss``.
        A non-finite loss or gradient skips the step, is counted in
        ``errors/nonfinite_loss_steps`` and logged.

        Raises:
            DreamGymError: the weights are not finite after the step (loss and gradient
                were): the policy is lost, so training stops rather than go on from it.
        """
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            return self._skip(f"loss is {loss}")
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        if not torch.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return self._skip(f"gradient norm is {grad_norm.item()}")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            lrs = sorted({group["lr"] for group in self.optimizer.param_groups})
            raise DreamGymError(
                f"algo {self.name!r} (plugin local): the weights are not finite after an optimiser step whose loss and "
                f"gradient were finite; lower the learning rate (now {', '.join(map(str, lrs))})"
            )
        return True

    def _skip(self, reason: str) -> bool:
        self.counters["nonfinite_loss_steps"] += 1
        log.warning("%s: optimizer step skipped: %s", self.name, reason)
        return False

    def _train(
        self, n_rows: int, epochs: int, loss_fn: LossFn, on_batch: OnBatch | None = None, weights: torch.Tensor | None = None,
        live: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """Run ``loss_fn`` over shuffled minibatches, step the optimiser, average metrics
        (``on_batch(epoch, step, steps, loss)``: told after each minibatch that has response
        tokens, for progress lines; ``weights``: each row's part of the loss normaliser, for
        micro-batches; None: a sum; ``live``: per row, whether it has a response token). A
        minibatch without response tokens takes no step and is counted in ``data/empty_minibatches``.
        """
        totals: dict[str, float] = {}
        steps, empty, start = 0, 0, time.perf_counter()
        per_epoch = math.ceil(n_rows / self.config.minibatch_size)
        for i, index in enumerate(self._minibatches(n_rows, epochs)):
            result = self._backward(index, loss_fn, weights, live)
            if result is None:
                empty += 1
                continue
            loss, metrics = result
            if self._optimise(loss):
                steps += 1
                for key, value in metrics.items():
                    totals[key] = totals.get(key, 0.0) + value
            if on_batch is not None:
                on_batch(i // per_epoch + 1, i % per_epoch + 1, per_epoch, loss)
        self.counters["updates"] += 1
        out = {key: value / steps for key, value in totals.items()}
        out["perf/optimizer_steps"] = float(steps)
        out["data/empty_minibatches"] = float(empty)
        out["perf/train_seconds"] = time.perf_counter() - start
        out["errors/nonfinite_loss_steps"] = float(self.counters["nonfinite_loss_steps"])
        return out

    def _finite(self, metrics: dict[str, float]) -> dict[str, float]:
        """Metrics with non-finite values dropped (a skipped step must not poison logs), and
        how many were dropped in ``errors/nonfinite_metrics`` (their names are logged)."""
        dropped = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        if dropped:
            log.warning("%s: non-finite metrics left out: %s", self.name, ", ".join(dropped))
        out = {k: float(v) for k, v in metrics.items() if k not in dropped}
        out["errors/nonfinite_metrics"] = float(len(dropped))
        return out

    # --- persistence ----------------------------------------------------------------------

    def save(self, *, path: str) -> None:
        """Weights (policy, reference, heads) as safetensors; optimiser, RNG and counters via
        torch.save of tensors and plain types only. The weights get the mode a plain open
        gives (safetensors writes them 0o600), as the state file has."""
        self._bind()
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        save_model(self.model, str(out / POLICY_FILE))
        if self.ref is not None:
            save_model(self.ref, str(out / REFERENCE_FILE))
        save_file({k: v.contiguous() for k, v in self.heads.state_dict().items()}, str(out / HEADS_FILE))
        plain_file_modes(out, [POLICY_FILE, HEADS_FILE] + ([REFERENCE_FILE] if self.ref is not None else []))
        state = {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(), "counters": dict(self.counters)}
        torch.save(state, out / STATE_FILE)

    def load(self, *, path: str) -> None:
        """Restore what :meth:`save` wrote (policy, reference, heads, optimiser, RNG, counters)."""
        self._bind()
        root = Path(path)
        for name in (POLICY_FILE, HEADS_FILE, STATE_FILE):
            if not (root / name).is_file():
                raise DataError(f"{root / name}: missing file of a saved {self.name!r} algorithm state")
        try:
            load_model(self.model, str(root / POLICY_FILE), device=str(self.device))
            if self.ref is not None and (root / REFERENCE_FILE).is_file():
                load_model(self.ref, str(root / REFERENCE_FILE), device=str(self.device))
            self.heads.load_state_dict(load_file(str(root / HEADS_FILE), device=str(self.device)))
            state = torch.load(root / STATE_FILE, weights_only=True, map_location=self.device)
            self.optimizer.load_state_dict(state["optimizer"])
            self.generator.set_state(state["generator"].cpu())
            # replaced, not merged: a counter the checkpoint lacks starts again (dreamgym curve plays
            # several checkpoints with one trainer; a merged eval counter carried one's draws to the next)
            self.counters = {**_FRESH_COUNTERS, **{k: int(v) for k, v in state["counters"].items()}}
            self._sampled = {}  # samples of the policy before the load
        except _DAMAGED_FILE_ERRORS as err:
            if isinstance(err, RuntimeError) and "size mismatch" in str(err):
                # The policy backend holds another vocabulary (a fresh tiny model, whose tokenizer a
                # run's warm start extended), not a damaged file.
                mismatch = next(line.strip() for line in str(err).splitlines() if "size mismatch" in line)
                raise DataError(
                    f"{root}: cannot load {self.name!r} algorithm state into this policy ({mismatch}); load the "
                    "run's warm-started policy first (policy.reload(path=RUN/policy_init), as --resume and dreamgym eval do)"
                ) from err
            raise DataError(f"{root}: cannot load {self.name!r} algorithm state: {type(err).__name__}: {err}") from err
