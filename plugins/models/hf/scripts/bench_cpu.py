"""CPU speed of the default hf-tiny preset: batched sampling and one SFT step.

    .venv/bin/python plugins/models/hf/scripts/bench_cpu.py --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch

from dreamgym_plugin_hf import TinyConfig, build_tiny

ROOMS = ["kitchen", "pantry", "garden", "bedroom"]
ITEMS = ["apple", "key", "coin", "book"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpus = [f"Room: {r}. Items: {i}, lamp. Action: take {i}. Result: you take the {i}." for r in ROOMS for i in ITEMS] * 20
    backend = build_tiny(TinyConfig())
    backend.prepare(corpus=corpus)
    params = sum(p.numel() for p in backend.model.parameters())
    start = time.perf_counter()
    backend.generate(prompts=corpus[:16], max_new_tokens=64, temperature=1.0, seed=0)
    gen = time.perf_counter() - start
    examples = [[(c[:30], False), (c[30:], True)] for c in corpus[:64]]
    start = time.perf_counter()
    backend.sft(examples=examples, epochs=1, lr=1e-3, batch_size=16)
    step = (time.perf_counter() - start) / 4
    print(
        f"threads={args.threads} params={params / 1e6:.2f}M vocab={len(backend.tokenizer)} "
        f"generate 16x64 tokens: {gen:.2f}s ({16 * 64 / gen:.0f} tok/s); SFT step of 16 examples: {step:.2f}s"
    )


if __name__ == "__main__":
    main()
