//! The frames an HTTP/2 client sends, read off its connection's bytes on their way to pingora
//! (whose HTTP/2 connection is out of batchgate's reach): only their 9-byte frame heads, to
//!
//! * give a request head a deadline: while a frame is half received or a header block is
//!   open (HEADERS without END_HEADERS, then CONTINUATION), the connection's clock runs the
//!   header timeout (the body timeout for a DATA frame). A stalled header block stalls every
//!   stream of the connection (HPACK state is shared), so the connection is what is cut;
//! * count streams the client resets soon after opening them ("premature resets", the
//!   CVE-2023-44487 follow-up that Envoy and nginx bound): each costs a request the upstream
//!   may already work on, and a connection that does it `client_h2_max_premature_resets`
//!   times, for at least half of its streams, is closed. A client that mixes in twice as
//!   many streams it lets finish stays under the ratio (as under Envoy's rule); what each
//!   reset can cost is then bounded by `max_in_flight`, since a cancelled batch's sent items
//!   keep their permits. Only the client's frames are seen: a reset of a stream the server
//!   had already answered also counts (clients rarely reset finished streams).
//!
//! Nothing here decides what a frame means to HTTP; pingora's h2 server still parses and
//! checks every byte.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// The client connection preface (`PRI * HTTP/2.0...`), before the first frame.
const PREFACE_LEN: usize = 24;
const FRAME_HEAD_LEN: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// A stream reset by its client this soon after it opened counts as premature (Envoy's
/// `premature_reset_min_stream_lifetime_seconds` is 1 s).
pub const PREMATURE_RESET_WINDOW: Duration = Duration::from_secs(1);

/// Streams remembered for the reset rule: a client cannot make this list grow without bound
/// by opening streams faster than the window ages them out; the oldest go first.
pub const MAX_REMEMBERED_STREAMS: usize = 1024;

/// Which deadline the frames so far leave the connection under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// Nothing half received.
    Nothing,
    /// A frame head, a header block or a non-DATA frame is incomplete since then.
    Head(Instant),
    /// A DATA frame is incomplete since then.
    Body(Instant),
}

/// One connection's frame reader.
#[derive(Debug)]
pub struct FrameWatch {
    preface_left: usize,
    /// When the watch began: the preface is due one header timeout after it.
    started: Instant,
    head: [u8; FRAME_HEAD_LEN],
    head_len: usize,
    payload_left: usize,
    /// The frame being received: its type (`None` until its head is complete) and when its
    /// first byte came.
    current: Option<(Option<u8>, Instant)>,
    /// A header block is open since then (waiting for END_HEADERS).
    header_block: Option<Instant>,
    /// Recently opened streams (ids ascending, as clients must open them), when, and
    /// whether the client has reset it.
    opened: VecDeque<(u32, Instant, bool)>,
    highest_stream: u32,
    streams: u64,
    premature: u64,
    max_premature: u64,
}

impl FrameWatch {
    /// A watch from the first byte of the connection (its preface), begun at `now`;
    /// `max_premature` is `client_h2_max_premature_resets`.
    pub fn new(max_premature: u64, now: Instant) -> Self {
        FrameWatch {
            preface_left: PREFACE_LEN,
            started: now,
            head: [0; FRAME_HEAD_LEN],
            head_len: 0,
            payload_left: 0,
            current: None,
            header_block: None,
            opened: VecDeque::new(),
            highest_stream: 0,
            streams: 0,
            premature: 0,
            max_premature,
        }
    }

    /// Reads `bytes` (the next ones the client sent) at `now`.
    pub fn feed(&mut self, mut bytes: &[u8], now: Instant) {
        let skip = self.preface_left.min(bytes.len());
        self.preface_left -= skip;
        bytes = &bytes[skip..];
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
                if self.payload_left == 0 {
                    self.current = None;
                }
                continue;
            }
            if self.head_len == 0 {
                self.current = Some((None, now));
            }
            let n = (FRAME_HEAD_LEN - self.head_len).min(bytes.len());
            self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
            self.head_len += n;
            bytes = &bytes[n..];
            if self.head_len == FRAME_HEAD_LEN {
                self.head_len = 0;
                self.frame_head(now);
            }
        }
    }

    /// A complete frame head: its stream and what it does to the reset and head rules.
    fn frame_head(&mut self, now: Instant) {
        let [l0, l1, l2, kind, flags, s0, s1, s2, s3] = self.head;
        let length = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
        let stream = u32::from_be_bytes([s0 & 0x7f, s1, s2, s3]);
        let since = self.current.map_or(now, |(_, since)| since);
        match kind {
            HEADERS => {
                if stream > self.highest_stream {
                    self.highest_stream = stream;
                    self.opened_stream(stream, now);
                }
                if flags & END_HEADERS == 0 {
                    self.header_block = Some(since);
                }
            }
            CONTINUATION if flags & END_HEADERS != 0 => self.header_block = None,
            RST_STREAM => self.reset(stream, now),
            _ => {}
        }
        self.payload_left = length;
        self.current = (length > 0).then_some((Some(kind), since));
    }

    fn opened_stream(&mut self, stream: u32, now: Instant) {
        self.streams += 1;
        while self
            .opened
            .front()
            .is_some_and(|(_, at, _)| now.duration_since(*at) > PREMATURE_RESET_WINDOW)
        {
            self.opened.pop_front();
        }
        if self.opened.len() == MAX_REMEMBERED_STREAMS {
            self.opened.pop_front();
        }
        self.opened.push_back((stream, now, false));
    }

    /// A reset of `stream`: premature when it opened within the window (each stream counts
    /// once, however often it is reset).
    fn reset(&mut self, stream: u32, now: Instant) {
        let Ok(i) = self.opened.binary_search_by_key(&stream, |(id, _, _)| *id) else {
            return;
        };
        if let Some((_, at, reset)) = self.opened.get_mut(i) {
            if !*reset && now.duration_since(*at) <= PREMATURE_RESET_WINDOW {
                *reset = true;
                self.premature += 1;
            }
        }
    }

    /// Whether the client has reset too many streams right after opening them: at least
    /// `max_premature`, and at least half of all it opened.
    pub fn too_many_premature_resets(&self) -> bool {
        self.premature >= self.max_premature && self.premature * 2 >= self.streams
    }

    /// Streams opened and streams reset prematurely so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.streams, self.premature)
    }

    /// Streams remembered for the reset rule (at most `MAX_REMEMBERED_STREAMS`).
    pub fn remembered(&self) -> usize {
        self.opened.len()
    }

    /// What is half received, and since when.
    pub fn pending(&self) -> Pending {
        if self.preface_left > 0 {
            return Pending::Head(self.started);
        }
        if let Some(since) = self.header_block {
            return Pending::Head(since);
        }
        match self.current {
            None => Pending::Nothing,
            Some((Some(DATA), since)) => Pending::Body(since),
            Some((_, since)) => Pending::Head(since),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Streams reset within the window count; the connection is over the limit once they
    /// reach it and are at least half its streams. A reset after the window, or of a stream
    /// never opened, does not count.
    #[test]
    fn premature_resets_are_counted_and_bounded() {
        let t0 = Instant::now();
        let mut watch = FrameWatch::new(3, t0);
        watch.feed(PREFACE, t0);
        for id in [1u32, 3, 5] {
            watch.feed(&frame(HEADERS, END_HEADERS | 0x1, id, b"hdr"), t0);
        }
        watch.feed(
            &frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]),
            t0 + Duration::from_millis(30),
        );
        watch.feed(&frame(RST_STREAM, 0, 99, &[0, 0, 0, 8]), t0);
        watch.feed(
            &frame(RST_STREAM, 0, 3, &[0, 0, 0, 8]),
            t0 + Duration::from_secs(2),
        );
        assert_eq!(watch.premature, 1);
        assert!(!watch.too_many_premature_resets());
        for id in [7u32, 9] {
            watch.feed(&frame(HEADERS, END_HEADERS, id, b""), t0);
            watch.feed(&frame(RST_STREAM, 0, id, &[0, 0, 0, 8]), t0);
        }
        assert_eq!((watch.premature, watch.streams), (3, 5));
        assert!(watch.too_many_premature_resets());
    }

    /// Frames split anywhere (one byte at a time) read the same; a half-received head or an
    /// open header block is pending as a head, a half-received DATA frame as a body.
    #[test]
    fn partial_frames_and_open_header_blocks_are_pending() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(5);
        let mut watch = FrameWatch::new(100, t0);
        assert_eq!(watch.pending(), Pending::Head(t0), "the preface is due");
        for byte in PREFACE {
            watch.feed(&[*byte], t0);
        }
        assert_eq!(watch.pending(), Pending::Nothing);
        let headers = frame(HEADERS, 0, 1, b"abc");
        watch.feed(&headers[..4], t0);
        assert_eq!(watch.pending(), Pending::Head(t0));
        for byte in &headers[4..] {
            watch.feed(&[*byte], later);
        }
        assert_eq!(watch.pending(), Pending::Head(t0), "no END_HEADERS yet");
        watch.feed(&frame(CONTINUATION, END_HEADERS, 1, b"d"), later);
        assert_eq!(watch.pending(), Pending::Nothing);
        let data = frame(DATA, 0, 1, b"0123456789");
        watch.feed(&data[..12], later);
        assert_eq!(watch.pending(), Pending::Body(later));
        watch.feed(&data[12..], later);
        assert_eq!(watch.pending(), Pending::Nothing);
        assert_eq!(watch.streams, 1);
    }

    /// The remembered streams stay bounded however fast a client opens them.
    #[test]
    fn remembered_streams_are_bounded() {
        let t0 = Instant::now();
        let mut watch = FrameWatch::new(100, t0);
        watch.feed(PREFACE, t0);
        for n in 0..5000u32 {
            watch.feed(&frame(HEADERS, END_HEADERS, 2 * n + 1, b""), t0);
        }
        assert_eq!(watch.opened.len(), MAX_REMEMBERED_STREAMS);
    }
}
