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
