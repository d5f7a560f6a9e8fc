"""Every shell command in README.md's ```sh blocks, and where each one is run.

README is what a user copies; a command there that nothing runs rots unnoticed. So
COMMANDS below lists each one, in README order, with the place that runs it, and
`check()` fails when README and the table disagree (a new README command must be wired
up here first) or when a place does not know its command.

    /usr/bin/python3 tests/python/readme_commands.py check   # scripts/test.sh runs this
    /usr/bin/python3 tests/python/readme_commands.py bench   # label<TAB>command, for scripts/bench.sh

Standard library only: scripts/test.sh runs it before anything is built.
"""

import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"

# The package names, in one place: a rename edits these and README, nothing else here.
PDB = "personaldb"
WITNESS = "personaldb-witness"
BENCH = "pdb-bench"

# Where a command runs. Each is checked by check_places() below.
DEMO = "scripts/test.sh"                 # its own step: the script checks convergence itself
CI = ".ci/run"                           # CI's entry point, which runs scripts/test.sh
WALKTHROUGH = "tests/python/test_readme.py::test_witness_section_commands"
QUICK_BENCH = "scripts/bench.sh --quick"  # run by scripts/test.sh

_AUTH = '-H "Authorization: Bearer $T"'

# (README command as one line, where it is run, the label that place knows it by).
COMMANDS = [
    ("bash scripts/demo.sh", DEMO, "demo"),
    ("bash .ci/run", CI, "ci"),
    (f"cargo run --release -p {WITNESS} -- serve --data ./witness-data --listen 127.0.0.1:7070",
     WALKTHROUGH, "serve"),
    ("curl -X PUT localhost:7070/v1/groups/notes " + _AUTH
     + """ -d '{"ddl": "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)"}'""",
     WALKTHROUGH, "create-group"),
    ("curl localhost:7070/v1/groups/notes " + _AUTH, WALKTHROUGH, "group-info"),
    ("curl -X POST localhost:7070/v1/groups/notes/commits " + _AUTH
     + ' -H "Pdb-Base: 0:<head>" -H "Pdb-Schema: <schema_hash>" -H "Idempotency-Key: k1"'
     ' -H "Content-Type: application/vnd.sqlite.changeset" --data-binary @cs.bin',
     WALKTHROUGH, "commit"),
    ('curl "localhost:7070/v1/groups/notes/commits?after=0&limit=100&wait=30" ' + _AUTH,
     WALKTHROUGH, "pull"),
    ('curl -N "localhost:7070/v1/groups/notes/watch?after=0" ' + _AUTH, WALKTHROUGH, "watch"),
    ('curl "localhost:7070/v1/groups/notes/certificates?key=k1" ' + _AUTH,
     WALKTHROUGH, "certificate"),
    ("curl -X POST localhost:7070/v1/groups/notes/snapshots " + _AUTH,
     WALKTHROUGH, "snapshot-create"),
    ("curl localhost:7070/v1/groups/notes/snapshots/latest " + _AUTH,
     WALKTHROUGH, "snapshot-latest"),
    ('curl "localhost:7070/v1/groups/notes/snapshots?at=5" ' + _AUTH, WALKTHROUGH, "snapshot-at"),
    ('curl -o notes-5.db -H "Range: bytes=0-" "localhost:7070/v1/objects/<blake3>" ' + _AUTH,
     WALKTHROUGH, "object"),
    ("curl -X PUT localhost:7070/v1/groups/notes/projections/search " + _AUTH
     + """ -d '{"kind": "search", "table": "notes", "columns": ["body"]}'""",
     WALKTHROUGH, "projection-search"),
    ("curl -X PUT localhost:7070/v1/groups/notes/projections/by_initial " + _AUTH
     + """ -d '{"kind": "index", "table": "notes", "key": {"initial": "upper(substr(body, 1, 1))"},"""
     + """ "columns": ["id", "body"], "where": "length(body) > 3"}'""",
     WALKTHROUGH, "projection-index"),
    ("curl -X PUT localhost:7070/v1/groups/notes/projections/counts " + _AUTH
     + """ -d '{"kind": "aggregate", "table": "notes", "group_by": {"initial": "upper(substr(body, 1, 1))"},"""
     + """ "measures": {"n": "count(*)", "longest": "max(length(body))", "ids": "sum(id)"}}'""",
     WALKTHROUGH, "projection-aggregate"),
    ("curl localhost:7070/v1/groups/notes/projections/counts/status " + _AUTH,
     WALKTHROUGH, "projection-status"),
    ("curl localhost:7070/v1/groups/notes/projections " + _AUTH, WALKTHROUGH, "projection-list"),
    ('curl "localhost:7070/v1/groups/notes/projections/search?q=row+6" ' + _AUTH,
     WALKTHROUGH, "projection-read-search"),
    ('curl "localhost:7070/v1/groups/notes/projections/search?q=fir*" ' + _AUTH,
     WALKTHROUGH, "projection-read-prefix"),
    ('curl "localhost:7070/v1/groups/notes/projections/by_initial?initial=R&limit=2" ' + _AUTH,
     WALKTHROUGH, "projection-read-index"),
    ('curl "localhost:7070/v1/groups/notes/projections/by_initial?initial=R&limit=2&next=<next>&min_seq=6" '
     + _AUTH, WALKTHROUGH, "projection-read-next"),
    ('curl "localhost:7070/v1/groups/notes/projections/counts?initial.gte=A&initial.lt=S" ' + _AUTH,
     WALKTHROUGH, "projection-read-aggregate"),
    ("curl -X DELETE localhost:7070/v1/groups/notes/projections/counts " + _AUTH,
     WALKTHROUGH, "projection-delete"),
    ('curl -N "localhost:7070/v1/groups/notes/watch?after=<cursor>&format=rows" ' + _AUTH,
     WALKTHROUGH, "watch-rows"),
    (f"cargo build --release -p {PDB} && cargo run --release -p {BENCH}", QUICK_BENCH, "capture"),
    (f"cargo build --release -p {WITNESS} && cargo run --release -p {BENCH} --bin witness",
     QUICK_BENCH, "witness"),
    (f"cargo build --release -p {PDB} && cargo run --release -p {BENCH} --bin apply",
     QUICK_BENCH, "apply"),
    (f"cargo build --release -p {PDB} && cargo build --release -p {WITNESS} && "
     f"cargo run --release -p {BENCH} --bin sync", QUICK_BENCH, "sync"),
    (f"cargo build --release -p {PDB} && cargo build --release -p {WITNESS} && "
     f"cargo run --release -p {BENCH} --bin snapshot", QUICK_BENCH, "snapshot"),
    (f"cargo build --release -p {WITNESS} && cargo run --release -p {BENCH} --bin projections",
     QUICK_BENCH, "projections"),
]


def _strip_comment(line: str) -> str:
    """The line without a trailing `# comment` (a `#` outside quotes after a blank)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def readme_commands(text: str) -> list:
    """The commands of every ```sh block in `text`, continuation lines joined into one."""
    commands, in_sh, pending = [], False, ""
    for line in text.splitlines():
        if not in_sh:
            in_sh = line.strip() == "```sh"
            continue
        if line.strip() == "```":
            in_sh = False
            if pending:
                raise ValueError(f"README: a ```sh block ends inside a command: {pending!r}")
            continue
        line = _strip_comment(line)
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        command = (pending + line.strip()).strip()
        pending = ""
        if command:
            commands.append(command)
    return commands


def check_table(found: list) -> list:
    """Problems between README's commands and COMMANDS: missing, stale, out of order."""
    listed = [c for c, _, _ in COMMANDS]
    problems = []
    for c in found:
        if c not in listed:
            problems.append(f"README command not wired to any test (add it to COMMANDS in "
                            f"{Path(__file__).relative_to(REPO_ROOT)} and run it there):\n"
                            f"    {c}")
    for c in listed:
        if c not in found:
            problems.append(f"COMMANDS lists a command README no longer has:\n    {c}")
    if not problems and found != listed:
        problems.append("COMMANDS is not in README order (the walk-through runs them in order)")
    labels = [label for _, _, label in COMMANDS]
    for label in sorted({x for x in labels if labels.count(x) > 1}):
        problems.append(f"label {label!r} is used twice in COMMANDS")
    return problems


def _read(rel: str) -> str:
    path = REPO_ROOT / rel
    return path.read_text() if path.is_file() else ""


def check_places() -> list:
    """Problems with the places: each must exist and know the commands it is given."""
    problems = []
    test_sh = _read("scripts/test.sh")
    bench_sh = _read("scripts/bench.sh")
    walkthrough = _read(WALKTHROUGH.split("::")[0])
    for command, where, label in COMMANDS:
        if where == DEMO and command not in test_sh:
            problems.append(f"scripts/test.sh does not run `{command}`")
        elif where == CI and "bash scripts/test.sh" not in _read(CI):
            problems.append(f"{CI} does not run scripts/test.sh")
        elif where == WALKTHROUGH and f'@step("{label}")' not in walkthrough:
            problems.append(f'{WALKTHROUGH.split("::")[0]} has no @step("{label}") for '
                            f"`{command}`")
        elif where == QUICK_BENCH and not re.search(rf"^\s*{re.escape(label)}\)", bench_sh, re.M):
            problems.append(f"scripts/bench.sh has no quick settings for `{label}` (`{command}`)")
        elif where not in (DEMO, CI, WALKTHROUGH, QUICK_BENCH):
            problems.append(f"unknown place {where!r} for `{command}`")
    if "def test_witness_section_commands" not in walkthrough:
        problems.append(f"{WALKTHROUGH} is missing")
    if f"bash {QUICK_BENCH}" not in test_sh:
        problems.append(f"scripts/test.sh does not run `bash {QUICK_BENCH}`")
    # Every benchmark binary has a README command, so the quick run covers all of them.
    bench_cmds = [c for c, where, _ in COMMANDS if where == QUICK_BENCH]
    bins = sorted(p.stem for p in (REPO_ROOT / "bench/src/bin").glob("*.rs"))
    for name in bins:
        if not any(c.endswith(f"--bin {name}") for c in bench_cmds):
            problems.append(f"bench binary {name} (bench/src/bin/{name}.rs) has no README command")
    if not any("--bin" not in c for c in bench_cmds):
        problems.append("the default benchmark (bench/src/main.rs) has no README command")
    return problems


def check() -> list:
    """Every problem found; empty when README and the places agree."""
    return check_table(readme_commands(README.read_text())) + check_places()


def main(argv: list) -> int:
    if argv == ["check"]:
        problems = check()
        for p in problems:
            print(f"README commands: {p}", file=sys.stderr)
        if not problems:
            print(f"README commands: all {len(COMMANDS)} are run (see {Path(__file__).name})")
        return 1 if problems else 0
    if argv == ["bench"]:
        for command, where, label in COMMANDS:
            if where == QUICK_BENCH:
                print(f"{label}\t{command}")
        return 0
    print(f"usage: {sys.argv[0]} check|bench", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
