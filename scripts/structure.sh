#!/usr/bin/env bash
# The workspace's structure in figures, for before/after comparisons of a refactoring:
#   (a) every .rs file of a crate over 400 lines, with its line count;
#   (b) import circles between the files of each crate: pairs of files that import each
#       other, and longer cycles (strongly connected components of more than two files);
#   (c) the crates in the dependency tree of the `locus` binary, and whether candle-core,
#       plotters, indicatif and wasmtime are among them;
#   (d) the lines of the command-line definition (host/src/cli.rs, or wherever cli.rs or
#       a cli/ module has moved).
#
# Crates are found by scanning every Cargo.toml with a [package] under the repo root (not
# under target/ or hidden directories), except the guests: guest-router/*, guest-cache/*
# and host/tests/guests/*. So a new layout (crates under policy/, tokens/, ...) is picked up
# without editing this script. A crate's files are the .rs files under its directory, less
# those of crates nested in it and of target/ (generated code lives in target/).
#
# Imports (b) are read from each crate's src/: the module tree is followed from src/lib.rs,
# src/main.rs and src/bin/*.rs through `mod x;` (x.rs or x/mod.rs; inline `mod x { }` blocks
# are modules of their file). A file depends on another when it names a module or item of
# it by a `crate::...`, `super::...` or `self::...` path, or by a path whose first segment
# is a child module declared in scope (`use child::Item;`, as a mod.rs re-exporting its
# children does), in `use` trees and anywhere else in the code; comments, strings and
# macro `$crate::` paths are ignored. A path is attributed to the file that defines the
# longest module prefix of it (so `crate::Item` re-exported by lib.rs is an edge to lib.rs).
# A pair marked "parent-child" is a module file and one of its direct submodules; a pair
# marked "test-only" is mutual only when #[cfg(test)] code is counted.
#
# Needs: bash, python3 (no packages), cargo. Usage: scripts/structure.sh [repo root]
set -euo pipefail
ROOT=${1:-"$(cd "$(dirname "$0")/.." && pwd)"}
ROOT=$(cd "$ROOT" && pwd)

python3 - "$ROOT" <<'PY'
import os, re, sys

root = sys.argv[1]
EXCLUDE = ("guest-router/", "guest-cache/", "host/tests/guests/")

def crates():
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x != "target" and not x.startswith("."))
        rel = os.path.relpath(d, root)
        rel = "" if rel == "." else rel + "/"
        if any(rel.startswith(e) for e in EXCLUDE):
            dirs[:] = []
            continue
        if "Cargo.toml" in files:
            text = open(os.path.join(d, "Cargo.toml")).read()
            if re.search(r"^\[package\]", text, re.M):
                m = re.search(r'^name\s*=\s*"([^"]+)"', text, re.M)
                out.append((m.group(1) if m else rel, d))
    return out

CRATES = crates()
crate_dirs = {d for _, d in CRATES}
# Every directory holding a Cargo.toml (guests included) bounds the crate around it.
all_manifest_dirs = set()
for d, dirs, files in os.walk(root):
    dirs[:] = [x for x in dirs if x != "target" and not x.startswith(".")]
    if "Cargo.toml" in files and d != root:
        all_manifest_dirs.add(d)

def crate_files(cdir):
    for d, dirs, files in os.walk(cdir):
        dirs[:] = sorted(x for x in dirs if x != "target" and not x.startswith(".")
                         and os.path.join(d, x) not in all_manifest_dirs)
        for f in sorted(files):
            if f.endswith(".rs"):
                yield os.path.join(d, f)

def nlines(p):
    with open(p, "rb") as f:
        return sum(1 for _ in f)

rel = lambda p: os.path.relpath(p, root)

# (a) -------------------------------------------------------------------------------
print("## (a) .rs files over 400 lines\n")
print("| file | lines |")
print("|---|---:|")
big = []
for name, cdir in CRATES:
    for p in crate_files(cdir):
        n = nlines(p)
        if n > 400:
            big.append((n, rel(p)))
for n, p in sorted(big, key=lambda x: (-x[0], x[1])):
    print(f"| {p} | {n} |")
print(f"\n{len(big)} files over 400 lines; crates scanned: "
      + ", ".join(f"{n} ({rel(d)})" for n, d in CRATES) + "\n")

# (b) -------------------------------------------------------------------------------
def clean(src):
    """Comments, strings and char literals blanked (newlines kept)."""
    out, i, n = [], 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i)); i = j
        elif src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j): depth += 1; j += 2
                elif src.startswith("*/", j): depth -= 1; j += 2
                else: j += 1
            out.append(re.sub(r"[^\n]", " ", src[i:j])); i = j
        elif c in "rb" and re.match(r'b?r#*"', src[i:i+260]) \
                and (i == 0 or not (src[i-1].isalnum() or src[i-1] == "_")):
            m = re.match(r'b?r(#*)"', src[i:])
            close = '"' + m.group(1)
            j = src.find(close, i + len(m.group(0)))
            j = n if j < 0 else j + len(close)
            out.append(re.sub(r"[^\n]", " ", src[i:j])); i = j
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            j += 1
            out.append(re.sub(r"[^\n]", " ", src[i:j])); i = j
        elif c == "'":
            m = re.match(r"'(\\(x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]+\}|.)|[^\\'\n])'", src[i:i+14])
            if m:
                out.append(" " * len(m.group(0))); i += len(m.group(0))
            else:
                out.append(c); i += 1
        else:
            out.append(c); i += 1
    return "".join(out)

def expand_use(tree):
    """`a::{b, c::{d, self}, f::*}` -> [[a,b],[a,c,d],[a,c],[a,f]] (renames cut before)."""
    tree = re.sub(r"\s+", "", tree)
    def split_top(s):
        parts, depth, cur = [], 0, ""
        for ch in s:
            if ch == "{": depth += 1
            if ch == "}": depth -= 1
            if ch == "," and depth == 0:
                parts.append(cur); cur = ""
            else:
                cur += ch
        if cur: parts.append(cur)
        return parts
    def go(prefix, s):
        if "{" in s:
            k = s.index("{")
            head = [x for x in s[:k].split("::") if x]
            res = []
            for part in split_top(s[k+1:s.rindex("}")]):
                res += go(prefix + head, part)
            return res
        full = prefix + [x for x in s.split("::") if x and x != "*"]
        return [[x for k, x in enumerate(full) if not (k > 0 and x == "self")]]
    return go([], tree)

def use_paths(stmt):
    # Cut renames before blanks go: `a::b as c` -> `a::b`.
    stmt = re.sub(r"\s+as\s+\w+", "", stmt)
    return expand_use(stmt)

def attrs_before(text, pos):
    """The attributes right before `pos` (skipping blanks and `pub(...)`)."""
    j = pos
    found = []
    while True:
        k = j
        while k > 0 and text[k-1].isspace(): k -= 1
        m = re.search(r"pub(\([^)]*\))?$", text[:k])
        if m:
            j = m.start(); continue
        if k > 0 and text[k-1] == "]":
            depth, s = 0, k - 1
            while s >= 0:
                if text[s] == "]": depth += 1
                elif text[s] == "[":
                    depth -= 1
                    if depth == 0: break
                s -= 1
            if s > 0 and text[s-1] == "#":
                found.append(text[s+1:k-1]); j = s - 1; continue
        return found

class Mod:
    def __init__(self, path, file, test):
        self.path, self.file, self.test = path, file, test
        self.children = set()

def analyse(cname, cdir):
    src = os.path.join(cdir, "src")
    roots = []
    for r in ("lib.rs", "main.rs"):
        if os.path.isfile(os.path.join(src, r)):
            roots.append((f"{cname} ({'lib' if r == 'lib.rs' else 'bin'})", os.path.join(src, r)))
    if os.path.isdir(os.path.join(src, "bin")):
        for f in sorted(os.listdir(os.path.join(src, "bin"))):
            if f.endswith(".rs"):
                roots.append((f"{cname} (bin {f[:-3]})", os.path.join(src, "bin", f)))
    results = []
    for label, rootfile in roots:
        mods = {}      # module path tuple -> Mod
        files = {}     # file -> (module path, cleaned text, is_dir_owner)
        def load(file, path, owner, test):
            text = clean(open(file, encoding="utf-8", errors="replace").read())
            files[file] = (path, text)
            mods[path] = Mod(path, file, test)
            # child modules, inline or in files, with their nesting
            stack = []   # (module path, brace depth at open)
            depth = 0
            events = []
            for m in re.finditer(r"\bmod\s+(\w+)\s*([;{])|[{}]", text):
                events.append(m)
            for m in events:
                tok = m.group(0)
                if tok == "{":
                    depth += 1; continue
                if tok == "}":
                    depth -= 1
                    if stack and stack[-1][1] == depth: stack.pop()
                    continue
                name, tail = m.group(1), m.group(2)
                parent = stack[-1][0] if stack else path
                is_test = test or any("cfg(test)" in a.replace(" ", "") for a in attrs_before(text, m.start()))
                child = parent + (name,)
                mods[parent].children.add(name)
                if tail == "{":
                    mods[child] = Mod(child, file, is_test)
                    depth += 1
                    stack.append((child, depth - 1))
                else:
                    # file module: where the directory of `parent` is
                    base = owner
                    inline = parent[len(path):]
                    d = os.path.join(base, *inline)
                    for cand in (os.path.join(d, name + ".rs"), os.path.join(d, name, "mod.rs")):
                        if os.path.isfile(cand):
                            own = os.path.join(d, name)
                            load(cand, child, own, is_test)
                            break
        # A root or mod.rs owns its directory; foo.rs owns foo/.
        load(rootfile, (), os.path.dirname(rootfile), False)
        edges, edges_nt = set(), set()
        PATH = re.compile(r"(?<![\w:$])((?:\w+)(?:\s*::\s*(?:\w+))+)")
        for file, (path, text) in files.items():
            # which inline module each position is in
            stack, depth, cur = [], 0, [path]
            marks = []  # (pos, module path) changes
            for m in re.finditer(r"\bmod\s+(\w+)\s*([;{])|[{}]", text):
                tok = m.group(0)
                if tok == "{":
                    depth += 1
                elif tok == "}":
                    depth -= 1
                    if stack and stack[-1][1] == depth:
                        stack.pop()
                        marks.append((m.end(), stack[-1][0] if stack else path))
                elif m.group(2) == "{":
                    parent = stack[-1][0] if stack else path
                    stack.append((parent + (m.group(1),), depth))
                    depth += 1
                    marks.append((m.end(), stack[-1][0]))
            def module_at(pos):
                mp = path
                for p, m_ in marks:
                    if p <= pos: mp = m_
                    else: break
                return mp
            found = []
            for m in re.finditer(r"\buse\s+([^;]+);", text):
                for segs in use_paths(m.group(1)):
                    found.append((m.start(), segs))
            no_use = re.sub(r"\buse\s+[^;]+;", lambda m: " " * len(m.group(0)), text)
            for m in PATH.finditer(no_use):
                segs = [s.strip() for s in m.group(1).split("::")]
                # skip `pub(in crate::x)` visibilities
                if text[max(0, m.start()-10):m.start()].rstrip().endswith("in"):
                    continue
                found.append((m.start(), segs))
            for pos, segs in found:
                if not segs: continue
                cur = module_at(pos)
                first = segs[0]
                if first == "crate": base, rest = (), segs[1:]
                elif first == "self": base, rest = cur, segs[1:]
                elif first == "super":
                    k = 0
                    while k < len(segs) and segs[k] == "super": k += 1
                    base, rest = cur[:max(0, len(cur) - k)], segs[k:]
                elif first in mods.get(cur, Mod(cur, file, False)).children:
                    base, rest = cur, segs
                else:
                    continue
                full = tuple(base) + tuple(rest)
                target = None
                for k in range(len(full), -1, -1):
                    if full[:k] in mods:
                        target = mods[full[:k]]; break
                if target is None or target.file == file:
                    continue
                edges.add((file, target.file))
                if not (mods.get(cur) and mods[cur].test):
                    edges_nt.add((file, target.file))
        results.append((label, files, mods, edges, edges_nt))
    return results

def tarjan(nodes, edges):
    adj = {n: [] for n in nodes}
    for a, b in edges: adj[a].append(b)
    index, low, on, st, out, i = {}, {}, set(), [], [], [0]
    for s in nodes:
        if s in index: continue
        work = [(s, 0)]
        index[s] = low[s] = i[0]; i[0] += 1; st.append(s); on.add(s)
        while work:
            v, k = work[-1]
            if k < len(adj[v]):
                work[-1] = (v, k + 1)
                w = adj[v][k]
                if w not in index:
                    index[w] = low[w] = i[0]; i[0] += 1; st.append(w); on.add(w)
                    work.append((w, 0))
                elif w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work: low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = st.pop(); on.discard(w); comp.append(w)
                        if w == v: break
                    out.append(comp)
    return out

print("## (b) import circles between files\n")
total_pairs = 0
for cname, cdir in CRATES:
    for label, files, mods, edges, edges_nt in analyse(cname, cdir):
        file_mod = {f: p for f, (p, _) in files.items()}
        pairs = sorted({tuple(sorted((a, b))) for a, b in edges if (b, a) in edges})
        sccs = [sorted(c) for c in tarjan(sorted(files), sorted(edges)) if len(c) > 1]
        print(f"### {label}: {len(files)} files, {len(edges)} file-to-file imports, "
              f"{len(pairs)} mutual pairs, {len(sccs)} cycles (SCCs)\n")
        total_pairs += len(pairs)
        for a, b in pairs:
            pa, pb = file_mod[a], file_mod[b]
            tags = []
            if pa == pb[:-1] or pb == pa[:-1]: tags.append("parent-child")
            if not ((a, b) in edges_nt and (b, a) in edges_nt): tags.append("test-only")
            print(f"- {rel(a)} <-> {rel(b)}" + (f"  ({', '.join(tags)})" if tags else ""))
        for c in sccs:
            if len(c) > 2:
                print(f"- cycle of {len(c)} files: " + ", ".join(rel(f) for f in c))
        if pairs or sccs: print()
print(f"Mutual pairs in all crates: {total_pairs}\n")
PY

# (c) -------------------------------------------------------------------------------
echo "## (c) dependency tree of the locus binary"
echo
# --locked: a measurement leaves Cargo.lock as it is (a committed tree's lock is current).
if tree=$(cd "$ROOT" && cargo tree --locked -p locus -e normal --prefix none 2>/dev/null) \
  || tree=$(cd "$ROOT" && cargo tree --locked --offline -p locus -e normal --prefix none 2>/dev/null); then
  echo "- \`cargo tree -p locus -e normal --prefix none | sort -u | wc -l\`: $(sort -u <<<"$tree" | wc -l)"
  echo "- distinct crates (name and version, \`(*)\` repeats and markers dropped): $(awk '{print $1, $2}' <<<"$tree" | sort -u | wc -l)"
  for c in candle-core plotters indicatif wasmtime; do
    if grep -q "^$c v" <<<"$tree"; then echo "- $c: yes ($(grep -m1 "^$c v" <<<"$tree" | awk '{print $2}'))"
    else echo "- $c: no"; fi
  done
else
  echo "- cargo tree --locked -p locus failed (no package locus, or Cargo.lock out of date?)"
fi
echo

# (d) -------------------------------------------------------------------------------
echo "## (d) the command line's lines"
echo
found=0
while IFS= read -r f; do
  echo "- ${f#"$ROOT"/}: $(wc -l <"$f")"; found=1
done < <(find "$ROOT" -path "$ROOT/target" -prune -o -path '*/target' -prune -o \
  \( -name cli.rs -o -path '*/cli/*.rs' \) -print | grep -vE '/(guest-router|guest-cache|host/tests/guests)/' | sort)
[ $found = 1 ] || echo "- no cli.rs or cli/ module found"
