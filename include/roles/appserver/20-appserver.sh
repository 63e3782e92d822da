#!/usr/bin/env bash
# The application server itself: Debian's nginx (nginx-light, from Debian's registry with apt-get), run by a
# service of its own with the settings of /etc/shopspinner/appserver.conf, answering the page this role writes.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
# A security group that does not let the instance reach a package mirror makes this fail, with apt's error.
sudo -E apt-get update -q
sudo -E apt-get install -y -q --no-install-recommends nginx-light
echo "appserver role: installed $(dpkg-query -W -f '${Package} ${Version}' nginx-light)"

sudo tee /etc/shopspinner/appserver.conf >/dev/null <<'CONF'
listen_port = 8080
workers = 4
log_dir = /var/log/shopspinner
CONF
sudo install -d -m 0755 /var/www/shopspinner
printf 'ShopSpinner appserver\nimage %s\nbuild %s\n' "${IMAGE_FACTORY_IMAGE_NAME}" "${IMAGE_FACTORY_BUILD_ID}" |
  sudo tee /var/www/shopspinner/index.html >/dev/null
sudo chmod 0644 /var/www/shopspinner/index.html
sudo tee /opt/shopspinner/appserver/start.sh >/dev/null <<'START'
#!/bin/sh
# The ShopSpinner application server: nginx with the settings of /etc/shopspinner/appserver.conf.
set -eu
setting() { sed -n "s/^$1 *= *//p" /etc/shopspinner/appserver.conf; }
port=$(setting listen_port); workers=$(setting workers); logs=$(setting log_dir)
mkdir -p /run/shopspinner-appserver "$logs"
cat > /run/shopspinner-appserver/nginx.conf <<CONF
worker_processes $workers;
pid /run/shopspinner-appserver/nginx.pid;
error_log $logs/error.log;
events { worker_connections 256; }
http {
  include /etc/nginx/mime.types;
  access_log $logs/access.log;
  server {
    listen 127.0.0.1:$port;  # loopback only: the web layer (or a test on the instance) reaches it there
    root /var/www/shopspinner;
    index index.html;
  }
}
CONF
exec /usr/sbin/nginx -c /run/shopspinner-appserver/nginx.conf -g 'daemon off;'
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
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
LogsDirectory=shopspinner

[Install]
WantedBy=multi-user.target
UNIT
if [ -d /run/systemd/system ]; then
  # Debian's own nginx service (its default site on port 80) is not the application server: off.
  sudo systemctl disable --now nginx.service
  sudo systemctl daemon-reload
  sudo systemctl enable --now shopspinner-appserver.service
  echo "appserver role: shopspinner-appserver.service $(systemctl is-active shopspinner-appserver.service)"
else
  # No systemd running (a machine without it): enabled as `systemctl enable` would, for the image's boot.
  sudo rm -f /etc/systemd/system/multi-user.target.wants/nginx.service
  sudo ln -sf /etc/systemd/system/shopspinner-appserver.service \
    /etc/systemd/system/multi-user.target.wants/shopspinner-appserver.service
fi
files=(/etc/shopspinner/appserver.conf /etc/shopspinner/build-info /opt/shopspinner/appserver/start.sh
       /etc/systemd/system/shopspinner-appserver.service /var/www/shopspinner/index.html)
for file in "${files[@]}"; do test -s "$file"; done
echo "appserver role: wrote ${#files[@]} files, config checksum $(sha256sum /etc/shopspinner/appserver.conf | cut -c1-12)"
echo "appserver role: done"
