"""A second Socket.IO implementation against the relay: python-socketio's client.

`python3 client.py URL MASTER_TOKEN WORKER_TOKEN TRANSPORT` prints one JSON object of what
the two clients saw; tests/relay.rs asserts on it. Every wait is bounded.
"""

import json
import sys
import threading
import time

import socketio


def client(url, token, agent_id, transport, events):
    sio = socketio.Client(reconnection=False)

    def record(event, *args):
        events.append((event, args[0] if args else None))

    sio.on("*", record)
    sio.connect(url, auth={"token": token, "agent_id": agent_id}, transports=[transport], wait_timeout=5)
    return sio


def wait_for(events, name, pred, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for event, data in list(events):
            if event == name and pred(data):
                return data
        time.sleep(0.02)
    return None


def main():
    url, master_token, worker_token, transport = sys.argv[1:5]
    out = {}
    m_events, w_events = [], []
    master = client(url, master_token, "master", transport, m_events)
    worker = client(url, worker_token, "py-worker", transport, w_events)
    out["transport"] = worker.transport()
    out["ping"] = worker.call("latency_ping", {}, timeout=5)
    out["fleet"] = wait_for(m_events, "fleet_update", lambda f: any(a["id"] == "py-worker" for a in f))
    out["dispatch"] = master.call("dispatch", {"to": "py-worker", "cmd": "hostname"}, timeout=5)
    cmd = wait_for(w_events, "command", lambda c: c["id"] == out["dispatch"]["task_id"])
    out["command"] = cmd
    out["command_ack"] = worker.call("command_ack", {"id": cmd["id"]}, timeout=5)
    out["result"] = worker.call("task_result", {"id": cmd["id"], "status": "completed", "output": "node1"}, timeout=5)
    out["task_update"] = wait_for(
        m_events, "task_update", lambda ts: any(t["id"] == cmd["id"] and t["status"] == "COMPLETED" for t in ts)
    )
    text = "from python over " + transport
    out["chat"] = worker.call("chat", {"to": "all", "msg": text, "localId": "py-" + transport}, timeout=5)
    out["chat_seen"] = wait_for(m_events, "chat_update", lambda c: c["msg"] == text)
    out["unknown"] = worker.call("no_such_event", {}, timeout=5)
    try:
        bad = socketio.Client(reconnection=False)
        bad.connect(url, auth={"token": "wrong"}, transports=[transport], wait_timeout=5)
        out["refused"] = "connected"
        bad.disconnect()
    except socketio.exceptions.ConnectionError as e:
        out["refused"] = str(e)
    worker.disconnect()
    master.disconnect()
    print(json.dumps(out))


if __name__ == "__main__":
    timer = threading.Timer(60, lambda: (print("timed out", file=sys.stderr), sys.exit(3)))
    timer.daemon = True
    timer.start()
    main()
