//! How a batch of datagrams is cut up, as pure functions: outgoing datagrams, written back to back into one
//! buffer, become runs that one `sendmsg` with `UDP_SEGMENT` carries (UDP GSO); an incoming buffer that the
//! kernel coalesced (UDP GRO) is split back into its datagrams; and a data message names its peer in its header.

use std::ops::Range;

/// The most datagrams one GSO send may carry (the kernel's `UDP_MAX_SEGMENTS`).
pub(crate) const MAX_SEGMENTS: usize = 64;
/// The most payload one GSO send may carry over IPv4: 65,535 less the IPv4 and UDP headers.
pub(crate) const MAX_RUN_BYTES: usize = 65_535 - 20 - 8;

/// A stretch of the batch buffer that goes to one destination in one send: `segments` datagrams of `stride`
/// bytes each, the last of which may be shorter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Run<D> {
    pub(crate) to: D,
    pub(crate) bytes: Range<usize>,
    pub(crate) stride: usize,
    pub(crate) segments: usize,
}

impl<D> Run<D> {
    /// The datagrams of the run, as ranges of the batch buffer.
    pub(crate) fn datagrams(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        segments(self.bytes.clone(), self.stride)
    }

    /// Whether a datagram of `len` bytes to the same destination may follow: the kernel splits a GSO send
    /// at `stride`, so every datagram but the last must be exactly that long.
    fn takes(&self, len: usize, max_segments: usize) -> bool {
        let open = self.segments * self.stride == self.bytes.len();
        open && len <= self.stride
            && self.segments < max_segments
            && self.bytes.len() + len <= MAX_RUN_BYTES
    }
}

/// The runs of one batch, in the order the datagrams were written.
///
/// Datagrams are written back to back from offset 0; [`Runs::push`] records each one, extending the last run
/// when the datagram may join it and opening a new run otherwise. Order is kept: a run never takes a
/// datagram written after one of another run.
#[derive(Debug)]
pub(crate) struct Runs<D> {
    runs: Vec<Run<D>>,
    end: usize,
    max_segments: usize,
}

impl<D: PartialEq + Clone> Runs<D> {
    /// An empty batch whose runs carry at most `max_segments` datagrams (1 turns GSO off; more than
    /// [`MAX_SEGMENTS`] is capped).
    pub(crate) fn new(max_segments: usize) -> Self {
        Self {
            runs: Vec::new(),
            end: 0,
            max_segments: max_segments.clamp(1, MAX_SEGMENTS),
        }
    }

    /// Where the next datagram is to be written.
    pub(crate) fn end(&self) -> usize {
        self.end
    }

    /// Records the datagram of `len` bytes just written at [`Runs::end`], for `to`.
    pub(crate) fn push(&mut self, to: &D, len: usize) {
        let start = self.end;
        self.end += len;
        if let Some(last) = self.runs.last_mut()
            && last.to == *to
            && last.takes(len, self.max_segments)
        {
            last.bytes.end = self.end;
            last.segments += 1;
            return;
        }
        self.runs.push(Run {
            to: to.clone(),
            bytes: start..self.end,
            stride: len,
            segments: 1,
        });
    }

    /// Caps later runs at `max_segments` (the socket may lose GSO at run time).
    pub(crate) fn set_max_segments(&mut self, max_segments: usize) {
        self.max_segments = max_segments.clamp(1, MAX_SEGMENTS);
    }

    /// The runs recorded, leaving the batch empty for reuse.
    pub(crate) fn drain(&mut self) -> std::vec::Drain<'_, Run<D>> {
        self.end = 0;
        self.runs.drain(..)
    }
}

/// Splits `bytes` into datagrams of `stride` bytes, the last possibly shorter: how the kernel hands over the
/// datagrams it coalesced (UDP GRO reports the stride), and how it cuts a GSO send. A zero stride is one
/// datagram.
pub(crate) fn segments(bytes: Range<usize>, stride: usize) -> impl Iterator<Item = Range<usize>> {
    let stride = if stride == 0 {
        bytes.len().max(1)
    } else {
        stride
    };
    bytes
        .clone()
        .step_by(stride)
        .map(move |start| start..(start + stride).min(bytes.end))
}

/// WireGuard's data message: type 4, then three reserved zero bytes, the receiver's index and the counter;
/// 32 bytes at least (an empty keepalive).
const DATA_HEADER: [u8; 4] = [4, 0, 0, 0];
const MIN_DATA_LEN: usize = 32;

/// For a data message, the index of the peer it is for: the receiver index in its header without the
/// session slot (boringtun's session indices are `peer_index << 8 | slot`). `None` for anything else, which
/// then takes the checked path (handshakes, cookies, garbage).
pub(crate) fn data_peer_index(datagram: &[u8]) -> Option<u32> {
    if datagram.len() < MIN_DATA_LEN || datagram[..4] != DATA_HEADER {
        return None;
    }
    let index: [u8; 4] = datagram[4..8].try_into().ok()?;
    Some(u32::from_le_bytes(index) >> 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full-size data datagrams: a 1420-byte inner packet plus WireGuard's 32 bytes.
    const DATA: usize = 1452;
    /// A handshake initiation.
    const INIT: usize = 148;

    fn runs_of(pushes: &[(char, usize)], max_segments: usize) -> Vec<(char, usize, usize, usize)> {
        let mut runs = Runs::new(max_segments);
        for &(to, len) in pushes {
            runs.push(&to, len);
        }
        runs.drain()
            .map(|r| (r.to, r.bytes.len(), r.stride, r.segments))
            .collect()
    }

    #[test]
    fn equal_sizes_to_one_peer_are_one_run() {
        assert_eq!(
            runs_of(&[('a', DATA); 10], 64),
            [('a', 10 * DATA, DATA, 10)]
        );
    }

    #[test]
    fn a_short_last_datagram_joins_and_ends_the_run() {
        let runs = runs_of(&[('a', DATA), ('a', DATA), ('a', 600), ('a', DATA)], 64);
        assert_eq!(
            runs,
            [('a', 2 * DATA + 600, DATA, 3), ('a', DATA, DATA, 1)],
            "nothing may follow a short datagram in a run: the kernel cuts every stride"
        );
    }

    #[test]
    fn a_longer_datagram_starts_a_new_run() {
        let runs = runs_of(&[('a', 600), ('a', DATA)], 64);
        assert_eq!(runs, [('a', 600, 600, 1), ('a', DATA, DATA, 1)]);
    }

    #[test]
    fn a_run_stops_at_64_segments() {
        let runs = runs_of(&[('a', 100); 130], 64);
        assert_eq!(
            runs,
            [
                ('a', 6400, 100, 64),
                ('a', 6400, 100, 64),
                ('a', 200, 100, 2)
            ]
        );
    }

    #[test]
    fn a_run_stops_before_65507_bytes() {
        // 45 × 1452 = 65,340 fits; a 46th would make 66,792.
        let runs = runs_of(&[('a', DATA); 46], 64);
        assert_eq!(runs, [('a', 45 * DATA, DATA, 45), ('a', DATA, DATA, 1)]);
    }

    #[test]
    fn the_byte_limit_is_exact() {
        // 32 × 2,000 + 1,507 = 65,507: a short last datagram that fills the limit exactly joins.
        let mut pushes = vec![('a', 2000); 32];
        pushes.push(('a', 1507));
        assert_eq!(runs_of(&pushes, 64), [('a', MAX_RUN_BYTES, 2000, 33)]);
        // One byte more does not.
        *pushes.last_mut().unwrap() = ('a', 1508);
        assert_eq!(
            runs_of(&pushes, 64),
            [('a', 64_000, 2000, 32), ('a', 1508, 1508, 1)]
        );
    }

    #[test]
    fn a_handshake_in_the_middle_ends_the_run_and_data_resumes_in_a_new_one() {
        let runs = runs_of(
            &[
                ('a', DATA),
                ('a', DATA),
                ('a', INIT),
                ('a', DATA),
                ('a', DATA),
            ],
            64,
        );
        assert_eq!(
            runs,
            [('a', 2 * DATA + INIT, DATA, 3), ('a', 2 * DATA, DATA, 2)]
        );
    }

    #[test]
    fn a_peer_change_in_the_middle_starts_a_new_run_in_order() {
        let runs = runs_of(&[('a', DATA), ('a', DATA), ('b', DATA), ('a', DATA)], 64);
        assert_eq!(
            runs,
            [
                ('a', 2 * DATA, DATA, 2),
                ('b', DATA, DATA, 1),
                ('a', DATA, DATA, 1)
            ],
            "a run never takes a datagram written after another peer's"
        );
    }

    #[test]
    fn without_gso_every_datagram_is_its_own_run() {
        let runs = runs_of(&[('a', DATA); 3], 1);
        assert_eq!(runs, [('a', DATA, DATA, 1); 3]);
    }

    #[test]
    fn runs_cover_the_buffer_back_to_back_and_drain_resets_it() {
        let mut runs = Runs::new(64);
        for (to, len) in [('a', DATA), ('a', 700), ('b', INIT), ('b', INIT)] {
            assert_eq!(
                runs.end(),
                runs.runs.iter().map(|r| r.bytes.len()).sum::<usize>()
            );
            runs.push(&to, len);
        }
        let drained: Vec<_> = runs.drain().collect();
        assert_eq!(drained[0].bytes, 0..DATA + 700);
        assert_eq!(drained[1].bytes, DATA + 700..DATA + 700 + 2 * INIT);
        assert_eq!(
            drained[1].datagrams().collect::<Vec<_>>(),
            [
                DATA + 700..DATA + 700 + INIT,
                DATA + 700 + INIT..DATA + 700 + 2 * INIT
            ]
        );
        assert_eq!(runs.drain().count(), 0);
        assert_eq!(runs.end(), 0);
    }

    #[test]
    fn segments_split_at_the_stride_with_a_short_last() {
        assert_eq!(
            segments(10..35, 10).collect::<Vec<_>>(),
            [10..20, 20..30, 30..35]
        );
        assert_eq!(
            segments(0..30, 10).collect::<Vec<_>>(),
            [0..10, 10..20, 20..30]
        );
        assert_eq!(segments(0..7, 10).collect::<Vec<_>>(), vec![0..7; 1]);
        assert_eq!(segments(0..7, 0).collect::<Vec<_>>(), vec![0..7; 1]);
        assert_eq!(segments(0..0, 10).count(), 0);
    }

    #[test]
    fn a_data_header_names_its_peer_without_the_session_slot() {
        let mut d = vec![0u8; 32];
        d[..4].copy_from_slice(&[4, 0, 0, 0]);
        d[4..8].copy_from_slice(&((7u32 << 8) | 3).to_le_bytes());
        assert_eq!(data_peer_index(&d), Some(7));
    }

    #[test]
    fn only_well_formed_data_messages_take_the_fast_path() {
        let mut d = vec![0u8; 32];
        d[0] = 4;
        assert_eq!(data_peer_index(&d), Some(0));
        assert_eq!(data_peer_index(&d[..31]), None, "shorter than a keepalive");
        d[1] = 1;
        assert_eq!(data_peer_index(&d), None, "reserved bytes must be zero");
        let mut init = vec![0u8; 148];
        init[0] = 1;
        assert_eq!(
            data_peer_index(&init),
            None,
            "handshakes take the checked path"
        );
    }
}
