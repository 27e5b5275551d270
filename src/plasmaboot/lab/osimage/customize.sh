#!/bin/sh
# The lab's installed OS, made generic: mmdebstrap runs this as a customize hook with the
# new root as $1 (/proc, /sys and /dev are mounted in it). Nothing here is node-specific:
# the node's hostname, keys and secrets arrive with the install (`--extra-files`).
set -eu
root=$1
in_root() { chroot "$root" "$@"; }

# Networking: systemd-networkd, DHCP on the first ethernet NIC (the lab has one).
mkdir -p "$root/etc/systemd/network"
cat >"$root/etc/systemd/network/20-plasmaboot-lab.network" <<'UNIT'
[Match]
Type=ether
Name=en* eth*

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
UNIT
in_root systemctl enable systemd-networkd.service
: >"$root/etc/resolv.conf"
echo unprovisioned >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"

# etcd (the lab's stand-in for Chainfire) is started by first boot with the cluster's
# settings, not by Debian's default single-node unit.
in_root systemctl disable etcd.service

# SSH: root by key only; each machine makes its own ed25519 host key on first start
# (no host key is baked into the image, and RSA keygen is slow under TCG).
mkdir -p "$root/etc/ssh/sshd_config.d" "$root/etc/systemd/system/ssh.service.d"
cat >"$root/etc/ssh/sshd_config.d/plasmaboot-lab.conf" <<'CONF'
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
HostKey /etc/ssh/ssh_host_ed25519_key
CONF
rm -f "$root"/etc/ssh/ssh_host_*
cat >"$root/etc/systemd/system/ssh.service.d/plasmaboot-lab-host-key.conf" <<'UNIT'
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'test -e /etc/ssh/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key'
ExecStartPre=/usr/sbin/sshd -t
UNIT
mkdir -p "$root/root/.ssh"
chmod 0700 "$root/root/.ssh"

# Kernel modules: keep what a virtio machine and a cluster node use, drop the rest.
for kdir in "$root"/lib/modules/*; do
	kernel=$kdir/kernel
	for dir in "$kernel"/drivers/*; do
		case ${dir##*/} in
		virtio | block | char | net | md | input | hid | vhost) ;;
		*) rm -rf "$dir" ;;
		esac
	done
	for dir in "$kernel"/drivers/net/*; do
		case ${dir##*/} in
		virtio_net.ko | net_failover.ko | tun.ko | veth.ko | dummy.ko | vxlan | geneve.ko | macvlan.ko | ipvlan) ;;
		*) rm -rf "$dir" ;;
		esac
	done
	for dir in "$kernel"/fs/*; do
		case ${dir##*/} in
		fat | nls | overlayfs | fuse | isofs | squashfs | autofs | efivarfs | binfmt_misc.ko | configfs | pstore) ;;
		*) rm -rf "$dir" ;;
		esac
	done
	rm -rf "$kernel"/sound "$kernel"/drivers/net/wireless "$kernel"/net/wireless \
		"$kernel"/net/bluetooth "$kernel"/net/mac80211
	in_root depmod -a "${kdir##*/}"
done

# initramfs: only what mounting a virtio root needs (ext4 is built into the cloud kernel).
mkdir -p "$root/etc/initramfs-tools/conf.d"
printf 'MODULES=list\nCOMPRESS=zstd\n' >"$root/etc/initramfs-tools/conf.d/plasmaboot-lab.conf"
printf 'virtio_pci\nvirtio_blk\n' >>"$root/etc/initramfs-tools/modules"
in_root update-initramfs -u -k all

rm -rf "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old "$root"/tmp/* \
	"$root"/boot/System.map-* "$root"/boot/config-*
