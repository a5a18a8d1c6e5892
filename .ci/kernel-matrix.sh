#!/usr/bin/env bash
# Kernel matrix: boot Debian kernels under qemu with nothing but cgroup v2 mounted, and run real
# `stockade` runs and `stockade verify` in each guest. The host's own kernel and cgroup layout do not
# matter: this is how the v2 driver is proven on real kernels, not only on the fake tree the tests use.
#
# Usage: .ci/kernel-matrix.sh [KERNEL...]          (default: 6.1 6.12)
#   KERNEL is a series ("6.1", "6.12": the newest linux-image-<series>*-amd64-unsigned package in the
#   apt sources, resolved at run time so a new ABI number needs no edit) or an exact package name.
# Environment:
#   STOCKADE             the stockade binary to test (default .build-release/release/stockade);
#                        stockade-probe and stockade-spawn must sit next to it, as they do when deployed.
#   KERNEL_MATRIX_DIR    work directory; kernels are cached in it (default ${TMPDIR:-/tmp}/stockade-kernel-matrix)
#   GUEST_TIMEOUT        wall-clock bound on one guest, seconds (default 900)
#   RUN_TIMEOUT          bound on one `stockade run` inside the guest, seconds (default 40); verify gets 5x
#   ACCEL                qemu accelerator (default tcg: KVM guests hang on nested VMs such as CI's)
# Needs qemu-system-x86, busybox-static, cpio, a C compiler with static glibc (gcc, libc6-dev) and
# util-linux's unshare; root only when apt has no package lists yet (it runs apt-get update then).
# Exit status: 0 only when every guest finished and passed every check.
set -euo pipefail

root_dir=$(cd "$(dirname "$0")/.." && pwd)
STOCKADE=$(readlink -f "${STOCKADE:-$root_dir/.build-release/release/stockade}")
PROBE=$(dirname "$STOCKADE")/stockade-probe
SPAWN=$(dirname "$STOCKADE")/stockade-spawn
W=${KERNEL_MATRIX_DIR:-${TMPDIR:-/tmp}/stockade-kernel-matrix}
GUEST_TIMEOUT=${GUEST_TIMEOUT:-900}
RUN_TIMEOUT=${RUN_TIMEOUT:-40}
ACCEL=${ACCEL:-tcg}
CC=${CC:-cc}
[ $# -gt 0 ] && kernels=("$@") || kernels=(6.1 6.12)

# The checks every guest must pass; a check that never reports counts as failed.
CHECKS="hello limits oom pids timeout cpu cleanup stale service-cgroup container-cgroupns verify cleanup-end"

die() { echo "kernel-matrix: $*" >&2; exit 2; }
[ -x "$STOCKADE" ] || die "no stockade binary at $STOCKADE: build it (scripts/build-release.sh .build-release) or set STOCKADE"
[ -x "$PROBE" ] || die "no stockade-probe next to $STOCKADE: build it (--product stockade-probe)"
[ -x "$SPAWN" ] || die "no stockade-spawn next to $STOCKADE: build it (--product stockade-spawn)"
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
{ [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } || missing+=(busybox-static)   # static: ldd refuses it
command -v cpio >/dev/null || missing+=(cpio)
command -v "$CC" >/dev/null || missing+=(gcc libc6-dev)
command -v unshare >/dev/null || missing+=(util-linux)
[ ${#missing[@]} -eq 0 ] || die "missing host tools: apt-get install ${missing[*]} (.ci/run installs .ci/kernel-matrix-packages.txt)"
mkdir -p "$W/kernels" "$W/bin"

# --- Kernels -------------------------------------------------------------------------------------
newest_package() {   # newest unsigned amd64 image of a series that apt can download
    local series=${1//./\\.}
    apt-cache pkgnames linux-image- 2>/dev/null \
        | grep -E "^linux-image-${series}[.][0-9]+([.-][0-9]+)?(\+deb[0-9]+)?-amd64-unsigned\$" \
        | sort -V | tail -1
}
resolve_kernel() {
    case $1 in
        linux-image-*) echo "$1"; return;;
    esac
    local pkg; pkg=$(newest_package "$1")
    if [ -z "$pkg" ]; then   # a fresh machine may have no package lists yet
        apt-get update -qq >&2 || true
        pkg=$(newest_package "$1")
    fi
    [ -n "$pkg" ] || die "no linux-image-$1*-amd64-unsigned package in the apt sources"
    echo "$pkg"
}
fetch_kernel() {     # extract the package's vmlinuz once into the cache; prints its path
    local pkg=$1 dir="$W/kernels/$1"
    if ! ls "$dir"/boot/vmlinuz-* >/dev/null 2>&1; then
        rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
        (cd "$dir.tmp" && timeout 600 apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2 && dpkg-deb --fsys-tarfile ./*.deb | tar -x ./boot) \
            || die "could not download $pkg"
        rm -f "$dir.tmp"/*.deb && rm -rf "$dir" && mv "$dir.tmp" "$dir"
    fi
    ls "$dir"/boot/vmlinuz-* | head -1
}

# --- Guest programs: bounded memory hog, bounded fork bomb, CPU spinner, a seccomp kernel probe ----
cat > "$W/bin/memhog.c" <<'EOF'
/* memhog MIB: allocate and touch MIB mebibytes one at a time (volatile: the optimiser keeps it). */
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    long mib = argc > 1 ? atol(argv[1]) : 100;
    for (long i = 0; i < mib; i++) {
        volatile char *p = malloc(1 << 20);
        if (!p) { printf("memhog: malloc failed after %ld MiB\n", i); return 2; }
        for (long j = 0; j < (1 << 20); j += 4096) p[j] = 1;
    }
    printf("memhog: touched %ld MiB and survived\n", mib);
    return 0;
}
EOF
cat > "$W/bin/forkbomb.c" <<'EOF'
/* forkbomb N: try N children that each sleep 3 s; report how many forks failed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 64, made = 0, failed = 0, err = 0;
    for (int i = 0; i < n; i++) {
        pid_t p = fork();
        if (p == 0) { sleep(3); _exit(0); }
        if (p > 0) made++; else { failed++; err = errno; }
    }
    printf("forkbomb: made %d failed %d (%s)\n", made, failed, failed ? strerror(err) : "no error");
    fflush(stdout);
    while (wait(NULL) > 0) {}
    return 0;
}
EOF
cat > "$W/bin/cpuspin.c" <<'EOF'
/* cpuspin SECONDS THREADS: keep THREADS threads busy for SECONDS of wall time. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double seconds;
static double now(clockid_t c) { struct timespec t; clock_gettime(c, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static void *spin(void *arg) {
    double end = now(CLOCK_MONOTONIC) + seconds;
    volatile unsigned long n = 0;
    while (now(CLOCK_MONOTONIC) < end) n++;
    return arg;
}
int main(int argc, char **argv) {
    seconds = argc > 1 ? atof(argv[1]) : 3;
    int n = argc > 2 ? atoi(argv[2]) : 1;
    if (n < 1 || n > 16) n = 1;
    pthread_t t[16];
    for (int i = 0; i < n; i++) pthread_create(&t[i], NULL, spin, NULL);
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    printf("cpuspin: %d threads, cpu %.2f s\n", n, now(CLOCK_PROCESS_CPUTIME_ID));
    return 0;
}
EOF
cat > "$W/bin/notif-recv.c" <<'EOF'
/* notif-recv: once no task uses a seccomp filter any more, does SECCOMP_IOCTL_NOTIF_RECV on its
   listener block (kernels before 6.6) or fail at once? A supervisor that receives on hang-up hangs on
   the former. Diagnostic only, bounded by alarm(). */
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
static void ignore(int s) { (void)s; }
int main(void) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
    struct sock_fprog prog = {4, f};
    int fds[2];
    if (pipe(fds)) return 1;
    pid_t pid = fork();
    if (pid == 0) {   /* the child installs the filter, says which fd the listener is, and waits */
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        int l = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
        if (write(fds[1], &l, sizeof l) != sizeof l) _exit(1);
        pause();
        _exit(0);
    }
    int l = -1;
    if (read(fds[0], &l, sizeof l) != sizeof l || l < 0) { printf("notif-recv: no listener\n"); return 1; }
    int pidfd = syscall(SYS_pidfd_open, pid, 0);
    int mine = pidfd < 0 ? -1 : syscall(SYS_pidfd_getfd, pidfd, l, 0);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);   /* reaped: the filter has no users now */
    if (mine < 0) { printf("notif-recv: could not take the listener: %s\n", strerror(errno)); return 1; }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = ignore;
    sigaction(SIGALRM, &sa, NULL);
    alarm(3);
    struct seccomp_notif n;
    memset(&n, 0, sizeof n);
    int r = ioctl(mine, SECCOMP_IOCTL_NOTIF_RECV, &n), e = errno;
    printf("notif-recv: receive on a listener without users %s (ret %d, %s)\n",
           r < 0 && e == EINTR ? "BLOCKS" : "returns at once", r, strerror(e));
    return 0;
}
EOF
for p in memhog forkbomb cpuspin notif-recv; do
    "$CC" -O2 -static -pthread -o "$W/bin/$p" "$W/bin/$p.c"
done

# --- Guest root (one initramfs for every kernel) ---------------------------------------------------
# Merged /usr like Debian 12: a worker's root binds the guest's /usr, /bin, /lib, /lib64 and /sbin.
R="$W/root"
rm -rf "$R" && mkdir -p "$R"/{usr/bin,usr/sbin,usr/lib64,usr/lib,usr/local/bin,etc,proc,sys,dev,tmp,run,root}
ln -s usr/bin "$R/bin"; ln -s usr/sbin "$R/sbin"; ln -s usr/lib "$R/lib"; ln -s usr/lib64 "$R/lib64"
cp /bin/busybox "$R/usr/bin/busybox"
for applet in $(/bin/busybox --list); do [ -e "$R/usr/bin/$applet" ] || ln -s busybox "$R/usr/bin/$applet"; done
install_with_libs() {   # an executable at DEST in the guest, with every shared library ldd names
    local src=$1 dest=$2 lib dir
    mkdir -p "$R$(dirname "$dest")" && rm -f "$R$dest" && cp -L "$src" "$R$dest"
    for lib in $(ldd "$src" 2>/dev/null | grep -oE '/[^ ]+'); do
        dir=$(realpath "$(dirname "$lib")")
        mkdir -p "$R$dir"
        [ -e "$R$dir/$(basename "$lib")" ] || cp -L "$lib" "$R$dir/"
    done
}
install_with_libs "$STOCKADE" /usr/local/bin/stockade
cp "$PROBE" "$R/usr/local/bin/stockade-probe"
cp "$SPAWN" "$R/usr/local/bin/stockade-spawn"
# util-linux's unshare (busybox's lacks -C). The guest shell prefers its own applets to $PATH, so
# the checks call it as /usr/bin/unshare.
install_with_libs "$(command -v unshare)" /usr/bin/unshare
for p in memhog forkbomb cpuspin notif-recv; do cp "$W/bin/$p" "$R/usr/local/bin/"; done
[ -f /etc/ld.so.cache ] && cp /etc/ld.so.cache "$R/etc/"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$R/etc/passwd"
printf 'root:x:0:\n' > "$R/etc/group"

# pivot_root(2) refuses the initramfs as the old root and every worker is set up with pivot_root, so
# /init copies the tree into a tmpfs and switches to it; /checks runs there.
cat > "$R/init" <<'EOF'
#!/bin/sh
mount -t devtmpfs devtmpfs /dev
exec >/dev/console 2>&1 </dev/null
mkdir /newroot && mount -t tmpfs -o size=90% tmpfs /newroot
for e in /*; do
    case $e in /newroot|/proc|/sys|/dev|/init) mkdir -p "/newroot$e";; *) cp -a "$e" /newroot/;; esac
done
mount --move /dev /newroot/dev
exec switch_root /newroot /checks
EOF
cat > "$R/checks" <<'EOF'
#!/bin/sh
# Runs as PID 1 of the guest; everything goes to the serial console, which the host keeps as the log.
export PATH=/usr/local/bin:/usr/bin:/usr/sbin HOME=/root STOCKADE_STATE_DIR=/var/lib/stockade
mount -t proc proc /proc; mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
exec >/dev/console 2>&1 </dev/null
mount -t tmpfs -o mode=1777 tmpfs /tmp; mount -t tmpfs tmpfs /run
mkdir -p /dev/pts /dev/shm /var/lib; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup    # cgroup v2 only: no v1 hierarchy at all
ip link set lo up 2>/dev/null
CG=/sys/fs/cgroup
T=40
for a in $(cat /proc/cmdline); do case $a in stk_t=*) T=${a#stk_t=};; esac; done

pass() { echo "CHECK PASS $1"; }
fail() { id=$1; shift; echo "CHECK FAIL $id${*:+ ($*)}"; }
# bounded SECONDS CMD...: CMD, sent TERM after SECONDS and KILL 5 s later. A supervisor that had to be
# stopped this way prints "BOUNDED: ... killed" and the check fails with status 254.
bounded() {
    secs=$1; shift
    rm -f /tmp/bounded.fired
    "$@" & cmd=$!
    ( sleep "$secs"; kill -0 $cmd || exit 0; touch /tmp/bounded.fired; kill -TERM $cmd; sleep 5; kill -KILL $cmd ) >/dev/null 2>&1 &
    dog=$!
    wait $cmd; st=$?
    kill $dog 2>/dev/null; wait $dog 2>/dev/null
    if [ -e /tmp/bounded.fired ]; then echo "BOUNDED: '$*' still running after ${secs} s: killed" >&2; return 254; fi
    return $st
}
# Run cgroups anywhere in the hierarchy: the directories right under a "stockade" parent.
run_cgroups() { find $CG -mindepth 2 -type d 2>/dev/null | grep '/stockade/[^/]*$'; }
count_runs() { run_cgroups | wc -l; }
json_number() { sed -n "s/.*\"$1\":\([0-9][0-9]*\).*/\1/p" | head -1; }
show() { echo "status=$1"; echo "$2" | cut -c1-400; }

echo "=== guest kernel $(uname -r), cgroup mounts:"; grep cgroup /proc/self/mountinfo
echo "root cgroup.controllers: $(cat $CG/cgroup.controllers)"
notif-recv

echo "=== hello"
out=$(bounded $T stockade run --json -- /bin/sh -c 'echo hello-from-worker'); st=$?; show $st "$out"
[ $st = 0 ] && echo "$out" | grep -q '"outcome":"exited"' && echo "$out" | grep -q hello-from-worker \
    && pass hello || fail hello "status $st"

echo "=== limits: --memory 48m --cpus 0.5 --pids 20 are in the live run's cgroup"
bounded $T stockade run --json --memory 48m --cpus 0.5 --pids 20 -- /bin/sleep 5 > /tmp/limits.json 2>&1 & sup=$!
dir=""
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
    dir=$(run_cgroups | head -1); [ -n "$dir" ] && [ -n "$(cat "$dir/cgroup.procs" 2>/dev/null)" ] && break
    sleep 0.5
done
mem=$(cat "$dir/memory.max" 2>&1); cpu=$(cat "$dir/cpu.max" 2>&1); pids=$(cat "$dir/pids.max" 2>&1)
# The worker's init is a copy of the spawn helper's binary.
initexe=none
for p in $(cat "$dir/cgroup.procs" 2>/dev/null); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = stockade-init ] && initexe=$(readlink "/proc/$p/exe" 2>&1)
done
echo "init's binary: $initexe"
swap=$(cat "$dir/memory.swap.max" 2>/dev/null || echo absent)
echo "run cgroup ${dir:-none}: memory.max=$mem memory.swap.max=$swap cpu.max=$cpu pids.max=$pids procs=$(cat "$dir/cgroup.procs" 2>/dev/null | tr '\n' ' ')"
wait $sup; st=$?; show $st "$(cat /tmp/limits.json)"
[ -n "$dir" ] && [ "$mem" = 50331648 ] && [ "$cpu" = "50000 100000" ] && [ "$pids" = 20 ] \
    && { [ "$swap" = 0 ] || [ "$swap" = absent ]; } && [ $st = 0 ] && [ "$initexe" = /usr/local/bin/stockade-spawn ] \
    && pass limits || fail limits "status $st"

echo "=== oom: --memory 32m, touching 200 MiB"
out=$(bounded $T stockade run --json --memory 32m -- /usr/local/bin/memhog 200); st=$?; show $st "$out"
[ $st = 137 ] && echo "$out" | grep -q '"outcome":"oom"' && pass oom || fail oom "status $st"

echo "=== pids: --pids 16, 64 forks"
out=$(bounded $T stockade run --json --pids 16 -- /usr/local/bin/forkbomb 64); st=$?; show $st "$out"
echo "$out" | grep -q '"kind":"pids"' && echo "$out" | grep -q 'failed [1-9]' && pass pids || fail pids "status $st"

echo "=== timeout: --timeout 2, sleep 60"
out=$(bounded $T stockade run --json --timeout 2 -- /bin/sleep 60); st=$?; show $st "$out"
ms=$(echo "$out" | json_number durationMs)
[ $st = 124 ] && echo "$out" | grep -q '"outcome":"timeout"' && [ -n "$ms" ] && [ "$ms" -lt 15000 ] \
    && pass timeout || fail timeout "status $st, durationMs=${ms:-none}"

echo "=== cpu: two threads spinning 3 s, with --cpus 0.5 (at most 1.5 s of CPU plus start-up) and without"
out=$(bounded $T stockade run --json --cpus 0.5 -- /usr/local/bin/cpuspin 3 2); st=$?; show $st "$out"
ms=$(echo "$out" | json_number cpuTimeMs)
free=$(bounded $T stockade run --json --cpus 2 -- /usr/local/bin/cpuspin 3 2); show $? "$free"
free_ms=$(echo "$free" | json_number cpuTimeMs)
echo "cpuTimeMs: ${ms:-none} with --cpus 0.5, ${free_ms:-none} with --cpus 2"
[ $st = 0 ] && [ -n "$ms" ] && [ -n "$free_ms" ] && [ "$ms" -lt 2500 ] && [ $((ms * 3 / 2)) -lt "$free_ms" ] \
    && pass cpu || fail cpu "status $st, cpuTimeMs=${ms:-none} against ${free_ms:-none} unbounded"

echo "=== cleanup: no run cgroups left"
left=$(count_runs); run_cgroups
[ "$left" = 0 ] && pass cleanup || fail cleanup "$left left"

echo "=== stale: the next start removes a SIGKILLed supervisor's run cgroup"
stockade run --json -- /bin/sleep 30 > /dev/null 2>&1 & sup=$!
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do [ "$(count_runs)" -gt 0 ] && break; sleep 0.5; done
before=$(count_runs); kill -KILL $sup; wait $sup 2>/dev/null; sleep 1
echo "run cgroups: $before while running, $(count_runs) after SIGKILL"
out=$(bounded $T stockade run --json -- /bin/true 2>&1); st=$?; show $st "$out"
after=$(count_runs); echo "run cgroups after the next run: $after"
[ "$before" -gt 0 ] && [ $st = 0 ] && [ "$after" = 0 ] && pass stale || fail stale "status $st, $before before, $after after"

echo "=== service-cgroup: supervisor in /system.slice/stockade.service"
mkdir -p $CG/system.slice/stockade.service
out=$(bounded $T sh -c "echo \$\$ > $CG/system.slice/stockade.service/cgroup.procs && exec stockade run --json -- /bin/sh -c 'echo svc-ok'" 2>&1); st=$?
show $st "$out"
[ $st = 0 ] && echo "$out" | grep -q svc-ok && pass service-cgroup || fail service-cgroup "status $st"

echo "=== container-cgroupns: supervisor alone in a private cgroup namespace, cgroup2 remounted"
mkdir -p $CG/container
out=$(bounded $T sh -c "echo \$\$ > $CG/container/cgroup.procs && exec /usr/bin/unshare -C -m --propagation private sh -c 'umount -l $CG && mount -t cgroup2 cgroup2 $CG && echo \"namespace view: \$(cat /proc/self/cgroup)\" >&2 && exec stockade run --json -- /bin/sh -c \"echo ctr-ok\"'" 2>&1); st=$?
show $st "$out"
[ $st = 0 ] && echo "$out" | grep -q ctr-ok && pass container-cgroupns || fail container-cgroupns "status $st"

echo "=== verify"
bounded $((T * 5)) stockade verify; st=$?
echo "verify status=$st"
[ $st = 0 ] && pass verify || fail verify "status $st"

echo "=== cleanup-end: no run cgroups left anywhere after every check"
sleep 1; left=$(count_runs); run_cgroups
[ "$left" = 0 ] && pass cleanup-end || fail cleanup-end "$left left"

echo "=== GUEST FINISHED"
sync; poweroff -f
EOF
chmod +x "$R/init" "$R/checks"
(cd "$R" && find . | cpio -o -H newc --quiet) > "$W/initramfs.cpio"

# --- Boot each kernel ------------------------------------------------------------------------------
cpu_model=max; [ "$ACCEL" = kvm ] && cpu_model=host
summary=()
status=0
for k in "${kernels[@]}"; do
    pkg=$(resolve_kernel "$k")
    t0=$(date +%s)
    vmlinuz=$(fetch_kernel "$pkg")
    t1=$(date +%s)
    log="$W/guest-$pkg.log"
    for attempt in 1 2; do
        # -no-reboot with panic=-1 turns any guest failure into qemu exiting; timeout bounds a hung guest.
        timeout -k 10 "$GUEST_TIMEOUT" qemu-system-x86_64 -accel "$ACCEL" -cpu "$cpu_model" -m 2048 -smp 2 \
            -nographic -nic none -no-reboot -kernel "$vmlinuz" -initrd "$W/initramfs.cpio" \
            -append "console=ttyS0 panic=-1 quiet loglevel=4 stk_t=$RUN_TIMEOUT" > "$log" 2>&1 </dev/null &
        guest=$!
        # A guest whose CPUs lock up before any check ran (the soft-lockup watchdog's report) is
        # stopped then, not left to the timeout: it is retried below like a crashed one.
        while kill -0 "$guest" 2>/dev/null; do
            if grep -aq 'soft lockup' "$log" && ! grep -aq 'CHECK ' "$log"; then
                kill "$guest" 2>/dev/null || true  # timeout passes the signal on to qemu
                break
            fi
            sleep 2
        done
        wait "$guest" || true
        # Software emulation now and then crashes a guest kernel while it patches its own text (an
        # int3 oops in the scheduler seconds after boot) or locks both its CPUs up in the kernel,
        # before any check ran. That says nothing about Stockade: boot such a guest once more, and
        # say so (a fault of Stockade's comes back the second time and fails). A guest that ran its
        # checks, or failed any other way, is judged as it is.
        if [ "$attempt" = 1 ] && ! grep -aq 'CHECK ' "$log" && grep -aq 'Kernel panic\|soft lockup' "$log"; then
            echo "--- $pkg: the emulated guest kernel crashed or locked up before any check ran; booting it once more:"
            grep -a 'Oops\|RIP:\|Kernel panic\|soft lockup' "$log" | head -n 3 | tr -d '\r'
            cp "$log" "$log.crashed"
            continue
        fi
        break
    done
    t2=$(date +%s)
    echo "--- $pkg ($(basename "$vmlinuz")): download $((t1 - t0)) s, guest $((t2 - t1)) s, log $log"
    grep -a 'notif-recv:\|CHECK \|BOUNDED:\|not-enforced\|inconclusive\|GUEST FINISHED' "$log" | tr -d '\r' | cut -c1-240 || true
    failed=()
    for id in $CHECKS; do grep -aqE "^CHECK PASS $id( |$)" <(tr -d '\r' < "$log") || failed+=("$id"); done
    if ! grep -aq 'GUEST FINISHED' "$log"; then
        echo "the guest did not finish (timeout ${GUEST_TIMEOUT} s or a crash): last lines of the log:"
        tail -n 15 "$log" | tr -d '\r'
        failed+=("(unfinished)")
    fi
    if [ ${#failed[@]} -eq 0 ]; then
        summary+=("$pkg: all $(echo $CHECKS | wc -w) checks passed (guest $((t2 - t1)) s)")
    else
        summary+=("$pkg: FAILED ${failed[*]} (guest $((t2 - t1)) s)")
        status=1
    fi
done
echo "=== kernel matrix"
printf '%s\n' "${summary[@]}"
exit $status
