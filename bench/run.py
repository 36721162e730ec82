"""Run the benchmarks and print one JSON document: ``python bench/run.py [--only NAME ...]``."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Order matters: generate leaves the 1M data set the predicate benchmark reads.
BENCHMARKS = (
    "crypto",
    "idnumber",
    "generate",
    "predicates",
    "audit",
    "gateway",
    "paillier",
    "statistics",
    "flower",
    "psi",
    "vertical",
    "at_rest",
    "soak",  # ten minutes at the highest rate with p99 < 100 ms
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", choices=BENCHMARKS)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    results: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    for name in args.only or BENCHMARKS:
        print(f"running {name} …", file=sys.stderr)
        module = importlib.import_module(f"bench.bench_{name}")
        results[name] = module.run()
    text = json.dumps(results, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
