"""A short Clove session from Python, framed by hand with struct (stdlib only), as the Clove
Python SDK does. Usage: session.py SOCKET_PATH. Exits non-zero on the first mismatch."""

import json
import socket
import struct
import sys

MAGIC = 0x41474E54
HEADER = struct.Struct("<IIBQ")

NOOP, EXEC, SEND, RECV, REGISTER = 0x00, 0x02, 0x20, 0x21, 0x23
STORE, FETCH, KEYS, LIST, HELLO, EXIT = 0x30, 0x31, 0x33, 0x12, 0xFE, 0xFF


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("daemon closed the connection")
        buf += chunk
    return buf


class Session:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(path)
        self.agent_id = 0

    def send(self, op, payload):
        self.sock.sendall(HEADER.pack(MAGIC, self.agent_id, op, len(payload)) + payload)

    def recv(self):
        magic, agent_id, op, length = HEADER.unpack(recv_exact(self.sock, HEADER.size))
        assert magic == MAGIC, hex(magic)
        self.agent_id = agent_id
        return op, recv_exact(self.sock, length)

    def call(self, op, obj=None, raw=None):
        self.send(op, raw if raw is not None else json.dumps(obj if obj is not None else {}).encode())
        rop, payload = self.recv()
        assert rop == op, (rop, op)
        return payload

    def json(self, op, obj=None):
        reply = json.loads(self.call(op, obj))
        assert reply.get("success", True) is not False, reply
        return reply


def main():
    s = Session(sys.argv[1])
    hello = s.json(HELLO)
    assert hello["protocol_version"] == 1
    assert hello["agent_id"] == s.agent_id and s.agent_id > 0

    assert s.call(NOOP, raw=b"ping \xf0\x9f\x8d\x80") == b"ping \xf0\x9f\x8d\x80"

    s.json(STORE, {"key": "py:k", "value": {"list": [1, 2, 3]}, "scope": "agent"})
    got = s.json(FETCH, {"key": "py:k"})
    assert got["exists"] and got["value"] == {"list": [1, 2, 3]} and got["scope"] == "agent", got
    assert "py:k" in s.json(KEYS, {"prefix": "py:"})["keys"]

    # Extra fields (as SDK versions send) are answered as before, with a warning beside.
    got = s.json(STORE, {"key": "py:t", "value": 1, "tll": 5})
    assert got["success"] is True, got
    assert got["warnings"] == ["unknown field 'tll' (did you mean 'ttl'?)"], got
    assert "warnings" not in s.json(FETCH, {"key": "py:t"})

    out = s.json(EXEC, {"command": "printf '%s' \"$((6*7))\"", "async": False})
    assert out["stdout"] == "42" and out["exit_code"] == 0, out

    s.json(REGISTER, {"name": "py-agent"})
    s.json(SEND, {"to_name": "py-agent", "message": {"hi": "self"}})
    msgs = s.json(RECV, {})
    assert msgs["count"] == 1 and msgs["messages"][0]["message"] == {"hi": "self"}, msgs

    # Pipelining: three frames in one sendall, three replies in order.
    frames = b"".join(
        HEADER.pack(MAGIC, s.agent_id, NOOP, len(p)) + p for p in (b"a", b"bb", b"ccc")
    )
    s.sock.sendall(frames)
    assert [s.recv()[1] for _ in range(3)] == [b"a", b"bb", b"ccc"]

    # LIST takes an empty payload (as the SDK sends it) and answers with a JSON value.
    s.send(LIST, b"")
    op, payload = s.recv()
    assert op == LIST
    json.loads(payload)

    # Errors are JSON with success false.
    bad = json.loads(s.call(FETCH, raw=b"{not json"))
    assert bad["success"] is False and "invalid JSON" in bad["error"], bad

    assert s.call(EXIT) == b"goodbye"
    assert s.sock.recv(1) == b""
    print("python session ok")


if __name__ == "__main__":
    main()
