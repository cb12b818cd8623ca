#!/usr/bin/env python3
"""GPT-2's Hugging Face tokenizer files, rebuilt offline from tiktoken's `r50k_base` ranks.

    python3 r50k_to_hf_tokenizer.py OUT_DIR [--ranks FILE] [--patch-config] [--check]

Writes OUT_DIR/vocab.json, merges.txt, tokenizer.json, tokenizer_config.json and
special_tokens_map.json: what llama.cpp's convert_hf_to_gguf.py (GPT2LMHeadModel -> "gpt2",
vocab via `AutoTokenizer.from_pretrained` + `gguf.SpecialVocab(load_merges=True)`) needs
beside config.json + model.safetensors. No network, no Hugging Face download, stdlib only
(`--check` also wants the `regex` module for `\\p{L}`).

--ranks: tiktoken's format, one `base64(token bytes) rank` per line, ranks 0..50255, i.e.
the `assets/r50k_base.tiktoken` that locus-tokens embeds through tiktoken-rs 0.7
(`include_str!("../../assets/r50k_base.tiktoken")` in src/tiktoken_ext/openai_public.rs).
Default: found through `cargo metadata` --offline, run from the locus checkout: it names the
crate's source dir in ~/.cargo/registry without compiling or downloading anything), else by globbing
~/.cargo/registry/src/*/tiktoken-rs-*/assets/.

How: a byte-level BPE's ranks are its merge list. The 256 one-byte tokens are ranks 0..255;
every longer token T of rank r was made by exactly one merge of two tokens of lower rank, found
by running BPE on T's bytes with only ranks < r allowed: it stops at exactly two parts, and
those are the merge (the tiktoken -> HF conversion in transformers' convert_slow_tokenizer,
`TikTokenConverter.extract_vocab_merges_from_model`, does the same). Token strings are the
bytes mapped through GPT-2's `bytes_to_unicode` table; `<|endoftext|>` is added as id 50256.

--check verifies that (1) vocab.json and merges.txt are byte-identical to the files of
openai-community/gpt2 (sha256 below; the same bytes as OpenAI's encoder.json / vocab.bpe),
and (2) a BPE run over these files gives llama.cpp's pre-tokenizer check text the hash that
convert_hf_to_gguf.py maps to "gpt-2".
"""
import argparse
import base64
import glob
import hashlib
import json
import os
import subprocess
import sys

EOT, EOT_ID = "<|endoftext|>", 50256
N_MERGES = 50000
# sha256 of openai-community/gpt2's vocab.json and merges.txt (= OpenAI's encoder.json, vocab.bpe).
HF_VOCAB_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
HF_MERGES_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
# convert_hf_to_gguf.py (llama.cpp 0c1e570, conversion/base.py get_vocab_base_pre): "gpt-2".
GPT2_CHKHSH = "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454"
CHKTXT = '\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, \'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL'
R50K_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character table (openai/gpt-2 src/encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def find_ranks_file():
    try:
        meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--offline"], check=True,
                              capture_output=True, text=True).stdout
        for pkg in json.loads(meta)["packages"]:
            if pkg["name"] == "tiktoken-rs":
                path = os.path.join(os.path.dirname(pkg["manifest_path"]), "assets", "r50k_base.tiktoken")
                if os.path.isfile(path):
                    return path
    except (OSError, subprocess.CalledProcessError, ValueError, KeyError):
        pass
    hits = sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/tiktoken-rs-*/assets/r50k_base.tiktoken")))
    if not hits:
        sys.exit("r50k_base.tiktoken not found: pass --ranks (run `cargo fetch` in the locus checkout first)")
    return hits[-1]


def load_ranks(path):
    ranks = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    if sorted(ranks.values()) != list(range(len(ranks))):
        sys.exit(f"{path}: ranks are not 0..{len(ranks) - 1}")
    return ranks


def bpe(ranks, piece, max_rank=None):
    """Byte-level BPE of `piece`, merging the lowest-ranked adjacent pair first, only with ranks
    below max_rank when given. Returns the parts (bytes)."""
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best, best_rank = None, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best is None or (max_rank is not None and best_rank >= max_rank):
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    return parts


def recover_merges(ranks):
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) == 1:
            continue
        parts = bpe(ranks, tok, max_rank=rank)
        if len(parts) != 2:
            sys.exit(f"token {tok!r} (rank {rank}) is not one merge of lower-ranked tokens: {parts}")
        merges.append((parts[0], parts[1]))
    return merges


def write_files(out, ranks, merges):
    b2u = bytes_to_unicode()
    s = lambda b: "".join(b2u[x] for x in b)  # noqa: E731
    vocab = {s(tok): rank for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])}
    vocab[EOT] = EOT_ID
    merge_lines = [f"{s(a)} {s(b)}" for a, b in merges]
    os.makedirs(out, exist_ok=True)
    # json.dumps defaults (ensure_ascii, ", " / ": ") reproduce OpenAI's encoder.json byte for byte.
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(vocab))
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n" + "".join(m + "\n" for m in merge_lines))
    # The fast tokenizer, laid out as openai-community/gpt2's tokenizer.json, so that
    # AutoTokenizer needs no slow->fast conversion (and no sentencepiece/protobuf).
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": EOT_ID, "content": EOT, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": True, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": merge_lines},
    }
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_json, f, ensure_ascii=False)
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "GPT2Tokenizer", "model_max_length": 1024,
                   "add_prefix_space": False, "add_bos_token": False, **special}, f, indent=2)
    with open(os.path.join(out, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(special, f, indent=2)
    return vocab


def patch_config(out):
    """convert_hf_to_gguf.py's GPT2Model reads hparams["n_ctx"]; locus's export writes only
    n_positions (as transformers' GPT2Config does), so add n_ctx = n_positions."""
    path = os.path.join(out, "config.json")
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    if "n_ctx" not in cfg:
        cfg["n_ctx"] = cfg["n_positions"]
        with open(path, "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2)
        print(f"{path}: added n_ctx = {cfg['n_ctx']}")


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def check(out, ranks):
    ok = True
    for name, want in (("vocab.json", HF_VOCAB_SHA256), ("merges.txt", HF_MERGES_SHA256)):
        got = sha256(os.path.join(out, name))
        print(f"{name}: sha256 {got} {'== openai-community/gpt2' if got == want else '!= ' + want}")
        ok &= got == want
    try:
        import regex
    except ImportError:
        print("chkhsh: skipped (pip install regex)")
        return ok
    ids = [ranks[p] for word in regex.findall(R50K_PAT, CHKTXT) for p in bpe(ranks, word.encode("utf-8"))]
    chkhsh = hashlib.sha256(str(ids).encode()).hexdigest()
    print(f"chkhsh: {chkhsh} {'-> gpt-2' if chkhsh == GPT2_CHKHSH else 'UNKNOWN to convert_hf_to_gguf.py'}")
    return ok and chkhsh == GPT2_CHKHSH


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="directory to write the tokenizer files into (e.g. the exported model dir)")
    ap.add_argument("--ranks", help="r50k_base.tiktoken (default: tiktoken-rs's, via cargo metadata)")
    ap.add_argument("--patch-config", action="store_true", help="add n_ctx = n_positions to OUT/config.json")
    ap.add_argument("--check", action="store_true", help="compare with GPT-2's published files and llama.cpp's hash")
    args = ap.parse_args()

    path = args.ranks or find_ranks_file()
    ranks = load_ranks(path)
    if len(ranks) != EOT_ID:
        sys.exit(f"{path}: {len(ranks)} ranks, expected {EOT_ID} (r50k_base)")
    merges = recover_merges(ranks)
    assert len(merges) == N_MERGES, len(merges)
    vocab = write_files(args.out, ranks, merges)
    print(f"{args.out}: {len(vocab)} tokens, {len(merges)} merges from {path}")
    if args.patch_config:
        patch_config(args.out)
    if args.check and not check(args.out, ranks):
        sys.exit("check failed")


if __name__ == "__main__":
    main()
