// The benchmark's floor: a plain `ws` WebSocket server that echoes every message, and sends
// a message starting with "broadcast" to every client. `node floor.js PORT` prints
// "ready PORT" once listening.
'use strict';
const { WebSocketServer } = require('ws');

const wss = new WebSocketServer({ host: '127.0.0.1', port: Number(process.argv[2] || 0) });
wss.on('connection', (ws) => {
  ws.on('message', (m, isBinary) => {
    if (!isBinary && m.toString().startsWith('broadcast')) {
      for (const c of wss.clients) c.send(m, { binary: false });
    } else {
      ws.send(m, { binary: isBinary });
    }
  });
});
wss.on('listening', () => console.log('ready ' + wss.address().port));
