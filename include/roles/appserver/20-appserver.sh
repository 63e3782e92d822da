#!/usr/bin/env bash
# The application server itself: its configuration and a start script.
set -euo pipefail
cat > root/etc/shopspinner/appserver.conf <<CONF
listen_port = 8080
workers = 4
log_dir = /var/log/shopspinner
CONF
cat > root/opt/shopspinner/appserver/start.sh <<'START'
#!/bin/sh
exec /opt/shopspinner/appserver/bin/appserver --config /etc/shopspinner/appserver.conf
START
chmod 0755 root/opt/shopspinner/appserver/start.sh
echo "appserver role: wrote $(find root -type f | wc -l) files, config checksum $(sha256sum root/etc/shopspinner/appserver.conf | cut -c1-12)"
echo "appserver role: done"
