// Relay scenarios driven by the real socket.io-client: `node scenarios.js NAME 'PARAMS'`
// prints one JSON object of what the clients saw; the Rust tests (tests/relay.rs) assert on it.
'use strict';
const { connect, refusal, ack, waitFor, waitDisconnect, sleep, received, runScenario } = require('./lib');

const scenarios = {};

// Every core event, success and error paths, on the transports given.
scenarios.core = async (p) => {
  const opts = { transports: p.transports };
  const out = {};
  const master = await connect(p.url, { token: p.master }, opts);
  const warden = await connect(p.url, { token: p.warden }, opts);
  const w1 = await connect(p.url, { token: p.worker, agent_id: 'w1', specs: { cpu: 4 } }, opts);
  out.fleet = await waitFor(master, 'fleet_update', (f) => f.some((a) => a.id === 'w1' && a.status === 'online'));
  out.joined = await waitFor(master, 'agent_joined', (d) => d.agent_id === 'w1');
  out.hello = await ack(w1, 'agent_hello', { capabilities: ['shell'] });
  w1.emit('report', { specs: { cpu: 8, mem: 16 } });
  out.fleet_after_report = await waitFor(master, 'fleet_update', (f) => f.some((a) => a.id === 'w1' && a.specs && a.specs.cpu === 8));
  out.ping = await ack(w1, 'latency_ping', {});

  // Tasks: dispatch, command, ack, result; and their refusals.
  out.dispatch = await ack(master, 'dispatch', { to: 'w1', cmd: 'echo hi' });
  out.command = await waitFor(w1, 'command', (c) => c.id === out.dispatch.task_id);
  out.command_ack = await ack(w1, 'command_ack', { id: out.dispatch.task_id });
  out.result = await ack(w1, 'task_result', { id: out.dispatch.task_id, status: 'completed', output: 'hi\n' });
  out.task_update = await waitFor(master, 'task_update', (ts) => ts.some((t) => t.id === out.dispatch.task_id && t.status === 'COMPLETED'));
  out.mirror_cmd = await waitFor(master, 'chat_update', (m) => m.msg === 'CMD: echo hi');
  out.mirror_result = await waitFor(master, 'chat_update', (m) => typeof m.msg === 'string' && m.msg.startsWith('RESULT: '));
  out.dispatch_no_cmd = await ack(master, 'dispatch', { to: 'w1' });
  out.ack_unknown_task = await ack(w1, 'command_ack', { id: 'no-such-task' });
  out.result_foreign = await ack(master, 'task_result', { id: out.dispatch.task_id, status: 'done' });
  out.approve_by_worker = await ack(w1, 'approve_task', { id: out.dispatch.task_id });
  out.approve_not_waiting = await ack(master, 'approve_task', { id: out.dispatch.task_id });

  // Chat with localId dedupe, direct messages, rooms.
  out.chat = await ack(master, 'chat', { to: 'all', msg: 'hello all', localId: 'l-1' });
  out.chat_seen = await waitFor(w1, 'chat_update', (m) => m.msg === 'hello all');
  out.chat_dup = await ack(master, 'chat', { to: 'all', msg: 'hello all', localId: 'l-1' });
  out.chat_message_alias = await ack(w1, 'chat', { to: 'master', message: 'to master only' });
  out.direct_seen = await waitFor(master, 'chat_update', (m) => m.msg === 'to master only');
  out.chat_empty = await ack(w1, 'chat', { to: 'all' });
  out.join = await ack(w1, 'join_room', { room: 'ops' });
  out.join_master = await ack(master, 'join_room', { room: '#ops' });
  out.room_update = await waitFor(w1, 'room_update', (r) => r.action === 'join' && r.agent_id === 'master');
  out.join_reserved = await ack(w1, 'join_room', { room: 'masters' });
  out.join_bad = await ack(w1, 'join_room', { room: 'a:b' });
  out.room_chat = await ack(master, 'chat', { to: '#ops', msg: 'ops only' });
  out.room_chat_seen = await waitFor(w1, 'chat_update', (m) => m.msg === 'ops only');
  out.leave = await ack(master, 'leave_room', { room: 'ops' });
  out.leave_seen = await waitFor(w1, 'room_update', (r) => r.action === 'leave' && r.agent_id === 'master');
  out.chat_room_not_member = await ack(warden, 'chat', { to: '#ops', msg: 'x' });
  out.history = await ack(w1, 'chat_history', { limit: 10 });

  // Shell relay is off by default; an unknown event is refused when acked, ignored otherwise.
  out.shell_off = await ack(master, 'shell_start', { to: 'w1' });
  out.unknown = await ack(w1, 'no_such_event', { x: 1 });
  w1.emit('no_such_event_no_ack', {});
  out.ping_after_unknown = await ack(w1, 'latency_ping', {});

  // Wardens see traffic.
  await sleep(100);
  out.traffic_types = [...new Set(received(warden, 'traffic').map((t) => t.type))].sort();

  out.transport = w1.io.engine.transport.name;

  // Disconnect: the agent goes offline.
  w1.close();
  out.left = await waitFor(master, 'agent_left', (d) => d.agent_id === 'w1');
  out.fleet_offline = await waitFor(master, 'fleet_update', (f) => f.some((a) => a.id === 'w1' && a.status === 'offline'));
  master.close();
  warden.close();
  return out;
};

// The seed's agent_connect / agent_disconnect on a shared-secret socket, and the shell relay.
scenarios.seed_presence = async (p) => {
  const out = {};
  const dash = await connect(p.url, { token: p.secret, agent_id: 'dash', role: 'master' });
  const s = await connect(p.url, { token: p.secret });
  out.hello_observer = await ack(s, 'agent_hello', {});
  out.join_observer = await ack(s, 'join_room', { room: 'ops' });
  out.connect = await ack(s, 'agent_connect', { agentId: 'seed-1', metadata: { hostname: 'h1' } });
  out.joined = await waitFor(dash, 'agent_joined', (d) => d.agentId === 'seed-1');
  out.fleet = await waitFor(dash, 'fleet_update', (f) => f.some((a) => a.id === 'seed-1' && a.status === 'online'));
  out.connect_again_other = await ack(s, 'agent_connect', { agentId: 'seed-2' });
  out.connect_missing = await ack(s, 'agent_connect', {});
  out.shell_start = await ack(dash, 'shell_start', { to: 'seed-1', cols: 80, rows: 24 });
  out.shell_seen = await waitFor(s, 'shell_start', (d) => d.from === 'dash');
  out.shell_output = await ack(s, 'shell_output', { to: 'dash', data: 'prompt$ ' });
  out.shell_output_seen = await waitFor(dash, 'shell_output', (d) => d.data === 'prompt$ ');
  out.shell_by_worker = await ack(s, 'shell_start', { to: 'dash' });
  out.shell_offline = await ack(dash, 'shell_input', { to: 'nobody', data: 'x' });
  out.disconnect = await ack(s, 'agent_disconnect', {});
  out.left = await waitFor(dash, 'agent_left', (d) => d.agent_id === 'seed-1');
  out.fleet_after = await waitFor(dash, 'fleet_update', (f) => f.some((a) => a.id === 'seed-1' && a.status === 'offline'));
  out.still_connected = s.connected;
  s.close();
  dash.close();
  return out;
};

// Token forms and every refusal.
scenarios.identity = async (p) => {
  const out = {};
  const u = p.url;
  const ok = async (auth) => {
    const s = await connect(u, auth);
    const fleet = await waitFor(s, 'fleet_update');
    s.close();
    return fleet;
  };
  out.agent_token = await ok({ token: p.worker, agent_id: 'w1' });
  out.agent_token_no_id = await ok({ token: p.worker });
  out.other_id = await refusal(u, { token: p.worker, agent_id: 'w2' });
  out.other_role = await refusal(u, { token: p.worker, agent_id: 'w1', role: 'master' });
  out.expired = await refusal(u, { token: p.expired });
  out.revoked = await refusal(u, { token: p.revoked });
  out.garbage = await refusal(u, { token: 'clv_nope_nope' });
  out.no_token = await refusal(u, {});
  out.wrong_secret = await refusal(u, { token: p.secret + 'x' });
  out.secret_fleet = await ok({ token: p.secret, agent_id: 'self-asserted' });
  out.tenant_secret = await ok({ token: 'acme:' + p.acme_secret, agent_id: 'acme-1' });
  out.polling_refused = await refusal(u, { token: 'bad' }, { transports: ['polling'] });
  const post = (path, body, bearer) => fetch(u + path, {
    method: 'POST',
    headers: Object.assign({ 'content-type': 'application/json' }, bearer ? { authorization: 'Bearer ' + bearer } : {}),
    body: JSON.stringify(body),
  }).then(async (r) => ({ status: r.status, body: await r.json() }));
  out.jwt_bad = await post('/api/auth/token', { secret: 'nope' });
  const jwt = await post('/api/auth/token', { secret: p.secret });
  out.jwt = { status: jwt.status, tokenType: jwt.body.tokenType, has_token: typeof jwt.body.token === 'string', expiresAt: jwt.body.expiresAt };
  out.jwt_connect = await ok({ token: jwt.body.token, agent_id: 'jwt-agent' });
  out.verify = await post('/api/auth/verify', {}, jwt.body.token);
  const bound = await post('/api/auth/token', { secret: p.worker });
  out.bound_jwt_other_id = await refusal(u, { token: bound.body.token, agent_id: 'w9' });
  out.bound_jwt_ok = await refusal(u, { token: bound.body.token, agent_id: 'w1' });
  out.metrics_no_token = await fetch(u + '/api/metrics').then((r) => r.status);
  out.metrics = await fetch(u + '/api/metrics', { headers: { authorization: 'Bearer ' + jwt.body.token } }).then(async (r) => ({ status: r.status, body: await r.json() }));
  out.metrics_worker = await fetch(u + '/api/metrics', { headers: { authorization: 'Bearer ' + p.worker } }).then((r) => r.status);
  out.revoke = await post('/api/auth/revoke', {}, jwt.body.token);
  out.jwt_revoked = await refusal(u, { token: jwt.body.token });
  out.verify_revoked = await post('/api/auth/verify', {}, jwt.body.token);
  out.root = await fetch(u + '/').then((r) => r.json());
  out.other_route = await fetch(u + '/api/restart', { method: 'POST' }).then((r) => r.status);
  return out;
};

// Two tenants: nothing crosses.
scenarios.tenants = async (p) => {
  const out = {};
  const am = await connect(p.url, { token: p.secret, agent_id: 'a-master', role: 'master' });
  const a1 = await connect(p.url, { token: p.secret, agent_id: 'a1' });
  const bm = await connect(p.url, { token: 'acme:' + p.acme_secret, agent_id: 'b-master', role: 'master' });
  const b1 = await connect(p.url, { token: 'acme:' + p.acme_secret, agent_id: 'b1' });
  const same = await connect(p.url, { token: 'acme:' + p.acme_secret, agent_id: 'a1' });
  await waitFor(am, 'fleet_update', (f) => f.some((a) => a.id === 'a1'));
  await waitFor(bm, 'fleet_update', (f) => f.some((a) => a.id === 'b1') && f.some((a) => a.id === 'a1'));
  out.dispatch_all = await ack(am, 'dispatch', { to: 'all', cmd: 'uptime' });
  out.dispatch_cross = await ack(am, 'dispatch', { to: 'b1', cmd: 'uptime' });
  out.a1_command = await waitFor(a1, 'command', (c) => c.cmd === 'uptime');
  out.chat_all = await ack(am, 'chat', { to: 'all', msg: 'tenant a only' });
  out.join_a = await ack(a1, 'join_room', { room: 'ops' });
  out.join_b = await ack(b1, 'join_room', { room: 'ops' });
  out.room_chat = await ack(a1, 'chat', { to: '#ops', msg: 'ops of a' });
  out.direct_cross = await ack(a1, 'chat', { to: 'b1', msg: 'psst' });
  await waitFor(a1, 'chat_update', (m) => m.msg === 'ops of a');
  await sleep(300);
  const seen = (s) => s.log.map((e) => JSON.stringify(e));
  const leaks = (s, words) => seen(s).filter((e) => words.some((w) => e.includes(w)));
  out.b_fleet_ids = [...new Set(received(bm, 'fleet_update').flat().map((a) => a.id))].sort();
  out.a_fleet_ids = [...new Set(received(am, 'fleet_update').flat().map((a) => a.id))].sort();
  out.b_leaks = [bm, b1, same].flatMap((s) => leaks(s, ['a-master', 'tenant a only', 'ops of a', 'psst', 'uptime']));
  out.a_leaks = [am, a1].flatMap((s) => leaks(s, ['b-master']));
  out.b1_commands = received(b1, 'command').length + received(same, 'command').length;
  out.b_tasks = received(bm, 'task_update').flat().length;
  out.a_rooms = received(a1, 'room_update').map((r) => r.members);
  out.b_rooms = received(b1, 'room_update').map((r) => r.members);
  for (const s of [am, a1, bm, b1, same]) s.close();
  return out;
};

// A master dispatches (agent offline or online); prints the ack.
scenarios.dispatch = async (p) => {
  const m = await connect(p.url, { token: p.master });
  const r = await ack(m, 'dispatch', { to: p.to, cmd: p.cmd });
  m.close();
  return r;
};

// An agent connects and reports the commands it is sent within the time given.
scenarios.receive = async (p) => {
  const s = await connect(p.url, { token: p.token, agent_id: p.agent_id });
  await sleep(p.wait_ms || 500);
  const out = { commands: received(s, 'command') };
  if (p.ack) {
    for (const c of out.commands) await ack(s, 'command_ack', { id: c.id });
  }
  s.close();
  return out;
};

// Deny and risky lists, and approval by a master.
scenarios.deny_risky = async (p) => {
  const out = {};
  const m = await connect(p.url, { token: p.master });
  const w = await connect(p.url, { token: p.worker, agent_id: 'w1' });
  out.denied = await ack(m, 'dispatch', { to: 'w1', cmd: 'rm -rf /' });
  out.risky = await ack(m, 'dispatch', { to: 'w1', cmd: 'sudo reboot now' });
  await sleep(300);
  out.commands_before = received(w, 'command').map((c) => c.cmd);
  out.approve_worker = await ack(w, 'approve_task', { id: out.risky.task_id });
  out.approve = await ack(m, 'approve_task', { id: out.risky.task_id });
  out.command = await waitFor(w, 'command', (c) => c.id === out.risky.task_id);
  out.updates = received(m, 'task_update').flat().filter((t) => t.id === out.denied.task_id).map((t) => t.status);
  m.close();
  w.close();
  return out;
};

// A second socket with the same agent id replaces the first; presence follows the live one.
scenarios.duplicate = async (p) => {
  const out = {};
  const m = await connect(p.url, { token: p.master });
  const a = await connect(p.url, { token: p.worker, agent_id: 'w1' });
  const b = await connect(p.url, { token: p.worker, agent_id: 'w1' });
  out.a_reason = await waitDisconnect(a);
  out.a_told = received(a, 'disconnect_reason');
  await sleep(300);
  out.fleet = (await waitFor(m, 'fleet_update', (f) => f.some((x) => x.id === 'w1'))).filter((x) => x.id === 'w1');
  out.last_fleet = received(m, 'fleet_update').pop().filter((x) => x.id === 'w1');
  out.left_events = received(m, 'agent_left').length;
  out.b_ping = await ack(b, 'latency_ping', {});
  out.dispatch = await ack(m, 'dispatch', { to: 'w1', cmd: 'whoami' });
  out.b_command = await waitFor(b, 'command', (c) => c.cmd === 'whoami');
  b.close();
  out.offline = await waitFor(m, 'fleet_update', (f) => f.some((x) => x.id === 'w1' && x.status === 'offline'));
  m.close();
  return out;
};

// Chats and dispatches whose acks arrived: printed as soon as each is acked (the test kills
// the daemon right after).
scenarios.acked_writes = async (p) => {
  const m = await connect(p.url, { token: p.master });
  const out = { chats: [], tasks: [] };
  const jobs = [];
  for (let i = 0; i < p.n; i++) {
    jobs.push(ack(m, 'chat', { to: 'all', msg: 'm' + i, localId: 'k' + i }).then((r) => { if (r.ok) out.chats.push('k' + i); }));
    jobs.push(ack(m, 'dispatch', { to: 'offline-agent', cmd: 'job ' + i }).then((r) => { if (r.ok) out.tasks.push(r.task_id); }));
  }
  await Promise.all(jobs);
  m.close();
  return out;
};

// What survived: chat history and tasks, as a client sees them.
scenarios.read_back = async (p) => {
  const m = await connect(p.url, { token: p.master });
  const tasks = await waitFor(m, 'task_update');
  const history = await ack(m, 'chat_history', { limit: 1000 });
  m.close();
  return { tasks: tasks.map((t) => t.id), chats: history.messages.map((x) => x.localId) };
};

// wss:// and https:// polling (with the upgrade), trusting the test's own CA.
scenarios.tls = async (p) => {
  const out = {};
  for (const t of [['websocket'], ['polling', 'websocket'], ['polling']]) {
    const name = t.join('+');
    const s = await connect(p.url, { token: p.secret, agent_id: 'tls-' + name }, { transports: t, ca: p.ca });
    const ping = await ack(s, 'latency_ping', {});
    const chat = await ack(s, 'chat', { to: 'all', msg: 'x'.repeat(100000) });
    const echo = await waitFor(s, 'chat_update', (m) => m.msg.length === 100000);
    // The upgrade runs beside the events (a TLS handshake of a debug build can take longer
    // than they do): wait for it, bounded.
    if (t.includes('websocket') && s.io.engine.transport.name !== 'websocket') {
      await new Promise((r) => {
        const timer = setTimeout(r, 5000);
        s.io.engine.once('upgrade', () => { clearTimeout(timer); r(); });
      });
    }
    out[name] = { ping: ping.ok, chat: chat.ok, echo: echo !== null, transport: s.io.engine.transport.name };
    s.close();
  }
  out.refused = await refusal(p.url, { token: p.secret }, { transports: ['websocket'] });
  return out;
};

// Connects and idles (for the malformed-input tests: a healthy client alongside).
scenarios.healthy = async (p) => {
  const s = await connect(p.url, { token: p.master }, { transports: p.transports });
  const r = await ack(s, 'latency_ping', {});
  s.close();
  return r;
};

// Floods chat to everyone while a client does not read; the others still get every message.
scenarios.flood = async (p) => {
  const m = await connect(p.url, { token: p.master });
  const w = await connect(p.url, { token: p.worker, agent_id: 'w1' });
  const big = 'x'.repeat(p.size);
  let acked = 0;
  const t0 = Date.now();
  for (let i = 0; i < p.n; i++) {
    const r = await ack(m, 'chat', { to: 'all', msg: big + i });
    if (r.ok) acked++;
  }
  await waitFor(w, 'chat_update', (x) => x.msg === big + (p.n - 1), 10000);
  const ping = await ack(w, 'latency_ping', {});
  const out = { acked, got: received(w, 'chat_update').length, ping_ok: ping.ok === true, ms: Date.now() - t0 };
  m.close();
  w.close();
  return out;
};

runScenario(scenarios, 60000);
