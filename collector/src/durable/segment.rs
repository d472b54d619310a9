//! Segment files: names, listing, and a bounded-memory reader of their
//! frames.

use super::record::{decode_frame_header, decode_segment_header, frame_crc, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// The sub-directory of the data dir that holds the segments.
pub const WAL_DIR: &str = "wal";

/// `00000001.seg`, ...: zero-padded so they also sort by name.
pub fn segment_name(number: u64) -> String {
    format!("{number:08}.seg")
}

/// The number of a segment file name, `None` for any other file.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments in `wal_dir`, by number.
pub fn list_segments(wal_dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(wal_dir)? {
        let entry = entry?;
        if let Some(n) = entry.file_name().to_str().and_then(parse_segment_name) {
            out.push((n, entry.path()));
        }
    }
    out.sort_unstable_by_key(|(n, _)| *n);
    Ok(out)
}

/// Reads the header of a segment: its first LSN, or why it is unusable.
pub fn read_segment_header(path: &Path) -> io::Result<Result<u64, String>> {
    let mut file = File::open(path)?;
    let mut h = Vec::with_capacity(SEGMENT_HEADER_LEN);
    (&mut file).take(SEGMENT_HEADER_LEN as u64).read_to_end(&mut h)?;
    Ok(decode_segment_header(&h))
}

/// What the next frame of a segment is.
#[derive(Debug)]
pub enum Frame {
    /// An intact record with the expected LSN.
    Record {
        /// Its LSN.
        lsn: u64,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// The clean end of the file.
    End,
    /// A torn or corrupt frame at [`FrameReader::offset`]: the log ends here.
    Bad(String),
}

/// Reads a segment's frames in order, one payload in memory at a time. A
/// frame's declared length is checked against what the file still holds
/// before anything is allocated, so a damaged length costs nothing.
pub struct FrameReader {
    reader: BufReader<File>,
    offset: u64,
    len: u64,
}

impl FrameReader {
    /// Positions after the header of the segment at `path`.
    pub fn open(path: &Path) -> io::Result<FrameReader> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let mut h = [0u8; SEGMENT_HEADER_LEN];
        let skip = (SEGMENT_HEADER_LEN as u64).min(len) as usize;
        reader.read_exact(&mut h[..skip])?;
        Ok(FrameReader { reader, offset: skip as u64, len })
    }

    /// The file offset of the next frame (the cut point after [`Frame::Bad`]).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The size of the file.
    pub fn file_len(&self) -> u64 {
        self.len
    }

    /// The LSN the next frame claims, without consuming it (`None` if
    /// unreadable).
    pub fn peek_lsn(&mut self) -> Option<u64> {
        let buf = self.reader.fill_buf().ok()?;
        let h: &[u8; FRAME_HEADER_LEN] = buf.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
        Some(decode_frame_header(h).2)
    }

    /// The next frame, which must carry `expected_lsn`.
    pub fn next(&mut self, expected_lsn: u64) -> io::Result<Frame> {
        let left = self.len - self.offset;
        if left == 0 {
            return Ok(Frame::End);
        }
        if left < FRAME_HEADER_LEN as u64 {
            return Ok(Frame::Bad(format!("torn record header ({left} bytes)")));
        }
        let mut h = [0u8; FRAME_HEADER_LEN];
        self.reader.read_exact(&mut h)?;
        let (len, crc, lsn) = decode_frame_header(&h);
        if u64::from(len) > left - FRAME_HEADER_LEN as u64 {
            return Ok(Frame::Bad(format!(
                "torn record: {len} payload bytes declared, {} left in the file",
                left - FRAME_HEADER_LEN as u64
            )));
        }
        let mut payload = vec![0u8; len as usize];
        self.reader.read_exact(&mut payload)?;
        if frame_crc(len, lsn, &payload) != crc {
            return Ok(Frame::Bad("record checksum mismatch".into()));
        }
        if lsn != expected_lsn {
            return Ok(Frame::Bad(format!("record carries lsn {lsn}, expected {expected_lsn}")));
        }
        self.offset += (FRAME_HEADER_LEN + payload.len()) as u64;
        Ok(Frame::Record { lsn, payload })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_name(1), "00000001.seg");
        assert_eq!(parse_segment_name("00000001.seg"), Some(1));
        assert_eq!(parse_segment_name(&segment_name(123_456_789_012)), Some(123_456_789_012));
        for bad in ["", ".seg", "1.seg.tmp", "x1.seg", "00000001.se", "+1.seg"] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }
}
