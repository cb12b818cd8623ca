#!/usr/bin/env python3
"""The engine beside llama.cpp and PyTorch on the same weights, 2 threads, in one run (issue 26).

    scripts/bench-engine.sh [--reps 5] [--threads 2] [--out bench-out/engine]

(the wrapper makes the Python environment and builds locus's examples, then runs this).

1. Weights: `bench_engine export` writes the synthetic distilgpt2-shaped model in Hugging Face
   layout; `r50k_to_hf_tokenizer.py` adds GPT-2's tokenizer files, rebuilt from the r50k
   ranks locus embeds (no download), and `n_ctx`, which llama.cpp's converter reads.
2. llama.cpp at a pinned version: the sources vendored in llama-cpp-python's sdist from PyPI
   (its pip build makes only the library, so the tools are built here with cmake:
   `llama-bench`, `llama-batched-bench`); its converter writes GGUF in f32 and q8_0.
3. Measured side by side: this machine's read bandwidth and peak GFLOP/s
   (`machine_limits`, before and after the rest); prefill of a 512-token prompt; one stream
   decoding 128 tokens after a 128-token prompt; 8 and 16 streams decoding 128 tokens after
   128-token prompts (decode-only tok/s), for locus f32 and q8_0, llama.cpp f32 and q8_0,
   PyTorch f32; and locus q8_0's fidelity to locus f32 (`quant_fidelity`).
4. The ceilings worked out from the measured limits: one stream reads every weight once per
   token (bytes / bandwidth); N streams read them once per step and do N tokens' FLOPs
   (max of the two); prefill is FLOP-bound.

Writes OUT/results.json (every raw figure) and OUT/table.md (the tables), and prints both.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(__file__))

LLAMA_CPP_PYTHON = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
TOOLS = ("llama-bench", "llama-batched-bench")
PROMPT, DECODE_PROMPT, DECODE_NEW, STREAMS = 512, 128, 128, (8, 16)
# distilgpt2: 6 layers of width 768, a 50257-token head tied to the embedding.
LAYERS, D, VOCAB = 6, 768, 50257
MATMUL_PARAMS = LAYERS * 12 * D * D + VOCAB * D  # qkv 3d^2, out d^2, mlp 8d^2; the head


def sh(cmd, **kw):
    print("+", " ".join(map(str, cmd)), file=sys.stderr, flush=True)
    return subprocess.run(list(map(str, cmd)), check=True, **kw)


def out_of(cmd, env=None):
    return sh(cmd, capture_output=True, text=True, env=env).stdout


# llama.cpp runs that died with weight repacking on (its CPU "extra buffer types": AMX and
# repacked layouts), and so ran again without it; named in the table.
NO_REPACK = []


def llama_out(cmd, off_flag, what):
    """A llama.cpp tool's output; run again with `off_flag` (repacking off) when it dies of a
    signal (seen: llama-bench's q8_0 prompt processing segfaults on a machine whose CPU reports
    AMX), so that one tool crash does not lose the whole run."""
    if what in NO_REPACK:
        return out_of([*cmd, *off_flag])
    try:
        return out_of(cmd)
    except subprocess.CalledProcessError as e:
        if e.returncode >= 0:
            raise
        print(f"{what} died of signal {-e.returncode}; again with {' '.join(map(str, off_flag))}",
              file=sys.stderr, flush=True)
        NO_REPACK.append(what)
        return out_of([*cmd, *off_flag])


def examples_dir():
    return os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "examples")


def llama_tools(work, threads):
    """llama.cpp's tools, built once into WORK/build from the pinned sdist."""
    bindir = os.path.join(work, "build", "bin")
    src = os.path.join(work, f"llama_cpp_python-{LLAMA_CPP_PYTHON}", "vendor", "llama.cpp")
    if all(os.path.exists(os.path.join(bindir, t)) for t in TOOLS):
        return bindir, src
    sdist = os.path.join(work, f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz")
    if not os.path.exists(sdist):
        # --no-binary for this package only: the sdist, not a build (its build makes no tools).
        sh([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=llama-cpp-python",
            f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", work])
    with open(sdist, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != SDIST_SHA256:
        sys.exit(f"{sdist}: sha256 {digest}, expected {SDIST_SHA256}")
    if not os.path.isdir(src):
        with tarfile.open(sdist) as t:
            t.extractall(work, filter="data")
    cmake = shutil.which("cmake", path=os.path.dirname(sys.executable)) or "cmake"
    sh([cmake, "-S", src, "-B", os.path.join(work, "build"), "-DCMAKE_BUILD_TYPE=Release",
        "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_OPENSSL=OFF"])
    sh([cmake, "--build", os.path.join(work, "build"), "--target", *TOOLS, "-j", threads])
    return bindir, src


def weights(work):
    """The synthetic model in Hugging Face layout with GPT-2's tokenizer files."""
    hf = os.path.join(work, "hf")
    if not os.path.exists(os.path.join(hf, "tokenizer.json")):
        sh([os.path.join(examples_dir(), "bench_engine"), "export", hf])
        sh([sys.executable, os.path.join(ROOT, "engine", "scripts", "r50k_to_hf_tokenizer.py"), hf,
            "--patch-config", "--check"], cwd=ROOT)
    return hf


def gguf(work, src, hf, outtype):
    path = os.path.join(work, f"synthetic-distilgpt2-{outtype}.gguf")
    if not os.path.exists(path):
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        sh([sys.executable, os.path.join(src, "convert_hf_to_gguf.py"), hf, "--outtype", outtype,
            "--outfile", path], env=env)
    return path


def same_weights(src, hf, path):
    """Every tensor of the f32 GGUF equals locus's (transposed where the converter turns
    GPT-2's Conv1D weights): llama.cpp runs the weights locus runs, bit for bit."""
    import numpy as np
    from safetensors.numpy import load_file

    sys.path.insert(1, os.path.join(src, "gguf-py"))
    from gguf import GGUFReader

    ours = load_file(os.path.join(hf, "model.safetensors"))
    names = {"token_embd.weight": "wte.weight", "position_embd.weight": "wpe.weight",
             "output_norm.weight": "ln_f.weight", "output_norm.bias": "ln_f.bias"}
    parts = {"attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj",
             "ffn_norm": "ln_2", "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}
    checked = 0
    for t in GGUFReader(path).tensors:
        name = names.get(t.name)
        if name is None:
            blk, i, part, kind = t.name.split(".")
            name = f"h.{i}.{parts[part]}.{kind}"
        a, b = np.asarray(t.data).reshape(tuple(reversed(t.shape.tolist()))), ours[name]
        if not (np.array_equal(a, b) or np.array_equal(a, b.T)):
            sys.exit(f"{path}: {t.name} differs from locus's {name}")
        checked += 1
    return checked


def machine_limits(threads, reps):
    env = dict(os.environ, RAYON_NUM_THREADS=threads)
    return json.loads(out_of([os.path.join(examples_dir(), "machine_limits"), reps], env).splitlines()[-1])


def llama_bench(bindir, model, threads, reps):
    """Prefill of PROMPT tokens, and DECODE_NEW tokens after DECODE_PROMPT (untimed depth)."""
    res = {}
    for key, args in (("prefill", ["-p", PROMPT, "-n", 0]),
                      ("decode", ["-p", 0, "-n", DECODE_NEW, "-d", DECODE_PROMPT])):
        cmd = [os.path.join(bindir, "llama-bench"), "-m", model, "-t", threads, "-r", reps, *args,
               "-o", "json"]
        rows = json.loads(llama_out(cmd, ["--repack", 0], f"llama-bench {key} {os.path.basename(model)}"))
        r = rows[0]
        res[key] = {"best": max(r["samples_ts"]), "mean": r["avg_ts"], "flash_attn": r.get("flash_attn"),
                    "type_k": r.get("type_k"), "build_commit": r.get("build_commit")}
    return res


def llama_batched(bindir, model, threads, reps, kv):
    """Decode-only tok/s (`speed_tg`) of 1, 8 and 16 sequences; best of REPS runs (it has no -r)."""
    npl = ",".join(map(str, (1, *STREAMS)))
    best = {}
    for _ in range(int(reps)):
        cmd = [os.path.join(bindir, "llama-batched-bench"), "-m", model, "-t", threads,
               "-c", 4096, "-npp", DECODE_PROMPT, "-ntg", DECODE_NEW, "-npl", npl,
               "-ctk", kv, "-ctv", kv, "--output-format", "jsonl"]
        out = llama_out(cmd, ["--no-repack"], f"llama-batched-bench {os.path.basename(model)}")
        for line in out.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                best[r["pl"]] = max(best.get(r["pl"], 0.0), r["speed_tg"])
    return {str(k): v for k, v in sorted(best.items())}


def locus_single(hf, threads, reps, fmt="f32"):
    env = dict(os.environ, RAYON_NUM_THREADS=threads, LOCUS_WEIGHT_FORMAT=fmt)
    r = json.loads(out_of([os.path.join(examples_dir(), "bench_engine"), "run", hf, reps], env).splitlines()[-1])
    return {"prefill": r["prefill_tok_s"], "prefill_median": r["prefill_tok_s_median"],
            "decode": r["decode_tok_s"], "decode_median": r["decode_tok_s_median"]}


def locus_streams(threads, reps, fmt="f32"):
    """Decode tok/s of 1, 8 and 16 streams on the batching engine (median of REPS)."""
    env = dict(os.environ, RAYON_NUM_THREADS=threads, LOCUS_WEIGHT_FORMAT=fmt)
    out = out_of([os.path.join(examples_dir(), "batch_decode"), reps, ",".join(map(str, (1, *STREAMS))), "1024"], env)
    res = {}
    for line in out.split("## Prefill chunk")[0].splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|\s*([\d.]+)\s*\|", line)
        if m:
            res[m.group(1)] = float(m.group(2))
    return res


def locus_fidelity(threads):
    """q8_0 against f32 on the same weights: teacher-forced top-1, KL, divergence length."""
    env = dict(os.environ, RAYON_NUM_THREADS=threads)
    return json.loads(out_of([os.path.join(examples_dir(), "quant_fidelity")], env).splitlines()[-1])


def torch_runs(hf, threads, reps):
    import bench_vs_torch as bt

    a = argparse.Namespace(dir=hf, threads=int(threads), reps=int(reps), torch_min_prompt=bt.BATCH_PROMPT)
    single = bt.torch_bench(a)
    batch = bt.torch_batch_bench(a, list(STREAMS))
    streams = {str(r["batch"]): r["batch"] * (bt.BATCH_NEW - 1) / (r["full_s"] - r["prefill1_s"]) for r in batch["runs"]}
    return {"prefill": single["prefill_tok_s"], "decode": single["decode_tok_s"], "streams": streams,
            "version": batch.get("engine")}


def best_limits(r):
    """The better of the two measurements of each limit: the machine can do at least that."""
    a, b = r["limits_before"], r["limits_after"]
    return {k: max(a[k], b[k]) for k in ("read_gb_s", "peak_gflop_s")}


def ceilings(limits):
    bw, peak = limits["read_gb_s"] * 1e9, limits["peak_gflop_s"] * 1e9
    f32_bytes = MATMUL_PARAMS * 4
    flops_token = 2 * MATMUL_PARAMS
    c = {"weights_f32_mb": f32_bytes / 1e6, "one_stream_f32": bw / f32_bytes,
         "one_stream_8bit": bw / (MATMUL_PARAMS * (1 + 2 / 32))}  # Q8_0: int8 + an f16 scale per 32
    for n in STREAMS:
        step = max(f32_bytes / bw, n * flops_token / peak)
        c[f"streams_{n}_f32"] = n / step
        c[f"streams_{n}_step_ms"] = step * 1e3
    # Prefill: every layer's projections for all PROMPT tokens, causal attention, one head row.
    layer_flops = 2 * PROMPT * 12 * D * D + 2 * 2 * PROMPT * PROMPT * D / 2
    c["prefill"] = PROMPT / ((LAYERS * layer_flops + 2 * VOCAB * D) / peak)
    return c


def tables(r):
    lim, after, c = r["limits_before"], r["limits_after"], r["ceilings"]
    kernel = lambda m: ", ".join(f"{v:.0f}" for _, v in sorted(m["skinny_gflop_s"].items(), key=lambda kv: int(kv[0])))  # noqa: E731
    ll, lt, lo, lq, pt = r["llama_f32"], r["llama_q8_0"], r["locus_f32"], r["locus_q8_0"], r["torch_f32"]
    rows = [
        ("prefill tok/s (512-token prompt)", lo["prefill"], lq["prefill"], ll["prefill"]["best"],
         lt["prefill"]["best"], pt["prefill"], c["prefill"]),
        ("1 stream decode tok/s (128 after 128)", lo["decode"], lq["decode"], ll["decode"]["best"],
         lt["decode"]["best"], pt["decode"], c["one_stream_f32"]),
    ]
    for n in STREAMS:
        rows.append((f"{n} streams decode tok/s (128 after 128 each)", r["locus_streams"].get(str(n)),
                     r["locus_q8_0_streams"].get(str(n)), r["llama_f32_batched"].get(str(n)),
                     r["llama_q8_0_batched"].get(str(n)), pt["streams"].get(str(n)), c[f"streams_{n}_f32"]))
    f = lambda x: "-" if x is None else f"{x:.1f}"  # noqa: E731
    out = [f"Machine ({lim['threads']} threads), before / after the run: read {lim['read_gb_s']:.1f} / "
           f"{after['read_gb_s']:.1f} GB/s, peak {lim['peak_gflop_s']:.0f} / {after['peak_gflop_s']:.0f} GFLOP/s "
           f"(ceilings from the better of each); locus's few-row kernel at 1, 8, 16 rows: "
           f"{kernel(lim)} / {kernel(after)} GFLOP/s. Load average {r['loadavg_before'][0]:.2f} / "
           f"{r['loadavg_after'][0]:.2f}; {r.get('tensors_equal', '?')} GGUF tensors equal to locus's.",
           f"llama.cpp {LLAMA_CPP_COMMIT[:8]} (llama-cpp-python {LLAMA_CPP_PYTHON}'s sources); "
           f"{pt['version']}." + (
               f" Ran without llama.cpp's weight repacking after it crashed with it: "
               f"{', '.join(r['llama_no_repack'])}." if r.get("llama_no_repack") else ""), "",
           "| figure | locus f32 | locus q8_0 | llama.cpp f32 | llama.cpp q8_0 | PyTorch f32 | f32 ceiling "
           "| locus f32 / llama.cpp f32 | locus q8_0 / llama.cpp q8_0 | locus q8_0 / locus f32 | locus f32 / ceiling |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    x = lambda a, b: f"{a / b:.2f}x" if a and b else "-"  # noqa: E731
    for name, a, b, l32, l8, t, ceil in rows:
        of_ceil = f"{a / ceil:.0%}" if a and ceil else "-"
        out.append(f"| {name} | {f(a)} | {f(b)} | {f(l32)} | {f(l8)} | {f(t)} | {f(ceil)} | {x(a, l32)} | "
                   f"{x(b, l8)} | {x(b, a)} | {of_ceil} |")
    q = r["q8_0_fidelity"]
    div = sorted(q["divergence"])
    out += ["", f"locus q8_0 against locus f32 (same weights), {q['prompts']} prompts x {q['steps']} greedy tokens: "
            f"teacher-forced top-1 agreement {q['top1_agreement']:.2%}, mean KL {q['mean_kl']:.5f} nats "
            f"(max {q['max_kl']:.4f}); free-running greedy output first diverges after {div[len(div) // 2]} tokens "
            f"(median; min {div[0]}, {sum(d == q['steps'] for d in div)} of {len(div)} never within {q['steps']}). "
            f"1-stream q8_0 ceiling from bandwidth: {c['one_stream_8bit']:.0f} tok/s."]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", default="5")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-out", "engine"))
    ap.add_argument("--work", default=os.path.join(ROOT, "target", "llamacpp"),
                    help="where the sources, the build, the weights and the GGUF files are kept between runs")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    os.makedirs(a.out, exist_ok=True)
    bindir, src = llama_tools(a.work, a.threads)
    hf = weights(a.work)
    models = {t: gguf(a.work, src, hf, t) for t in ("f32", "q8_0")}
    checked = same_weights(src, hf, models["f32"])
    print(f"{models['f32']}: {checked} tensors equal to locus's", file=sys.stderr)
    t0 = time.time()
    r = {"tensors_equal": checked, "commit": out_of(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]).strip(),
         "llama_cpp_commit": LLAMA_CPP_COMMIT, "threads": a.threads, "reps": a.reps,
         "loadavg_before": os.getloadavg()}
    r["limits_before"] = machine_limits(a.threads, a.reps)
    r["llama_f32"] = llama_bench(bindir, models["f32"], a.threads, a.reps)
    r["llama_q8_0"] = llama_bench(bindir, models["q8_0"], a.threads, a.reps)
    # f32 KV beside f32 weights, as locus keeps it; llama.cpp's default KV is f16.
    r["llama_f32_batched"] = llama_batched(bindir, models["f32"], a.threads, a.reps, "f32")
    r["llama_q8_0_batched"] = llama_batched(bindir, models["q8_0"], a.threads, a.reps, "f16")
    r["locus_f32"] = locus_single(hf, a.threads, a.reps)
    r["locus_streams"] = locus_streams(a.threads, a.reps)
    r["locus_q8_0"] = locus_single(hf, a.threads, a.reps, "q8_0")
    r["locus_q8_0_streams"] = locus_streams(a.threads, a.reps, "q8_0")
    r["q8_0_fidelity"] = locus_fidelity(a.threads)
    r["torch_f32"] = torch_runs(hf, a.threads, a.reps)
    r["llama_no_repack"] = sorted(set(NO_REPACK))
    r["limits_after"] = machine_limits(a.threads, a.reps)
    r["loadavg_after"] = os.getloadavg()
    r["seconds"] = time.time() - t0
    r["ceilings"] = ceilings(best_limits(r))
    table = tables(r)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(r, f, indent=1)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(table + "\n")
    print(json.dumps(r, indent=1))
    print()
    print(table)


if __name__ == "__main__":
    main()
