"""A real systemd, booted as PID 1 of its own namespaces, for tests of what runs under it.

Debian's systemd 252 boots as PID 1 of its own namespaces in about half a second, as root,
with nothing but installed packages (no container runtime):

- ``unshare`` gives it new PID, mount, UTS, IPC and network namespaces (the network namespace
  has a loopback interface only: whatever the test needs from the network is installed, or
  downloaded, before the container starts);
- PID 1 moves itself into a fresh, empty cgroup of the host's cgroup2 tree and then into a new
  cgroup namespace, where a private cgroup2 mount is its whole ``/sys/fs/cgroup``;
- the root is an overlay: the host's ``/`` read-only below, a tmpfs above, so everything the
  test installs (packages' files, ``/etc``, ``/opt``) is thrown away at shutdown and the host
  is never written; ``/proc``, a read-only ``/sys``, a small ``/dev`` with its own ``devpts``,
  tmpfs ``/run`` and ``/tmp``, a new machine id;
- ``/dev/console`` must be a terminal (systemd refuses a regular file): ``script`` runs the
  whole thing on a pty, and that pty becomes the console;
- it boots a target of its own that pulls in only ``sysinit.target`` (with journald): the host's
  enabled services (its Mosquitto, its databases) stay out.

Commands run inside through ``nsenter`` (:meth:`SystemdContainer.run`, :meth:`popen`);
:meth:`network` moves the calling thread's new sockets into the container's network, so a
test's MQTT client reaches the container's own broker on 127.0.0.1. :meth:`stop` sends
SIGRTMIN+4 (systemd's "poweroff") and waits; a container that does not go is killed, and with
PID 1 gone the kernel kills every process left in its PID namespace.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

SYSTEMD = Path("/lib/systemd/systemd")
CGROUP2 = Path("/sys/fs/cgroup/unified")  # the host's cgroup2 tree (hybrid layout) ...
if not (CGROUP2 / "cgroup.procs").exists():
    CGROUP2 = Path("/sys/fs/cgroup")  # ... or the unified layout
BOOT_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CLONE_NEWNET = 0x40000000

# The target the container boots: sysinit (journald, tmpfiles) and nothing of the host's.
TARGET = """[Unit]
Description=treadguard test container
Requires=sysinit.target systemd-journald.service
After=sysinit.target systemd-journald.service
AllowIsolate=yes
"""

# Run as PID 1 of the new PID namespace, by sh. $1: the work folder (on the host's side),
# $2: the container's name, $3: the cgroup to move into, then pairs of bind mounts (host
# path, path inside).
STAGE1 = r"""
set -eu
mkdir "$3"
echo 0 > "$3/cgroup.procs"
exec unshare --cgroup -- sh -c "$STAGE2" stage2 "$@"
"""

STAGE2 = r"""
set -eu
work=$1 name=$2
shift 3
console=$(tty)
mount -t tmpfs -o mode=0755 tmpfs "$work/layers"
mkdir "$work/layers/upper" "$work/layers/work" "$work/layers/root"
root=$work/layers/root
mount -t overlay overlay \
    -o "lowerdir=/,upperdir=$work/layers/upper,workdir=$work/layers/work" "$root"
mount -t proc proc "$root/proc"
mount --bind "$root/proc/sys" "$root/proc/sys"
mount -o remount,bind,ro "$root/proc/sys"
mount -t sysfs -o ro sysfs "$root/sys"
mount -t cgroup2 cgroup2 "$root/sys/fs/cgroup"
mount -t tmpfs -o mode=0755,size=16m tmpfs "$root/dev"
for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
    IFS=: read -r dev major minor <<EOF
$node
EOF
    mknod -m 0666 "$root/dev/$dev" c "$major" "$minor"
done
mkdir "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
touch "$root/dev/console"
mount --bind "$console" "$root/dev/console"
mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
while [ "$#" -ge 2 ]; do
    mkdir -p "$root/$2"
    mount --bind "$1" "$root/$2"
    shift 2
done
rm -f "$root/etc/machine-id"
cat /proc/sys/kernel/random/uuid | tr -d - > "$root/etc/machine-id"
: > "$root/etc/fstab"
echo "$name" > "$root/etc/hostname"
printf '%s' "$TARGET" > "$root/etc/systemd/system/container-test.target"
mkdir -p "$root/.old-root"
cd "$root"
pivot_root . .old-root
umount -l /.old-root
rmdir /.old-root
exec env -i container="$name" /lib/systemd/systemd --unit=container-test.target
"""


class ContainerError(RuntimeError):
    pass


def missing_prerequisites() -> str | None:
    """Why a container cannot boot here, or None."""
    if os.geteuid() != 0:
        return "a systemd container needs root (namespaces, mounts, cgroups)"
    for tool in ("unshare", "nsenter", "script"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (Debian's util-linux and bsdutils)"
    if not SYSTEMD.exists():
        return f"{SYSTEMD} is missing (Debian's systemd)"
    if not (CGROUP2 / "cgroup.procs").exists():
        return "no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified"
    return None


CHECKOUT = Path(__file__).resolve().parents[1]


class SystemdContainer:
    """``binds``: host folders seen inside at the given paths (read-write; the test's work
    folder, a wheelhouse): the container's own ``/tmp`` is a fresh tmpfs."""

    def __init__(self, workdir: Path, binds: Mapping[Path, str] | None = None) -> None:
        self.name = f"tg-test-{uuid.uuid4().hex[:8]}"
        self.workdir = workdir / self.name
        self.binds = dict(binds or {})
        self.console = self.workdir / "console.log"
        self.cgroup = CGROUP2 / self.name
        self._proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None  # systemd's, as the host sees it

    # --- boot and shutdown ------------------------------------------------------------------

    def start(self) -> None:
        (self.workdir / "layers").mkdir(parents=True)
        unshare = [
            "unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private",
            "--uts", "--ipc", "--net",
            "sh", "-c", STAGE1, "stage1", str(self.workdir), self.name, str(self.cgroup),
        ]  # fmt: skip
        # The checkout, where it is: a clone under /tmp (or /run) would be hidden by the
        # container's own tmpfs there, and the tests run the checkout's code inside.
        binds = {CHECKOUT: str(CHECKOUT), **self.binds}
        for host, inside in binds.items():
            unshare += [str(host), inside]
        env = {"PATH": PATH, "STAGE2": STAGE2, "TARGET": TARGET, "TERM": "dumb"}
        # script: the pty that becomes /dev/console; the console's output goes to a file.
        command = shlex.join(unshare)
        self._proc = subprocess.Popen(
            ["script", "--quiet", "--flush", "--return", "--command", command, str(self.console)],
            stdin=subprocess.PIPE,  # kept open: script ends when its input does
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            self.pid = self._wait(self._systemd_pid, BOOT_TIMEOUT_S, "systemd to start")
            self._wait(self._booted, BOOT_TIMEOUT_S, "the container to boot")
        except BaseException:
            self.stop()
            raise

    def _systemd_pid(self) -> int | None:
        """systemd as PID 1 of the container: the one process in its cgroup's tree named so."""
        for procs in self.cgroup.glob("**/cgroup.procs") if self.cgroup.exists() else ():
            for line in procs.read_text().split():
                try:
                    comm = Path(f"/proc/{line}/comm").read_text().strip()
                    status = Path(f"/proc/{line}/status").read_text()
                except OSError:
                    continue
                nspid = next((s for s in status.splitlines() if s.startswith("NSpid:")), "")
                if comm == "systemd" and nspid.split()[-1:] == ["1"]:
                    return int(line)
        return None

    def _booted(self) -> bool:
        result = self.run("systemctl", "is-system-running", check=False, timeout=5)
        state = result.stdout.strip()
        if state in ("running", "degraded"):
            return True
        # "offline": systemd does not answer yet (early boot); not a failure.
        if state in ("maintenance", "stopping"):
            raise ContainerError(f"the container's systemd is {state}: {self.console_text()}")
        return False

    def _wait(self, ready: Callable[[], Any], within: float, what: str) -> Any:
        deadline = time.monotonic() + within
        while True:  # bounded by the deadline
            if self._proc is not None and self._proc.poll() is not None:
                raise ContainerError(f"the container ended: {self.console_text()}")
            value = ready()
            if value:
                return value
            if time.monotonic() > deadline:
                raise ContainerError(f"timed out waiting for {what}: {self.console_text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Power off (SIGRTMIN+4 to systemd), or kill; then remove its cgroup."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if self.pid is not None and proc.poll() is None:
            with suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGRTMIN + 4)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_TIMEOUT_S)
        if proc.poll() is None:
            # The unshare's process group: killing PID 1 kills its whole PID namespace.
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            if self.pid is not None:
                with suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT_S)
        if proc.stdin is not None:
            proc.stdin.close()
        self._remove_cgroup()
        self.pid = None

    def _remove_cgroup(self) -> None:
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self.cgroup.exists():  # bounded: the last processes take a moment to be reaped
            for child in sorted(self.cgroup.glob("**/"), key=lambda p: -len(p.parts)):
                with suppress(OSError):
                    child.rmdir()
            if time.monotonic() > deadline:
                raise ContainerError(f"{self.cgroup} still holds processes")
            if self.cgroup.exists():
                time.sleep(0.02)

    def __enter__(self) -> SystemdContainer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- inside -----------------------------------------------------------------------------

    def nsenter(self, argv: Sequence[str], user: str | None = None) -> list[str]:
        assert self.pid is not None, "the container is not running"
        # -C: the cgroup namespace too, or systemctl cannot see the units' cgroups.
        prefix = ["nsenter", "-t", str(self.pid), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w"]
        if user is not None:
            prefix += ["runuser", "-u", user, "--"]
        return [*prefix, "env", "-i", f"PATH={PATH}", "LANG=C.UTF-8", *argv]

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 60.0,
        user: str | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """A command inside, to its end; its output, as text. ``check``: a failure raises with
        the output in the message."""
        result = subprocess.run(
            self.nsenter(argv, user),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=False,
        )
        if check and result.returncode != 0:
            raise ContainerError(
                f"{' '.join(argv)} exited {result.returncode}\n"
                f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
            )
        return result

    def popen(
        self, *argv: str, stdout: IO[bytes] | int | None = None, user: str | None = None
    ) -> subprocess.Popen[bytes]:
        """A process inside, left running (the caller ends it); a process of the container's
        PID namespace, so it ends with the container at the latest."""
        return subprocess.Popen(
            self.nsenter(argv, user),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
        )

    @property
    def root(self) -> Path:
        """The container's root as the host sees it (its files, read and written)."""
        assert self.pid is not None
        return Path(f"/proc/{self.pid}/root")

    @contextmanager
    def network(self, netns: str | None = None) -> Iterator[None]:
        """Sockets this thread opens meanwhile, and threads it starts (an asyncio loop's
        executor), belong to the container's network: its 127.0.0.1 is the container's.
        ``netns``: instead, a network namespace made inside with ``ip netns add NAME`` (another
        machine on a network the test gave the container)."""
        assert self.pid is not None
        libc = ctypes.CDLL(None, use_errno=True)
        target = (
            f"/proc/{self.pid}/ns/net" if netns is None else str(self.root / "run/netns" / netns)
        )
        here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        there = os.open(target, os.O_RDONLY)
        try:
            if libc.setns(there, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the container's network")
            try:
                yield
            finally:
                if libc.setns(here, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back into the host's network")
        finally:
            os.close(here)
            os.close(there)

    def console_text(self) -> str:
        try:
            return self.console.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no console output)"
