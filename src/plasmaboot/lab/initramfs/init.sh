#!/bin/sh
# plasmaboot lab image: PID 1 of the initramfs (busybox sh).
#
# A miniature of the real installer: DHCP, look this machine up in the agent API, report
# each stage the VM really went through, "install" by writing a marker to the virtual disk,
# reboot; booted again in firstboot mode (the lab's stand-in for booting the installed disk)
# it checks the marker, joins (another marker) and powers off. Every wait is bounded and
# every failure reports `failed` and powers off: the lab and its tests wait on QEMU exiting.

PATH=/bin
export PATH
INSTALL_MARKER_SECTOR=0
JOIN_MARKER_SECTOR=1
DISK=/dev/vda
SESSION=""
NODE=""

say() { echo "plasmaboot-lab: $*"; }

power_off() {
	sync
	say "powering off"
	poweroff -f
	sleep 5
	exit 1 # unreachable unless poweroff failed; the kernel then panics, never hangs
}

# shellcheck disable=SC1003 # a backslash inside single quotes, not an escaped quote
json_text() { printf '%s' "$1" | tr -d '"\\' | tr '\n\t' '  '; }

# http_post PATH BEARER JSON: HTTP/1.0 by hand, so a refusal's body reaches the console
# (busybox wget drops the body of a non-2xx answer). Sets HTTP_STATUS and HTTP_BODY.
http_post() {
	length=$(printf '%s' "$3" | wc -c)
	printf 'POST %s%s HTTP/1.0\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' \
		"$URL_PATH" "$1" "$URL_HOSTPORT" "$2" "$length" "$3" >/tmp/http-request
	rm -f /tmp/http-response
	timeout 30 nc -w 10 "$URL_HOST" "$URL_PORT" -e /bin/http-exchange
	response=$(tr -d '\r' </tmp/http-response 2>/dev/null)
	HTTP_STATUS=$(printf '%s\n' "$response" | head -n 1 | cut -d ' ' -f 2)
	HTTP_BODY=$(printf '%s\n' "$response" | sed '1,/^$/d')
}

fail() {
	reason=$(json_text "$*")
	say "FAILED: $*"
	if [ -n "$SESSION" ]; then
		http_post /api/v1/agent/report "$SESSION" \
			"{\"stage\": \"failed\", \"detail\": {\"node\": \"$NODE\", \"reason\": \"$reason\"}}"
		say "reported failed: HTTP ${HTTP_STATUS:-no answer} $HTTP_BODY"
	fi
	power_off
}

# report STAGE [EXTRA_DETAIL_JSON_MEMBERS]: a 409 means the lifecycle refused the stage.
report() {
	detail="\"node\": \"$NODE\""
	[ -n "$2" ] && detail="$detail, $2"
	http_post /api/v1/agent/report "$SESSION" "{\"stage\": \"$1\", \"detail\": {$detail}}"
	if [ "$HTTP_STATUS" != 200 ]; then
		say "report $1 refused: HTTP ${HTTP_STATUS:-no answer} $HTTP_BODY"
		fail "the server refused stage $1 (HTTP ${HTTP_STATUS:-no answer})"
	fi
	say "reported $1"
}

read_sector() { dd if="$DISK" bs=512 skip="$1" count=1 2>/dev/null | tr -d '\000' | head -n 1; }

write_sector() {
	printf '%s\n' "$2" | dd of="$DISK" bs=512 seek="$1" conv=notrunc,sync 2>/dev/null &&
		sync
}

mount_pseudo_filesystems() {
	mkdir -p /proc /sys /dev /tmp
	mount -t proc proc /proc
	mount -t sysfs sysfs /sys
	mount -t devtmpfs devtmpfs /dev
	exec </dev/console >/dev/console 2>&1
}

load_modules() {
	while read -r module; do
		# a module built into this kernel fails to load: that is fine, its driver is there
		insmod "/lib/modules/$module.ko" 2>/dev/null && say "loaded $module"
	done </lib/modules/order
}

parse_cmdline() {
	# shellcheck disable=SC2013 # the command line is words, not lines
	for word in $(cat /proc/cmdline); do
		case "$word" in
		plasmaboot.url=*) URL=${word#plasmaboot.url=} ;;
		plasmaboot.node=*) NODE=${word#plasmaboot.node=} ;;
		plasmaboot.token=*) BOOT_TOKEN=${word#plasmaboot.token=} ;;
		plasmaboot.stage=*) STAGE=${word#plasmaboot.stage=} ;;
		esac
	done
	[ -n "$URL" ] || fail "no plasmaboot.url= on the kernel command line"
	[ -n "$BOOT_TOKEN" ] || fail "no plasmaboot.token= on the kernel command line"
	case "$STAGE" in
	install | firstboot) ;;
	*) fail "plasmaboot.stage= must be install or firstboot, got '$STAGE'" ;;
	esac
	case "$URL" in
	http://*) ;;
	*) fail "plasmaboot.url=$URL: the lab image speaks plain http:// only" ;;
	esac
	rest=${URL#http://}
	URL_HOSTPORT=${rest%%/*}
	URL_PATH=""
	[ "$URL_HOSTPORT" = "$rest" ] || URL_PATH=/${rest#*/}
	URL_PATH=${URL_PATH%/}
	URL_HOST=${URL_HOSTPORT%%:*}
	URL_PORT=80
	[ "$URL_HOST" = "$URL_HOSTPORT" ] || URL_PORT=${URL_HOSTPORT##*:}
	say "node ${NODE:-?}, stage $STAGE, server $URL"
}

bring_up_network() {
	IFACE=""
	tries=0
	while [ -z "$IFACE" ] && [ "$tries" -lt 50 ]; do
		for path in /sys/class/net/*; do
			name=${path##*/}
			[ "$name" = lo ] || [ -n "$IFACE" ] || IFACE=$name
		done
		[ -n "$IFACE" ] || usleep 200000
		tries=$((tries + 1))
	done
	[ -n "$IFACE" ] || fail "no network interface appeared (is the NIC virtio-net?)"
	ip link set lo up
	ip link set "$IFACE" up
	MAC=$(cat "/sys/class/net/$IFACE/address")
	say "DHCP on $IFACE ($MAC)"
	udhcpc -i "$IFACE" -s /etc/udhcpc/default.script -q -n -t 10 -T 2 ||
		fail "DHCP on $IFACE got no lease"
}

look_up() {
	attempt=1
	while :; do
		http_post /api/v1/agent/lookup "$BOOT_TOKEN" "{\"mac\": \"$MAC\"}"
		[ -n "$HTTP_STATUS" ] || [ "$attempt" -ge 5 ] && break
		say "agent API did not answer (attempt $attempt), retrying in 2 s"
		attempt=$((attempt + 1))
		sleep 2
	done
	[ -n "$HTTP_STATUS" ] || fail "the agent API at $URL did not answer the lookup"
	[ "$HTTP_STATUS" = 200 ] || fail "lookup of $MAC refused: HTTP $HTTP_STATUS $HTTP_BODY"
	SESSION=$(printf '%s' "$HTTP_BODY" | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p')
	hostname=$(printf '%s' "$HTTP_BODY" | sed -n 's/.*"hostname": *"\([^"]*\)".*/\1/p')
	[ -n "$SESSION" ] || fail "lookup answer has no session token"
	[ -z "$NODE" ] || [ "$NODE" = "$hostname" ] ||
		fail "the server says this MAC is $hostname, the command line says $NODE"
	NODE=$hostname
	say "looked up: this is $NODE"
}

lab_install() {
	report installer-booted "\"mac\": \"$MAC\""
	report installing "\"disk\": \"$DISK\""
	[ -b "$DISK" ] || fail "no disk $DISK (is the drive if=virtio?)"
	write_sector "$JOIN_MARKER_SECTOR" "" || fail "cannot clear $DISK"
	write_sector "$INSTALL_MARKER_SECTOR" "plasmaboot-lab-installed $NODE" ||
		fail "cannot write the install marker to $DISK"
	say "wrote the install marker to $DISK"
	report installed "\"disk\": \"$DISK\""
	say "rebooting into the installed system"
	sync
	reboot -f
	sleep 5
	power_off
}

lab_first_boot() {
	[ -b "$DISK" ] || fail "no disk $DISK (is the drive if=virtio?)"
	installed=$(read_sector "$INSTALL_MARKER_SECTOR")
	[ "$installed" = "plasmaboot-lab-installed $NODE" ] ||
		fail "no install marker for $NODE on $DISK (found '$installed')"
	if [ "$(read_sector "$JOIN_MARKER_SECTOR")" = "plasmaboot-lab-joined $NODE" ]; then
		say "already joined: a later boot of an installed node"
		report booted-from-disk "\"disk\": \"$DISK\""
		power_off
	fi
	report first-boot "\"disk\": \"$DISK\""
	report joining
	write_sector "$JOIN_MARKER_SECTOR" "plasmaboot-lab-joined $NODE" ||
		fail "cannot write the joined marker to $DISK"
	report joined
	power_off
}

mount_pseudo_filesystems
say "lab image starting"
load_modules
parse_cmdline
bring_up_network
look_up
case "$STAGE" in
install) lab_install ;;
firstboot) lab_first_boot ;;
esac
power_off
