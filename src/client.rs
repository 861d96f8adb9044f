//! A small blocking client for the Clove protocol, used by the CLI (`clove call`, `clove ping`)
//! and by programs that embed clove as a library.

use crate::proto::clove::{self, HEADER_LEN};
use serde_json::Value;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Largest reply the client accepts (replies can be larger than requests: READ, KEYS).
pub const MAX_REPLY: u64 = 1 << 30;

/// One reply frame.
#[derive(Debug, Clone)]
pub struct Reply {
    pub op: u8,
    pub agent_id: u32,
    pub payload: Vec<u8>,
}

impl Reply {
    /// The payload parsed as JSON.
    pub fn json(&self) -> io::Result<Value> {
        serde_json::from_slice(&self.payload).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("reply is not JSON: {e}"),
            )
        })
    }
}

/// A connection to the daemon.
pub struct Client {
    stream: UnixStream,
    /// The id the daemon gave this connection (learned from the first reply).
    pub agent_id: u32,
}

impl Client {
    /// Connects to the daemon's socket.
    pub fn connect(path: &Path) -> io::Result<Client> {
        let stream = UnixStream::connect(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot connect to clove at {}: {e} (is `clove serve` running? set --socket or CLOVE_SOCKET)",
                    path.display()
                ),
            )
        })?;
        Ok(Client {
            stream,
            agent_id: 0,
        })
    }

    /// Sets a read timeout for replies.
    pub fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(t)
    }

    /// Sends one request and waits for its reply.
    pub fn call(&mut self, op: u8, payload: &[u8]) -> io::Result<Reply> {
        if let Err(e) = self
            .stream
            .write_all(&clove::encode(self.agent_id, op, payload))
        {
            // A daemon that refuses a connection sends an error frame and closes; show that
            // explanation rather than the bare write error.
            return read_frame(&mut self.stream).map_err(|_| e);
        }
        let reply = read_frame(&mut self.stream)?;
        self.agent_id = reply.agent_id;
        Ok(reply)
    }

    /// Sends a JSON request and parses the JSON reply.
    pub fn call_json(&mut self, op: u8, request: &Value) -> io::Result<Value> {
        let payload = serde_json::to_vec(request)?;
        self.call(op, &payload)?.json()
    }

    /// The underlying stream, for callers that need raw access.
    pub fn stream(&mut self) -> &mut UnixStream {
        &mut self.stream
    }
}

/// Reads one whole frame from a blocking stream.
pub fn read_frame<R: Read>(r: &mut R) -> io::Result<Reply> {
    let mut header = [0u8; HEADER_LEN];
    r.read_exact(&mut header)?;
    let h = clove::decode_header(&header, MAX_REPLY)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "short header"))?;
    let mut payload = vec![0u8; h.len as usize];
    r.read_exact(&mut payload)?;
    Ok(Reply {
        op: h.op,
        agent_id: h.agent_id,
        payload,
    })
}
