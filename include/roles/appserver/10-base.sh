#!/usr/bin/env bash
# Base layer of the appserver role: report the machine we are configuring.
# On the local cloud the "instance" is the machine running the demo, so this role only writes inside the
# directory it was copied to (the current directory), which the shell tool removes afterwards.
set -euo pipefail
echo "appserver role: configuring $(uname -sm) as ${IMAGE_FACTORY_SERVER_ROLE} for ${IMAGE_FACTORY_IMAGE_NAME}"
mkdir -p root/etc/shopspinner root/opt/shopspinner/appserver
echo "build ${IMAGE_FACTORY_BUILD_ID}" > root/etc/shopspinner/build-info
