#!/bin/sh
# Install the system programs the test suite runs (real servers, a real browser), or say how.
#
#   sh tools/system-packages.sh PACKAGE=PROGRAM ...
#
# Each argument names a Debian package and the program it provides (`make test` passes its
# SYSTEM_PACKAGES variable). Programs already on PATH are left alone. The missing packages are
# installed with apt-get when this runs as root or with passwordless sudo; otherwise it prints one
# line with the exact command to run and exits 1, before any test starts.
# Only shell built-ins, `id`, `sudo` and `apt-get` are used.

missing=""
for pair in "$@"; do
    pkg=${pair%%=*}
    prog=${pair#*=}
    if ! command -v "$prog" >/dev/null 2>&1; then
        missing="$missing $pkg"
    fi
done
missing=${missing# }
[ -z "$missing" ] && exit 0

if [ "$(id -u 2>/dev/null)" = "0" ]; then
    run=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    run="sudo"
else
    echo "make test needs system packages that are not installed ($missing): run  sudo apt-get update && sudo apt-get install -y $missing  then make test again" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "make test needs system packages that are not installed ($missing) and this system has no apt-get: install them with its package manager, then make test again" >&2
    exit 1
fi
echo "installing the system packages the tests need: $missing" >&2
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086  # $missing is a list of package names
$run apt-get update -qq && $run apt-get install -y -qq $missing
