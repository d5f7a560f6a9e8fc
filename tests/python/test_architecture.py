"""ARCHITECTURE.md's code map names every source file of the repository, so that a new
file cannot land without a line saying what it holds; and no crate's modules import
each other in a circle (each module has one job, below the ones that use it).

A file counts as named when the map mentions its path, or its name in backticks
(`group.rs`) under its crate's bullet; names that several folders share (`mod.rs`,
`lib.rs`, `main.rs`, `Cargo.toml`, `base.sql`, …) must be named with their folder
(`ffi/mod.rs`, `fuzz/apply/base.sql`).
"""

import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE = (".rs", ".py", ".sh", ".sql", ".js")
# Data, not code: seeds, regression inputs, published vectors.
DATA = ("fuzz/seeds/", "fuzz/regressions/", "tests/vectors/", "proptest-regressions/")


def source_files():
    out = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    return [f for f in out if f.endswith(SOURCE) and not f.startswith(DATA)]


def code_map_sections(text):
    """{folder or file: its bullet's text} for each top-level bullet of the code map,
    keyed by each path in its bold head (`- **`client/src/history.rs`,
    `client/src/transport.rs`**: ...`)."""
    body = text.split("\n## Code map", 1)[1].split("\n## ", 1)[0]
    sections, keys = {}, []
    for line in body.splitlines():
        if line.startswith("- **`"):
            head = line[len("- **"):].split("**", 1)[0]
            keys = head.split("`")[1::2]
            for k in keys:
                sections[k] = ""
        if keys:
            for k in keys:
                sections[k] += line + "\n"
    return sections


def test_the_code_map_names_every_source_file():
    text = (REPO_ROOT / "ARCHITECTURE.md").read_text()
    sections = code_map_sections(text)
    files = source_files()
    home = {f: max((k for k in sections if f.startswith(k)), key=len, default=None)
            for f in files}
    missing = []
    for f in files:
        path = Path(f)
        if f in text:
            continue
        key = home[f]
        if key is None:
            missing.append(f)
            continue
        section = sections[key]
        neighbours = [g for g in files if home[g] == key and Path(g).name == path.name]
        if len(neighbours) > 1:
            # Several files of this crate share the name: say which, `ffi/mod.rs`.
            named = f"{path.parent.name}/{path.name}" in section
        else:
            named = f"`{path.name}`" in section or f"{path.parent.name}/{path.name}" in section
        if not named:
            missing.append(f)
    assert not missing, "ARCHITECTURE.md's code map does not name: " + ", ".join(missing)


CRATES = ["core/src", "client/src", "ext/src", "server-min/src", "testkit/src", "bench/src",
          "fuzz/src"]


def module_graph(src):
    """{module: modules it names with `crate::` or `super::`} of one crate, test modules
    left out (they may look anywhere)."""
    src = REPO_ROOT / src
    graph = {}
    for f in src.rglob("*.rs"):
        parts = list(f.relative_to(src).with_suffix("").parts)
        if parts[-1] in ("mod", "lib", "main"):
            parts = parts[:-1]
        if not parts:
            continue
        text = f.read_text().split("#[cfg(test)]")[0]

        def module(segs):
            for k in range(len(segs), 0, -1):
                if (src.joinpath(*segs[:k]).with_suffix(".rs").exists()
                        or src.joinpath(*segs[:k], "mod.rs").exists()):
                    return "::".join(segs[:k])
            return None

        deps = {module(u.strip(":").split("::"))
                for u in re.findall(r"crate::([a-z_][a-z0-9_:]*)", text)}
        deps |= {module(parts[:-1] + [u]) or "::".join(parts[:-1])
                 for u in re.findall(r"super::([a-z_][a-z0-9_]*)", text)}
        me = "::".join(parts)
        graph.setdefault(me, set()).update(d for d in deps if d and d != me)
    return graph


def circles(graph):
    """The strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize("crate", CRATES)
def test_no_module_imports_a_module_that_imports_it_back(crate):
    assert circles(module_graph(crate)) == []
