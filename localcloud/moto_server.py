"""moto's server with the local cloud's fixes (localcloud/moto_fixes.py: every region's default VPC inside the
reserved range 198.18.0.0/15, and the rest).

``python -m localcloud.moto_server --slot 0 --regions eu-west-1,us-east-1 -H 127.0.0.1 -p PORT``

``--slot``: the local cloud's address slot (localcloud/addresses.py); ``--regions``: the regions given blocks of
it first, in that order (others get theirs as they are first seen).
"""

from __future__ import annotations

import sys

from localcloud import moto_fixes
from localcloud.addresses import Plan


def main(argv: list[str]) -> int:
    plan, regions = Plan(0), []
    if "--slot" in argv:
        at = argv.index("--slot")
        plan = Plan(int(argv[at + 1]))
        argv = argv[:at] + argv[at + 2:]
    if "--regions" in argv:
        at = argv.index("--regions")
        regions = list(filter(None, argv[at + 1].split(",")))
        argv = argv[:at] + argv[at + 2:]
    host = argv[argv.index("-H") + 1] if "-H" in argv else ""
    if host not in ("127.0.0.1", "localhost"):
        print("localcloud.moto_server: moto binds loopback only: pass -H 127.0.0.1", file=sys.stderr)
        return 2
    moto_fixes.install(plan, regions)
    from moto.server import main as moto_main

    moto_main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
