"""Privilege attacks inside a step: each tries to gain or use a privilege and reports
"reached" when it succeeded. Run as root (uid 0 without capabilities) or as a user.

Usage: python3 privs.py OUT_JSON
"""

import ctypes
import errno
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

results: dict[str, dict[str, Any]] = {}
libc = ctypes.CDLL(None, use_errno=True)


REFUSALS = (errno.EPERM, errno.EACCES, errno.EROFS)
REFUSAL_WORDS = ("not permitted", "permission denied", "must be root", "read-only")


def attempt(name: str, fn: Any, also: tuple[int, ...] = ()) -> None:
    """Refused only by a permission error: any other failure proves nothing (None)."""
    t0 = time.time()
    reached: bool | None
    try:
        detail = fn()
        reached = True
    except OSError as exc:
        refused = exc.errno in REFUSALS + also
        detail, reached = f"{'refused' if refused else 'INCONCLUSIVE'}: {exc}", not refused and None
    except RuntimeError as exc:
        refused = any(w in str(exc).lower() for w in REFUSAL_WORDS)
        detail, reached = f"{'refused' if refused else 'INCONCLUSIVE'}: {exc}", not refused and None
    results[name] = {"reached": reached, "detail": str(detail)[:300], "t0": t0, "t1": time.time()}


def mount_tmpfs() -> str:
    if libc.mount(b"none", b"/mnt", b"tmpfs", 0, None) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return "mounted"


def run(*argv: str) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {(done.stdout + done.stderr).strip()[:200]}")
    return (done.stdout + done.stderr).strip()


def syscall(number: int, *args: int) -> int:
    ret = libc.syscall(number, *[ctypes.c_long(a) for a in args])
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def status() -> dict[str, str]:
    lines = Path("/proc/self/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def capabilities() -> str:
    st = status()
    held = {k: st[k] for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh")
            if int(st[k], 16)}
    if held:
        return f"holds {held}"
    raise OSError(1, "every capability set is empty")


def no_new_privs_off() -> str:
    if status()["NoNewPrivs"] == "1" and status()["Seccomp"] == "2":
        raise OSError(1, "NoNewPrivs 1, Seccomp 2 (filter)")
    return f"NoNewPrivs {status()['NoNewPrivs']} Seccomp {status()['Seccomp']}"


def netlink_route() -> str:
    """RTM_NEWROUTE for 192.0.2.0/24 via the kernel's netlink, no tool needed."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    s.bind((0, 0))
    rtm = struct.pack("=BBBBBBBBI", socket.AF_INET, 24, 0, 0, 254, 3, 0, 1, 0)
    dst = struct.pack("=HH", 8, 1) + socket.inet_aton("192.0.2.0")
    oif = struct.pack("=HHI", 8, 4, socket.if_nametoindex("eth0"))
    body = rtm + dst + oif
    s.send(struct.pack("=IHHII", 16 + len(body), 24, 0x1 | 0x4 | 0x400 | 0x200, 1, 0) + body)
    err = struct.unpack("=i", s.recv(4096)[16:20])[0]
    if err:
        raise OSError(-err, os.strerror(-err))
    return "route added"


def sethostname() -> str:
    name = b"sbx-owned"
    if libc.sethostname(name, len(name)) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return "hostname changed"


def settime() -> str:
    tv = struct.pack("=qq", int(time.time()) + 3600, 0)
    if libc.settimeofday(ctypes.c_char_p(tv), None) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return "clock moved"


def so_mark() -> str:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, 36, 0x1)  # SO_MARK: an exemption by packet mark
    return "mark set"


def write(path: str, data: str) -> Any:
    def go() -> str:
        Path(path).write_text(data)
        return f"wrote {path}"
    return go


def setuid_binaries() -> str:
    """Start every setuid binary and read its credentials while it runs."""
    found = subprocess.run(["find", "/", "-xdev", "-perm", "-4000", "-type", "f"],
                           capture_output=True, text=True).stdout.split()
    gained, observed = [], []
    for path in found:
        proc = subprocess.Popen([path], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        seen = ""
        for _ in range(40):
            try:
                st = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                break
            if f"Name:\t{Path(path).name[:15]}" in st:
                seen = st
                break
            time.sleep(0.01)
        proc.kill()
        proc.wait()
        if seen:
            fields = {k: v.split() for k, _, v in (x.partition(":") for x in seen.splitlines())}
            observed.append(f"{Path(path).name} euid {fields['Uid'][1]}")
            if fields["Uid"][1] == "0" or int(fields["CapEff"][0], 16):
                gained.append(f"{path}: euid {fields['Uid'][1]} CapEff {fields['CapEff'][0]}")
    if gained:
        return "; ".join(gained)
    if not observed:
        raise RuntimeError(f"none of the setuid binaries {found} was seen running")
    raise OSError(errno.EPERM, f"setuid ignored (no-new-privileges): {observed}")


CHECKS: dict[str, Any] = {
    "privilege/capabilities": capabilities,
    "privilege/no-new-privileges-and-seccomp": no_new_privs_off,
    "privilege/raw-socket": lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, 1),
    "privilege/packet-socket": lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 3),
    "privilege/netlink-route-add": netlink_route,
    "privilege/ip-route-add": lambda: run("ip", "route", "add", "192.0.2.0/24", "dev", "eth0"),
    "privilege/ip-addr-add": lambda: run("ip", "addr", "add", "192.0.2.9/32", "dev", "eth0"),
    "privilege/ip-link-down": lambda: run("ip", "link", "set", "eth0", "down"),
    "privilege/iptables-flush-nat": lambda: run("iptables", "-t", "nat", "-F"),
    "privilege/iptables-policy-accept": lambda: run("iptables", "-P", "OUTPUT", "ACCEPT"),
    "privilege/ip6tables-flush": lambda: run("ip6tables", "-F"),
    "privilege/so-mark": so_mark,
    "privilege/sysctl-ip-forward": write("/proc/sys/net/ipv4/ip_forward", "1"),
    "privilege/sysctl-route-localnet": write("/proc/sys/net/ipv4/conf/all/route_localnet", "1"),
    "privilege/sysctl-kernel-hostname": write("/proc/sys/kernel/hostname", "sbx-owned"),
    "privilege/write-sys": write("/sys/kernel/mm/transparent_hugepage/enabled", "never"),
    "privilege/mount-tmpfs": mount_tmpfs,
    "privilege/unshare-user-namespace": lambda: run("unshare", "-r", "id"),
    "privilege/unshare-network-namespace": lambda: run("unshare", "-n", "true"),
    "privilege/chroot": lambda: os.chroot("/tmp"),
    "privilege/mknod-device": lambda: os.mknod("/tmp/sbx-mem", 0o600 | 0o020000,
                                                 os.makedev(1, 1)),
    "privilege/sethostname": sethostname,
    "privilege/settimeofday": settime,
    "privilege/kernel-module": lambda: syscall(313, -1, 0, 0),  # finit_module
    "privilege/keyring": lambda: syscall(248, ctypes.addressof(ctypes.create_string_buffer(
        b"user")), ctypes.addressof(ctypes.create_string_buffer(b"sbx")), 0, 0, -4),  # add_key
    "privilege/bpf": lambda: syscall(321, 0, 0, 0),  # bpf(BPF_MAP_CREATE, NULL, 0)
    "privilege/perf-event-open": lambda: syscall(298, 0, 0, -1, -1, 0),
}
SOCKETS = ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock",
           "/var/run/docker/containerd/containerd.sock")


def docker_socket() -> str:
    present = [p for p in SOCKETS if os.path.lexists(p)]
    if present:
        return f"present: {present}"
    raise OSError(errno.ENOENT, f"none of {SOCKETS} exists")

USER_CHECKS = ("privilege/setuid-binaries", "privilege/unshare-user-namespace-as-user",
               "privilege/capabilities-as-user")


def main() -> None:
    if os.getuid() == 0:
        for name, fn in CHECKS.items():
            attempt(name, fn)
        attempt("privilege/docker-socket", docker_socket, also=(errno.ENOENT,))
    else:
        attempt("privilege/setuid-binaries", setuid_binaries)
        attempt("privilege/unshare-user-namespace-as-user", lambda: run("unshare", "-r", "id"))
        attempt("privilege/capabilities-as-user", capabilities)
    out = Path(sys.argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"uid": os.getuid(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
