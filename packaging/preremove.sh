#!/bin/sh
# boardnbd pre-remove (deb prerm, rpm %preun, apk pre-deinstall): stop and
# disable the service when the package is removed, not when it is upgraded.
set -e

case "${1:-}" in
upgrade | failed-upgrade | deconfigure | 1) exit 0 ;; # deb upgrade; rpm: 1 = upgrade
esac
[ -z "${DPKG_ROOT:-}" ] || exit 0

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
	systemctl --no-reload disable --now boardnbd.socket boardnbd.service >/dev/null 2>&1 || true
elif command -v rc-service >/dev/null 2>&1; then
	rc-service --ifstarted boardnbd stop || true
	rc-update del boardnbd >/dev/null 2>&1 || true
fi
exit 0
