"""The cost of redacting one request line: a normal one, and worst cases of 8 kB and 64 kB.

Run by hand from the repository root (it is a report, not a test)::

    python benchmarks/bench_redaction.py            # a few seconds
    python benchmarks/bench_redaction.py --old      # also the old pattern, up to 8 kB
    python benchmarks/bench_redaction.py --old --old-64k   # and at 64 kB (minutes)
    python benchmarks/bench_redaction.py --check    # exit 1 if a goal fails

Each row times ``redact_request_line("GET <target> HTTP/1.1")``, what gunicorn's access log and
``flask run``'s request log do with every request line, as the best of several calls (a loaded
machine only ever makes a call slower), in microseconds per call. Beside it, the same for a linear
regex scan of the same line (``[^\\x00]*``: one pass over every character) and the ratio of the
two. The worst cases are the inputs that cost the old pattern O(n^2) (a run of name characters
then ``&=``) and those that cost this scan the most per character.

Importing this module has no side effects; everything happens in :func:`main`.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Sequence

from flask_tailnet import redaction

#: The pattern used before issue 8, which backtracked: kept here only to compare with.
OLD_PATTERN = re.compile(r"""([^\s?&;=/"'#<>]+)=([^&\s"'#<>]*)""")
_SCAN = re.compile(r"[^\x00]*")

#: Worst cases, by name: a function of the target's length.
WORST: dict[str, Callable[[int], str]] = {
    "name run then &= (the old worst case)": lambda n: "/" + "a" * (n - 3) + "&=",
    "t run then &=": lambda n: "/" + "t" * (n - 3) + "&=",
    "% run then =": lambda n: "/?" + "%" * (n - 3) + "=",
    "escaped names, 5 bytes each": lambda n: "/?" + "%41=&" * ((n - 2) // 5),
    "token pairs, 7 bytes each": lambda n: "/?" + "token=&" * ((n - 2) // 7),
}
NORMAL = "/api/items/42?page=2&sort=name&q=caf%C3%A9"
#: Goal: redacting a worst-case 64 kB line costs at most this many linear scans of it.
GOAL_RATIO = 40.0


def old_redact(text: str) -> str:
    """What the old code did with a line (less the name decoding, which only adds to it)."""
    return OLD_PATTERN.sub(lambda m: m.group(0), text)


def best(function: Callable[[str], object], text: str, calls: int) -> float:
    """Microseconds per call, the best of ``calls`` calls."""
    fastest = float("inf")
    for _ in range(calls):
        started = time.perf_counter()
        function(text)
        fastest = min(fastest, time.perf_counter() - started)
    return fastest * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--old", action="store_true", help="also time the old pattern (slow)")
    parser.add_argument(
        "--old-64k", action="store_true", help="with --old, the 64 kB rows too (minutes)"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a goal fails")
    parser.add_argument("--calls", type=int, default=50, help="calls per row (default 50)")
    args = parser.parse_args(argv)

    rows: list[tuple[str, str]] = [("normal", f"GET {NORMAL} HTTP/1.1")]
    for size in (8 * 1024, 64 * 1024):
        for name, make in WORST.items():
            rows.append((f"{size // 1024} kB, {name}", f"GET {make(size)} HTTP/1.1"))

    header = f"{'request line':48} {'bytes':>6} {'us/call':>9} {'scan us':>8} {'ratio':>6}"
    print(header + (f" {'old us':>12}" if args.old else ""))
    worst_64k = 0.0
    for name, line in rows:
        calls = args.calls if len(line) < 10_000 else max(5, args.calls // 5)
        cost = best(redaction.redact_request_line, line, calls)
        scan = best(_SCAN.match, line, calls)
        ratio = cost / scan
        if len(line) > 60_000:
            worst_64k = max(worst_64k, ratio)
        old = ""
        if args.old:
            slow = len(line) > 10_000 and not args.old_64k
            old_calls = calls if len(line) < 100 else 1
            old = f" {'(skipped)':>12}" if slow else f" {best(old_redact, line, old_calls):12.1f}"
        print(f"{name:48} {len(line):6} {cost:9.1f} {scan:8.1f} {ratio:6.1f}{old}")

    verdict = "PASS" if worst_64k <= GOAL_RATIO else "FAIL"
    print(
        f"\n{verdict}: worst 64 kB line {worst_64k:.1f}x a linear scan (goal <= {GOAL_RATIO:.0f}x)"
    )
    return 1 if args.check and verdict == "FAIL" else 0


if __name__ == "__main__":
    sys.exit(main())
