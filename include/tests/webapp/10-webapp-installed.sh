#!/usr/bin/env bash
# The web application's files are in the image, and so are its base image's (built on shopspinner-linux-image).
set -euo pipefail
grep -q '^release b' /opt/shopspinner/webapp/RELEASE
grep -q '^upstream = ' /etc/shopspinner/webapp.conf
test -x /opt/shopspinner/appserver/start.sh
echo "webapp: installed on the appserver base"
