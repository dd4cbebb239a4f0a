"""Benchmarks: python tools/benchmark.py {dit,render,sample,train,track,plan,parallel} [--json] [options].

Each prints a readable table; with --json the table goes to stderr and stdout carries one
JSON object. Implementations live in factorportrait/benchmarks/.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys

BENCHMARKS = {
    "dit": "factorportrait.benchmarks.dit",
    "render": "factorportrait.benchmarks.render",
    "sample": "factorportrait.benchmarks.sample",
    "train": "factorportrait.benchmarks.train",
    "track": "factorportrait.benchmarks.track",
    "plan": "factorportrait.benchmarks.plan",
    "parallel": "factorportrait.benchmarks.parallel",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in BENCHMARKS:
        print(__doc__.strip(), file=sys.stderr)
        print(f"choose a benchmark: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[argv[0]])  # only the chosen one
    parser = argparse.ArgumentParser(prog=f"benchmark.py {argv[0]}", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    stream = sys.stderr if args.json else sys.stdout
    with contextlib.redirect_stdout(stream):
        report = module.run(args)
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
