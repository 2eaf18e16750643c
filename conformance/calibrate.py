"""Budget calibration: the largest err / growth in results files, per dtype.

    conformance check mha --impl torch --examples 2000 -o cal-torch.json   # one per implementation
    python -m conformance.calibrate cal-*.json

A results file records error / budget = err / (K * growth), so err / growth is
that ratio times the K the run used (saved with each cell). The spec's
tolerance section says how K is then chosen from these figures.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    worst: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for c in json.load(f)["cells"]:
                if c["verdict"] != "conformant" or c["max_ratio"] is None:
                    continue
                impl = c["implementation"] + (f"[{c['backend']}]" if c["backend"] else "")
                worst[c["dtype"]].append((c["max_ratio"] * c["k"], f"{impl} ({c['examples']} examples)"))
    for dtype, rows in sorted(worst.items()):
        print(f"{dtype}:")
        for value, who in sorted(rows, reverse=True):
            print(f"  {value:8.4f}  {who}")
        print(f"  largest err/growth {max(v for v, _ in rows):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
