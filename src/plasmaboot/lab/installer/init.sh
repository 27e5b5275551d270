#!/bin/sh
# plasmaboot lab installer: PID 1 of the installer netboot image (Debian's dash).
#
# Brings the machine up for an install over SSH, as nixos-anywhere expects of its target:
# modules, DHCP, sshd with the lab's key; then runs the installer agent
# (`python3 -m plasmaboot.agent`: looks this machine up and reports `installer-booted`,
# after which the server runs the install command) and waits for the install to reboot
# the machine. Every wait is bounded; every failure prints a `plasmaboot-lab:` line on the
# serial console and powers off, so the lab and its tests can wait on QEMU exiting.

PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
AGENT_TIMEOUT_S=300
INSTALL_WAIT_S=1800

say() { echo "plasmaboot-lab: $*"; }

power_off() {
	sync
	say "powering off"
	busybox poweroff -f
	sleep 5
	exit 1 # unreachable unless poweroff failed; the kernel then panics, never hangs
}

fail() {
	say "FAILED: $*"
	power_off
}

mount_pseudo_filesystems() {
	mkdir -p /proc /sys /dev /run /tmp
	mount -t proc proc /proc
	mount -t sysfs sysfs /sys
	mount -t devtmpfs devtmpfs /dev
	mkdir -p /dev/pts
	mount -t devpts devpts /dev/pts
	mount -t tmpfs -o mode=0755 tmpfs /run
	exec </dev/console >/dev/console 2>&1
}

load_modules() {
	while read -r module; do
		modprobe "$module" || say "module $module did not load"
	done </etc/plasmaboot/modules
}

bring_up_network() {
	IFACE=""
	tries=0
	while [ -z "$IFACE" ] && [ "$tries" -lt 50 ]; do
		for path in /sys/class/net/*; do
			name=${path##*/}
			[ "$name" = lo ] || [ -n "$IFACE" ] || IFACE=$name
		done
		[ -n "$IFACE" ] || sleep 0.2
		tries=$((tries + 1))
	done
	[ -n "$IFACE" ] || fail "no network interface appeared (is the NIC virtio-net?)"
	ip link set lo up
	ip link set "$IFACE" up
	MAC=$(cat "/sys/class/net/$IFACE/address")
	say "DHCP on $IFACE ($MAC)"
	busybox udhcpc -i "$IFACE" -s /etc/udhcpc/default.script -q -n -t 10 -T 2 ||
		fail "DHCP on $IFACE got no lease"
}

start_sshd() {
	mkdir -p /run/sshd
	ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key ||
		fail "cannot make an SSH host key"
	/usr/sbin/sshd -E /run/sshd.log || fail "sshd did not start: $(cat /run/sshd.log)"
	say "sshd is listening on port 22 (root, lab key only)"
}

run_agent() {
	if ! grep -q "plasmaboot.url=" /proc/cmdline; then
		say "no plasmaboot.url= on the kernel command line: no agent, waiting for an install over SSH"
		return
	fi
	say "running the installer agent"
	PYTHONPATH=/opt/plasmaboot timeout "$AGENT_TIMEOUT_S" python3 -m plasmaboot.agent
	status=$?
	[ "$status" -eq 0 ] || fail "the installer agent exited $status"
	say "the installer agent is done"
}

wait_for_install() {
	say "waiting for the install to reboot this machine (at most $INSTALL_WAIT_S s)"
	waited=0
	while [ "$waited" -lt "$INSTALL_WAIT_S" ]; do
		sleep 5
		waited=$((waited + 5))
	done
	fail "no install rebooted this machine within $INSTALL_WAIT_S s"
}

mount_pseudo_filesystems
say "installer starting"
load_modules
bring_up_network
start_sshd
run_agent
wait_for_install
