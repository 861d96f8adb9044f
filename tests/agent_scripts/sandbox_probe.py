"""Probes, from inside a sandboxed agent, what it and the commands it runs can reach.

  sandbox_probe.py SOCKET exec PORT OUT   (as an agent) lower its own rights, then run probes
                                          through EXEC: where a command runs (pid and net
                                          namespaces, cgroups, user, capabilities), whether it
                                          reaches 127.0.0.1:PORT, how many processes it can
                                          fork, whether it can allocate 300 MB, and what a
                                          process it leaves behind may do (OUT.detached)
  sandbox_probe.py SOCKET detached OUT SHELL_PID
                                          (left behind by a command) wait until the command's
                                          shell has ended, connect and report its rights
  sandbox_probe.py SOCKET caps OUT        (as an agent) report its own credentials and
                                          capabilities, and what writing itself into the host's
                                          root cgroups and mounting a tmpfs do

Every report is JSON, written to a temporary name and renamed.
"""
import ctypes
import json
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clove_client import Clove, HELLO, GET_PERMS, SET_PERMS  # noqa: E402

EXEC = 0x02
STATUS_FIELDS = ("Uid", "Gid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs")

NET = """
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3).sendall(b"escaped")
    print("connected")
except OSError as e:
    print("refused:", e)
"""

# Forks until refused (or 40), then ends its children: how many processes it could start.
FORKS = """
import os, signal, time
kids = []
for i in range(40):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    kids.append(pid)
print(len(kids), flush=True)
for k in kids:
    os.kill(k, signal.SIGKILL)
    os.waitpid(k, 0)
"""

# Touches every page of 300 MB (b"x" * n fills the memory).
ALLOC = """
b = b"x" * (300 << 20)
print("allocated", len(b), flush=True)
"""


def write(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.rename(tmp, path)


def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in STATUS_FIELDS:
                out[key] = value.split()[0]
    return out


def where():
    with open("/proc/self/cgroup") as f:
        cgroup = f.read()
    return {"pid_ns": os.readlink("/proc/self/ns/pid"), "net_ns": os.readlink("/proc/self/ns/net"),
            "cgroup": cgroup, "status": status()}


def exec_probes(sock, port, out):
    c = Clove(sock)
    c.call(HELLO)
    report = {"agent_id": c.agent_id, "own": where()}
    # The caller's set at the time of the EXECs: no HTTP, no write paths.
    report["lowered"] = c.call(SET_PERMS, {"permissions": {"can_http": False,
                                                           "filesystem": {"write": []}}})
    # The interpreter itself (sys.executable may name a PATH shim: argv[0] is "python3").
    py = shlex.quote(os.path.realpath("/proc/self/exe"))
    me = shlex.quote(os.path.abspath(__file__))

    def run(name, cmd):
        report[name] = c.call(EXEC, {"command": cmd, "timeout": 60})

    run("where", "%s %s %s where" % (py, me, shlex.quote(sock)))
    run("net", py + " -c " + shlex.quote(NET.format(port=port)))
    run("memory", py + " -c " + shlex.quote(ALLOC))
    run("pids", py + " -c " + shlex.quote(FORKS))
    detached = out + ".detached"
    run("detach", "setsid %s %s %s detached %s $$ >/dev/null 2>&1 &"
        % (py, me, shlex.quote(sock), shlex.quote(detached)))
    write(out, report)
    time.sleep(3600)


def detached(sock, out, shell):
    parent = int(shell)
    deadline = time.time() + 20
    while os.getppid() == parent and time.time() < deadline:
        time.sleep(0.01)
    # Its command has ended (its shell is gone); give the daemon time to see that too.
    time.sleep(1)
    report = {"pid": os.getpid(), "ppid": os.getppid(), "sid": os.getsid(0)}
    try:
        c = Clove(sock)
        c.call(HELLO)
        report["agent_id"] = c.agent_id
        report["perms"] = c.call(GET_PERMS)
        report["raise"] = c.call(SET_PERMS, {"level": "standard"})
    except Exception as e:  # the test must see what went wrong
        report["error"] = repr(e)
    write(out, report)


def try_write(path, text):
    try:
        with open(path, "w") as f:
            f.write(text)
        return "written"
    except OSError as e:
        return "refused: %s" % e


def caps(sock, out):
    report = {"status": status(), "uid": os.getuid()}
    me = str(os.getpid())
    report["cgroup_writes"] = {p: try_write(p, me) for p in
                               ("/sys/fs/cgroup/pids/cgroup.procs",
                                "/sys/fs/cgroup/memory/cgroup.procs")
                               if os.path.exists(p)}
    with open("/proc/self/cgroup") as f:
        report["cgroup"] = f.read()
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.mount(b"none", b"/mnt", b"tmpfs", 0, None)
    report["mount"] = "mounted" if rc == 0 else "refused: %s" % os.strerror(ctypes.get_errno())
    try:
        c = Clove(sock)
        c.call(HELLO)
        report["agent_id"] = c.agent_id
    except Exception as e:
        report["connect"] = repr(e)
    write(out, report)
    time.sleep(3600)


def main():
    sock, mode = sys.argv[1], sys.argv[2]
    if mode == "exec":
        exec_probes(sock, int(sys.argv[3]), sys.argv[4])
    elif mode == "where":
        print(json.dumps(where()))
    elif mode == "detached":
        detached(sock, sys.argv[3], sys.argv[4])
    elif mode == "caps":
        caps(sock, sys.argv[3])


main()
