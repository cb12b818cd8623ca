//! A worker's `/kv_events` stream (Server-Sent Events) cut into its events, chunk by chunk
//! as they arrive: pure, so that it can be fuzzed apart from the network.

use crate::api::signals::KvEvent;

/// The longest event accepted (a snapshot of ~8M blocks); past it the stream is dropped.
pub const MAX_EVENT_BYTES: usize = 64 << 20;

/// Why a stream cannot be read on: the follower drops it and resubscribes (a snapshot
/// then puts the index right).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// A `data:` line that is not a KV event.
    #[error("unreadable KV event")]
    Unreadable,
    /// An event longer than [`MAX_EVENT_BYTES`].
    #[error("KV event over {MAX_EVENT_BYTES} bytes")]
    TooLong,
}

/// Bytes of a stream not yet cut into events.
#[derive(Debug, Default)]
pub struct KvEventReader {
    buf: Vec<u8>,
    /// Where the search for the end of the current event resumes.
    scanned: usize,
}

impl KvEventReader {
    /// The events that `chunk` completes, in order. After an error the reader must not be
    /// used again.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<KvEvent>, StreamError> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        loop {
            let from = self.scanned.saturating_sub(1);
            let Some(end) =
                self.buf[from..].windows(2).position(|w| w == b"\n\n").map(|i| from + i)
            else {
                self.scanned = self.buf.len();
                break;
            };
            let block: Vec<u8> = self.buf.drain(..end + 2).collect();
            self.scanned = 0;
            for line in block.split(|&c| c == b'\n') {
                let Some(data) = line.strip_prefix(b"data:") else { continue };
                let ev = serde_json::from_slice::<KvEvent>(data.trim_ascii())
                    .map_err(|_| StreamError::Unreadable)?;
                events.push(ev);
            }
        }
        if self.buf.len() > MAX_EVENT_BYTES {
            return Err(StreamError::TooLong);
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b": keep-alive\n\ndata: {\"seq\":0,\"type\":\"cleared\",\"hashes\":[],\"ts_us\":1,\"snapshot\":true}\n\ndata: {\"seq\":1,\"type\":\"stored\",\"hashes\":[7,8],\"ts_us\":2}\n\n";

    /// Cut anywhere, the stream gives the same events as whole.
    #[test]
    fn events_are_the_same_however_the_stream_is_cut() {
        let whole = KvEventReader::default().push(STREAM).unwrap();
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[1].hashes, [7, 8]);
        for cut in 0..STREAM.len() {
            let mut r = KvEventReader::default();
            let mut got = r.push(&STREAM[..cut]).unwrap();
            got.extend(r.push(&STREAM[cut..]).unwrap());
            assert_eq!(got, whole, "cut at {cut}");
        }
        let mut r = KvEventReader::default();
        assert_eq!(r.push(b"data: {\"seq\":\n\n"), Err(StreamError::Unreadable));
    }
}
