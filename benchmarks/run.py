"""Run every benchmark and rewrite BENCHMARKS.md (what ``make bench`` does).

Each benchmark runs as its own process (``<name>_bench.py --json FILE``), one
after the other, each under its own time limit and all under ``TOTAL_SECONDS``; a
benchmark that fails or overruns gets a section saying so, and the others still run.
The file gets a summary (targets met per benchmark, time taken) and one section per
benchmark, each table with its figures, references, targets, the machine and the command.

    .venv/bin/python benchmarks/run.py            # all, rewrites BENCHMARKS.md
    .venv/bin/python benchmarks/run.py api jobs   # some, replacing only their sections
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from harness import (
    BENCH_DIR,
    BENCHMARKS_MD,
    PREAMBLE,
    BenchmarkError,
    ProcessGroup,
    Table,
    base_environment,
    machine,
    replace_section,
)

#: All of them together stay under this, so ``make bench`` ends within ten minutes.
TOTAL_SECONDS = 560.0
#: Each benchmark and how long it may take before it is stopped.
PROFILES = Path(__file__).with_name("profiles.md")
BENCHMARKS = {
    "export": 330.0,
    "fanout": 150.0,
    "api": 150.0,
    "jobs": 150.0,
    "search": 200.0,
}
TITLES = {
    "export": "1. Export throughput and memory",
    "fanout": "2. Fan-out",
    "api": "3. API",
    "jobs": "4. Jobs",
    "search": "5. Search",
}


def run_one(name: str, workdir: Path, limit: float) -> Table:
    """Run one benchmark script for at most ``limit`` seconds; its table, or one saying why not."""
    out = workdir / f"{name}.json"
    started = time.monotonic()
    if limit < 10:
        return _not_measured(name, "was not started: the time for `make bench` ran out", [], 0.0)
    with ProcessGroup(workdir) as group:
        process = group.start(
            name,
            [sys.executable, str(BENCH_DIR / f"{name}_bench.py"), f"--json={out}"],
            base_environment(),
        )
        try:
            ended = process.wait(limit)
            failure = None if ended.exit_code == 0 else f"exited with {ended.exit_code}"
        except BenchmarkError:
            failure = f"was stopped after {limit:.0f} s"
    if failure is None and out.exists():
        return Table.from_json(out.read_text())
    log = process.log_tail(1500).replace("|", "\\|").splitlines()
    return _not_measured(name, failure or "wrote no table", log, time.monotonic() - started)


def _not_measured(name: str, why: str, log: list[str], seconds: float) -> Table:
    return Table(
        key=name,
        title=TITLES[name],
        intro=f"**Not measured**: `benchmarks/{name}_bench.py` {why}."
        + (" The end of its log:" if log else ""),
        columns=["log"],
        rows=[[f"`{line}`"] for line in log[-15:] if line.strip()],
        command=f".venv/bin/python benchmarks/{name}_bench.py",
        seconds=seconds,
    )


def summary(tables: list[Table], seconds: float) -> str:
    """The overview at the top of the file."""
    m = machine()
    lines = [
        "## Summary",
        "",
        "| benchmark | targets met | took |",
        "|---|---|---|",
    ]
    for table in tables:
        results = [row[-1] for row in table.rows if row[-1].startswith(("✅", "❌"))]
        met = sum(result.startswith("✅") for result in results)
        shown = f"{met} of {len(results)}" if results else "not measured"
        lines.append(
            f"| [{table.title}](#{_anchor(table.title)}) | {shown} | {table.seconds:.0f} s |"
        )
    lines += [
        "",
        f"`make bench` took {seconds:.0f} s on {m['cores']} cores ({m['cpu']}), {m['python']}, "
        f"finished {m['date']}.",
    ]
    return "\n".join(lines)


def _anchor(title: str) -> str:
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -")
    return kept.replace(" ", "-")


def main() -> None:
    """Run the benchmarks named (default: all) and write BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(BENCHMARKS))
    names = parser.parse_args().names or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    started = time.monotonic()
    tables = []
    with tempfile.TemporaryDirectory(prefix="handover-bench-run-") as workdir:
        for name in names:
            print(f"bench: {name} ...", flush=True)
            left = TOTAL_SECONDS - (time.monotonic() - started)
            table = run_one(name, Path(workdir), min(BENCHMARKS[name], left))
            print(table.markdown(), flush=True)
            tables.append(table)
    seconds = time.monotonic() - started
    if len(names) == len(BENCHMARKS):
        document = PREAMBLE + "\n" + summary(tables, seconds) + "\n\n"
        document += "\n\n".join(table.markdown() for table in tables) + "\n"
        document += "\n" + PROFILES.read_text()
    else:
        document = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else PREAMBLE
        for table in tables:
            document = replace_section(document, table)
    if "<!-- bench:profiles -->" not in document:
        document += "\n" + PROFILES.read_text()
    BENCHMARKS_MD.write_text(document)
    print(f"bench: wrote {BENCHMARKS_MD} in {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
