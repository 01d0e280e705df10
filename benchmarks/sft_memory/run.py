"""Peak memory and time of one masked SFT step (forward + backward) of SmolLM2-135M-Instruct
on CPU, one thread, each mode in a fresh process, all in one run:

- ``full-logits``: transformers' own ``labels=`` loss (logits at every position), whole batch;
- ``kept-logits``: ``HFBackend`` (logits only where a trained token is predicted), whole batch;
- ``micro-2``: ``HFBackend`` with ``sft_micro_batch=2`` (gradient accumulation).

    python benchmarks/sft_memory/run.py  # writes benchmarks/sft_memory/results.json

The batch imitates the SmolLM2 example's warm start: 8 prompts of about 400 tokens, each with
a short trained answer.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def one_step(mode: str) -> dict:
    import torch

    from dreamgym_plugin_hf.config import SmolLM2Config
    from dreamgym_plugin_hf.smollm2 import SmolLM2Backend
    from dreamgym_plugin_hf.text import right_pad

    torch.set_num_threads(1)
    micro = 2 if mode == "micro-2" else None
    config = SmolLM2Config(cache_dir=str(ROOT / "runs" / "smollm2-weights"), max_length=1024, sft_micro_batch=micro)
    backend = SmolLM2Backend.from_config(config)
    prompt = "You are in the kitchen. To the East you see the pantry. " * 30
    examples = [[(f"Task {i}: take the coin. " + prompt, False), (f" move east {i % 3}", True)] for i in range(8)]
    rows = backend._trainable_rows(examples)
    backend.model.train()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if mode == "full-logits":
        ids, mask, labels = right_pad(rows, backend.tokenizer.pad_token_id)
        loss = backend.model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        loss = loss.item()
    else:
        loss = backend._accumulate(rows)
    return {
        "mode": mode, "loss": loss, "tokens_per_row": max(len(r) for r, _ in rows), "rows": len(rows),
        "seconds": round(time.perf_counter() - started, 2),
        "peak_rss_mb_before_step": before // 1024, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }


def main() -> None:
    if len(sys.argv) == 2:
        print(json.dumps(one_step(sys.argv[1])))
        return
    results = []
    for mode in ("full-logits", "kept-logits", "micro-2"):
        out = subprocess.run([sys.executable, __file__, mode], capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    step = {r["mode"]: r["peak_rss_mb"] - r["peak_rss_mb_before_step"] for r in results}
    summary = {
        "command": "python benchmarks/sft_memory/run.py", "results": results,
        "step_memory_mb": step,
        "step_memory_ratio_full_logits_over_kept": round(step["full-logits"] / max(step["kept-logits"], 1), 2),
        "step_memory_ratio_kept_over_micro_2": round(step["kept-logits"] / max(step["micro-2"], 1), 2),
        "max_loss_difference": max(abs(a["loss"] - b["loss"]) for a in results for b in results),
    }
    (HERE / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
