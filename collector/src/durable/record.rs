//! Byte layouts: record frames, segment headers and checkpoint headers, and
//! their checksums (CRC-32, IEEE polynomial, via `crc32fast`). All integers
//! are little-endian.
//!
//! ```text
//! record frame     len u32 | crc u32 | lsn u64 | payload[len]
//!                  crc = CRC-32(len ‖ lsn ‖ payload)
//! segment header   "SHOALWAL" | version u32 | header_len u32 | first_lsn u64 | reserved u32 | crc u32
//!                  crc = CRC-32(the 28 bytes before it)
//! checkpoint       "SHOALCKP" | version u32 | header_len u32 | lsn u64 | len u64 | reserved u32 | crc u32 | snapshot[len]
//!                  crc = CRC-32(the 36 header bytes before it ‖ snapshot)
//! ```

/// Bytes before each record's payload.
pub const FRAME_HEADER_LEN: usize = 16;
/// Bytes of a segment file's header.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Bytes of a checkpoint file's header.
pub const CHECKPOINT_HEADER_LEN: usize = 40;
/// Format version of segments and checkpoints.
pub const VERSION: u32 = 1;

const SEGMENT_MAGIC: &[u8; 8] = b"SHOALWAL";
const CHECKPOINT_MAGIC: &[u8; 8] = b"SHOALCKP";

/// The frame checksum: covers the length and the LSN as well as the payload,
/// so a damaged length or a stale frame with another LSN is caught.
pub fn frame_crc(len: u32, lsn: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&lsn.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Appends the frame of `payload` (which the caller has checked fits a u32).
pub fn encode_frame(buf: &mut Vec<u8>, lsn: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&frame_crc(len, lsn, payload).to_le_bytes());
    buf.extend_from_slice(&lsn.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// A frame header as read: (payload length, stored checksum, lsn).
pub fn decode_frame_header(h: &[u8; FRAME_HEADER_LEN]) -> (u32, u32, u64) {
    (le_u32(&h[0..4]), le_u32(&h[4..8]), le_u64(&h[8..16]))
}

/// The header that starts every segment: the LSN of its first record.
pub fn encode_segment_header(first_lsn: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(SEGMENT_HEADER_LEN as u32).to_le_bytes());
    h[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32fast::hash(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The first LSN of a segment from its header bytes, or why they are bad.
pub fn decode_segment_header(h: &[u8]) -> Result<u64, String> {
    if h.len() < SEGMENT_HEADER_LEN {
        return Err(format!("segment header torn ({} of {SEGMENT_HEADER_LEN} bytes)", h.len()));
    }
    if &h[0..8] != SEGMENT_MAGIC {
        return Err("bad segment magic".into());
    }
    if crc32fast::hash(&h[0..28]) != le_u32(&h[28..32]) {
        return Err("segment header checksum mismatch".into());
    }
    let version = le_u32(&h[8..12]);
    if version != VERSION || le_u32(&h[12..16]) as usize != SEGMENT_HEADER_LEN {
        return Err(format!("unsupported segment version {version}"));
    }
    Ok(le_u64(&h[16..24]))
}

/// A checkpoint file's header for a snapshot covering records up to `lsn`.
pub fn encode_checkpoint_header(lsn: u64, snapshot: &[u8]) -> [u8; CHECKPOINT_HEADER_LEN] {
    let mut h = [0u8; CHECKPOINT_HEADER_LEN];
    h[0..8].copy_from_slice(CHECKPOINT_MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(CHECKPOINT_HEADER_LEN as u32).to_le_bytes());
    h[16..24].copy_from_slice(&lsn.to_le_bytes());
    h[24..32].copy_from_slice(&(snapshot.len() as u64).to_le_bytes());
    let crc = checkpoint_crc(&h[0..36], snapshot);
    h[36..40].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The fields of a checkpoint header that passed the checks that need no
/// payload: (lsn, snapshot length, stored checksum).
pub fn decode_checkpoint_header(h: &[u8]) -> Result<(u64, u64, u32), String> {
    if h.len() < CHECKPOINT_HEADER_LEN {
        return Err(format!("truncated: {} bytes, shorter than the {CHECKPOINT_HEADER_LEN}-byte header", h.len()));
    }
    if &h[0..8] != CHECKPOINT_MAGIC {
        return Err("bad magic (not a shoal checkpoint)".into());
    }
    let version = le_u32(&h[8..12]);
    if version != VERSION || le_u32(&h[12..16]) as usize != CHECKPOINT_HEADER_LEN {
        return Err(format!("unsupported checkpoint version {version}"));
    }
    Ok((le_u64(&h[16..24]), le_u64(&h[24..32]), le_u32(&h[36..40])))
}

/// The checkpoint checksum over its header fields and the snapshot.
pub fn checkpoint_crc(header_fields: &[u8], snapshot: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header_fields[0..36]);
    h.update(snapshot);
    h.finalize()
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn frame_round_trip_and_every_field_is_covered() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 42, b"hello");
        assert_eq!(buf.len(), FRAME_HEADER_LEN + 5);
        let h: [u8; FRAME_HEADER_LEN] = buf[..FRAME_HEADER_LEN].try_into().unwrap();
        let (len, crc, lsn) = decode_frame_header(&h);
        assert_eq!((len, lsn), (5, 42));
        assert_eq!(crc, frame_crc(len, lsn, &buf[FRAME_HEADER_LEN..]));
        assert_ne!(crc, frame_crc(len, lsn + 1, &buf[FRAME_HEADER_LEN..]));
        assert_ne!(crc, frame_crc(len + 1, lsn, &buf[FRAME_HEADER_LEN..]));
        // An all-zero region (a file extended by the filesystem) is no valid frame.
        assert_ne!(frame_crc(0, 0, b""), 0);
    }

    #[test]
    fn segment_header_round_trip_and_damage() {
        let h = encode_segment_header(7);
        assert_eq!(decode_segment_header(&h), Ok(7));
        for i in 0..SEGMENT_HEADER_LEN {
            let mut bad = h;
            bad[i] ^= 0x10;
            assert!(decode_segment_header(&bad).is_err(), "flip at {i} undetected");
        }
        assert!(decode_segment_header(&h[..31]).is_err());
    }

    #[test]
    fn checkpoint_header_round_trip() {
        let h = encode_checkpoint_header(9, b"state");
        let (lsn, len, crc) = decode_checkpoint_header(&h).unwrap();
        assert_eq!((lsn, len), (9, 5));
        assert_eq!(crc, checkpoint_crc(&h, b"state"));
        assert_ne!(crc, checkpoint_crc(&h, b"statf"));
    }
}
