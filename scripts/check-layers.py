#!/usr/bin/env python3
"""Checks keyward's layers: crates depend only downwards, and no module imports in a circle.

    scripts/check-layers.py [ROOT]          # ROOT defaults to the repository
    scripts/check-layers.py --graph [ROOT]  # also print each crate's modules, lowest first

Crates. Every `keyward-*` crate has a floor in FLOORS below; a crate may depend only on crates
on lower floors (two crates on one floor never import each other: the proxy and the admin API
share what they need through `keyward-http`). Cargo already refuses a circle of crates; this
check also refuses a dependency that points up or sideways.

Modules. Inside each crate, every source file is a module; an import is any `crate::…`,
`super::…`, `self::…` or `child::…` path outside comments and test code (`#[cfg(test)]` items),
`use` trees expanded; a `pub use` is a re-export (a facade), not an import. A path names the deepest module it reaches; a name re-exported by the crate
root (`pub use module::Name`) counts as an import of that module, a name re-exported from
another crate as no import at all. The module graph must have no circle: a module that needs
something of a module that needs it back means the shared part belongs in a module of its own,
below both. Exits 1 and names the imports of each circle.
"""
import re
import sys
import tomllib
from pathlib import Path

# Lowest first. A crate may depend on crates of lower floors only.
FLOORS = {
    "keyward-core": 0,
    "keyward-alloc": 0,
    "keyward-metrics": 1,
    "keyward-store": 1,
    "keyward-config": 2,
    "keyward-auth": 3,
    "keyward-http": 4,
    "keyward-admin": 5,
    "keyward-proxy": 5,
    "keyward-browser": 6,
    "keyward": 7,
}

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_code(text):
    """The code of a file without comments, string contents and `#[cfg(test)]` items."""
    out = []
    i, n = 0, len(text)
    while i < n:
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif text[i] == '"' or text.startswith('r#"', i) or text.startswith('r"', i):
            if text[i] == "r":
                hashes = text[i + 1 : text.index('"', i)]
                end = '"' + hashes
                j = text.find(end, text.index('"', i) + 1)
                i = n if j < 0 else j + len(end)
            else:
                j = i + 1
                while j < n and text[j] != '"':
                    j += 2 if text[j] == "\\" else 1
                i = j + 1
            out.append('""')
        elif text[i] == "'" and re.match(r"'(\\.|[^\\'])'", text[i : i + 4]):
            m = re.match(r"'(\\.|[^\\'])'", text[i : i + 4])
            i += len(m.group(0))
            out.append("' '")
        else:
            out.append(text[i])
            i += 1
    code = "".join(out)
    return remove_test_items(code)


def remove_test_items(code):
    """Drops every item under `#[cfg(test)]`: a `mod … { … }`, a `use …;`, a function."""
    result = []
    pos = 0
    for m in re.finditer(r"#\[cfg\(test\)\]", code):
        if m.start() < pos:
            continue
        result.append(code[pos : m.start()])
        j = m.end()
        # The item ends at its first top-level `;` or at the brace closing its body.
        depth = 0
        while j < len(code):
            c = code[j]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    j += 1
                    break
            elif c == ";" and depth == 0:
                j += 1
                break
            j += 1
        # keep line numbers: replace the item with as many newlines
        result.append("\n" * code.count("\n", m.start(), j))
        pos = j
    result.append(code[pos:])
    return "".join(result)


def expand_use_tree(tree):
    """`a::{b, c::{d, e}}` → ['a::b', 'a::c::d', 'a::c::e']."""
    tree = re.sub(r"\s+", "", tree)
    if "{" not in tree:
        return [tree]
    head, rest = tree.split("{", 1)
    body = rest[: rest.rindex("}")]
    parts, depth, cur = [], 0, ""
    for c in body:
        if c == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += c == "{"
        depth -= c == "}"
        cur += c
    if cur:
        parts.append(cur)
    out = []
    for part in parts:
        if part == "self":
            out.append(head.rstrip(":"))
        else:
            out.extend(expand_use_tree(head + part))
    return out


def module_of(src, path):
    rel = path.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("lib", "main", "mod"):
        parts = parts[:-1]
    return tuple(parts)


def paths_in(code, children=()):
    """(line, path) for every module-relative path in the code: from `crate`, `super`, `self`
    or one of the module's own children (`use child::Name`, `child::f()`)."""
    found = []
    starts = "|".join(["crate", "super", "self"] + [re.escape(c) for c in children])
    # `pub use` re-exports a name (a facade for other crates), it is not a need of this module.
    for m in re.finditer(rf"(?<!pub )(?<!\) )\buse\s+((?:{starts})\b[^;]*);", code):
        for p in expand_use_tree(m.group(1)):
            found.append((m.start(), p))
    without_uses = re.sub(r"\buse\s+[^;]*;", lambda m: " " * len(m.group(0)), code)
    for m in re.finditer(rf"(?<![:\w])(?:{starts})(?:::{IDENT})+", without_uses):
        found.append((m.start(), m.group(0)))
    return found


def inline_modules(code):
    """(start, end) of every `mod name { … }` written inline in a file."""
    spans = []
    for m in re.finditer(rf"\bmod\s+{IDENT}\s*\{{", code):
        depth, j = 0, m.end() - 1
        while j < len(code):
            depth += code[j] == "{"
            depth -= code[j] == "}"
            if depth == 0:
                break
            j += 1
        spans.append((m.start(), j))
    return spans


def crate_graph(crate_dir):
    src = crate_dir / "src"
    # A binary's `main.rs` next to a `lib.rs` is a crate of its own, reaching the library by name.
    files = {
        module_of(src, f): f
        for f in sorted(src.rglob("*.rs"))
        if not (f.name == "main.rs" and (src / "lib.rs").exists()) and "bin" not in f.relative_to(src).parts
    }
    # Files that are test modules (`#[cfg(test)] mod tests;`) are not part of the graph.
    test_files = set()
    codes = {}
    for mod, f in files.items():
        text = f.read_text()
        for m in re.finditer(rf"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+({IDENT})\s*;", text):
            test_files.add(mod + (m.group(1),))
        codes[mod] = strip_code(text)
    modules = {m for m in files if m not in test_files}
    # The root's re-exports: name -> module it comes from (None: another crate).
    root_exports = {}
    for m in re.finditer(r"\bpub\s+use\s+([^;]*);", codes.get((), "")):
        for p in expand_use_tree(m.group(1)):
            segs = p.split("::")
            name = segs[-1].split(" as ")[-1]
            if segs[0] in ("crate", "self"):
                segs = segs[1:]
            target = resolve_module(modules, (), segs)
            root_exports[name] = target if target != () else None
    edges = {}
    for mod in modules:
        children = [m[-1] for m in modules if len(m) == len(mod) + 1 and m[: len(mod)] == mod]
        spans = inline_modules(codes[mod])
        for offset, p in paths_in(codes[mod], children):
            line = codes[mod].count("\n", 0, offset) + 1
            segs = p.split("::")
            # `super` inside an inline `mod x { … }` names the file's own module first.
            nested = sum(1 for a, b in spans if a < offset < b)
            while nested and len(segs) > 1 and segs[0] == "super":
                segs, nested = ["self"] + segs[1:], nested - 1
            if segs[0] == "self" and len(segs) > 1 and segs[1] == "super":
                segs = segs[1:]
            if segs[0] in children:
                base = mod
            elif segs[0] == "crate":
                base, segs = (), segs[1:]
            elif segs[0] == "self":
                base, segs = mod, segs[1:]
            else:
                # `super` of module a::b is a, whether a::b is a file or a mod.rs
                base, segs = mod, segs
                while segs and segs[0] == "super":
                    base, segs = base[:-1], segs[1:]
            target = resolve_module(modules, base, segs)
            rest = segs[len(target) - len(base):] if target[: len(base)] == base else segs
            if target == () and rest and rest[0] in root_exports:
                target = root_exports[rest[0]]
            if target is None or target == mod:
                continue
            where = files[mod].relative_to(crate_dir)
            edges.setdefault(mod, {}).setdefault(target, []).append(f"{where}:{line}: {p}")
    return modules, edges


def resolve_module(modules, base, segs):
    """The deepest module `base::segs…` reaches."""
    current = base
    for s in segs:
        if current + (s,) in modules:
            current = current + (s,)
        else:
            break
    return current


def cycles(modules, edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
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
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(modules):
        if v not in index:
            visit(v)
    return out


def layers(modules, edges):
    """Modules lowest first (each after everything it imports)."""
    order, done = [], set()

    def visit(v, seen):
        if v in done or v in seen:
            return
        seen.add(v)
        for w in sorted(edges.get(v, {})):
            visit(w, seen)
        done.add(v)
        order.append(v)

    for v in sorted(modules):
        visit(v, set())
    return order


def name(mod):
    return "::".join(mod) or "(root)"


def main(argv):
    show = "--graph" in argv
    args = [a for a in argv if not a.startswith("--")]
    root = Path(args[0]) if args else Path(__file__).resolve().parent.parent
    problems = []

    manifests = [root / "Cargo.toml"] + sorted((root / "crates").glob("*/Cargo.toml"))
    for manifest in manifests:
        data = tomllib.loads(manifest.read_text())
        package = data.get("package", {}).get("name")
        if package is None:
            continue
        if package not in FLOORS:
            problems.append(f"{manifest}: crate {package} has no floor in scripts/check-layers.py")
            continue
        for dep in data.get("dependencies", {}):
            if dep.startswith("keyward") and FLOORS.get(dep, 99) >= FLOORS[package]:
                problems.append(
                    f"{manifest}: {package} (floor {FLOORS[package]}) depends on {dep} "
                    f"(floor {FLOORS.get(dep, '?')}): dependencies point down only"
                )

    crate_dirs = sorted((root / "crates").glob("*/")) + [root]
    for crate_dir in crate_dirs:
        if not (crate_dir / "src").is_dir():
            continue
        modules, edges = crate_graph(crate_dir)
        for comp in cycles(modules, edges):
            members = set(comp)
            lines = [f"{crate_dir.name}: modules import each other in a circle: "
                     + ", ".join(sorted(name(m) for m in comp))]
            for a in sorted(comp):
                for b, where in sorted(edges.get(a, {}).items()):
                    if b in members:
                        lines.append(f"    {name(a)} -> {name(b)}: {where[0]}")
            problems.append("\n".join(lines))
        if show:
            print(f"{crate_dir.name}: " + " < ".join(name(m) for m in layers(modules, edges)))

    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    print(f"layers: {len(crate_dirs)} crates, dependencies point down, no module circle")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
