#!/usr/bin/env bash
# Checks the layering of ARCHITECTURE.md ("Layers"): every `crate::` path in src/ (in `use`
# items and in code, tests included; comments and strings are ignored) must name a module of
# the file's own layer or one below it.
#
#   scripts/check-layers.sh              check this tree's src/
#   scripts/check-layers.sh --root DIR   check DIR/src/ instead
#   scripts/check-layers.sh --self-test  prove the check rejects an upward import (and passes a
#                                        clean tree), on fixture trees made for the purpose
#
# A file the table below does not place is an error too, so a new module cannot slip past the
# check: add it to LAYERS (and to README.md's table) when you add it.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"

check() {
  python3 - "$1" <<'PY'
import os, re, sys

# Path prefix under src/ -> layer. The longest matching prefix wins.
LAYERS = {
    "main.rs": 6, "cli/": 6,
    "daemon.rs": 5, "config.rs": 5, "config_doc.rs": 5, "config_file.rs": 5,
    "reactor/": 4,
    "frontend/": 3,
    "ops/": 2, "supervisor/": 2, "llm/": 2, "http.rs": 2, "router/": 2, "relay/": 2,
    "kernel/": 1,
    "proto/": 0, "store/": 0, "metrics.rs": 0, "pool.rs": 0, "clock.rs": 0,
    "settings.rs": 0, "secrets.rs": 0, "lockfile.rs": 0, "tls.rs": 0, "client.rs": 0,
    "bench.rs": 0, "systemd.rs": 0, "sockdiag.rs": 0, "process.rs": 0, "spelling.rs": 0, "log_ring.rs": 0,
    # lib.rs only declares the modules.
    "lib.rs": None,
}
NAMES = {6: "face", 5: "assembly", 4: "reactor", 3: "front-ends", 2: "services",
         1: "kernel", 0: "leaves"}

def layer_of_file(rel):
    best = None
    for prefix in LAYERS:
        if rel == prefix or (prefix.endswith("/") and rel.startswith(prefix)):
            if best is None or len(prefix) > len(best):
                best = prefix
    return best

def layer_of_module(name):
    for prefix, layer in LAYERS.items():
        if prefix.rstrip("/") == name or prefix == name + ".rs":
            return layer
    return "unknown"

def blank_comments_and_strings(text):
    """Replaces comments, string and char literals with spaces, keeping line breaks."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i)); i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j): depth += 1; j += 2
                elif text.startswith("*/", j): depth -= 1; j += 2
                else: j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j])); i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 8]) and (i == 0 or not (text[i-1].isalnum() or text[i-1] == "_")):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            j = n if end < 0 else end + 1 + len(hashes)
            out.append(re.sub(r"[^\n]", " ", text[i:j])); i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(re.sub(r"[^\n]", " ", text[i:j])); i = j
        elif c == "'" and re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'", text[i:i + 12]):
            m = re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'", text[i:i + 12])
            out.append(" " * len(m.group(0))); i += len(m.group(0))
        else:
            out.append(c); i += 1
    return "".join(out)

def group_heads(text, start):
    """Top-level module names inside the brace group opening at text[start] == '{'."""
    depth, i, heads, token = 0, start, [], ""
    expecting = True
    while i < len(text):
        c = text[i]
        if c == "{":
            depth += 1
            if depth == 1: expecting = True; i += 1; continue
        elif c == "}":
            depth -= 1
            if depth == 0: break
        elif c == "," and depth == 1:
            expecting = True
        elif depth == 1 and expecting and (c.isalpha() or c == "_"):
            m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i:])
            heads.append((m.group(0), i)); expecting = False; i += len(m.group(0)); continue
        i += 1
    return heads

root = sys.argv[1]
src = os.path.join(root, "src")
problems = []
for dirpath, _, files in os.walk(src):
    for f in sorted(files):
        if not f.endswith(".rs"):
            continue
        path = os.path.join(dirpath, f)
        rel = os.path.relpath(path, src)
        prefix = layer_of_file(rel)
        if prefix is None:
            problems.append(f"src/{rel}: not placed in any layer (add it to scripts/check-layers.sh and README.md)")
            continue
        mine = LAYERS[prefix]
        if mine is None:
            continue
        text = blank_comments_and_strings(open(path, encoding="utf-8").read())
        uses = []
        for m in re.finditer(r"\bcrate\s*::\s*(\{|[A-Za-z_][A-Za-z0-9_]*)", text):
            if m.group(1) == "{":
                uses.extend(group_heads(text, m.start(1)))
            else:
                uses.append((m.group(1), m.start(1)))
        for name, pos in uses:
            theirs = layer_of_module(name)
            line = text.count("\n", 0, pos) + 1
            if theirs == "unknown":
                problems.append(f"src/{rel}:{line}: crate::{name} is not a module placed in any layer")
            elif theirs is not None and theirs > mine:
                problems.append(
                    f"src/{rel}:{line}: layer {mine} ({NAMES[mine]}) uses crate::{name}, "
                    f"layer {theirs} ({NAMES[theirs]}): a layer may use only the layers below it")
for p in problems:
    print(p)
if problems:
    print(f"check-layers: {len(problems)} problem(s)", file=sys.stderr)
    sys.exit(1)
print("check-layers: every crate:: path points down or sideways")
PY
}

self_test() {
  local dir out
  dir=$(mktemp -d /tmp/clove-layers.XXXXXX)
  trap 'rm -rf "$dir"' RETURN
  mkdir -p "$dir/bad/src/kernel" "$dir/bad/src/ops" "$dir/good/src/kernel" "$dir/good/src/ops"
  # An upward import hidden among legitimate ones, after a comment and a string that mention
  # a higher layer (those must not count).
  cat >"$dir/bad/src/kernel/mod.rs" <<'RS'
//! Mentions crate::ops in a comment, which is fine.
use crate::store::StateStore;
const NOTE: &str = "crate::reactor in a string is fine";
use crate::{
    proto::op,
    ops::Ops,
};
RS
  printf 'use crate::kernel::Kernel;\n' >"$dir/bad/src/ops/mod.rs"
  cp "$dir/bad/src/ops/mod.rs" "$dir/good/src/ops/mod.rs"
  printf '//! crate::ops\nuse crate::{proto::op, store::StateStore};\n' >"$dir/good/src/kernel/mod.rs"
  if out=$(check "$dir/bad" 2>&1); then
    echo "self-test FAILED: an upward import (kernel -> ops) was accepted" >&2
    return 1
  fi
  if ! grep -q 'src/kernel/mod.rs:6: layer 1 (kernel) uses crate::ops, layer 2 (services)' <<<"$out"; then
    echo "self-test FAILED: the report does not name the file, line and layers:" >&2
    echo "$out" >&2
    return 1
  fi
  if [ "$(grep -c 'uses crate::' <<<"$out")" != 1 ]; then
    echo "self-test FAILED: comments, strings or downward imports were reported:" >&2
    echo "$out" >&2
    return 1
  fi
  if ! out=$(check "$dir/good" 2>&1); then
    echo "self-test FAILED: a clean tree was rejected:" >&2
    echo "$out" >&2
    return 1
  fi
  echo "check-layers self-test: an upward import is rejected with file, line and layers; a clean tree passes"
}

case "${1:-}" in
  --self-test) self_test ;;
  --root) check "$2" ;;
  "") check "$here" ;;
  *) echo "usage: $0 [--root DIR | --self-test]" >&2; exit 64 ;;
esac
