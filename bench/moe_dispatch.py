"""MoE dispatch benchmark: what the budgeted expert-choice dispatch drops, how far its logits move from
exact top-k routing, and what it saves, for prompts of N = 16 .. 4096 tokens.

    python bench/moe_dispatch.py [--tokens 16 64 256 1024 4096] [--ratios 1 1.5 2 4] [--device cuda]

The checkpoint is synthetic with gpt-oss-20b's routing shape (32 experts, top-4) at a CPU-friendly
width. For each N and ratio the table gives the fraction of exact (token, expert) pairs dropped
(all layers), tokens left with no expert, the logits' relative error against exact routing, and the
prefill time relative to exact. Random routers spread tokens evenly; trained ones are more skewed
and drop more at the same ratio.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

import gptoss_np  # first: NumPy then loads with its BLAS threads set not to spin (gptoss_np/cpu_threads.py)
from gptoss_np import synthetic

import numpy as np
from provenance import commit, machine

HERE = Path(__file__).resolve().parent
CONFIG = dict(hidden_size=512, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
              num_key_value_heads=2, head_dim=64, num_local_experts=32, num_experts_per_tok=4,
              vocab_size=4096, sliding_window=128, max_position_embeddings=131072,
              rope_scaling=synthetic.PRESETS["gpt-oss-20b"]["rope_scaling"])


def run(model, ids):
    layers = model.trace(ids, attention=False)
    t0 = time.perf_counter()
    logits = model.logits(ids)
    seconds = time.perf_counter() - t0
    pairs = len(ids) * model.config.num_experts_per_tok * model.config.num_hidden_layers
    dropped = sum(layer.dropped for layer in layers) / pairs
    unrouted = sum(layer.unrouted for layer in layers) / (len(ids) * model.config.num_hidden_layers)
    return logits, seconds, dropped, unrouted


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[16, 64, 256, 1024, 4096])
    p.add_argument("--ratios", type=float, nargs="+", default=[1.0, 1.5, 2.0, 4.0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--checkpoint", type=Path, default=HERE / "_work" / "moe-dispatch")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args()
    if not (args.checkpoint / "config.json").exists():
        synthetic.write_checkpoint(args.checkpoint, synthetic.config_dict("tiny", **CONFIG))

    exact = gptoss_np.load(args.checkpoint, device=args.device)
    rows = []
    result = {"benchmark": "moe_dispatch", "date": date.today().isoformat(), "commit": commit(),
              "device": exact.ops.name, "machine": machine(exact.ops), "config": CONFIG, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"moe-dispatch-{result['date']}-{exact.ops.name}.json"
    print(f"{'tokens':>7}{'ratio':>7}{'budget':>8}{'dropped':>9}{'unrouted':>10}{'rel err':>10}{'time/exact':>12}")
    for n in args.tokens:
        ids = np.random.default_rng(n).integers(0, exact.config.vocab_size, n)
        ref, ref_seconds, _, _ = run(exact, ids)
        for ratio in args.ratios:
            model = gptoss_np.load(args.checkpoint, device=args.device, moe_dispatch="expert_choice",
                                   tokens_per_expert_ratio=ratio)
            logits, seconds, dropped, unrouted = run(model, ids)
            err = float(np.linalg.norm(logits - ref) / np.linalg.norm(ref))
            budget = model.dispatch_rule.budget(n, model.config.num_experts_per_tok,
                                                model.config.num_local_experts)
            rows.append({"tokens": n, "ratio": ratio, "tokens_per_expert": budget, "dropped_pairs": dropped,
                         "unrouted_tokens": unrouted, "logits_rel_err": err,
                         "seconds": seconds, "exact_seconds": ref_seconds})
            print(f"{n:>7}{ratio:>7.1f}{budget:>8}{dropped:>9.1%}{unrouted:>10.1%}{err:>10.2e}"
                  f"{seconds / ref_seconds:>12.2f}")
            path.write_text(json.dumps(result, indent=2))  # after each row: a run cut short keeps its rows
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
