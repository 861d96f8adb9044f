"""Reports who the daemon thinks this process is, from wherever it is started.

  identity_probe.py SOCKET report OUT          connect now and write the report to OUT
  identity_probe.py SOCKET orphan OUT [setsid] (as an agent) leave a grandchild behind that
                                               waits to be re-parented, then reports
  identity_probe.py SOCKET exec OUT            (as an agent) EXEC `identity_probe.py report`

A report is JSON: pid, ppid, pgid, the agent_id of HELLO's reply header, GET_PERMS' level and
can_manage, and the reply to an attempt to raise itself to `unrestricted`.
"""
import json
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clove_client import Clove, HELLO, GET_PERMS, SET_PERMS  # noqa: E402

EXEC = 0x02


def write(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.rename(tmp, path)


def report(sock, out):
    c = Clove(sock)
    c.call(HELLO)
    perms = c.call(GET_PERMS)
    raised = c.call(SET_PERMS, {"level": "unrestricted"})
    write(out, {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgrp(),
        "agent_id": c.agent_id,
        "level": perms.get("level"),
        "can_manage": perms.get("permissions", {}).get("can_manage"),
        "raise": raised,
    })


def orphan(sock, out, new_session):
    child = os.fork()
    if child == 0:
        middle = os.getpid()
        if os.fork() == 0:
            if new_session:
                os.setsid()
            deadline = time.time() + 20
            while os.getppid() == middle and time.time() < deadline:
                time.sleep(0.01)
            report(sock, out)
            time.sleep(3600)
        os._exit(0)
    os.waitpid(child, 0)
    time.sleep(3600)


def main():
    sock, mode, out = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "report":
        report(sock, out)
    elif mode == "orphan":
        orphan(sock, out, len(sys.argv) > 4 and sys.argv[4] == "setsid")
    elif mode == "exec":
        c = Clove(sock)
        cmd = " ".join(shlex.quote(a) for a in
                       [sys.executable, os.path.abspath(__file__), sock, "report", out])
        r = c.call(EXEC, {"command": cmd, "timeout": 20})
        write(out + ".exec", r)
        time.sleep(3600)


main()
