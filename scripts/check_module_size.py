"""Fail when a source module passes the hard size budget (architecture guide: soft 300, hard 500 lines)."""

from __future__ import annotations

import sys
from pathlib import Path

HARD = 500


def main() -> int:
    bad = []
    for path in sorted(Path("src").rglob("*.py")):
        n = sum(1 for _ in path.open(encoding="utf-8"))
        if n > HARD:
            bad.append(f"{path}: {n} lines (hard limit {HARD})")
    for line in bad:
        print(line)  # noqa: T201
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
