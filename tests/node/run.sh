#!/usr/bin/env bash
# Run COMMAND as root in this checkout inside a Debian 12 node booted under qemu (cgroup v2 only,
# systemd as PID 1, AppArmor, Calyx installed by deploy/install.sh and running under deploy/calyx.service
# with the systemd cgroup driver). Streams the output here and exits with COMMAND's status.
#
#   tests/node/run.sh                  the node suite (tests/node/suite)
#   tests/node/run.sh critest [FLAGS]  upstream critest against the node's Calyx ($CRITEST, else critest
#                                      from ../shared/tools or PATH; copied in, never committed)
#   tests/node/run.sh subset           what CI would run: tests/node/subset, then critest's AppArmor and
#                                      cgroup specs
#   tests/node/run.sh CMD [ARGS...]    anything, e.g. bash -c 'crictl ps -a; cat /proc/self/cgroup'
#
# Environment: CALYX_NODE_CACHE (image cache, default /var/cache/calyx-node), CALYX_NODE_ACCEL (kvm or
# tcg; default: kvm when the CPU has vmx/svm and /dev/kvm opens, else tcg), CALYX_NODE_MEMORY (MB, 3072),
# CALYX_NODE_CPUS (2), CALYX_NODE_TIMEOUT (seconds before the node is killed, 7200), CRITEST, CRICTL,
# CALYX_NODE_CONSOLE (a file that gets the node's serial console: kernel and systemd messages),
# CALYX_NODE_APPEND (more kernel parameters, e.g. loglevel=7 to see the kernel's boot on that console).
# Exit status: COMMAND's; 124 when the node timed out, 125 when it never reported a status.
# Nothing stays behind: the qemu process (killed by PID on SIGINT/SIGTERM), its snapshot and the temp dir.
set -euo pipefail
{  # the whole script is read before it runs: editing it cannot change a run under way
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
memory=${CALYX_NODE_MEMORY:-3072}
cpus=${CALYX_NODE_CPUS:-2}
limit=${CALYX_NODE_TIMEOUT:-7200}

log() { printf '[node] %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }
[ "$(id -u)" = 0 ] || die "run as root (the image build needs it)"
for tool in qemu-system-x86_64 mmdebstrap mke2fs cpio /bin/busybox "$repo/.venv/bin/python"; do
  command -v "$tool" >/dev/null || die "$tool is missing: bash deploy/install.sh --node-lab"
done

# A tool from cri-tools (never part of the project): $VAR, else ../shared/tools beside this checkout or
# beside the main checkout of this worktree, else PATH.
find_tool() {
  local name=$1 explicit=$2 main dir
  if [ -n "$explicit" ]; then [ -x "$explicit" ] && echo "$explicit"; return; fi
  main=$(cd "$repo" && cd "$(git rev-parse --git-common-dir)/.." 2>/dev/null && pwd || true)
  for dir in "$repo/../shared/tools" ${main:+"$main/../shared/tools"}; do
    [ -x "$dir/$name" ] && { echo "$dir/$name"; return; }
  done
  command -v "$name" || true
}

accel() {
  case ${CALYX_NODE_ACCEL:-} in
    kvm) echo "-accel kvm -cpu host"; return ;;
    tcg) echo "-accel tcg,thread=multi -cpu max"; return ;;
    "") ;;
    *) die "CALYX_NODE_ACCEL must be kvm or tcg" ;;
  esac
  # /dev/kvm alone is not enough: without vmx/svm a KVM guest hangs early in its boot.
  if grep -qwE 'vmx|svm' /proc/cpuinfo && [ -r /dev/kvm ] && [ -w /dev/kvm ] &&
     python3 -c 'import os; os.close(os.open("/dev/kvm", os.O_RDWR))' 2>/dev/null; then
    echo "-accel kvm -cpu host"
  else
    echo "-accel tcg,thread=multi -cpu max"
  fi
}

work=$(mktemp -d /tmp/calyx-node.XXXXXX)
build_pid=
qemu_pid=
tail_pid=
cleanup() {
  local rc=$?
  set +e  # every step runs, whatever the one before did
  # build.sh runs in a process group of its own: the signal reaches mmdebstrap, pip, the chroot too,
  # and build.sh's own trap removes its temp dir.
  [ -n "$build_pid" ] && kill -TERM -- "-$build_pid" 2>/dev/null
  if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
    kill "$qemu_pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$qemu_pid" 2>/dev/null
  fi
  [ -n "$tail_pid" ] && kill "$tail_pid" 2>/dev/null
  [ -n "${CALYX_NODE_CONSOLE:-}" ] && [ -f "$work/console.log" ] && cp "$work/console.log" "$CALYX_NODE_CONSOLE"
  wait 2>/dev/null
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

t0=$SECONDS
# In the background, so that a signal to run.sh is handled at once (bash defers traps while it waits
# for a foreground command).
setsid bash "$here/build.sh" >"$work/image" &
build_pid=$!
wait "$build_pid" || die "the node image was not built"
build_pid=
read -r image kver <"$work/image" || true
[ -n "${kver:-}" ] && [ -f "$image" ] || die "the node image was not built"
build_s=$((SECONDS - t0))

# --- the job disk: this checkout as it is now (tracked and new files), the tools, the command ------------
mkdir -p "$work/job/checkout" "$work/job/tools"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
  tar -cf - --null -T -) | tar -C "$work/job/checkout" -xf -
# Compiled here, with the node's Python (Debian's 3.11 on both), so the node does not compile under TCG.
/usr/bin/python3 -m compileall -q -s "$work/job/checkout" -p /srv/calyx "$work/job/checkout" >/dev/null || true
critest=$(find_tool critest "${CRITEST:-}")
crictl=$(find_tool crictl "${CRICTL:-}")
[ -n "$critest" ] && cp "$critest" "$work/job/tools/critest"
[ -n "$crictl" ] && cp "$crictl" "$work/job/tools/crictl"
if { [ "${1:-}" = critest ] || [ "${1:-}" = subset ]; } && [ -z "$critest" ]; then
  die "no critest binary: set CRITEST or put cri-tools' critest in ../shared/tools or on PATH"
fi
[ $# -gt 0 ] && printf '%s\0' "$@" >"$work/job/command" || : >"$work/job/command"
echo "$limit" >"$work/job/limit"  # guest.sh stops the job a little before, to say what hung
tar -C "$work/job" -cf "$work/job.tar" .
rm -rf "$work/job"

# --- boot -----------------------------------------------------------------------------------------------------
: >"$work/out"
: >"$work/status"
read -ra accel_args <<<"$(accel)"
log "booting $image (kernel $kver, ${accel_args[*]}, $cpus CPUs, $memory MB; image ready in $build_s s)"
# snapshot=on: the node writes to a temp overlay (in $TMPDIR, our work dir), never to the cached image.
TMPDIR=$work nice -n 10 qemu-system-x86_64 "${accel_args[@]}" -m "$memory" -smp "$cpus" \
  -nodefaults -no-user-config -display none -no-reboot -nic none \
  -kernel "/boot/vmlinuz-$kver" -initrd "${image%.img}.initrd" \
  -append "root=/dev/vda rw console=ttyS0 quiet loglevel=3 systemd.show_status=false ${CALYX_NODE_APPEND:-}" \
  -drive "file=$image,if=virtio,format=raw,snapshot=on" \
  -drive "file=$work/job.tar,if=virtio,format=raw,readonly=on" \
  -serial "file:$work/console.log" \
  -device virtio-serial-pci \
  -chardev "file,id=out,path=$work/out" -device virtserialport,chardev=out,name=org.calyx.out \
  -chardev "file,id=status,path=$work/status" -device virtserialport,chardev=status,name=org.calyx.status \
  </dev/null >"$work/qemu.log" 2>&1 &
qemu_pid=$!
boot_start=$SECONDS
tail -f -n +1 --pid="$qemu_pid" "$work/out" &
tail_pid=$!

timed_out=
while kill -0 "$qemu_pid" 2>/dev/null; do
  if [ $((SECONDS - boot_start)) -ge "$limit" ]; then
    log "the node ran for ${limit} s (CALYX_NODE_TIMEOUT): killing qemu $qemu_pid"
    timed_out=1
    kill "$qemu_pid" 2>/dev/null || true
  fi
  sleep 1
done
wait "$qemu_pid" 2>/dev/null || true
qemu_pid=
wait "$tail_pid" 2>/dev/null || true
tail_pid=
status=$(tr -dc 0-9 <"$work/status")
log "node ran $((SECONDS - boot_start)) s (image ready in $build_s s)"
if [ -n "$timed_out" ]; then
  log "the end of the node's console and of qemu's log:"
  tail -40 "$work/console.log" >&2 || true
  tail -20 "$work/qemu.log" >&2 || true
  exit 124
fi
if [ -z "$status" ]; then
  log "the node reported no exit status; the end of its console and of qemu's log:"
  tail -40 "$work/console.log" >&2 || true
  tail -20 "$work/qemu.log" >&2 || true
  exit 125
fi
exit "$status"
}
