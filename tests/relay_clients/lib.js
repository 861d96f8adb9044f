// Helpers for the relay scenarios: real socket.io-client sockets that record every event they
// receive, acks with a deadline, and waits with a deadline. Every wait is bounded.
'use strict';
const { io } = require('socket.io-client');

const DEFAULT_TIMEOUT = 5000;

// Connects and resolves with the socket once the handshake passed; rejects with the
// CONNECT_ERROR message (or a timeout) otherwise. `transports` defaults to websocket only.
function connect(url, auth, opts = {}) {
  return new Promise((resolve, reject) => {
    const s = io(url, {
      transports: opts.transports || ['websocket'],
      auth,
      reconnection: false,
      timeout: opts.timeout || DEFAULT_TIMEOUT,
      forceNew: true,
      ca: opts.ca ? require('fs').readFileSync(opts.ca) : undefined,
    });
    s.log = [];
    s.disconnects = [];
    s.onAny((event, data) => s.log.push({ event, data }));
    s.on('disconnect', (reason) => s.disconnects.push(reason));
    const timer = setTimeout(() => { s.close(); reject(new Error('connect timeout')); }, opts.timeout || DEFAULT_TIMEOUT);
    s.once('connect', () => { clearTimeout(timer); resolve(s); });
    s.once('connect_error', (e) => { clearTimeout(timer); s.close(); reject(e); });
  });
}

// The CONNECT_ERROR message a connection attempt gets (or 'connected' when it got in).
async function refusal(url, auth, opts) {
  try {
    const s = await connect(url, auth, opts);
    s.close();
    return 'connected';
  } catch (e) {
    return e.message;
  }
}

// Emits with an ack and resolves with the ack's value (or {timeout: true}).
function ack(s, event, data, timeout = DEFAULT_TIMEOUT) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve({ timeout: true }), timeout);
    s.emit(event, data, (reply) => { clearTimeout(timer); resolve(reply); });
  });
}

// Resolves with the data of the first `event` (already received or coming) that `pred`
// accepts, or null after `timeout`.
function waitFor(s, event, pred = () => true, timeout = DEFAULT_TIMEOUT) {
  const seen = s.log.find((e) => e.event === event && pred(e.data));
  if (seen) return Promise.resolve(seen.data);
  return new Promise((resolve) => {
    const timer = setTimeout(() => { s.off(event, h); resolve(null); }, timeout);
    const h = (data) => {
      if (!pred(data)) return;
      clearTimeout(timer);
      s.off(event, h);
      resolve(data);
    };
    s.on(event, h);
  });
}

// Resolves once the socket is disconnected, with the reason (or null after `timeout`).
function waitDisconnect(s, timeout = DEFAULT_TIMEOUT) {
  if (s.disconnects.length) return Promise.resolve(s.disconnects[0]);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(null), timeout);
    s.once('disconnect', (reason) => { clearTimeout(timer); resolve(reason); });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Events of `name` received so far.
const received = (s, name) => s.log.filter((e) => e.event === name).map((e) => e.data);

// Runs the scenario named by argv[2] with the JSON parameters in argv[3]; prints its result
// as one JSON line. Exit codes: 1 the scenario failed, 2 no such scenario, 3 it ran out of
// `timeoutMs`.
function runScenario(scenarios, timeoutMs) {
  const [name, params] = process.argv.slice(2);
  const run = scenarios[name];
  if (!run) {
    console.error('unknown scenario ' + name);
    process.exit(2);
  }
  const deadline = setTimeout(() => { console.error('scenario timed out'); process.exit(3); }, timeoutMs);
  run(JSON.parse(params || '{}')).then((out) => {
    clearTimeout(deadline);
    process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(0));
  }).catch((e) => {
    console.error('scenario failed: ' + (e && e.stack || e));
    process.exit(1);
  });
}

module.exports = { connect, refusal, ack, waitFor, waitDisconnect, sleep, received, runScenario };
