#!/bin/sh
# boardnbd post-install (deb postinst, rpm %post, apk post-install and
# post-upgrade): create the system user boardnbd.service and the OpenRC
# script run as, and put it in the disk group so it can open block devices.
#
# It neither enables nor restarts the service: the shipped config serves
# nothing, and a restart would cut off boards that have their root file
# system on boardnbd. Restart by hand when no board depends on it.
set -e

# dpkg sets DPKG_ROOT when it installs into another root without chroot.
root="${DPKG_ROOT:-}"
user=boardnbd
home=/var/lib/boardnbd

has() { command -v "$1" >/dev/null 2>&1; }

in_root_file() { # in_root_file FILE NAME: is NAME an entry of ROOT/etc/FILE?
	[ -f "$root/etc/$1" ] && grep -q "^$2:" "$root/etc/$1"
}

nologin=/usr/sbin/nologin
[ -x "$root$nologin" ] || nologin=/sbin/nologin

if has systemd-sysusers && [ -f "$root/usr/lib/sysusers.d/boardnbd.conf" ]; then
	# Also the one way that works into another root without chroot.
	systemd-sysusers ${root:+--root="$root"} boardnbd.conf
elif [ -n "$root" ]; then
	echo "boardnbd: create the user $user (group disk) in $root yourself" >&2
elif has useradd; then
	in_root_file group "$user" || groupadd --system "$user"
	in_root_file passwd "$user" ||
		useradd --system --gid "$user" --groups disk --home-dir "$home" \
			--no-create-home --shell "$nologin" --comment "boardnbd NBD server" "$user"
	id -nG "$user" | grep -qw disk || usermod -a -G disk "$user"
elif has adduser; then
	# BusyBox (Alpine, Buildroot).
	in_root_file group "$user" || addgroup -S "$user"
	in_root_file passwd "$user" ||
		adduser -S -D -H -h "$home" -s "$nologin" -G "$user" -g "boardnbd NBD server" "$user"
	id -nG "$user" | grep -qw disk || addgroup "$user" disk
else
	echo "boardnbd: no useradd or adduser; create the user $user (group disk) yourself" >&2
fi

if [ -z "$root" ] && [ -d /run/systemd/system ] && has systemctl; then
	systemctl daemon-reload || true
	if systemctl is-active --quiet boardnbd.service; then
		echo "boardnbd: restart it (systemctl restart boardnbd) when no board is using it" >&2
	fi
fi
exit 0
