"""python -m localcloud up|down|status|env|stats|config|machines|base|shell AMI
|deployment-up|deployment-down|deployment-status"""

import argparse
import json
import shlex
import sys

from localcloud.cloud import DEFAULT_REGIONS, DEFAULT_STATE, LocalCloud, LocalCloudError, parse_latency


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m localcloud", description=__doc__)
    parser.add_argument("action", choices=["up", "down", "status", "env", "stats", "config", "machines", "base",
                                           "shell", "deployment-up", "deployment-down", "deployment-status"])
    parser.add_argument("image", nargs="?", help="shell: the AMI to boot (default: the AL2023 public parameter's)")
    parser.add_argument("--state-dir", default=str(DEFAULT_STATE))
    parser.add_argument("--regions", default=DEFAULT_REGIONS, help="up: the regions set up first, in this order "
                        "(each gets its address block of 198.18.0.0/15 in that order)")
    parser.add_argument("--region", help="shell: the region of the image (default: the first of the cloud's)")
    parser.add_argument("--no-machines", action="store_true",
                        help="up: no machines: one sshd on 127.0.0.1 for every instance, roles run on this host "
                             "(the Docker Compose profile's model)")
    parser.add_argument("--init", choices=("systemd", "sshd"), default=None,
                        help="up: a machine's PID 1: its image's systemd with cloud-init (the default) or sshd alone "
                             "(the light model, for many machines at once); IMAGE_FACTORY_LOCAL_CLOUD_INIT too")
    parser.add_argument("--latency", metavar="boot=S,stop=S,image=S,terminate=S",
                        help="up, config: emulated state-change times in seconds (0: instant, the default)")
    parser.add_argument("--deployment-home", default=None, help="deployment-*: its state and Airflow home "
                        "(default .deployment/)")
    parser.add_argument("--port", type=int, default=0, help="deployment-up: the api-server's port on the bridge "
                        "address (default 8090)")
    parser.add_argument("--workers", type=int, default=2, help="deployment-up: how many worker hosts")
    args = parser.parse_args()
    from pathlib import Path

    cloud = LocalCloud(Path(args.state_dir), machines=not args.no_machines, init=args.init)
    try:
        latency = parse_latency(args.latency) if args.latency else None
        if args.action == "up":
            cloud.up(args.regions)
            if latency:
                print(f"latency: {cloud.configure(latency=latency).get('latency')}", file=sys.stderr)
            print(f"local cloud up: {cloud.summary()}; moto behind the front at {cloud.moto_endpoint} "
                  f"(state in {cloud.state_dir})", file=sys.stderr)
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
        elif args.action == "machines":
            print(json.dumps(cloud.machines_list(), indent=2))
        elif args.action == "config":
            print(json.dumps(cloud.configure(latency=latency), indent=2))
        elif args.action == "base":
            from localcloud.base import BaseError, ensure_base

            try:
                print(ensure_base(log=lambda message: print(message, file=sys.stderr, flush=True)))
            except BaseError as exc:
                raise LocalCloudError(str(exc)) from None
        elif args.action.startswith("deployment-"):
            return deployment(cloud, args)
        elif args.action == "shell":
            return cloud.shell(args.image, region=args.region)
        else:
            for key, value in cloud.env().items():
                print(f"export {key}={shlex.quote(value)}")
    except LocalCloudError as exc:
        print(f"local cloud: {exc}", file=sys.stderr)
        return 1
    return 0


def deployment(cloud: LocalCloud, args) -> int:
    """The Celery deployment on the local cloud's bridge (localcloud/deployment.py)."""
    from pathlib import Path

    from localcloud.airflow_stack import AirflowStackError
    from localcloud.deployment import DEFAULT_HOME, DEFAULT_PORT, Deployment, DeploymentError

    home = Path(args.deployment_home) if args.deployment_home else DEFAULT_HOME
    target = Deployment(home, cloud, port=args.port or DEFAULT_PORT, workers=args.workers)
    try:
        if args.action == "deployment-up":
            target.up()
            username = target.stack.credentials()[0]
            print(f"deployment up: Airflow at {target.url} (user {username}, password in "
                  f"{target.stack.password_file}); workers "
                  + ", ".join(f"{w.name} at {w.address}" for w in target.workers)
                  + f"; provisioner CIDR {target.provisioner_cidr()}; logs in {target.home}", file=sys.stderr)
        elif args.action == "deployment-down":
            target.down()
            print("deployment down", file=sys.stderr)
        else:
            status = target.status()
            print(json.dumps(status, indent=2))
            return 0 if status["running"] else 1
    except (DeploymentError, AirflowStackError) as exc:
        print(f"deployment: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
