#!/usr/bin/env python3
"""Prints the import circles between the files of src/ and exits 1 if there is one.

A file is a node; it points at every file whose items it names through `crate::`, `super::` or
`self::` paths (in `use` lines and in code, grouped `use a::{b, c::d}` included). A path is
resolved to the deepest file it reaches, so `crate::model::Weights` points at src/model.rs (or
src/model/mod.rs) and `crate::data::jpeg::inspect` at src/data/jpeg.rs. `mod x;` declarations
are not imports, and a file's `#[cfg(test)]` tail is left out: the rule is about the code that
ships. Run by .ci/run; `--graph` prints every edge too.
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def module_files():
    """Maps a module path (tuple of names, () for the crate root) to its file."""
    files = {}
    for root, _, names in os.walk(SRC):
        for name in names:
            if not name.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(root, name), SRC)
            parts = rel[:-3].split(os.sep)
            if parts == ["main"]:
                continue  # the binary is its own crate; it uses `maas::`, not `crate::`
            if parts[-1] in ("mod", "lib"):
                parts = parts[:-1]
            files[tuple(parts)] = rel
    return files


def strip(text):
    """The code without comments, string literals and the #[cfg(test)] tail."""
    cut = re.search(r"^#\[cfg\(test\)\]\s*\n\s*mod ", text, re.M)
    if cut:
        text = text[: cut.start()]
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text


def expand(path):
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"]."""
    path = re.sub(r"\s+", "", path)
    brace = path.find("{")
    if brace < 0:
        return [path]
    head, depth, parts, start = path[:brace], 0, [], brace + 1
    for i in range(brace, len(path)):
        c = path[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                parts.append(path[start:i])
                break
        elif c == "," and depth == 1:
            parts.append(path[start:i])
            start = i + 1
    out = []
    for part in parts:
        if part:
            out.extend(expand(head + part))
    return out


def references(text):
    """Every path starting with crate::, super:: or self:: (use trees expanded)."""
    refs = []
    for m in re.finditer(r"\buse\s+([^;]*);", text):
        refs.extend(expand(m.group(1)))
    code = re.sub(r"\buse\s+[^;]*;", "", text)
    refs.extend(re.findall(r"\b(?:crate|super|self)(?:::\w+)+", code))
    return [r for r in refs if r.split("::")[0] in ("crate", "super", "self")]


def resolve(ref, here, files):
    parts = ref.split("::")
    base = list(here)
    if parts[0] == "crate":
        base, parts = [], parts[1:]
    else:
        while parts and parts[0] in ("super", "self"):
            if parts[0] == "super":
                base = base[:-1]
            parts = parts[1:]
    target = tuple(base)
    for name in parts:
        if name in ("self", "*"):
            break
        deeper = target + (re.sub(r"\W.*", "", name),)
        if deeper in files:
            target = deeper
        else:
            break
    return target


def cycles(edges):
    """The strongly connected components with more than one file (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    files = module_files()
    edges = {}
    for module, rel in files.items():
        with open(os.path.join(SRC, rel), encoding="utf-8") as f:
            text = strip(f.read())
        for ref in references(text):
            target = resolve(ref, module, files)
            if target != module and target != ():
                edges.setdefault(rel, set()).add(files[target])
    if "--graph" in sys.argv:
        for a in sorted(edges):
            for b in sorted(edges[a]):
                print(f"{a} -> {b}")
    found = cycles(edges)
    for comp in found:
        # One path round the circle, for the reader.
        print("import circle: " + ", ".join(comp))
    print(f"{len(files)} files, {sum(len(e) for e in edges.values())} imports, {len(found)} circles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
