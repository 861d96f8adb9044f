//! The Clove frame codec: a 17-byte little-endian header followed by a payload.
//!
//! ```text
//! magic u32 = 0x41474E54 | agent_id u32 | op u8 | payload length u64 | payload
//! ```
//!
//! This module owns no stream and does no I/O. [`decode_header`] looks at the front of a byte
//! slice and says whether a whole frame is there, more bytes are needed, or the stream is
//! malformed beyond repair (bad magic, oversized length). Size limits are checked before anything
//! is allocated, so a hostile length field costs nothing.

use std::fmt;

/// "AGNT" as a little-endian u32.
pub const MAGIC: u32 = 0x4147_4E54;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 17;
/// Default cap on a request payload (1 MiB), as in the seed protocol.
pub const DEFAULT_MAX_PAYLOAD: u64 = 1 << 20;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub agent_id: u32,
    pub op: u8,
    pub len: u64,
}

/// Why a byte stream cannot be decoded as Clove frames. Both variants are fatal for the stream:
/// the caller should send an error reply and close, because there is no way to find the next
/// frame boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The first four bytes are not the protocol magic.
    BadMagic { found: u32 },
    /// The header announces a payload larger than the configured maximum.
    TooLarge { len: u64, max: u64, op: u8 },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadMagic { found } => write!(
                f,
                "bad frame magic 0x{found:08X} (expected 0x{MAGIC:08X}); closing connection"
            ),
            FrameError::TooLarge { len, max, .. } => write!(
                f,
                "frame payload of {len} bytes exceeds the maximum of {max} bytes; closing connection"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

impl FrameError {
    /// The op to put in the header of the error reply (the offending frame's op when known).
    pub fn op(&self) -> u8 {
        match self {
            FrameError::BadMagic { .. } => 0,
            FrameError::TooLarge { op, .. } => *op,
        }
    }
}

/// Looks at the start of `buf` for a frame.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some(header))` when the header is
/// complete (the payload may still be incomplete: check [`Header::frame_len`] against
/// `buf.len()`), or an error when the stream is malformed. The magic is checked as soon as four
/// bytes are present so that garbage is refused without waiting for a full header.
pub fn decode_header(buf: &[u8], max_payload: u64) -> Result<Option<Header>, FrameError> {
    if buf.len() >= 4 {
        let magic = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if magic != MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
    } else {
        // Even a partial magic can be refused early: compare the bytes we have.
        let want = MAGIC.to_le_bytes();
        if buf != &want[..buf.len()] {
            let mut found = [0u8; 4];
            found[..buf.len()].copy_from_slice(buf);
            return Err(FrameError::BadMagic {
                found: u32::from_le_bytes(found),
            });
        }
        return Ok(None);
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let agent_id = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let op = buf[8];
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&buf[9..17]);
    let len = u64::from_le_bytes(len_bytes);
    if len > max_payload {
        return Err(FrameError::TooLarge {
            len,
            max: max_payload,
            op,
        });
    }
    Ok(Some(Header { agent_id, op, len }))
}

impl Header {
    /// Total bytes of header plus payload. Only meaningful for headers that passed the size
    /// check in [`decode_header`], so the cast cannot overflow on 64-bit targets.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.len as usize
    }
}

/// A complete frame borrowed from a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: Header,
    pub payload: &'a [u8],
}

/// Decodes one complete frame from the front of `buf`, returning it with the number of bytes it
/// occupies. `Ok(None)` means the frame is not complete yet.
pub fn decode(buf: &[u8], max_payload: u64) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    match decode_header(buf, max_payload)? {
        Some(header) if buf.len() >= header.frame_len() => {
            let end = header.frame_len();
            Ok(Some((
                Frame {
                    header,
                    payload: &buf[HEADER_LEN..end],
                },
                end,
            )))
        }
        _ => Ok(None),
    }
}

/// Output buffers up to this size grow the usual way (doubling); see [`reserve_output`].
const DOUBLING_UP_TO: usize = 64 * 1024;

/// Makes room for `additional` more bytes at the end of an output buffer. Small buffers double
/// as usual; a large one grows by an eighth (or what is needed), still amortised O(1), so a
/// connection holding megabytes of unsent replies does not hold nearly as much again in spare
/// capacity, which no budget of unsent bytes would see.
pub fn reserve_output(out: &mut Vec<u8>, additional: usize) {
    if out.capacity() - out.len() >= additional {
        return;
    }
    if out.len() < DOUBLING_UP_TO {
        out.reserve(additional);
    } else {
        out.reserve_exact(additional.max(out.len() / 8));
    }
}

/// Appends one frame (header + payload) to `out`.
pub fn encode_into(out: &mut Vec<u8>, agent_id: u32, op: u8, payload: &[u8]) {
    reserve_output(out, HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&agent_id.to_le_bytes());
    out.push(op);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Encodes one frame into a new buffer.
pub fn encode(agent_id: u32, op: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    encode_into(&mut out, agent_id, op, payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let bytes = encode(7, 0x30, b"{\"key\":\"a\"}");
        let (frame, used) = decode(&bytes, DEFAULT_MAX_PAYLOAD).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(frame.header.agent_id, 7);
        assert_eq!(frame.header.op, 0x30);
        assert_eq!(frame.payload, b"{\"key\":\"a\"}");
    }

    #[test]
    fn large_output_buffers_grow_by_an_eighth_and_small_ones_double() {
        let mut small = Vec::with_capacity(100);
        small.extend_from_slice(&[0; 100]);
        reserve_output(&mut small, 1);
        assert!(small.capacity() >= 200, "{}", small.capacity());
        let mut big = vec![0u8; 4 << 20];
        reserve_output(&mut big, 1 << 20);
        assert!(
            big.capacity() >= 5 << 20 && big.capacity() < 6 << 20,
            "{}",
            big.capacity()
        );
        // Many small appends to a large buffer reallocate a bounded number of times.
        let mut grows = 0;
        let mut cap = big.capacity();
        for _ in 0..100_000 {
            encode_into(&mut big, 1, 0, b"0123456789");
            if big.capacity() != cap {
                grows += 1;
                cap = big.capacity();
            }
        }
        assert!(grows <= 3, "{grows} reallocations");
        assert!(
            big.capacity() - big.len() <= big.len() / 8 + 27,
            "{} {}",
            big.capacity(),
            big.len()
        );
    }

    #[test]
    fn every_prefix_needs_more() {
        let bytes = encode(1, 0, b"hello");
        for n in 0..bytes.len() {
            assert_eq!(
                decode(&bytes[..n], DEFAULT_MAX_PAYLOAD),
                Ok(None),
                "prefix {n}"
            );
        }
    }

    #[test]
    fn bad_magic_is_refused_early() {
        assert!(matches!(
            decode_header(b"G", 10),
            Err(FrameError::BadMagic { .. })
        ));
        assert!(matches!(
            decode_header(b"GET / HTTP/1.1\r\n\r\n", 10),
            Err(FrameError::BadMagic { .. })
        ));
    }

    #[test]
    fn oversized_length_is_refused_before_payload_arrives() {
        let mut bytes = encode(1, 3, b"");
        bytes[9..17].copy_from_slice(&(u64::MAX).to_le_bytes());
        assert_eq!(
            decode_header(&bytes, 1024),
            Err(FrameError::TooLarge {
                len: u64::MAX,
                max: 1024,
                op: 3
            })
        );
    }

    #[test]
    fn max_payload_is_inclusive() {
        let payload = vec![b'x'; 1024];
        let bytes = encode(1, 0, &payload);
        assert!(decode(&bytes, 1024).unwrap().is_some());
        assert!(decode(&bytes, 1023).is_err());
    }

    #[test]
    fn pipelined_frames_decode_in_order() {
        let mut bytes = Vec::new();
        for i in 0..5u8 {
            encode_into(&mut bytes, 0, i, &[i; 3]);
        }
        let mut off = 0;
        let mut ops = Vec::new();
        while let Some((frame, used)) = decode(&bytes[off..], 100).unwrap() {
            ops.push(frame.header.op);
            off += used;
        }
        assert_eq!(ops, vec![0, 1, 2, 3, 4]);
        assert_eq!(off, bytes.len());
    }
}
