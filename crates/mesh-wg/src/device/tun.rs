//! The TUN in batches, with the kernel's offloads (tun-rs, after wireguard-go's `tun/offload_linux.go`): a
//! read hands over a TCP super-packet of up to 64 KiB (TSO), which tun-rs splits into MTU-size packets with
//! their checksums; a write coalesces a batch's packets of one flow back into one super-packet (GRO). Every
//! read and write carries the 10-byte virtio-net header while offload is on.
//!
//! The descriptor is non-blocking and not registered with tokio: the packet thread waits on it with
//! `poll(2)` ([`super::packets`]).

use std::io;
use std::time::Instant;

use tun_rs::{GROTable, IDEAL_BATCH_SIZE, SyncDevice, VIRTIO_NET_HDR_LEN};

use super::MAX_PACKET;
use super::flows::FlowQueue;
use super::spare::Spare;

/// Free bytes in front of every packet written: tun-rs puts the virtio-net header there.
const HEADROOM: usize = 16;
/// Packets per batch (wireguard-go's `IdealBatchSize`).
pub(crate) const BATCH: usize = IDEAL_BATCH_SIZE;
/// The most segments the kernel puts in one super-packet for the interface (its `gso_max_segs`, set at
/// creation): TCP at MTU 1420 sends 48 (64 KiB / 1,368-byte segments), but a UDP GSO send of small
/// datagrams can be up to 128, and a smaller TCP segment size more. The kernel segments a larger one itself
/// before the TUN.
pub(crate) const MAX_SEGMENTS: usize = 64;

/// Opens the TUN, non-blocking, with offload when `offload` asks for it and the kernel has it
/// (`TUNSETOFFLOAD` with TSO).
pub(crate) fn open(
    offload: bool,
    builder: impl Fn() -> tun_rs::DeviceBuilder,
) -> io::Result<SyncDevice> {
    let tun = if offload {
        match builder().offload(true).build_sync() {
            Ok(tun) => tun,
            Err(err) if err.raw_os_error() == Some(nix::libc::EINVAL) => {
                tracing::warn!(error = %err, "the kernel refused TUN offload; one packet per read and write");
                builder().build_sync()?
            }
            Err(err) => return Err(err),
        }
    } else {
        builder().build_sync()?
    };
    tun.set_nonblocking(true)?;
    Ok(tun)
}

/// An error that loses one read's packet rather than the device: tun-rs reports a super-packet it cannot
/// split (too many segments, a bad virtio header) without an OS error.
fn packet_error(err: &io::Error) -> bool {
    err.raw_os_error().is_none() && err.kind() != io::ErrorKind::WouldBlock
}

/// Packets the reader keeps queued ahead of the encryption ([`super::flows`]): about 2.8 MB of full-size
/// packets at the default MTU, which covers the backlog a BBR sender kept in front of the device here
/// (0.5–2.6 MB). Beyond it the backlog waits in the TUN's ring again, in order.
const QUEUED: usize = 2_048;

/// A packet read from the TUN, in a buffer of the interface's MTU.
struct Packet {
    buf: Vec<u8>,
    len: usize,
}

impl AsRef<[u8]> for Packet {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Reads the TUN ahead into a queue per flow, and hands the encryption a batch at a time, sparse flows
/// first.
pub(crate) struct TunReader {
    /// One raw read: the virtio-net header and the packet as the kernel wrote it.
    raw: Vec<u8>,
    /// The buffers the next read splits its packets into.
    staging: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    queue: FlowQueue<Packet>,
    /// What the encryption takes now.
    batch: Vec<Packet>,
    /// Buffers no packet holds, for the next reads.
    pool: Vec<Vec<u8>>,
    /// The pool's buffers no read took for a while, to give back ([`super::spare`]).
    spare: Spare,
    /// The size of every packet buffer: the interface's MTU, which no packet read exceeds.
    packet_len: usize,
}

impl TunReader {
    /// A reader for an interface of `mtu`.
    pub(crate) fn new(mtu: u16) -> Self {
        let packet_len = usize::from(mtu);
        Self {
            raw: vec![0; VIRTIO_NET_HDR_LEN + MAX_PACKET],
            staging: (0..MAX_SEGMENTS).map(|_| vec![0; packet_len]).collect(),
            sizes: vec![0; MAX_SEGMENTS],
            queue: FlowQueue::default(),
            batch: Vec::with_capacity(BATCH),
            pool: Vec::new(),
            spare: Spare::default(),
            packet_len,
        }
    }

    /// Queues what the TUN holds now, without waiting: one read, and with `drain` more reads until the TUN
    /// is empty or [`QUEUED`] packets wait; returns the packets read. A super-packet that cannot be split is
    /// dropped (logged) as a full queue would drop it.
    pub(crate) fn fill(&mut self, tun: &SyncDevice, drain: bool) -> io::Result<usize> {
        let mut read = 0;
        // A read may split into as many packets as a super-packet has segments: it is made only while they
        // all fit.
        while self.queue.len() + MAX_SEGMENTS <= QUEUED {
            match tun.recv_multiple(&mut self.raw, &mut self.staging, &mut self.sizes, 0) {
                Ok(k) => {
                    self.queue_staged(k);
                    read += k;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if packet_error(&err) => {
                    tracing::debug!(error = %err, "TUN packet dropped");
                    continue;
                }
                Err(err) => return Err(err),
            }
            if !drain {
                break;
            }
        }
        Ok(read)
    }

    /// Queues the first `k` staged packets, and stages fresh buffers in their place.
    fn queue_staged(&mut self, k: usize) {
        for (buf, &len) in self.staging.iter_mut().zip(&self.sizes).take(k) {
            let fresh = (self.pool.pop()).unwrap_or_else(|| vec![0; self.packet_len]);
            let buf = std::mem::replace(buf, fresh);
            self.queue.push(Packet { buf, len });
        }
        self.spare.held(self.pool.len());
    }

    /// Gives back the pool's buffers that no read took during a whole window; returns how many, and when
    /// to review the pool again (`None`: it is empty).
    pub(crate) fn review_spare(&mut self, now: Instant) -> (usize, Option<Instant>) {
        let (unused, next) = self.spare.review(self.pool.len(), now);
        self.pool.truncate(self.pool.len() - unused);
        if self.pool.is_empty() {
            self.pool = Vec::new();
        }
        (unused, next)
    }

    /// Takes the next batch from the queue, sparse flows first: the packets [`TunReader::packets`] gives
    /// until the next call. Returns how many (0: nothing is queued), and how many of them, at the front,
    /// are the sparse flows'.
    pub(crate) fn next_batch(&mut self) -> (usize, usize) {
        self.pool.extend(self.batch.drain(..).map(|p| p.buf));
        let sparse = self.queue.sparse_len().min(BATCH);
        self.batch
            .extend(std::iter::from_fn(|| self.queue.pop()).take(BATCH));
        (self.batch.len(), sparse)
    }

    /// The packets of the batch, in the order they leave.
    pub(crate) fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.batch.iter().map(AsRef::as_ref)
    }
}

/// Collects packets for the TUN and writes them as one batch, coalescing each flow's packets.
pub(crate) struct TunWriter {
    bufs: Vec<Vec<u8>>,
    len: usize,
    /// How many of `bufs`, from the first, are allocated: a batch uses them in order.
    allocated: usize,
    /// The allocated buffers no batch reached for a while, to give back ([`super::spare`]).
    spare: Spare,
    gro: GROTable,
}

impl TunWriter {
    pub(crate) fn new() -> Self {
        Self {
            // Allocated when first used ([`TunWriter::slot`]): an idle device uses few.
            bufs: (0..BATCH).map(|_| Vec::new()).collect(),
            len: 0,
            allocated: 0,
            spare: Spare::default(),
            gro: GROTable::new(),
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.free() == 0
    }

    /// How many more packets the batch takes.
    pub(crate) fn free(&self) -> usize {
        self.bufs.len() - self.len
    }

    /// Free room for `len` bytes of the next packet, to decrypt into. Callers flush a full writer first.
    pub(crate) fn slot(&mut self, len: usize) -> &mut [u8] {
        let buf = &mut self.bufs[self.len];
        if buf.capacity() == 0 {
            // tun-rs coalesces into a buffer only while its capacity holds twice the offset and the result,
            // and never grows it.
            buf.reserve_exact(2 * HEADROOM + MAX_PACKET);
            self.allocated = self.allocated.max(self.len + 1);
        }
        // What the buffer held before is written over, not zeroed first: the caller decrypts into it and
        // keeps only what it wrote.
        let end = HEADROOM + len.min(MAX_PACKET);
        if buf.len() < end {
            buf.resize(end, 0);
        } else {
            buf.truncate(end);
        }
        &mut buf[HEADROOM..]
    }

    /// Keeps the first `len` bytes of the last [`TunWriter::slot`] as the next packet.
    pub(crate) fn commit(&mut self, len: usize) {
        self.bufs[self.len].truncate(HEADROOM + len);
        self.len += 1;
    }

    /// Writes the packets collected. A failed write loses its packets, as a full queue would; it is logged,
    /// not fatal. (A TUN write does not wait: the kernel takes the packet or drops it.)
    pub(crate) fn flush(&mut self, tun: &SyncDevice) {
        if self.len == 0 {
            return;
        }
        if let Err(err) = tun.send_multiple(&mut self.gro, &mut self.bufs[..self.len], HEADROOM) {
            tracing::debug!(error = %err, packets = self.len, "TUN write failed");
        }
        self.written();
    }

    /// Ends a batch: the buffers past it were spare while it was collected.
    fn written(&mut self) {
        self.spare.held(self.allocated - self.len);
        self.len = 0;
    }

    /// Gives back the allocated buffers that no batch reached during a whole window (the last ones, as
    /// batches use them in order); returns how many, and when to review them again (`None`: none is left).
    pub(crate) fn review_spare(&mut self, now: Instant) -> (usize, Option<Instant>) {
        let (unused, next) = self.spare.review(self.allocated - self.len, now);
        for buf in &mut self.bufs[self.allocated - unused..self.allocated] {
            *buf = Vec::new();
        }
        self.allocated -= unused;
        (unused, next)
    }
}

#[cfg(test)]
mod tests {
    //! tun-rs's split and checksum paths, which every TUN read goes through, against raw reads captured from an
    //! offload TUN on Linux 6.18 (MTU 1420) while iperf3 sent over it: each is the virtio-net header, then the
    //! packet as the kernel handed it over.

    use std::time::Instant;

    use tun_rs::{VIRTIO_NET_HDR_GSO_TCPV4, VirtioNetHdr, checksum, gso_split};

    use crate::device::spare::WINDOW;

    use super::*;

    /// A TSO super-packet: 16 segments of 1,368 bytes (the MSS) behind one 52-byte IPv4 + TCP header, PSH set.
    const TSO: &[u8] = include_bytes!("testdata/tso-tcpv4.bin");
    /// A SYN whose TCP checksum the kernel left to the device (`NEEDS_CSUM`, only the pseudo-header summed).
    const PARTIAL_CSUM: &[u8] = include_bytes!("testdata/partial-csum-tcpv4.bin");

    /// The one's-complement sum of `data` as 16-bit big-endian words, folded (RFC 1071).
    fn sum(data: &[u8], mut acc: u32) -> u16 {
        for word in data.chunks(2) {
            acc += u32::from(u16::from_be_bytes([word[0], *word.get(1).unwrap_or(&0)]));
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    fn ipv4_header_valid(packet: &[u8]) -> bool {
        sum(&packet[..20], 0) == 0xffff
    }

    /// A TCP segment's checksum over the IPv4 pseudo-header and the segment verifies.
    fn tcp_checksum_valid(packet: &[u8]) -> bool {
        let tcp = &packet[20..];
        let pseudo = u32::from(sum(&packet[12..20], 0)) + 6 + tcp.len() as u32;
        sum(tcp, pseudo) == 0xffff
    }

    fn be16(b: &[u8], at: usize) -> usize {
        usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
    }

    fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn a_kernel_tso_super_packet_splits_into_valid_mtu_packets_that_carry_the_same_stream() {
        let hdr = VirtioNetHdr::decode(&TSO[..VIRTIO_NET_HDR_LEN]).unwrap();
        assert_eq!(
            (hdr.gso_type, hdr.gso_size, hdr.hdr_len),
            (VIRTIO_NET_HDR_GSO_TCPV4, 1368, 52)
        );
        let original = &TSO[VIRTIO_NET_HDR_LEN..];
        let payload = &original[52..];
        let mut input = original.to_vec();
        let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0; MAX_PACKET]).collect();
        let mut sizes = vec![0; BATCH];
        let n = gso_split(&mut input, hdr, &mut bufs, &mut sizes, 0, false).unwrap();
        assert_eq!(n, payload.len().div_ceil(1368));

        let first_seq = be32(original, 24);
        let mut carried = Vec::new();
        for (i, (buf, &size)) in bufs.iter().zip(&sizes).take(n).enumerate() {
            let packet = &buf[..size];
            assert!(size <= 1420, "packet {i} is {size} bytes, over the MTU");
            assert_eq!(be16(packet, 2), size, "packet {i}'s IPv4 total length");
            assert!(
                ipv4_header_valid(packet),
                "packet {i}'s IPv4 header checksum"
            );
            assert!(tcp_checksum_valid(packet), "packet {i}'s TCP checksum");
            assert_eq!(
                be32(packet, 24),
                first_seq.wrapping_add((i * 1368) as u32),
                "packet {i}'s sequence number follows the previous packet's data"
            );
            let psh = packet[33] & 0x08 != 0;
            assert_eq!(psh, i == n - 1, "PSH only on the last packet ({i})");
            carried.extend_from_slice(&packet[52..]);
        }
        assert_eq!(
            carried, payload,
            "the packets carry the super-packet's data, in order"
        );
    }

    #[test]
    fn a_super_packet_with_too_few_buffers_is_refused_not_truncated() {
        let hdr = VirtioNetHdr::decode(&TSO[..VIRTIO_NET_HDR_LEN]).unwrap();
        let mut input = TSO[VIRTIO_NET_HDR_LEN..].to_vec();
        let mut bufs: Vec<Vec<u8>> = (0..4).map(|_| vec![0; MAX_PACKET]).collect();
        let mut sizes = vec![0; 4];
        let err = gso_split(&mut input, hdr, &mut bufs, &mut sizes, 0, false).unwrap_err();
        assert!(
            packet_error(&err),
            "a read that loses the packet, not the device: {err}"
        );
    }

    #[test]
    fn a_partial_checksum_left_by_the_kernel_completes_to_a_valid_one() {
        let hdr = VirtioNetHdr::decode(&PARTIAL_CSUM[..VIRTIO_NET_HDR_LEN]).unwrap();
        assert_eq!(hdr.flags & 1, 1, "NEEDS_CSUM");
        let mut packet = PARTIAL_CSUM[VIRTIO_NET_HDR_LEN..].to_vec();
        assert!(
            !tcp_checksum_valid(&packet),
            "as read, only the pseudo-header is summed"
        );
        // What tun-rs does with a GSO_NONE read: sum from csum_start, seeded with the partial sum there.
        let (start, at) = (
            usize::from(hdr.csum_start),
            usize::from(hdr.csum_start + hdr.csum_offset),
        );
        let partial = u16::from_be_bytes([packet[at], packet[at + 1]]);
        packet[at..at + 2].fill(0);
        let complete = !checksum(&packet[start..], u64::from(partial));
        packet[at..at + 2].copy_from_slice(&complete.to_be_bytes());
        assert!(tcp_checksum_valid(&packet));
        assert!(ipv4_header_valid(&packet));
    }

    #[test]
    fn a_bursts_packet_buffers_are_given_back_once_no_read_takes_them() {
        let t0 = Instant::now();
        let mut reader = TunReader::new(1420);
        assert_eq!(
            reader.review_spare(t0),
            (0, None),
            "nothing read, nothing held"
        );
        // A bulk transfer: 30 reads of a super-packet's 64 segments queued, then all sent.
        for _ in 0..30 {
            reader.queue_staged(MAX_SEGMENTS);
        }
        while reader.next_batch().0 > 0 {}
        assert_eq!(reader.pool.len(), 30 * MAX_SEGMENTS);
        assert_eq!(reader.review_spare(t0), (0, Some(t0 + WINDOW)));
        // Then a trickle, one packet at a time.
        for _ in 0..5 {
            reader.queue_staged(1);
            assert_eq!(reader.next_batch().0, 1);
        }
        assert_eq!(
            reader.review_spare(t0 + WINDOW),
            (30 * MAX_SEGMENTS - 2, Some(t0 + 2 * WINDOW)),
            "the trickle keeps the two buffers it uses: one for the next read, one for the packet sent"
        );
        assert_eq!(reader.pool.len(), 1, "the other is the last batch's");
        assert_eq!(reader.review_spare(t0 + 2 * WINDOW), (1, None));
        assert_eq!(
            reader.pool.capacity(),
            0,
            "a silent reader holds no spare buffer"
        );
        reader.queue_staged(1);
        assert_eq!(reader.next_batch().0, 1, "and still reads");
    }

    #[test]
    fn a_bursts_coalescing_buffers_are_given_back_once_no_batch_reaches_them() {
        let t0 = Instant::now();
        let mut writer = TunWriter::new();
        for _ in 0..3 {
            for _ in 0..BATCH {
                writer.slot(1_400);
                writer.commit(1_400);
            }
            writer.written();
        }
        assert_eq!(writer.review_spare(t0), (0, Some(t0 + WINDOW)));
        // A trickle: one packet a batch.
        writer.slot(100);
        writer.commit(100);
        writer.written();
        assert_eq!(
            writer.review_spare(t0 + WINDOW),
            (BATCH - 1, Some(t0 + 2 * WINDOW))
        );
        assert_eq!(
            writer.bufs.iter().filter(|b| b.capacity() > 0).count(),
            1,
            "only the buffer the trickle uses is left"
        );
        assert_eq!(writer.review_spare(t0 + 2 * WINDOW), (1, None));
        assert!(writer.bufs.iter().all(|b| b.capacity() == 0));
        assert_eq!(writer.slot(60).len(), 60, "and it still takes packets");
    }

    #[test]
    fn a_reused_slot_holds_the_new_packet_alone() {
        let mut writer = TunWriter::new();
        writer.slot(1_400).fill(0xaa);
        writer.commit(1_400);
        writer.written();
        let slot = writer.slot(60);
        assert_eq!(slot.len(), 60);
        slot.fill(0x55);
        writer.commit(40);
        assert_eq!(writer.bufs[0].len(), HEADROOM + 40);
        assert!(writer.bufs[0][HEADROOM..].iter().all(|&b| b == 0x55));
    }
}
