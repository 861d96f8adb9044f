"""A minimal Clove protocol client for the test agents (frames: <IIBQ header + JSON)."""
import json
import os
import socket
import struct

MAGIC = 0x41474E54


class Clove:
    def __init__(self, path=None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path or os.environ["CLOVE_SOCKET"])
        self.agent_id = 0

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("daemon closed the connection")
            buf += chunk
        return buf

    def call(self, op, req=None):
        payload = json.dumps(req if req is not None else {}).encode()
        self.sock.sendall(struct.pack("<IIBQ", MAGIC, self.agent_id, op, len(payload)) + payload)
        magic, agent_id, rop, length = struct.unpack("<IIBQ", self._read(17))
        self.agent_id = agent_id
        return json.loads(self._read(length))


HELLO, SEND, RECV, REGISTER, STORE = 0xFE, 0x20, 0x21, 0x23, 0x30
SPAWN, KILL, GET_PERMS, SET_PERMS = 0x10, 0x11, 0x40, 0x41
