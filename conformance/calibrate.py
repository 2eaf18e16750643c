"""Budget calibration: the largest err / growth in results files, per dtype and component.

    conformance run --examples 1000 --mode eager -o cal-eager.json   # and any other runs
    python -m conformance.calibrate cal-*.json

A results file records error / budget = err / (K * growth), so err / growth is
that ratio times the K the run used (saved with each cell). spec/README.md
("Calibration") says how K is then chosen from these figures.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from conformance.vocabulary import impl_label, Verdict


def label(cell: dict) -> str:
    impl = impl_label(cell["implementation"], cell["backend"])
    return f"{impl} {cell['mode']} ({cell['examples']} examples)"


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    rows: dict[str, dict[str, list[tuple[float, str]]]] = defaultdict(lambda: defaultdict(list))
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for c in json.load(f)["cells"]:
                if c["verdict"] != Verdict.CONFORMANT or c["max_ratio"] is None:
                    continue
                rows[c["dtype"]][c["component"]].append((c["max_ratio"] * c["k"], label(c)))
    for dtype, components in sorted(rows.items()):
        print(f"{dtype}: largest err/growth per component, and who showed it")
        for component, found in sorted(components.items()):
            value, who = max(found)
            print(f"  {component:16s} {value:8.4f}  {who}")
        overall = max(max(found) for found in components.values())
        print(f"  {'all':16s} {overall[0]:8.4f}  {overall[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
