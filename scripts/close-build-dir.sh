#!/bin/sh
# Makes a build directory writable by its owner alone, as stockade requires of the directory it runs
# stockade-spawn and stockade-server from (SiblingBinary): under a umask of 002 SwiftPM leaves every
# directory and object writable by the group, who could then change what gets linked. Run before a
# build (with umask 022 for it), so nothing is built in a tree another user may write.
#
# usage: scripts/close-build-dir.sh DIR...   (a DIR that does not exist yet is skipped)
set -eu
for dir in "$@"; do
    [ -d "$dir" ] || continue
    # -H: DIR itself may be a link to the tree. One walk (a tree of 28 000 files takes 0.25 s a
    # walk, at every bin/stockade call): what is writable by others is closed as it is met, and a
    # file of another user, who could rewrite it whatever its mode, stops the walk and is refused,
    # naming it.
    other=$(find -H "$dir" \( ! -user "$(id -u)" -print -quit \) -o \( -perm /022 ! -type l -exec chmod go-w {} + \))
    if [ -n "$other" ]; then
        echo "close-build-dir: $other is owned by another user, who could change what gets built: remove $dir (rm -rf $dir) and build again" >&2
        exit 1
    fi
done
