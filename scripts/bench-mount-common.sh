# Shared by the mount benchmarks (`scripts/bench-mount`, `scripts/bench-s3`); sourced, not run.
# The mount benchmark's tree, the timing helpers and the byte check, so both scripts measure the
# same tree the same way.
#
# bench_mount_tree SRC: generates the tree in SRC (sizes from SMALL_COUNT, default 5000, and
# BIG_MIB, default 200: ~774 MB) and sets `names` to its three top-level directories.
bench_mount_tree() {
    local src=$1
    mkdir -p "$src"
    python3 - "$src" "${SMALL_COUNT:-5000}" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
# Thousands of small files in a realistic spread of directories (like a Python or Perl library).
base = os.path.join(root, "small-files-1.0")
for i in range(n):
    d = os.path.join(base, "lib", f"pkg{i % 97:02d}", f"sub{i % 7}")
    os.makedirs(d, exist_ok=True)
    size = int(rng.lognormvariate(8, 1.2)) % 65536
    with open(os.path.join(d, f"mod{i:05d}.py"), "wb") as f:
        f.write(rng.randbytes(size))
# Executables, symlinks, medium files.
tools = os.path.join(root, "tools-2.3")
os.makedirs(os.path.join(tools, "bin"))
os.makedirs(os.path.join(tools, "share", "data"))
for i in range(40):
    p = os.path.join(tools, "bin", f"tool{i}")
    with open(p, "wb") as f:
        f.write(rng.randbytes(rng.randint(100_000, 3_000_000)))
    os.chmod(p, 0o755)
    os.symlink(f"tool{i}", os.path.join(tools, "bin", f"alias{i}"))
for i in range(20):
    with open(os.path.join(tools, "share", "data", f"blob{i}.dat"), "wb") as f:
        f.write(rng.randbytes(rng.randint(1_000_000, 5_000_000)))
os.symlink("share/data", os.path.join(tools, "data"))
PY
    mkdir -p "$src/big-files-0.1"
    local i
    for i in 1 2 3; do
        # Random bytes from a seeded AES stream (fast, incompressible); openssl dies of SIGPIPE.
        head -c $((${BIG_MIB:-200} * 1024 * 1024 + i * 4321)) \
            < <(openssl enc -aes-128-ctr -nosalt -pass "pass:bench-mount-$i" -in /dev/zero 2>/dev/null) \
            > "$src/big-files-0.1/image$i.img"
    done
    names=(small-files-1.0 big-files-0.1 tools-2.3)
}

# seconds CMD: wall time of a shell command line (its output discarded)
seconds() {
    local t0 t1
    t0=$(date +%s.%N)
    bash -c "$1" >/dev/null
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l
}
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# walk DIR NAMES... / readall DIR NAMES...: the command lines timed as "walk" and "read"
walk() { echo "cd '$1' && find ${*:2} -ls > /dev/null"; }
readall() { echo "cd '$1' && tar -cf - ${*:2} | wc -c"; }
# min A B: the smaller of two times (B when A is empty)
min() { if [[ -z $1 ]] || (( $(echo "$2 < $1" | bc -l) )); then echo "$2"; else echo "$1"; fi; }
best_of_3() {
    local best="" _
    for _ in 1 2 3; do best=$(min "$best" "$(seconds "$1")"); done
    echo "$best"
}

# tree_digest DIR: one checksum over every file's bytes and every symlink's target below DIR,
# by relative path (modes and times are left out: the store normalises them).
tree_digest() {
    (
        cd "$1"
        find . -type l -printf 'l %p %l\n' | LC_ALL=C sort
        find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum
    ) | sha256sum | cut -d' ' -f1
}

# stop PID: ends a process this script started and waits for it (no-op for an empty PID)
stop() {
    [[ -n ${1:-} ]] || return 0
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
# start_mount ARGS...: `$bin mount $mnt ARGS...` in the background (pid in mount_pid, log in
# $work/mount.log), returning once the mount is up
start_mount() {
    "$bin" mount "$mnt" "$@" 2>>"$work/mount.log" &
    mount_pid=$!
    for _ in $(seq 400); do mountpoint -q "$mnt" && return 0; sleep 0.05; done
    echo "$(basename "$0"): mount did not come up; log:" >&2; tail -20 "$work/mount.log" >&2; exit 1
}
