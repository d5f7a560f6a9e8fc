"""ARCHITECTURE.md's code map names every source file of the repository, so that a new
file cannot land without a line saying what it holds.

A file counts as named when the map mentions its path, or its name in backticks
(`group.rs`) under its crate's bullet; names that several folders share (`mod.rs`,
`lib.rs`, `main.rs`, `Cargo.toml`, `base.sql`, …) must be named with their folder
(`ffi/mod.rs`, `fuzz/apply/base.sql`).
"""

import subprocess
from collections import Counter
from pathlib import Path

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
