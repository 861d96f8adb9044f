#!/usr/bin/env python3
"""Plays systemd for an installed clove and checks what it says back.

Two runs of `clove serve`:

A. the way clove.service runs it: as the service user, the socket passed as fd 3
   (LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES, LISTEN_PID set in the child after fork, since only
   then is the pid known), NOTIFY_SOCKET, WATCHDOG_USEC/WATCHDOG_PID and JOURNAL_STREAM set,
   the installed /etc/clove/clove.toml with one key uncommented (allowed_uids, so this
   script may connect). Checks: READY=1 with a status line; the socket answers a NOOP at once
   after READY; watchdog pings at half the interval; none while the daemon is SIGSTOPped,
   pings again after SIGCONT; an EXEC child inherits neither the variables nor fd 3; log
   lines carry journald's <N> prefix and no timestamp; SIGTERM gives STOPPING=1 and exit 0;
   the passed socket is left alone (it is systemd's).
B. without socket activation or watchdog, as root, with the installed config unchanged: the
   socket exists and answers when READY=1 arrives, no watchdog pings, timestamps in the log,
   STOPPING=1 and exit 0 on SIGTERM, the socket removed.

Prints the daemon's idle RSS. Standard library only; exits 1 on the first failed check.
Usage: fake-systemd.py [--binary /usr/bin/clove] [--config /etc/clove/clove.toml]
                       [--user clove]
"""

import argparse
import json
import os
import pwd
import re
import signal
import socket
import struct
import sys
import tempfile
import time

MAGIC = 0x41474E54
HEADER = struct.Struct("<IIBQ")
NOOP, EXEC, HELLO = 0x00, 0x02, 0xFE
WATCHDOG_USEC = 400_000
PING_EVERY = WATCHDOG_USEC / 2 / 1e6


class CheckFailed(Exception):
    pass


def check(cond, what, detail=""):
    if not cond:
        raise CheckFailed(f"{what}{': ' + str(detail) if detail != '' else ''}")
    print(f"  ok  {what}" + (f" ({detail})" if detail != "" else ""))


def call(path, op, payload=b"", timeout=5.0):
    """One Clove frame on a new connection; returns (op, payload, seconds)."""
    t = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(HEADER.pack(MAGIC, 0, op, len(payload)) + payload)
        head = recv_exact(s, HEADER.size)
        magic, _agent, rop, length = HEADER.unpack(head)
        if magic != MAGIC:
            raise CheckFailed(f"reply magic {magic:#x}")
        body = recv_exact(s, length)
    return rop, body, time.monotonic() - t


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise CheckFailed(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


class Systemd:
    """The notify socket, and every message received on it with its arrival time."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        os.chmod(path, 0o666)  # the daemon may run as another user (systemd's is 0777 too)
        self.messages = []  # (monotonic time, text)

    def pump(self, until):
        """Receives until the monotonic time `until`."""
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                return
            self.messages.append((time.monotonic(), data.decode(errors="replace")))

    def wait_for(self, pred, timeout, what):
        """Receives until a message satisfies `pred`; returns (time, text)."""
        deadline = time.monotonic() + timeout
        seen = len(self.messages)
        while True:
            for t, m in self.messages[seen:]:
                if pred(m):
                    return t, m
            seen = len(self.messages)
            if time.monotonic() >= deadline:
                raise CheckFailed(f"no {what} within {timeout}s; got {self.texts()}")
            self.pump(min(deadline, time.monotonic() + 0.05))

    def texts(self):
        return [m for _, m in self.messages]

    def pings(self, since=0.0):
        return [t for t, m in self.messages if "WATCHDOG=1" in m.split("\n") and t >= since]


def start(binary, args, env, out, err, listen=None, watchdog=False, journal=False, user=None):
    """fork + execve, so that LISTEN_PID and WATCHDOG_PID can be the child's own pid."""
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(out, 1)
            os.dup2(err, 2)
            env = dict(env)
            if listen is not None:
                os.dup2(listen.fileno(), 3)
                os.set_inheritable(3, True)
                env.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1",
                           LISTEN_FDNAMES="clove.socket")
            if watchdog:
                env.update(WATCHDOG_USEC=str(WATCHDOG_USEC), WATCHDOG_PID=str(os.getpid()))
            if journal:
                st = os.fstat(2)
                env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
            if user is not None:
                os.setgroups([])
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)
            os.execve(binary, [binary] + args, env)
        finally:
            os._exit(127)
    return pid


def wait_exit(pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise CheckFailed(f"daemon did not exit within {timeout}s")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def base_env(home):
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": home,
        "LANG": "C.UTF-8",
        "CLOVE_LOG": "info",
    }


def run_activated(opts, tmp, results):
    print("A: socket-activated, Type=notify with watchdog, under journald, as "
          f"{opts.user or 'this user'}")
    user = pwd.getpwnam(opts.user) if opts.user else None
    state = os.path.join(tmp, "state-a")
    os.mkdir(state, 0o700)
    if user:
        os.chown(state, user.pw_uid, user.pw_gid)
    # The installed file, with allowed_uids uncommented: this script connects as its own uid.
    with open(opts.config) as f:
        text = f.read()
    check("#allowed_uids = []" in text, "the installed config has the allowed_uids line")
    config = os.path.join(tmp, "a.toml")
    with open(config, "w") as f:
        f.write(text.replace("#allowed_uids = []", f"allowed_uids = [{os.getuid()}]"))
    os.chmod(config, 0o644)

    path = os.path.join(tmp, "a.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    os.chmod(path, 0o666)
    listener_ino = os.fstat(listener.fileno()).st_ino
    sd = Systemd(os.path.join(tmp, "notify-a"))
    env = base_env(user.pw_dir if user else tmp)
    env["NOTIFY_SOCKET"] = sd.path
    out = os.open(os.path.join(tmp, "a.out"), os.O_WRONLY | os.O_CREAT, 0o644)
    err = os.open(os.path.join(tmp, "a.err"), os.O_WRONLY | os.O_CREAT, 0o644)
    t0 = time.monotonic()
    # --socket names another path: the passed socket must win.
    pid = start(opts.binary, ["serve", "--config", config, "--state-dir", state,
                              "--socket", os.path.join(tmp, "not-this.sock")],
                env, out, err, listen=listener, watchdog=True, journal=True, user=user)
    try:
        t_ready, msg = sd.wait_for(lambda m: "READY=1" in m.split("\n"), 60, "READY=1")
        op, body, latency = call(path, NOOP, b"ping", timeout=2.0)
        check(op == NOOP and body == b"ping", "NOOP answered right after READY=1",
              f"{latency * 1000:.1f} ms")
        check(latency < 0.5, "the answer was immediate (under 500 ms)")
        results["ready_s"] = round(t_ready - t0, 3)
        results["noop_after_ready_ms"] = round(latency * 1000, 2)
        check(f"STATUS=listening on {path}; 0 agents" in msg.split("\n"),
              "READY=1 carries a status line with the listener and agents", msg.replace("\n", " | "))
        check(not os.path.exists(os.path.join(tmp, "not-this.sock")),
              "the passed socket is served instead of binding --socket")
        _, body, _ = call(path, HELLO, b"{}")
        check(json.loads(body).get("success") is not False, "HELLO answered")

        # Watchdog: pings from the event loop at half of WATCHDOG_USEC.
        sd.pump(t_ready + 2.0)
        pings = sd.pings(since=t_ready - 1)
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        check(len(pings) >= 7, "watchdog pings keep coming", f"{len(pings)} in 2 s")
        check(pings[0] - t_ready < 0.3, "the first ping comes at once",
              f"{(pings[0] - t_ready) * 1000:.0f} ms after READY")
        check(all(PING_EVERY * 0.75 <= g <= PING_EVERY * 1.75 for g in gaps),
              f"pings about every {PING_EVERY * 1000:.0f} ms, never near the "
              f"{WATCHDOG_USEC // 1000} ms timeout",
              f"gaps {min(gaps) * 1000:.0f}..{max(gaps) * 1000:.0f} ms")
        results["watchdog_gap_ms"] = [round(min(gaps) * 1000), round(max(gaps) * 1000)]
        results["idle_rss_kib"] = rss_kib(pid)
        print(f"  --  idle RSS {results['idle_rss_kib']} KiB")

        # Children inherit neither the variables nor the listening socket.
        cmd = "env; readlink /proc/$$/fd/3 || echo no-fd-3"
        _, body, _ = call(path, EXEC, json.dumps({"command": cmd}).encode(), timeout=10)
        reply = json.loads(body)
        check(reply.get("success") is True, "EXEC ran", reply.get("error", ""))
        leaked = [v for v in ("NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES",
                              "WATCHDOG_USEC", "WATCHDOG_PID") if f"\n{v}=" in "\n" + reply["stdout"]]
        check(not leaked, "an EXEC child inherits no systemd variables", leaked or "")
        check(f"socket:[{listener_ino}]" not in reply["stdout"],
              "an EXEC child does not inherit the listening socket")

        # A stopped event loop stops pinging; systemd would restart it.
        os.kill(pid, signal.SIGSTOP)
        t_stop = time.monotonic()
        sd.pump(t_stop + 2 * WATCHDOG_USEC / 1e6)
        late = [p for p in sd.pings(since=t_stop + 0.02)]
        check(not late, "no ping while SIGSTOPped, for two watchdog intervals", late or "")
        os.kill(pid, signal.SIGCONT)
        t_cont = time.monotonic()
        t_ping, _ = sd.wait_for(lambda m: "WATCHDOG=1" in m.split("\n"), 1.0,
                                "WATCHDOG=1 after SIGCONT")
        check(t_ping - t_cont < 0.3, "pings resume after SIGCONT",
              f"{(t_ping - t_cont) * 1000:.0f} ms")

        os.kill(pid, signal.SIGTERM)
        t_term = time.monotonic()
        sd.wait_for(lambda m: "STOPPING=1" in m.split("\n"), 10, "STOPPING=1")
        code = wait_exit(pid, 30)
        pid = None
        check(code == 0, "SIGTERM: STOPPING=1, then exit 0",
              f"{(time.monotonic() - t_term) * 1000:.0f} ms")
        check(os.path.exists(path), "the passed socket is left in place (it is systemd's)")
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    with open(os.path.join(tmp, "a.out")) as f:
        check("clove: ready" in f.read(), "the ready line is on stdout")
    with open(os.path.join(tmp, "a.err")) as f:
        lines = [l for l in f.read().splitlines() if l]
    check(lines and all(re.match(r"<[0-7]>", l) for l in lines),
          "log lines carry a journald priority and no timestamp", lines[0] if lines else "")


def run_plain(opts, tmp, results):
    print("B: Type=notify without socket activation or watchdog, installed config as is")
    state = os.path.join(tmp, "state-b")
    os.mkdir(state, 0o700)
    path = os.path.join(tmp, "b.sock")
    sd = Systemd(os.path.join(tmp, "notify-b"))
    env = base_env(tmp)
    env["NOTIFY_SOCKET"] = sd.path
    out = os.open(os.path.join(tmp, "b.out"), os.O_WRONLY | os.O_CREAT, 0o644)
    err = os.open(os.path.join(tmp, "b.err"), os.O_WRONLY | os.O_CREAT, 0o644)
    pid = start(opts.binary, ["serve", "--config", opts.config, "--state-dir", state,
                              "--socket", path], env, out, err)
    try:
        sd.wait_for(lambda m: "READY=1" in m.split("\n"), 60, "READY=1")
        bound = os.path.exists(path)
        op, body, latency = call(path, NOOP, b"x", timeout=2.0)
        check(bound, "the socket was bound when READY=1 arrived")
        check(op == NOOP and body == b"x" and latency < 0.5,
              "and answered at once", f"{latency * 1000:.1f} ms")
        sd.pump(time.monotonic() + 1.0)
        check(not sd.pings(), "no watchdog pings without WATCHDOG_USEC")
        os.kill(pid, signal.SIGTERM)
        sd.wait_for(lambda m: "STOPPING=1" in m.split("\n"), 10, "STOPPING=1")
        code = wait_exit(pid, 30)
        pid = None
        check(code == 0, "SIGTERM: STOPPING=1, then exit 0")
        check(not os.path.exists(path), "its own socket is removed at exit")
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    with open(os.path.join(tmp, "b.err")) as f:
        lines = [l for l in f.read().splitlines() if l]
    check(lines and all(l.startswith("[") for l in lines),
          "outside journald, log lines carry timestamps", lines[0] if lines else "")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--binary", default="/usr/bin/clove")
    p.add_argument("--config", default="/etc/clove/clove.toml")
    p.add_argument("--user", help="run run A as this user (needs root), as clove.service does")
    opts = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="fake-systemd-")
    os.chmod(tmp, 0o755)  # the service user must reach its state directory inside
    results = {}
    try:
        run_activated(opts, tmp, results)
        run_plain(opts, tmp, results)
    except CheckFailed as e:
        print(f"FAIL {e}", file=sys.stderr)
        for name in ("a.err", "b.err"):
            log = os.path.join(tmp, name)
            if os.path.exists(log):
                print(f"--- {name} (kept in {tmp})", file=sys.stderr)
                with open(log) as f:
                    sys.stderr.write(f.read()[-4000:])
        return 1
    print("RESULTS " + json.dumps(results))
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
