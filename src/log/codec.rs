//! Byte layout of frames and records (docs/FORMAT.md is the reference; keep them in step).
//!
//! A frame is what one group commit writes into one segment:
//!
//! ```text
//! frame header, 56 bytes, little-endian:
//!   0  u32  magic 0x4D524654 ("TFRM")
//!   4  u32  frame_len: header + records, in bytes
//!   8  u32  record_count, ≥ 1
//!  12  u32  reserved, 0
//!  16  u64  first_seq: sequence number of the first record
//!  24  [32] prev_hash: chain hash of the record before first_seq (zeros before seq 1)
//!  56  records, back to back
//! ```
//!
//! A record:
//!
//! ```text
//!   0  u32  record_len: the whole record, hash included
//!   4  u16  event kind code
//!   6  u16  flags, 0
//!   8  u64  seq
//!  16  u64  ts_us
//!  24  u32  envelope_len
//!  28  u32  payload_len
//!  32  envelope: event id (16 bytes), then tenant, stream, correlation id, causation id,
//!      actor, idempotency key, idempotency scope, each as u16 length + UTF-8 bytes
//!   …  payload: the event body, MessagePack (rmp-serde, structs as arrays)
//!   …  [32] hash = blake3(prev_hash ‖ bytes 0 .. 32 + envelope_len + payload_len)
//! ```

use crate::domain::event::*;
use crate::domain::event::{event_from_kind, for_each_payload};
use uuid::Uuid;

pub const FRAME_MAGIC: u32 = 0x4D52_4654;
pub const FRAME_HEADER_LEN: usize = 56;
pub const RECORD_HEADER_LEN: usize = 32;
pub const HASH_LEN: usize = 32;
/// The chain hash before the first record.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// What is wrong with bytes that should be a frame or a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The sequence number the bad record has or should have had.
    pub seq: u64,
    pub reason: String,
}

fn bad(seq: u64, reason: impl Into<String>) -> DecodeError {
    DecodeError {
        seq,
        reason: reason.into(),
    }
}

/// Appends one encoded record to `buf` and returns its chain hash.
pub fn encode_record(
    buf: &mut Vec<u8>,
    prev_hash: &[u8; 32],
    seq: u64,
    ts_us: u64,
    envelope: &Envelope,
    event: &Event,
) -> [u8; 32] {
    let start = buf.len();
    buf.extend_from_slice(&[0; RECORD_HEADER_LEN]);
    encode_envelope(buf, envelope);
    let envelope_len = buf.len() - start - RECORD_HEADER_LEN;
    encode_payload(buf, event);
    let payload_len = buf.len() - start - RECORD_HEADER_LEN - envelope_len;
    let record_len = RECORD_HEADER_LEN + envelope_len + payload_len + HASH_LEN;
    let header = &mut buf[start..start + RECORD_HEADER_LEN];
    header[0..4].copy_from_slice(&u32::try_from(record_len).expect("records are small").to_le_bytes());
    header[4..6].copy_from_slice(&event.kind().code().to_le_bytes());
    header[8..16].copy_from_slice(&seq.to_le_bytes());
    header[16..24].copy_from_slice(&ts_us.to_le_bytes());
    header[24..28].copy_from_slice(&(envelope_len as u32).to_le_bytes());
    header[28..32].copy_from_slice(&(payload_len as u32).to_le_bytes());
    let hash = chain_hash(prev_hash, &buf[start..]);
    buf.extend_from_slice(&hash);
    hash
}

pub fn chain_hash(prev_hash: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(prev_hash);
    hasher.update(body);
    *hasher.finalize().as_bytes()
}

/// Writes a frame header for `record_count` records totalling `records_len` bytes.
pub fn encode_frame_header(
    buf: &mut Vec<u8>,
    records_len: usize,
    record_count: u32,
    first_seq: u64,
    prev_hash: &[u8; 32],
) {
    let frame_len = u32::try_from(FRAME_HEADER_LEN + records_len).expect("frames fit a segment");
    buf.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
    buf.extend_from_slice(&frame_len.to_le_bytes());
    buf.extend_from_slice(&record_count.to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
    buf.extend_from_slice(&first_seq.to_le_bytes());
    buf.extend_from_slice(prev_hash);
}

/// A frame header as read.
#[derive(Debug, Clone, Copy)]
pub struct FrameHeader {
    pub frame_len: usize,
    pub record_count: u32,
    pub first_seq: u64,
    pub prev_hash: [u8; 32],
}

/// Reads a frame header. `Ok(None)` means zeros: the end of the written part of a segment.
pub fn decode_frame_header(bytes: &[u8], expected_seq: u64) -> Result<Option<FrameHeader>, DecodeError> {
    if bytes.len() < FRAME_HEADER_LEN {
        if bytes.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        return Err(bad(expected_seq, "frame header cut short"));
    }
    let magic = u32_at(bytes, 0);
    if magic == 0 && bytes[..FRAME_HEADER_LEN].iter().all(|&b| b == 0) {
        return Ok(None);
    }
    if magic != FRAME_MAGIC {
        return Err(bad(expected_seq, format!("bad frame magic {magic:#010x}")));
    }
    let header = FrameHeader {
        frame_len: u32_at(bytes, 4) as usize,
        record_count: u32_at(bytes, 8),
        first_seq: u64_at(bytes, 16),
        prev_hash: bytes[24..56].try_into().expect("32 bytes"),
    };
    if u32_at(bytes, 12) != 0 {
        return Err(bad(expected_seq, "frame reserved field is not zero"));
    }
    if header.record_count == 0
        || header.frame_len < FRAME_HEADER_LEN + header.record_count as usize * (RECORD_HEADER_LEN + HASH_LEN)
    {
        return Err(bad(expected_seq, "frame length and record count disagree"));
    }
    if header.first_seq != expected_seq {
        return Err(bad(
            expected_seq,
            format!("frame starts at seq {} instead of {expected_seq}", header.first_seq),
        ));
    }
    Ok(Some(header))
}

/// A record located in a buffer, its hash checked against the chain.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    pub seq: u64,
    pub ts_us: u64,
    pub kind: u16,
    pub envelope: &'a [u8],
    pub payload: &'a [u8],
    pub hash: [u8; 32],
    pub len: usize,
}

/// Reads the record at the start of `bytes`, checking its length fields and (when `verify`)
/// its hash against `prev_hash`.
pub fn decode_raw<'a>(
    bytes: &'a [u8],
    prev_hash: &[u8; 32],
    expected_seq: u64,
    verify: bool,
) -> Result<RawRecord<'a>, DecodeError> {
    if bytes.len() < RECORD_HEADER_LEN + HASH_LEN {
        return Err(bad(expected_seq, "record cut short"));
    }
    let len = u32_at(bytes, 0) as usize;
    let envelope_len = u32_at(bytes, 24) as usize;
    let payload_len = u32_at(bytes, 28) as usize;
    if len > bytes.len()
        || Some(len)
            != (RECORD_HEADER_LEN + HASH_LEN)
                .checked_add(envelope_len)
                .and_then(|n| n.checked_add(payload_len))
    {
        return Err(bad(expected_seq, "record length fields disagree"));
    }
    let body = &bytes[..len - HASH_LEN];
    let hash: [u8; 32] = bytes[len - HASH_LEN..len].try_into().expect("32 bytes");
    if verify && chain_hash(prev_hash, body) != hash {
        return Err(bad(
            expected_seq,
            "record hash does not match its contents and the chain",
        ));
    }
    let seq = u64_at(bytes, 8);
    if seq != expected_seq {
        return Err(bad(expected_seq, format!("record has seq {seq}")));
    }
    if u16_at(bytes, 6) != 0 {
        return Err(bad(expected_seq, "record flags are not zero"));
    }
    Ok(RawRecord {
        seq,
        ts_us: u64_at(bytes, 16),
        kind: u16_at(bytes, 4),
        envelope: &bytes[RECORD_HEADER_LEN..RECORD_HEADER_LEN + envelope_len],
        payload: &bytes[RECORD_HEADER_LEN + envelope_len..len - HASH_LEN],
        hash,
        len,
    })
}

impl RawRecord<'_> {
    /// Decodes the envelope and the payload.
    pub fn decode(&self) -> Result<Record, DecodeError> {
        Ok(Record {
            seq: self.seq,
            ts_us: self.ts_us,
            envelope: decode_envelope(self.envelope).ok_or_else(|| bad(self.seq, "malformed envelope"))?,
            event: decode_payload(self.kind, self.payload).map_err(|reason| bad(self.seq, reason))?,
            hash: self.hash,
        })
    }
}

fn encode_envelope(buf: &mut Vec<u8>, envelope: &Envelope) {
    buf.extend_from_slice(envelope.event_id.as_bytes());
    for text in [
        &envelope.tenant,
        &envelope.stream,
        &envelope.correlation_id,
        &envelope.causation_id,
        &envelope.actor,
        &envelope.idempotency_key,
        &envelope.idempotency_scope,
    ] {
        let len = u16::try_from(text.len()).expect("envelope fields are validated to be short");
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(text.as_bytes());
    }
}

fn decode_envelope(mut bytes: &[u8]) -> Option<Envelope> {
    let event_id = Uuid::from_slice(bytes.get(..16)?).ok()?;
    bytes = &bytes[16..];
    let mut next = || -> Option<String> {
        let len = u16::from_le_bytes(bytes.get(..2)?.try_into().ok()?) as usize;
        let text = std::str::from_utf8(bytes.get(2..2 + len)?).ok()?.to_string();
        bytes = &bytes[2 + len..];
        Some(text)
    };
    let envelope = Envelope {
        event_id,
        tenant: next()?,
        stream: next()?,
        correlation_id: next()?,
        causation_id: next()?,
        actor: next()?,
        idempotency_key: next()?,
        idempotency_scope: next()?,
    };
    bytes.is_empty().then_some(envelope)
}

fn encode_payload(buf: &mut Vec<u8>, event: &Event) {
    for_each_payload!(event, body => rmp_serde::encode::write(buf, body))
        .expect("encoding plain structs into a Vec cannot fail");
}

fn decode_payload(kind: u16, payload: &[u8]) -> Result<Event, String> {
    let kind = EventKind::from_code(kind).ok_or_else(|| format!("unknown event kind {kind}"))?;
    let err = |e: rmp_serde::decode::Error| format!("{} payload: {e}", kind.name());
    Ok(event_from_kind!(kind, rmp_serde::from_slice(payload).map_err(err)?))
}

pub fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2 bytes"))
}

pub fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

pub fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}
