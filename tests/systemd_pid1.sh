#!/bin/bash
# The inside half of tests/systemd_fixture.py: becomes systemd, PID 1 of fresh PID/mount/UTS/IPC/net
# namespaces (made by the unshare that runs this script), in a cgroup namespace rooted at cgroups of
# its own. Not meant to be run by hand.
#
#   stage "enter": still sees the host's /proc and cgroup mounts. Moves itself into the cgroup dirs
#                  the fixture made (CALYX_SD_CGDIRS, one per line), then unshares the cgroup namespace
#                  so that those dirs become "/" for systemd.
#   stage "boot":  mounts a private /run, /proc, a read-only /sys with fresh cgroup mounts (one per
#                  controller in CALYX_SD_CONTROLLERS) and execs systemd with a unit path that holds
#                  only the whitelisted units copied to CALYX_SD_UNITS.
set -euo pipefail
self=$(readlink -f "$0")

case "${1:-}" in
enter)
  while IFS= read -r dir; do
    [ -n "$dir" ] && echo 0 > "$dir/cgroup.procs"
  done <<< "$CALYX_SD_CGDIRS"
  exec unshare --cgroup -- "$self" boot
  ;;
boot)
  mount --make-rprivate /
  # /run first: nothing systemd or dbus writes may land in the host's /run.
  mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
  mount -t proc -o nosuid,nodev,noexec proc /proc
  umount -R /sys/fs/cgroup
  mount --bind /sys /sys
  mount -o remount,bind,ro,nosuid,nodev,noexec /sys
  mount -t tmpfs -o mode=755,nosuid,nodev,noexec tmpfs /sys/fs/cgroup
  for controller in $CALYX_SD_CONTROLLERS; do
    mkdir "/sys/fs/cgroup/$controller"
    mount -t cgroup -o "nosuid,nodev,noexec,$controller" cgroup "/sys/fs/cgroup/$controller"
  done
  mkdir /sys/fs/cgroup/systemd /sys/fs/cgroup/unified
  mount -t cgroup -o nosuid,nodev,noexec,none,name=systemd cgroup /sys/fs/cgroup/systemd
  mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup/unified
  mkdir -p /run/lock /run/calyx-sd/units /run/calyx-sd/none /run/systemd/journald.conf.d
  cp -a "$CALYX_SD_UNITS/." /run/calyx-sd/units/
  printf '[Journal]\nStorage=volatile\n' > /run/systemd/journald.conf.d/volatile.conf
  # /dev is the host's devtmpfs; systemd's console is /dev/null (its state is read over D-Bus).
  mount --bind /dev/null /dev/console
  exec env -i container=calyx-test PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    SYSTEMD_UNIT_PATH=/run/systemd/system.control:/run/systemd/transient:/run/calyx-sd/units \
    SYSTEMD_GENERATOR_PATH=/run/calyx-sd/none SYSTEMD_ENVIRONMENT_GENERATOR_PATH=/run/calyx-sd/none \
    /lib/systemd/systemd --system --unit=calyx-test.target --show-status=0
  ;;
*)
  echo "usage: $0 enter|boot (run by tests/systemd_fixture.py)" >&2
  exit 2
  ;;
esac
