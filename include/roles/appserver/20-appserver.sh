#!/usr/bin/env bash
# The application server itself: its configuration, a start script and a systemd service, in the image.
set -euo pipefail
sudo tee /etc/shopspinner/appserver.conf >/dev/null <<'CONF'
listen_port = 8080
workers = 4
log_dir = /var/log/shopspinner
CONF
sudo tee /opt/shopspinner/appserver/start.sh >/dev/null <<'START'
#!/bin/sh
exec /opt/shopspinner/appserver/bin/appserver --config /etc/shopspinner/appserver.conf
START
sudo chmod 0755 /opt/shopspinner/appserver/start.sh
sudo install -d -m 0755 /etc/systemd/system /etc/systemd/system/multi-user.target.wants
sudo tee /etc/systemd/system/shopspinner-appserver.service >/dev/null <<'UNIT'
[Unit]
Description=ShopSpinner application server
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/opt/shopspinner/appserver/start.sh
Restart=on-failure
LogsDirectory=shopspinner

[Install]
WantedBy=multi-user.target
UNIT
# Enabled as `systemctl enable` would: the image's boot starts it (no systemd needed while building).
sudo ln -sf /etc/systemd/system/shopspinner-appserver.service \
  /etc/systemd/system/multi-user.target.wants/shopspinner-appserver.service
files=(/etc/shopspinner/appserver.conf /etc/shopspinner/build-info /opt/shopspinner/appserver/start.sh
       /etc/systemd/system/shopspinner-appserver.service)
for file in "${files[@]}"; do test -s "$file"; done
echo "appserver role: wrote ${#files[@]} files, config checksum $(sha256sum /etc/shopspinner/appserver.conf | cut -c1-12)"
echo "appserver role: done"
