"""CPU benchmark: prefill and decode tokens/s of gptoss_np and of transformers, same checkpoint, same run.

    python bench/cpu.py [--prompt 128] [--decode 32] [--repeats 3] [--out bench/results]
    python bench/cpu.py --preset gpt-oss-20b --no-transformers   # the real shape, gptoss_np alone

The checkpoint is a synthetic preset in the real on-disk format, by default "bench-cpu" (hidden 1024,
8 layers, 16 experts top-4, vocab 32768). transformers runs it as its users would on a CPU: float32,
eager attention, MXFP4 dequantized at load (84 GB for gpt-oss-20b: hence --no-transformers). The two
engines alternate within each repeat; the table shows medians and the ratio. Both decode greedily
through their KV caches.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import date
from pathlib import Path

import gptoss_np  # first: NumPy then loads with its BLAS threads set not to spin (gptoss_np/cpu_threads.py)
from gptoss_np import synthetic

import numpy as np
from provenance import commit, cpu_name

HERE = Path(__file__).resolve().parent


def ours_run(model, ids, n_decode):
    cache = model.new_cache(len(ids) + n_decode)
    t0 = time.perf_counter()
    logits = model.forward(ids, cache)
    t1 = time.perf_counter()
    for _ in range(n_decode):
        logits = model.forward(np.array([int(np.argmax(logits[0]))]), cache)
    t2 = time.perf_counter()
    return len(ids) / (t1 - t0), n_decode / (t2 - t1)


def hf_run(model, ids, n_decode):
    import torch
    from transformers import DynamicCache
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        t0 = time.perf_counter()
        out = model(torch.tensor(ids)[None], cache=cache, use_cache=True)
        t1 = time.perf_counter()
        for _ in range(n_decode):
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            out = model(token, cache=cache, use_cache=True)
        t2 = time.perf_counter()
    return len(ids) / (t1 - t0), n_decode / (t2 - t1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens (prefill)")
    p.add_argument("--decode", type=int, default=32, help="tokens decoded one at a time")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--preset", default="bench-cpu", choices=sorted(synthetic.PRESETS))
    p.add_argument("--no-transformers", action="store_true", help="time gptoss_np alone")
    p.add_argument("--checkpoint", type=Path, help="where the preset is written (default bench/_work/PRESET)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args()
    checkpoint = args.checkpoint or HERE / "_work" / args.preset

    if not (checkpoint / "config.json").exists():
        synthetic.write_checkpoint(checkpoint, args.preset, progress=True)
    engines = {"gptoss_np": (gptoss_np.load(checkpoint), ours_run)}
    versions = {"numpy": np.__version__}
    if not args.no_transformers:
        import torch
        import transformers
        transformers.logging.set_verbosity_error()
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            checkpoint, dtype=torch.float32, attn_implementation="eager",
            quantization_config=transformers.Mxfp4Config(dequantize=True)).eval()
        engines["transformers"] = (hf, hf_run)
        versions |= {"torch": torch.__version__, "transformers": transformers.__version__}
    ids = np.random.default_rng(0).integers(0, engines["gptoss_np"][0].config.vocab_size, args.prompt)

    for model, run in engines.values():
        run(model, ids[:16], 2)  # compile the kernels and touch the weights once
    runs = {name: [] for name in engines}
    for _ in range(args.repeats):
        for name, (model, run) in engines.items():
            runs[name].append(run(model, ids, args.decode))
    med = {name: {"prefill_tok_s": statistics.median(r[0] for r in rs),
                  "decode_tok_s": statistics.median(r[1] for r in rs)} for name, rs in runs.items()}
    ratio = ({k: med["gptoss_np"][k] / med["transformers"][k] for k in ("prefill_tok_s", "decode_tok_s")}
             if "transformers" in med else None)

    print(f"\n{args.preset} checkpoint, {args.prompt}-token prompt, {args.decode} decode steps, "
          f"median of {args.repeats}, {cpu_name()} x {os.cpu_count()} threads")
    print(f"{'engine':<14}{'prefill tok/s':>15}{'decode tok/s':>15}")
    for name, m in med.items():
        print(f"{name:<14}{m['prefill_tok_s']:>15.1f}{m['decode_tok_s']:>15.1f}")
    if ratio:
        print(f"{'ratio':<14}{ratio['prefill_tok_s']:>14.2f}x{ratio['decode_tok_s']:>14.2f}x")

    result = {"benchmark": "cpu", "date": date.today().isoformat(), "commit": commit(),
              "machine": {"cpu": cpu_name(), "threads": os.cpu_count()},
              "config": {"preset": args.preset, "prompt_tokens": args.prompt, "decode_tokens": args.decode,
                         "repeats": args.repeats},
              "median": med, "ratio": ratio, "runs": runs, "versions": versions}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "cpu" if args.preset == "bench-cpu" else f"cpu-{args.preset}"
    prompt = "" if args.prompt == 128 else f"-prompt{args.prompt}"  # runs of one day keep their own files
    path = args.out / f"{name}-{result['date']}{prompt}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
