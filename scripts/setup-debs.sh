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
# policy-rc.d keeps package scripts from starting nginx/haproxy/keepalived on the host. It is
# removed on every exit path (a failed apt-get included), and only if this script added it.
policy=${POLICY_RC_D:-/usr/sbin/policy-rc.d}
added=0
cleanup() {
    [ "$added" = 1 ] && rm -f "$policy"
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    added=1
fi
apt-get update -q
apt-get install -y -q --no-install-recommends $missing
