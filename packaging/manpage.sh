#!/bin/sh
# manpage.sh CLUSTERIP OUT: write clusterip(1) to OUT from the command's own help (help2man),
# with a COMMANDS section holding the full --help of every subcommand and sub-subcommand.
# Only the command's output is used, never its internals: whatever the CLI grows is covered.
set -eu
exe=$1
out=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The names listed under "Commands:" in `$@ --help`.
commands() {
    "$@" --help | awk '/^Commands:/ { c = 1; next } c && /^  [a-z]/ { print $1 } c && /^[^ ]/ { c = 0 }'
}

# One subcommand's help, verbatim (roff-escaped), under its own heading.
section() {
    printf '.SS "clusterip %s"\n.nf\n' "$*"
    "$exe" "$@" --help | sed -e 's/\\/\\e/g' -e 's/^\./\\\&./' -e "s/^'/\\\\\\&'/"
    printf '.fi\n'
}

names=$(commands "$exe")
[ -n "$names" ] || { echo "manpage.sh: $exe --help lists no commands" >&2; exit 1; }
{
    cat <<'TXT'
[COMMANDS]
Every command takes \fB\-h\fR/\fB\-\-help\fR. Bad input is one line on standard error
naming the value and what is allowed, exit status 2, and changes nothing.
TXT
    for name in $names; do
        section "$name"
        for sub in $(commands "$exe" "$name" 2>/dev/null || true); do
            section "$name" "$sub"
        done
    done
    cat <<'TXT'
[FILES]
.TP
.I /etc/clusterip/clusterip.toml
The agent's configuration: \fB[[vip]]\fR tables and an \fB[agent]\fR table
(clusterip-agent.service runs \fBclusterip agent \-c\fR on it).
.TP
.I /etc/clusterip/static.toml
Static mode: \fB[[vip]]\fR tables for \fBclusterip up \-c\fR / \fBdown \-c\fR
(clusterip-static.service).
.TP
.I /etc/clusterip/clusterip.key
The cluster's shared secret (at least 16 bytes, mode 0600), the same on every node.
.TP
.I /usr/lib/ocf/resource.d/clusterip/clusterip
The Pacemaker resource agent \fBocf:clusterip:clusterip\fR, a drop-in for cloned IPaddr2.
[SEE ALSO]
.BR nft (8),
.BR systemctl (1),
.BR crm_resource (8),
/usr/share/doc/clusterip/README.md.gz, /usr/share/doc/clusterip/install.md.gz
TXT
} > "$tmp/include"

version=$("$exe" --version | sed -n 's/.*version //p')
[ -n "$version" ] || { echo "manpage.sh: no version from $exe --version" >&2; exit 1; }
help2man --no-info --section=1 --source="clusterip $version" \
    --name="load-balancer-less server clusters on nftables (CLUSTERIP successor)" \
    --version-string="$version" --include="$tmp/include" --output="$out" "$exe"
