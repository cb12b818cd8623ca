#!/usr/bin/env python3
"""locus engine vs PyTorch `transformers` on CPU, same weights, same thread count, one run.

    /tmp/torchenv/bin/python engine/scripts/bench_vs_torch.py [--reps 5] [--dir /tmp/locus-synth]

1. builds and runs `bench_engine export DIR`: the synthetic distilgpt2 weights as safetensors;
2. runs `bench_engine run DIR` (RAYON_NUM_THREADS=2): locus timings as JSON;
3. loads DIR with GPT2LMHeadModel (torch.set_num_threads(2)) and times the same prompts;
4. checks both produced the same last-position logits, prints a table.
Prompts are token ids (i * 7919 + 13 + salt * 104729) % 50000, as in bench_engine.rs.

PyTorch-only batched generation (no cargo, no locus; DIR must already hold the weights):

    /tmp/torchenv/bin/python engine/scripts/bench_vs_torch.py --torch-batch 1,8 [--reps 3] \
        [--weights DIR] [--torch-min-prompt 96]

For each B: B streams of 128-token prompts (seeded pseudo-random ids, a different row per
stream), left-padded with attention_mask and pad = eos, then
`model.generate(max_new_tokens=128, min_new_tokens=128, do_sample=False)` timed whole, and
`generate(max_new_tokens=1)` (prefill + first token) timed apart, so that
decode-only tok/s = B * 127 / (t_full - t_prefill1). `--torch-min-prompt 96` spreads the
prompt lengths evenly over 96..128 so that the left padding is exercised (default: all 128).
"""
import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
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


BATCH_PROMPT, BATCH_NEW = 128, 128


def batch_prompts(batch, min_len, pad_id, vocab=50000, seed=1234):
    """Seeded pseudo-random ids, one distinct row per stream, left-padded to the longest.

    Lengths are spread evenly over min_len..BATCH_PROMPT (all BATCH_PROMPT by default).
    Returns (input_ids, attention_mask, per-row unpadded prompts)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    lens = [BATCH_PROMPT - round((BATCH_PROMPT - min_len) * b / max(batch - 1, 1)) for b in range(batch)]
    rows = [torch.randint(0, vocab, (n,), generator=gen) for n in lens]
    width = max(lens)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for b, row in enumerate(rows):  # left padding: real tokens flush right
        input_ids[b, width - len(row):] = row
        mask[b, width - len(row):] = 1
    return input_ids, mask, rows


def torch_batch_bench(args, batches):
    import torch
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(args.threads)
    model = GPT2LMHeadModel.from_pretrained(args.dir, dtype=torch.float32).eval()
    eos = model.config.eos_token_id
    pad_id = eos if isinstance(eos, int) else 50256  # pad = eos, as usual for GPT-2
    results = []
    with torch.inference_mode():
        for batch in batches:
            input_ids, mask, rows = batch_prompts(batch, args.torch_min_prompt, pad_id)

            def generate(new):
                t = time.perf_counter()
                out = model.generate(
                    input_ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                    do_sample=False, pad_token_id=pad_id,
                )
                return time.perf_counter() - t, out

            generate(2)  # warm-up: allocations, first-call overheads
            # Left-padding check: the first generated token of each row must be the argmax
            # of that row run alone, unpadded.
            _, first = generate(1)
            alone = [int(model(r[None], logits_to_keep=1).logits[0, -1].argmax()) for r in rows]
            mismatches = sum(int(a != b) for a, b in zip(first[:, -1].tolist(), alone))
            full, pre = [], []
            for _ in range(args.reps):  # alternate, so that load from elsewhere hits both
                t, _ = generate(1)
                pre.append(t)
                t, out = generate(BATCH_NEW)
                assert out.shape == (batch, input_ids.shape[1] + BATCH_NEW), out.shape
                full.append(t)
            results.append({
                "batch": batch,
                "prompt_lens": f"{min(len(r) for r in rows)}..{max(len(r) for r in rows)}",
                "full_s": min(full), "full_s_median": statistics.median(full),
                "prefill1_s": min(pre), "prefill1_s_median": statistics.median(pre),
                "first_token_mismatches": mismatches,
            })
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return {"engine": f"PyTorch {torch.__version__}", "threads": torch.get_num_threads(), "runs": results}


def print_batch_table(args, res, loads):
    print(json.dumps(res, indent=1))
    print()
    print(f"load average (1 min) before / after: {loads[0][0]:.2f} / {loads[1][0]:.2f} on {os.cpu_count()} cpus")
    print(f"{res['engine']}, {res['threads']} threads, f32, distilgpt2 shape, greedy `generate`, "
          f"{BATCH_NEW} new tokens per stream, best of {args.reps} (median)")
    print()
    print("| B | prompt lens | total s | prefill + 1st token s | aggregate tok/s | decode-only tok/s "
          "| per-stream ms / output token | 1st-token mismatches vs unpadded |")
    print("|---|---|---|---|---|---|---|---|")
    for r in res["runs"]:
        b = r["batch"]
        cells = []
        for sfx in ("", "_median"):
            full, pre = r["full_s" + sfx], r["prefill1_s" + sfx]
            cells.append((full, pre, b * BATCH_NEW / full, b * (BATCH_NEW - 1) / (full - pre),
                          full / BATCH_NEW * 1e3))
        (best, med) = cells
        print(f"| {b} | {r['prompt_lens']} | {best[0]:.2f} ({med[0]:.2f}) | {best[1]:.3f} ({med[1]:.3f}) "
              f"| {best[2]:.1f} ({med[2]:.1f}) | {best[3]:.1f} ({med[3]:.1f}) | {best[4]:.1f} ({med[4]:.1f}) "
              f"| {r['first_token_mismatches']}/{b} |")
    print()
    print("aggregate tok/s = B*128 / total; decode-only tok/s = B*127 / (total - prefill+1st); "
          "per-stream ms/token = total / 128. Best-of columns pair the best total with the best prefill.")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", "--weights", dest="dir", default="/tmp/locus-synthetic-distilgpt2",
                    help="weights directory (config.json + model.safetensors); made by "
                         "`bench_engine export DIR` when missing (comparison mode only)")
    ap.add_argument("--torch-batch", default=None, metavar="B[,B...]",
                    help="PyTorch-only batched greedy generate for these batch sizes, e.g. 1,8 "
                         "(skips cargo and locus)")
    ap.add_argument("--torch-min-prompt", type=int, default=BATCH_PROMPT,
                    help=f"with --torch-batch: prompt lengths spread over N..{BATCH_PROMPT} "
                         f"(left padding); default {BATCH_PROMPT} for all")
    args = ap.parse_args()
    if args.torch_batch:
        batches = [int(b) for b in args.torch_batch.split(",") if b.strip()]
        if not 1 <= args.torch_min_prompt <= BATCH_PROMPT or not batches or min(batches) < 1:
            ap.error(f"--torch-batch needs positive sizes and --torch-min-prompt in 1..{BATCH_PROMPT}")
        if not os.path.exists(os.path.join(args.dir, "model.safetensors")):
            sys.exit(f"{args.dir}/model.safetensors missing: make it with\n  CARGO_TARGET_DIR={TARGET} cargo run "
                     f"--release -p locus-engine --example bench_engine -- export {args.dir}\n"
                     f"or point --weights at any GPT-2-shaped save_pretrained directory")
        before = os.getloadavg()
        res = torch_batch_bench(args, batches)
        print_batch_table(args, res, (before, os.getloadavg()))
        return
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
