"""A hostile agent: tries to take another caller's identity through process groups.

  hostile.py SOCKET victim OUT              (as an agent) keep a secret in agent-scoped state,
                                            report pid/pgid/sid, then wait
  hostile.py SOCKET exec-orphan PGID OUT    (as an agent) EXEC `hostile.py SOCKET orphan PGID OUT`
                                            and write the EXEC's reply to OUT.exec
  hostile.py SOCKET orphan PGID OUT         fork; the child forks the attacker and exits, so the
                                            attacker is orphaned; once re-parented it moves into
                                            process group PGID (setpgid), connects and attacks;
                                            this process waits for the attacker's report

The attacker's report (JSON in OUT): its pid, ppid after re-parenting, what setpgid did, the
agent_id of HELLO's reply header, GET_PERMS, and the daemon's answers to raising itself to
`unrestricted`, FETCH/STORE of the agent-scoped key `secret`, READ /etc/shadow and SPAWN.
"""
import json
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clove_client import Clove, HELLO, GET_PERMS, SET_PERMS, STORE, SPAWN  # noqa: E402

EXEC, READ, FETCH = 0x02, 0x03, 0x31
# The interpreter itself (sys.executable may name a PATH shim: an agent's argv[0] is "python3").
PYTHON = os.path.realpath("/proc/self/exe")


def write(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.rename(tmp, path)


def victim(sock, out):
    c = Clove(sock)
    stored = c.call(STORE, {"key": "secret", "value": "victim-secret", "scope": "agent"})
    write(out, {"pid": os.getpid(), "pgid": os.getpgrp(), "sid": os.getsid(0),
                "agent_id": c.agent_id, "stored": stored})
    time.sleep(3600)


def attack(sock):
    c = Clove(sock)
    c.call(HELLO)
    return {
        "agent_id": c.agent_id,
        "perms": c.call(GET_PERMS),
        "raise": c.call(SET_PERMS, {"level": "unrestricted"}),
        "fetch": c.call(FETCH, {"key": "secret", "scope": "agent"}),
        "store": c.call(STORE, {"key": "secret", "value": "stolen", "scope": "agent"}),
        "shadow": c.call(READ, {"path": "/etc/shadow"}),
        "spawn": c.call(SPAWN, {"name": "evil-%d" % os.getpid(), "script": os.path.abspath(__file__),
                                "python": PYTHON, "sandboxed": False,
                                "args": ["noop", "/dev/null"]}),
    }


def orphan(sock, pgid, out):
    middle = os.fork()
    if middle == 0:
        me = os.getpid()
        if os.fork() == 0:
            attacker(sock, pgid, out, me)
        os._exit(0)
    os.waitpid(middle, 0)
    deadline = time.time() + 30
    while not os.path.exists(out) and time.time() < deadline:
        time.sleep(0.02)


def attacker(sock, pgid, out, middle):
    report = {"pid": os.getpid()}
    try:
        deadline = time.time() + 20
        while os.getppid() == middle and time.time() < deadline:
            time.sleep(0.01)
        report["ppid"] = os.getppid()
        try:
            os.setpgid(0, pgid)
            report["setpgid"] = "ok"
        except OSError as e:
            report["setpgid"] = "failed: %s" % e
        report["pgid"] = os.getpgrp()
        report.update(attack(sock))
    except Exception as e:  # the test must see what went wrong
        report["error"] = repr(e)
    write(out, report)
    os._exit(0)


def main():
    sock, mode = sys.argv[1], sys.argv[2]
    if mode == "victim":
        victim(sock, sys.argv[3])
    elif mode == "exec-orphan":
        pgid, out = sys.argv[3], sys.argv[4]
        c = Clove(sock)
        cmd = " ".join(shlex.quote(a) for a in
                       [PYTHON, os.path.abspath(__file__), sock, "orphan", pgid, out])
        r = c.call(EXEC, {"command": cmd, "timeout": 60})
        write(out + ".exec", r)
        time.sleep(3600)
    elif mode == "orphan":
        orphan(sock, int(sys.argv[3]), sys.argv[4])
    # "noop": what a SPAWN that should have been refused would run.


main()
