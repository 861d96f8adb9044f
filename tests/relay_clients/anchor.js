// The benchmark's anchor: a minimal socket.io 4.8 server answering the relay's events the way
// ClawNet does (shared-secret middleware, tenant room, fleet_update broadcast on every
// presence change, latency_ping and chat acks, chat_update to the tenant).
// `node anchor.js PORT` prints "ready PORT" once listening.
'use strict';
const { Server } = require('socket.io');

const port = Number(process.argv[2] || 0);
const secret = process.env.CLAWNET_SECRET_KEY;
const io = new Server({ pingInterval: 25000, pingTimeout: 20000, maxHttpBufferSize: 1e6 });
const agents = new Map();
const fleet = () => [...agents.values()];

io.use((socket, next) => {
  if (secret && socket.handshake.auth && socket.handshake.auth.token === secret) return next();
  next(new Error('Unauthorized'));
});

io.on('connection', (socket) => {
  const { agent_id: id, role } = socket.handshake.auth;
  socket.join('tenant:default');
  if (id) {
    agents.set(id, { id, role: role || 'worker', status: 'online', specs: {}, last_seen: Date.now() });
    io.to('tenant:default').emit('fleet_update', fleet());
  }
  socket.on('latency_ping', (_d, cb) => { if (cb) cb({ ok: true, server_ts: Date.now() }); });
  socket.on('chat', (d, cb) => {
    const msg = { from: id || 'observer', to: d.to || 'all', msg: d.msg || d.message, ts: Date.now(), localId: d.localId };
    io.to('tenant:default').emit('chat_update', msg);
    if (cb) cb({ ok: true });
  });
  socket.on('disconnect', () => {
    if (id && agents.has(id)) {
      agents.get(id).status = 'offline';
      io.to('tenant:default').emit('fleet_update', fleet());
    }
  });
});

const httpServer = require('http').createServer();
io.attach(httpServer);
httpServer.listen(port, '127.0.0.1', () => console.log('ready ' + httpServer.address().port));
