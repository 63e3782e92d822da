#!/usr/bin/env bash
# Installs everything Image Factory needs on a fresh Debian machine with Python 3.11:
# Debian's OpenSSH server, iproute2, nftables and mmdebstrap (the local cloud's machines), Debian's Chromium (the
# browser test), Compose v1 (to check docker-compose.yaml) and a virtualenv with the pinned requirements; as root,
# also the machines' origin root filesystem (once, cached in /var/cache/image-factory/local-cloud).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}

packages=()
[ -x /usr/sbin/sshd ] || packages+=(openssh-server)
command -v ssh-keygen >/dev/null || packages+=(openssh-client)
command -v make >/dev/null || packages+=(make)
# Headless Chromium for the browser test (tests/test_browser.py drives it with Playwright: no browser download).
[ -x /usr/bin/chromium ] || packages+=(chromium)
# The local cloud's machines (localcloud/machines.py): namespaces and veths, nftables security groups, and the
# origin root filesystem made by mmdebstrap (localcloud/base.py).
command -v ip >/dev/null || packages+=(iproute2)
command -v nft >/dev/null || packages+=(nftables)
command -v mmdebstrap >/dev/null || packages+=(mmdebstrap)
command -v unshare >/dev/null || packages+=(util-linux)
# A machine boots its image's systemd (systemd-nspawn) and gets Debian's packages through the local cloud's mirror
# on its bridge (apt-cacher-ng, started by the local cloud itself: localcloud/mirror.py).
command -v systemd-nspawn >/dev/null || packages+=(systemd-container)
acng_new=0
[ -x /usr/sbin/apt-cacher-ng ] || { packages+=(apt-cacher-ng); acng_new=1; }
# The Celery deployment (localcloud/deployment.py, tests/test_deployment.py): its database and its broker.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || packages+=(postgresql)
[ -x /usr/bin/redis-server ] || packages+=(redis-server)
# docker-compose.yaml is checked with Compose's own parser (tests/test_docker_compose.py): the Compose v1 program
# alone, without the Docker engine it recommends (no daemon is started; nothing runs a container).
bare=()
command -v docker-compose >/dev/null || bare+=(docker-compose)
if [ $(( ${#packages[@]} + ${#bare[@]} )) -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  debian=("${packages[@]}" "${bare[@]}")
  echo "setup: installing ${debian[*]} (Debian packages)"
  $sudo apt-get update -qq
  [ ${#packages[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
  [ ${#bare[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${bare[@]}" >/dev/null
fi
# Debian starts apt-cacher-ng as a service of the host's own on every address, port 3142: the local cloud runs its
# own instance on its bridge only, so the host's is turned off when this script installed it.
if [ "$acng_new" -eq 1 ] && [ -d /run/systemd/system ]; then
  ${sudo:-} systemctl disable --now apt-cacher-ng.service >/dev/null 2>&1 || true
fi

stamp=.venv/.requirements.sha256
wanted=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "setup: installing Python packages from requirements.txt into .venv (a few minutes the first time)"
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  echo "$wanted" > "$stamp"
fi

if [ "$(id -u)" -eq 0 ]; then
  .venv/bin/python -m localcloud base
fi
