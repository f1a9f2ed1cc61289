//! Bounds on what a peer's HTTP/3 streams can make the edge hold.
//!
//! h3 0.0.8 reads a frame only once all of it has arrived, and buffers it until then,
//! whatever length its header declares: a HEADERS frame claiming a gigabyte, or an unknown
//! frame type on the control stream, would have the edge read and keep every byte the
//! client cared to send (QUIC's flow control gives the client more credit as the bytes are
//! read). The transport ([`super::transport`]) therefore counts what it hands h3: a request
//! stream may deliver its head and little more ([`request_budget`]; the edge reads no
//! request body), and each frame on the peer's control stream is watched from its header
//! ([`FrameWatch`]), so one declared longer than [`CONTROL_FRAME_MAX`] is refused
//! before its payload is read.

/// HTTP/3's `H3_EXCESSIVE_LOAD` (RFC 9114 §8.1): what a peer is told when a stream of its
/// goes past a bound.
pub const EXCESSIVE_LOAD: u64 = 0x107;

/// The longest frame the peer's control stream may carry. What goes there (SETTINGS,
/// GOAWAY, MAX_PUSH_ID, PRIORITY_UPDATE, reserved frames) is a few dozen bytes.
pub const CONTROL_FRAME_MAX: u64 = 64 * 1024;

/// Bytes a request stream may deliver in all (its HEADERS frame and any frames before it),
/// for requests whose decoded header section may be up to `field_section` bytes. QPACK's
/// encoding of a field is shorter than the 32 bytes RFC 9114 adds to each field's name and
/// value in that count, but a literal without Huffman coding can be a little longer than its
/// text: twice the section and a kilobyte leave room for any honest encoding.
pub fn request_budget(field_section: u64) -> u64 {
    field_section.saturating_mul(2).saturating_add(1024)
}

/// Follows a unidirectional stream's bytes as they are read: its type, then, on a control
/// stream (type 0), each frame's header, so a frame declared longer than the bound is
/// refused before its payload is read. Other stream types are not looked into (h3 reads
/// no further than their type).
#[derive(Debug, Clone)]
pub struct FrameWatch {
    max_frame: u64,
    stage: Stage,
    /// The type of the frame whose header is being read.
    frame_type: u64,
    varint: PartialVarint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    StreamType,
    FrameType,
    FrameLength,
    /// Payload bytes still to come of the current frame.
    Payload(u64),
    /// Not a control stream: nothing more to watch.
    Unwatched,
}

/// A QUIC variable-length integer (RFC 9000 §16) read a byte at a time.
#[derive(Debug, Clone, Copy, Default)]
struct PartialVarint {
    value: u64,
    /// Bytes still to read; 0 before the first.
    left: u8,
}

impl PartialVarint {
    /// Takes one byte; the integer once it is whole.
    fn push(&mut self, byte: u8) -> Option<u64> {
        if self.left == 0 {
            self.left = 1 << (byte >> 6);
            self.value = u64::from(byte & 0x3f);
        } else {
            self.value = (self.value << 8) | u64::from(byte);
        }
        self.left -= 1;
        (self.left == 0).then_some(self.value)
    }
}

/// A control-stream frame declared longer than the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameTooLong {
    pub frame_type: u64,
    pub length: u64,
}

impl FrameWatch {
    /// A watch for a stream just opened by the peer, refusing control frames longer than
    /// `max_frame`.
    pub fn new(max_frame: u64) -> Self {
        Self {
            max_frame,
            stage: Stage::StreamType,
            frame_type: 0,
            varint: PartialVarint::default(),
        }
    }

    /// Whether the stream is still followed: false once its type shows it is not a control
    /// stream.
    pub fn watching(&self) -> bool {
        self.stage != Stage::Unwatched
    }

    /// Follows `bytes`, the next ones read from the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), FrameTooLong> {
        while let Some((&byte, rest)) = bytes.split_first() {
            match self.stage {
                Stage::Unwatched => return Ok(()),
                Stage::Payload(left) => {
                    let skip = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                    bytes = &bytes[skip..];
                    self.stage = match left - skip as u64 {
                        0 => Stage::FrameType,
                        more => Stage::Payload(more),
                    };
                    continue;
                }
                _ => {}
            }
            bytes = rest;
            let Some(value) = self.varint.push(byte) else {
                continue;
            };
            self.stage = match self.stage {
                Stage::StreamType if value == 0 => Stage::FrameType,
                Stage::StreamType => Stage::Unwatched,
                Stage::FrameType => {
                    self.frame_type = value;
                    Stage::FrameLength
                }
                Stage::FrameLength if value > self.max_frame => {
                    return Err(FrameTooLong {
                        frame_type: self.frame_type,
                        length: value,
                    });
                }
                Stage::FrameLength if value == 0 => Stage::FrameType,
                Stage::FrameLength => Stage::Payload(value),
                stage @ (Stage::Payload(_) | Stage::Unwatched) => stage,
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `value` as a QUIC varint of `len` bytes.
    fn varint(value: u64, len: usize) -> Vec<u8> {
        let tag = match len {
            1 => 0,
            2 => 1,
            4 => 2,
            _ => 3,
        };
        let mut out = value.to_be_bytes()[8 - len..].to_vec();
        out[0] |= tag << 6;
        out
    }

    fn frame(ty: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = varint(ty, 8);
        out.extend(varint(payload.len() as u64, 2));
        out.extend_from_slice(payload);
        out
    }

    /// Feeds `bytes` in pieces of `piece` bytes.
    fn feed_in(watch: &mut FrameWatch, bytes: &[u8], piece: usize) -> Result<(), FrameTooLong> {
        bytes.chunks(piece).try_for_each(|chunk| watch.feed(chunk))
    }

    #[test]
    fn a_control_stream_of_short_frames_passes_in_any_pieces() {
        let mut stream = varint(0, 1);
        stream.extend(frame(0x4, &[0x6, 0x44, 0x00, 0x01, 0x40, 0x40]));
        stream.extend(frame(0x21, &[0xaa; 300]));
        stream.extend(frame(0xf0700, &[]));
        stream.extend(frame(0x7, &[0x04]));
        for piece in [1, 2, 3, 7, 64, stream.len()] {
            let mut watch = FrameWatch::new(300);
            assert_eq!(
                feed_in(&mut watch, &stream, piece),
                Ok(()),
                "pieces of {piece}"
            );
            assert_eq!(watch.stage, Stage::FrameType, "pieces of {piece}");
        }
    }

    #[test]
    fn a_control_frame_declared_too_long_is_refused_from_its_header() {
        let mut stream = varint(0, 1);
        stream.extend(frame(0x4, &[]));
        stream.extend(varint(0x21, 1));
        stream.extend(varint(1 << 30, 8));
        for piece in [1, 5, stream.len()] {
            let mut watch = FrameWatch::new(CONTROL_FRAME_MAX);
            assert_eq!(
                feed_in(&mut watch, &stream, piece),
                Err(FrameTooLong {
                    frame_type: 0x21,
                    length: 1 << 30
                })
            );
        }
        // One byte over, and exactly at, the bound.
        let mut at = varint(0, 1);
        at.extend(varint(0x21, 1));
        at.extend(varint(301, 2));
        assert!(FrameWatch::new(300).feed(&at).is_err());
        assert!(FrameWatch::new(301).feed(&at).is_ok());
    }

    #[test]
    fn other_stream_types_are_not_looked_into() {
        // A QPACK encoder stream (type 2) whose instructions would read as a long frame.
        let mut stream = varint(2, 1);
        stream.extend(varint(0x21, 1));
        stream.extend(varint(1 << 40, 8));
        let mut watch = FrameWatch::new(16);
        assert!(watch.watching());
        assert_eq!(watch.feed(&stream), Ok(()));
        assert!(!watch.watching());
        // A reserved stream type in its longest encoding.
        let mut watch = FrameWatch::new(16);
        assert_eq!(watch.feed(&varint(0x1f * 7 + 0x21, 8)), Ok(()));
        assert_eq!(watch.stage, Stage::Unwatched);
    }

    #[test]
    fn request_bounds_leave_room_for_any_honest_encoding() {
        assert_eq!(request_budget(16 * 1024), 33 * 1024);
        assert_eq!(request_budget(u64::MAX), u64::MAX, "saturates");
    }
}
