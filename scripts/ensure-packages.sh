#!/bin/sh
# Installs the Debian packages in scripts/packages.txt that are missing: nothing at all when every one is
# installed; otherwise, as root, one `apt-get update` and one `apt-get install -y` of just the missing ones.
#
# usage: scripts/ensure-packages.sh
#   STOCKADE_PACKAGES=FILE  another list (default: scripts/packages.txt beside this script)
#   STOCKADE_APT=COMMAND    what to run instead of apt-get (e.g. `echo` to see what would be done);
#                           given, it runs whoever the user is
set -eu

here=$(cd "$(dirname "$0")" && pwd)
list=${STOCKADE_PACKAGES:-$here/packages.txt}
apt=${STOCKADE_APT:-apt-get}

if [ ! -r "$list" ]; then
    echo "stockade: cannot read the package list $list" >&2
    exit 1
fi
if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "stockade: not a Debian system (no dpkg-query): install the equivalents of $(grep -v '^#' "$list" | tr '\n' ' ')yourself" >&2
    exit 0
fi

missing=
for pkg in $(grep -v '^[[:space:]]*#' "$list"); do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done
[ -z "$missing" ] && exit 0

if [ -z "${STOCKADE_APT:-}" ] && [ "$(id -u)" != 0 ]; then
    echo "stockade: missing Debian packages:$missing; run this again as root, or: sudo apt-get install -y$missing" >&2
    exit 1
fi
echo "stockade: installing the missing Debian packages:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
$apt update
# shellcheck disable=SC2086 # one word per package
$apt install -y $missing
