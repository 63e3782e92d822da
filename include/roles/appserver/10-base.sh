#!/usr/bin/env bash
# Base layer of the appserver role: report the machine we are configuring and record the build in the image.
# Runs on the builder instance as its login user (ec2-user); what it leaves in / ends up in the image, so it
# writes with sudo, as a role on AWS does.
set -euo pipefail
echo "appserver role: configuring $(uname -sm) as ${IMAGE_FACTORY_SERVER_ROLE} for ${IMAGE_FACTORY_IMAGE_NAME}"
sudo install -d -m 0755 /etc/shopspinner /opt/shopspinner/appserver /var/log/shopspinner
printf 'build %s\nimage %s\nrole %s\n' "${IMAGE_FACTORY_BUILD_ID}" "${IMAGE_FACTORY_IMAGE_NAME}" \
  "${IMAGE_FACTORY_SERVER_ROLE}" | sudo tee /etc/shopspinner/build-info >/dev/null
sudo chmod 0644 /etc/shopspinner/build-info
