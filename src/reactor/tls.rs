//! TLS on an accepted TCP connection (a listener with a certificate: the relay's `wss://`),
//! as a `Read + Write` stream the reactor drives like a plain socket.
//!
//! rustls does no I/O of its own here: `read` moves ciphertext from the socket into rustls
//! and plaintext out of it, `write` moves plaintext in and ciphertext out. Two things differ
//! from a plain socket and the reactor asks about them:
//! - ciphertext can be left in rustls when the socket is full, with no plaintext waiting in
//!   the connection's buffer: [`TlsStream::wants_write`] keeps WRITABLE interest on until it
//!   is out;
//! - `read` fills the caller's buffer, reading the socket until it would block, so a short
//!   read still means "drained" (the reactor relies on that with edge-triggered epoll).
//!
//! - a short `write` means the socket is full, as on a plain socket: `write` hands rustls
//!   plaintext and the socket ciphertext until one of them stops.
//!
//! Ciphertext held for sending is capped (64 KiB): beyond it `write` answers
//! `WouldBlock`, so unsent output stays in the connection's own (bounded) buffer.

use std::io::{self, Read, Write};
use std::sync::Arc;

/// Plaintext rustls may hold for sending before `write` answers `WouldBlock`.
const SEND_BUFFER: usize = 64 * 1024;

/// A server-side TLS connection over a non-blocking TCP socket.
pub struct TlsStream {
    pub tcp: mio::net::TcpStream,
    tls: rustls::ServerConnection,
}

impl TlsStream {
    pub fn new(
        tcp: mio::net::TcpStream,
        config: Arc<rustls::ServerConfig>,
    ) -> io::Result<TlsStream> {
        let mut tls = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        tls.set_buffer_limit(Some(SEND_BUFFER));
        Ok(TlsStream { tcp, tls })
    }

    /// Ciphertext (handshake or data) is waiting for the socket.
    pub fn wants_write(&self) -> bool {
        self.tls.wants_write()
    }

    /// Writes pending ciphertext until done or the socket would block.
    fn push_tls(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads ciphertext once; `Ok(false)` at the end of the stream.
    fn pull_tls(&mut self) -> io::Result<bool> {
        match self.tls.read_tls(&mut self.tcp) {
            Ok(0) => Ok(false),
            Ok(_) => {
                if let Err(e) = self.tls.process_new_packets() {
                    // Tell the peer why (a TLS alert), then fail the connection.
                    let _ = self.push_tls();
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        let mut eof = false;
        while n < buf.len() {
            match self.tls.reader().read(&mut buf[n..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(k) => {
                    n += k;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed without close_notify: the end of the stream all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    eof = true;
                    break;
                }
                Err(e) => return if n > 0 { Ok(n) } else { Err(e) },
            }
            match self.pull_tls() {
                Ok(true) => {}
                Ok(false) => {
                    eof = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return if n > 0 { Ok(n) } else { Err(e) },
            }
        }
        // Handshake messages (and alerts) rustls made while reading.
        match self.push_tls() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        match (n, eof) {
            (0, true) => Ok(0),
            (0, false) => Err(io::ErrorKind::WouldBlock.into()),
            (n, _) => Ok(n),
        }
    }
}

impl Write for TlsStream {
    /// Takes plaintext until all of `buf` is in or the socket is full, so that a short write
    /// means what it means on a plain socket (the reactor waits for writability after one).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut n = 0;
        loop {
            match self.push_tls() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return if n > 0 { Ok(n) } else { Err(e) },
            }
            if n == buf.len() {
                break;
            }
            match self.tls.writer().write(&buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.push_tls()
    }
}
