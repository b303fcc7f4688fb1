#!/usr/bin/env bash
# The dashboard's browser test drives Debian's Chromium (Playwright's own browser downloads are not
# used). Install it with apt-get when it is missing; fail loudly when that is not possible.
set -eu
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
echo "Chromium is missing; installing it with apt-get"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
[ -x "$CHROMIUM" ] || { echo "FATAL: $CHROMIUM still missing after apt-get" >&2; exit 1; }
