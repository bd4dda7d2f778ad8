#!/bin/bash
# Runs inside the node, as root, from calyx-node-job.service (see build.sh): runs the command that
# tests/node/run.sh was given in the checkout (/srv/calyx), sends its output and then its exit status to
# the host over virtio-serial ports, and powers the node off.
#   no command     the node suite (tests/node/suite)
#   critest ARGS   upstream critest against the node's Calyx (tests/node/critest.py)
#   subset         what CI would run in the node: the tests in tests/node/subset, then critest's
#                  AppArmor and cgroup specs (CRITEST_SUBSET below); fails when either fails
#   anything else  run as given
set -u
out=/dev/virtio-ports/org.calyx.out
status_port=/dev/virtio-ports/org.calyx.status
exec >"$out" 2>&1 </dev/null
cd /srv/calyx
export HOME=/root PATH=/srv/job/tools:/srv/calyx/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Under TCG a daemon started from the checkout needs 20-40 s to be ready (imports): the tests' waits
# for daemons scale by this (tests/waiting.py).
export CALYX_TEST_SLOWDOWN=${CALYX_TEST_SLOWDOWN:-6}
export CALYX_NODE_LAB=off  # tests/run.sh in the node must not boot a node of its own
uptime_s() { cut -d' ' -f1 /proc/uptime; }

echo "[node] up $(uptime_s) s: kernel $(uname -r), $(stat -fc %T /sys/fs/cgroup) at /sys/fs/cgroup," \
  "LSMs $(cat /sys/kernel/security/lsm 2>/dev/null || echo '?'), $(nproc) CPUs," \
  "$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) MB"
for unit in calyx.service docker-registry.service; do
  state=$(systemctl is-active "$unit")
  echo "[node] $unit: $state"
  [ "$state" = active ] || journalctl -b -u "$unit" --no-pager | tail -40
done
ready=$(systemctl show -p ExecMainStartTimestampMonotonic --value calyx.service)
active=$(systemctl show -p ActiveEnterTimestampMonotonic --value calyx.service)
[ "${active:-0}" -gt 0 ] && echo "[node] calyx.service: ready $(( (active - ready) / 1000 )) ms after its start"
# Where the boot went (systemd-analyze waits for the boot to finish, which includes this job).
systemctl show -p InitRDTimestampMonotonic -p UserspaceTimestampMonotonic --value |
  paste -sd' ' | awk '{printf "[node] boot: kernel and initramfs %.1f s, then systemd; its slowest units:\n", ($2-$1)/1e6}'
systemctl show '*.service' -p Id -p InactiveExitTimestampMonotonic -p ActiveEnterTimestampMonotonic |
  awk -F= '/^Id=/ {id=$2} /^InactiveExit/ {a=$2} /^ActiveEnter/ {if ($2 > a && a > 0) printf "%.1f %s\n", ($2-a)/1e6, id}' |
  sort -rn | head -6 | awk '{printf "[node]   %5.1f s %s\n", $1, $2}'

# critest's specs that need AppArmor, read cgroups (stats) or see an OOM kill in a systemd scope.
CRITEST_SUBSET='AppArmor|listing container stats|listing stats|OOMKilled'
tests_in() { grep -v '^\s*\(#\|$\)' "$1"; }

argv=()
[ -s /srv/job/command ] && mapfile -d '' argv </srv/job/command
# The host kills the node after its limit (run.sh's CALYX_NODE_TIMEOUT, in /srv/job/limit); the job
# stops 90 s before that, so what hung is shown while the node can still tell.
# (The host counts from the node's boot, as the node's uptime does.)
limit=$(cat /srv/job/limit 2>/dev/null || echo 7200)
deadline=$((limit - 90))
job() {  # the command run.sh was given
  if [ ${#argv[@]} -eq 0 ]; then
    mapfile -t files < <(tests_in tests/node/suite)
    echo "[node] node suite: ${files[*]}"
    pytest -p no:cacheprovider "${files[@]}"
  elif [ "${argv[0]}" = subset ]; then
    mapfile -t files < <(tests_in tests/node/subset)
    echo "[node] subset: ${files[*]}; critest --ginkgo.focus='$CRITEST_SUBSET'"
    pytest -p no:cacheprovider "${files[@]}"
    tests_rc=$?
    python -m tests.node.critest --ginkgo.focus="$CRITEST_SUBSET"
    critest_rc=$?
    echo "[node] subset: pytest exited $tests_rc, critest $critest_rc"
    [ "$tests_rc" -eq 0 ] && tests_rc=$critest_rc
    (exit "$tests_rc")
  elif [ "${argv[0]}" = critest ]; then
    python -m tests.node.critest "${argv[@]:1}"
  else
    "${argv[@]}"
  fi
}

# What runs when the job overstays: processes (state, kernel wait channel), the kernel stacks of those in
# uninterruptible sleep, frozen cgroups, the last words of the kernel and of the node's Calyx.
hung_report() {
  echo "[node] the job ran past its deadline ($limit s of node time less 90 s): what runs now"
  ps -eo pid,ppid,stat,etimes,wchan:32,args | grep -v ' \[[^]]*\]$'
  for d in /proc/[0-9]*; do
    [ "$(awk '{print $3}' "$d/stat" 2>/dev/null)" = D ] || continue
    echo "[node] uninterruptible: ${d#/proc/} $(tr '\0' ' ' <"$d/cmdline")"
    cat "$d/stack" 2>/dev/null
  done
  grep -rlx 'frozen 1' --include=cgroup.events /sys/fs/cgroup 2>/dev/null | sed 's/^/[node] frozen: /'
  dmesg | tail -30
  journalctl -b -u calyx.service --no-pager | tail -20
}

started=$(uptime_s)
set -m  # the job gets a process group of its own: all of it can be killed
job &
job_pid=$!
set +m
overstayed=
while kill -0 "$job_pid" 2>/dev/null; do
  if [ "$(cut -d. -f1 /proc/uptime)" -ge "$deadline" ]; then
    overstayed=1
    hung_report
    kill -KILL -- "-$job_pid" 2>/dev/null
    break
  fi
  sleep 2
done
wait "$job_pid"
rc=$?
[ -n "$overstayed" ] && rc=124
echo "[node] exit status $rc after $(awk -v a="$started" -v b="$(uptime_s)" 'BEGIN {printf "%.0f", b - a}') s" \
  "(node up $(uptime_s) s)"
echo "$rc" >"$status_port"
# The node's disk is a throwaway snapshot: power off at once, nothing to stop cleanly.
systemctl poweroff -ff
