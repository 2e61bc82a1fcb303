#!/usr/bin/env sh
# A self-signed certificate for trying the compose deployment locally:
#
#   deploy/compose/self-signed.sh registry.example.com [DIR]
#
# writes DIR/fullchain.pem and DIR/privkey.pem (DIR: deploy/compose/certs), valid 30 days for
# that name (or IP address). Docker trusts it once the certificate is copied to
# /etc/docker/certs.d/<host>[:<port>]/ca.crt. For a real deployment, put Let's Encrypt's
# fullchain.pem and privkey.pem there instead.
set -eu
host=${1:?usage: self-signed.sh HOST [DIR]}
dir=${2:-$(dirname "$0")/certs}
name=${host%:*}
[ -n "$name" ] || { echo "self-signed.sh: no host name in '$host'" >&2; exit 2; }
case $name in
    *[!0-9.]*) san="DNS:$name" ;;
    *) san="IP:$name" ;;
esac
mkdir -p "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=$name" -addext "subjectAltName=$san" \
    -keyout "$dir/privkey.pem" -out "$dir/fullchain.pem" 2>/dev/null
echo "$dir/fullchain.pem and $dir/privkey.pem for $san"
