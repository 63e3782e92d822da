"""python -m localcloud up|down|status|env|stats|config"""

import argparse
import json
import shlex
import sys

from localcloud.cloud import DEFAULT_REGIONS, DEFAULT_STATE, LocalCloud, LocalCloudError, parse_latency


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m localcloud", description=__doc__)
    parser.add_argument("action", choices=["up", "down", "status", "env", "stats", "config"])
    parser.add_argument("--state-dir", default=str(DEFAULT_STATE))
    parser.add_argument("--regions", default=DEFAULT_REGIONS, help="regions whose key pairs sshd trusts")
    parser.add_argument("--latency", metavar="boot=S,stop=S,image=S,terminate=S",
                        help="up, config: emulated state-change times in seconds (0: instant, the default)")
    args = parser.parse_args()
    from pathlib import Path

    cloud = LocalCloud(Path(args.state_dir))
    try:
        latency = parse_latency(args.latency) if args.latency else None
        if args.action == "up":
            state = cloud.up(args.regions)
            if latency:
                print(f"latency: {cloud.configure(latency=latency).get('latency')}", file=sys.stderr)
            print(f"local cloud up: EC2 emulator {cloud.endpoint} (a front before moto at {cloud.moto_endpoint}), "
                  f"SSH server 127.0.0.1:{state.ssh_port} (state in {cloud.state_dir})", file=sys.stderr)
            print(f"load its settings with: eval \"$(python -m localcloud env --state-dir {cloud.state_dir})\"",
                  file=sys.stderr)
        elif args.action == "down":
            cloud.down()
            print("local cloud down", file=sys.stderr)
        elif args.action == "status":
            print("running" if cloud.running() else "stopped")
            return 0 if cloud.running() else 1
        elif args.action == "stats":
            print(json.dumps(cloud.stats(), indent=2))
        elif args.action == "config":
            print(json.dumps(cloud.configure(latency=latency), indent=2))
        else:
            for key, value in cloud.env().items():
                print(f"export {key}={shlex.quote(value)}")
    except LocalCloudError as exc:
        print(f"local cloud: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
