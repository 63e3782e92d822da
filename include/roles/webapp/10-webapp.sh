#!/usr/bin/env bash
# The web application, on top of the appserver image: its release and its site configuration.
set -euo pipefail
test -s /etc/shopspinner/appserver.conf  # built on the appserver image: its configuration is there already
sudo install -d -m 0755 /opt/shopspinner/webapp
printf 'release %s\n' "${IMAGE_FACTORY_BUILD_ID}" | sudo tee /opt/shopspinner/webapp/RELEASE >/dev/null
sudo tee /etc/shopspinner/webapp.conf >/dev/null <<'CONF'
upstream = 127.0.0.1:8080
CONF
echo "webapp role: done"
