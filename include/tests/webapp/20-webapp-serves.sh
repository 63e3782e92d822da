#!/usr/bin/env bash
# Debian's nginx fronts the application server after boot: installed, enabled, running, on port 80.
set -euo pipefail
timeout 60 systemctl is-system-running --wait >/dev/null || true  # the boot has finished
dpkg-query -W -f '${Status}\n' nginx-light | grep -q '^install ok installed$'
systemctl is-enabled --quiet nginx.service
systemctl is-active --quiet nginx.service
systemctl is-active --quiet shopspinner-appserver.service
ss -ltnH 'src 127.0.0.1 and sport = :80' | grep -q LISTEN
get() { python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' "$1"; }
get http://127.0.0.1/ | grep -q '^ShopSpinner appserver$'
get http://127.0.0.1/release | grep -q '^release b'
echo "webapp: nginx answers on port 80 in front of the appserver"
