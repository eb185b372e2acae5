#!/bin/sh
# Install the Debian packages given as arguments, only those that are missing.
set -eu
missing=""
for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages:$missing (run as root to install them)" >&2
    exit 1
fi
echo "setup: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# policy-rc.d keeps package scripts from starting nginx/haproxy/keepalived on the host.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d.clusterip
chmod +x /usr/sbin/policy-rc.d.clusterip
if [ ! -e /usr/sbin/policy-rc.d ]; then cp /usr/sbin/policy-rc.d.clusterip /usr/sbin/policy-rc.d; added=1; else added=0; fi
apt-get install -y -q --no-install-recommends $missing
[ "$added" = 1 ] && rm -f /usr/sbin/policy-rc.d
rm -f /usr/sbin/policy-rc.d.clusterip
