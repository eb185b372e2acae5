#!/bin/bash
# build-deb.sh OUTDIR: build the clusterip .deb from this tree (tracked and new files, not
# .venv or caches) in a scratch copy under OUTDIR, and leave clusterip_VERSION_all.deb there.
# The build dependencies are installed by `make deb` (DEB_BUILD_DEBS).
set -euo pipefail
mkdir -p "$1"
out=$(cd "$1" && pwd)
top=$(cd "$(dirname "$0")/.." && pwd)
version=$(dpkg-parsechangelog -l "$top/debian/changelog" -S Version)
src="$out/src/clusterip-$version"
rm -rf "$out/src"
mkdir -p "$src"
cd "$top"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
        [ -e "$f" ] && printf '%s\0' "$f"
    done | tar --null -T - -cf - | tar -xf - -C "$src"
else
    tar --exclude=./.venv --exclude=./build --exclude=.git -cf - . | tar -xf - -C "$src"
fi
cd "$src"
# Debian's interpreter and tools only: no pyenv shim, venv or PYTHONPATH from the caller.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH VIRTUAL_ENV PYTHONHOME PYENV_VERSION
dpkg-buildpackage --build=binary --no-sign -j1 >"../build.log" 2>&1 || {
    tail -40 "../build.log" >&2
    echo "build-deb.sh: dpkg-buildpackage failed, full log in $out/src/build.log" >&2
    exit 1
}
mv "../clusterip_${version}_all.deb" "$out/"
echo "$out/clusterip_${version}_all.deb"
