#!/usr/bin/env bash
# The web application, on top of the appserver image: its release, its site configuration, and Debian's nginx
# in front of the application server (127.0.0.1 port 80, proxying to the appserver's 127.0.0.1:8080).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
test -s /etc/shopspinner/appserver.conf  # built on the appserver image: its configuration is there already
sudo -E apt-get update -q
sudo -E apt-get install -y -q --no-install-recommends nginx-light
sudo install -d -m 0755 /opt/shopspinner/webapp
printf 'release %s\n' "${IMAGE_FACTORY_BUILD_ID}" | sudo tee /opt/shopspinner/webapp/RELEASE >/dev/null
sudo tee /etc/shopspinner/webapp.conf >/dev/null <<'CONF'
upstream = 127.0.0.1:8080
CONF
sudo tee /etc/nginx/sites-available/shopspinner-webapp >/dev/null <<'SITE'
server {
  listen 127.0.0.1:80 default_server;
  location = /release { default_type text/plain; alias /opt/shopspinner/webapp/RELEASE; }
  location / { proxy_pass http://127.0.0.1:8080; }
}
SITE
sudo rm -f /etc/nginx/sites-enabled/default
sudo ln -sf /etc/nginx/sites-available/shopspinner-webapp /etc/nginx/sites-enabled/shopspinner-webapp
sudo nginx -t -q
if [ -d /run/systemd/system ]; then
  sudo systemctl enable nginx.service
  sudo systemctl restart nginx.service
  echo "webapp role: nginx.service $(systemctl is-active nginx.service)"
else
  sudo ln -sf /lib/systemd/system/nginx.service /etc/systemd/system/multi-user.target.wants/nginx.service
fi
echo "webapp role: done"
