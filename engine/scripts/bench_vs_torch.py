#!/usr/bin/env python3
"""locus engine vs PyTorch `transformers` on CPU, same weights, same thread count, one run.

    /tmp/torchenv/bin/python engine/scripts/bench_vs_torch.py [--reps 5] [--dir /tmp/locus-synth]

1. builds and runs `bench_engine export DIR`: the synthetic distilgpt2 weights as safetensors;
2. runs `bench_engine run DIR` (RAYON_NUM_THREADS=2): locus timings as JSON;
3. loads DIR with GPT2LMHeadModel (torch.set_num_threads(2)) and times the same prompts;
4. checks both produced the same last-position logits, prints a table.
Prompts are token ids (i * 7919 + 13 + salt * 104729) % 50000, as in bench_engine.rs.
"""
import argparse
import copy
import json
import os
import statistics
import subprocess
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TARGET = os.environ.get("CARGO_TARGET_DIR", "/tmp/target-engine")
PROMPT, PREFIX, DECODE_PROMPT, DECODE_NEW = 512, 448, 128, 128


def ids(n, salt=0):
    return [(i * 7919 + 13 + salt * 104729) % 50000 for i in range(n)]


def locus(args):
    env = dict(os.environ, CARGO_TARGET_DIR=TARGET, RAYON_NUM_THREADS=str(args.threads))
    subprocess.run(
        ["cargo", "build", "--release", "-p", "locus-engine", "--example", "bench_engine"],
        cwd=ROOT, env=env, check=True,
    )
    exe = os.path.join(TARGET, "release", "examples", "bench_engine")
    if not os.path.exists(os.path.join(args.dir, "model.safetensors")):
        subprocess.run([exe, "export", args.dir], env=env, check=True)
    out = subprocess.run([exe, "run", args.dir, str(args.reps)], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def torch_bench(args):
    import torch
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(args.threads)
    model = GPT2LMHeadModel.from_pretrained(args.dir, dtype=torch.float32).eval()
    prompt = torch.tensor([ids(PROMPT)])
    with torch.inference_mode():
        logits = model(prompt, logits_to_keep=1).logits[0, -1]  # warm-up
        # Cold and tail reps alternate, as in bench_engine.rs.
        past = model(prompt[:, :PREFIX], use_cache=True).past_key_values
        cold, tail = [], []
        for r in range(args.reps):
            t = time.perf_counter()
            model(prompt, logits_to_keep=1)
            cold.append(time.perf_counter() - t)

            cache = copy.deepcopy(past)  # extending a DynamicCache mutates it
            tail_ids = torch.tensor([ids(PROMPT - PREFIX, r + 1)])
            t = time.perf_counter()
            model(tail_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            tail.append(time.perf_counter() - t)

        decode = []
        for _ in range(args.reps):
            out = model(torch.tensor([ids(DECODE_PROMPT, 99)]), use_cache=True, logits_to_keep=1)
            cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            t = time.perf_counter()
            for _ in range(DECODE_NEW - 1):  # as in locus: forwards after the first token
                out = model(nxt, past_key_values=cache, use_cache=True)
                cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            decode.append((DECODE_NEW - 1) / (time.perf_counter() - t))
    # Best of the reps, as in bench_engine.rs: interference only adds time.
    cold_s, tail_s = min(cold), min(tail)
    return {
        "prefill_tok_s_median": PROMPT / statistics.median(cold),
        "decode_tok_s_median": statistics.median(decode),
        "tail_ratio_median": statistics.median(t / c for t, c in zip(tail, cold)),
        "engine": f"PyTorch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "prefill_tok_s": PROMPT / cold_s,
        "prefill_s": cold_s,
        "decode_tok_s": max(decode),
        "tail_s": tail_s,
        "tail_ratio": tail_s / cold_s,
        "last_logits_head": logits[:8].tolist(),
        "argmax": int(logits.argmax()),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", default="/tmp/locus-synthetic-distilgpt2")
    args = ap.parse_args()
    load_before = os.getloadavg()
    ours = locus(args)
    load_mid = os.getloadavg()
    theirs = torch_bench(args)
    load_after = os.getloadavg()
    diff = max(abs(a - b) for a, b in zip(ours["last_logits_head"], theirs["last_logits_head"]))
    print(json.dumps({"locus": ours, "torch": theirs, "logits_head_max_abs_diff": diff}, indent=1))
    print()
    print(f"load average (1 min) before / between / after: {load_before[0]:.2f} / {load_mid[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} cpus")
    print(f"same weights: argmax {ours['argmax']} vs {theirs['argmax']}, first 8 logits max abs diff {diff:.2e}")
    print(f"| metric ({args.threads} threads, distilgpt2 shape, f32) | locus | PyTorch | locus / PyTorch |")
    print("|---|---|---|---|")
    rows = [
        (f"prefill tok/s ({PROMPT}-token prompt)", "prefill_tok_s", True),
        (f"decode tok/s ({DECODE_NEW} tokens after {DECODE_PROMPT})", "decode_tok_s", True),
        (f"{PROMPT - PREFIX}-token tail over cached {PREFIX}: time / cold {PROMPT}", "tail_ratio", False),
    ]
    for name, key, _ in rows:
        a, b = ours[key], theirs[key]
        am, bm = ours[key + "_median"], theirs[key + "_median"]
        fmt = "{:.0f}" if key != "tail_ratio" else "{:.3f}x"
        print(f"| {name}, best of {args.reps} | {fmt.format(a)} | {fmt.format(b)} | {a / b:.2f}x |")
        print(f"| {name}, median | {fmt.format(am)} | {fmt.format(bm)} | {am / bm:.2f}x |")
    print(f"| cold {PROMPT} prefill, ms | {ours['prefill_s']*1e3:.0f} | {theirs['prefill_s']*1e3:.0f} | |")
    print(f"| tail prefill, ms | {ours['tail_s']*1e3:.1f} | {theirs['tail_s']*1e3:.1f} | |")


if __name__ == "__main__":
    main()
