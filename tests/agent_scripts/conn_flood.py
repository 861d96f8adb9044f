"""Connection slots, seen from an agent.

  conn_flood.py SOCKET flood OUT COUNT   open up to COUNT connections as fast as possible (each
                                          answers a HELLO), stop at the first refusal, write
                                          {"held", "refusal"} to OUT, then hold them
  conn_flood.py SOCKET idle OUT          one idle connection and one waiting for a 3 s EXEC;
                                          write to OUT when the idle one was closed and what
                                          the EXEC answered
"""
import json
import os
import socket
import struct
import sys
import threading
import time

MAGIC = 0x41474E54
EXEC, HELLO = 0x02, 0xFE


def read_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def send(s, op, req):
    payload = json.dumps(req).encode()
    s.sendall(struct.pack("<IIBQ", MAGIC, 0, op, len(payload)) + payload)


def reply(s):
    head = read_exact(s, 17)
    if head is None:
        return None
    _, _, _, length = struct.unpack("<IIBQ", head)
    body = read_exact(s, length)
    return None if body is None else json.loads(body)


def write(out, value):
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.rename(tmp, out)


def flood(path, out, count):
    held, refusal = [], None
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        except OSError as e:
            refusal = "connect failed: %s" % e
            break
        try:
            send(s, HELLO, {})
        except BrokenPipeError:
            pass  # refused at once: the error frame is still there to read
        try:
            r = reply(s)
        except OSError as e:
            r = {"success": False, "error": "no reply: %s" % e}
        if r is None or r.get("success") is not True:
            refusal = "closed without a reply" if r is None else r.get("error")
            s.close()
            break
        held.append(s)
    write(out, {"held": len(held), "refusal": refusal})
    time.sleep(3600)


def idle(path, out):
    t0 = time.monotonic()
    quiet = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    quiet.connect(path)
    send(quiet, HELLO, {})
    assert reply(quiet)["success"]
    ended = {}

    def wait_for_close():
        # Nothing more is sent on this connection: the daemon may close it.
        quiet.settimeout(30)
        try:
            ended["quiet_read"] = quiet.recv(1).decode()
        except OSError as e:
            ended["quiet_read"] = str(e)
        ended["quiet_closed_at"] = time.monotonic() - t0

    watcher = threading.Thread(target=wait_for_close)
    watcher.start()
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    busy.connect(path)
    send(busy, EXEC, {"command": "sleep 3; echo done"})
    exec_reply = reply(busy)
    exec_at = time.monotonic() - t0
    watcher.join()
    write(out, dict(ended, exec=exec_reply, exec_at=exec_at))
    time.sleep(3600)


if __name__ == "__main__":
    path, mode, out = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "flood":
        flood(path, out, int(sys.argv[4]))
    else:
        idle(path, out)
