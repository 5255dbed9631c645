//! Simulated attestation: the TDX v4 quote layout with report data at its real offset (and no valid
//! signature), and the event log whose replay gives the RTMRs.

use alloy_primitives::Address;
use dstack_guest::wire::EventLog;
use sha2::{Digest, Sha384};

/// dstack's event type for runtime events on RTMR3 (`cc-eventlog`).
const DSTACK_RUNTIME_EVENT_TYPE: u32 = 0x0800_0001;

/// TDX v4 quote layout: a 48-byte header, then the 584-byte TD report whose last 64 bytes are
/// REPORTDATA, so report data sits at 568..632.
const QUOTE_HEADER_LEN: usize = 48;
const TD_REPORT_LEN: usize = 584;
pub(crate) const REPORT_DATA_OFFSET: usize = QUOTE_HEADER_LEN + 520;
/// Offsets inside the TD report body.
const MRTD_OFFSET: usize = 136;
const RTMR0_OFFSET: usize = 328;

/// One synthetic firmware event per RTMR0–2 and dstack's runtime events on RTMR3, so the RTMRs in
/// `tcb_info` equal the replay of this log (as the SDKs' `replay_rtmrs` computes it).
pub(crate) fn event_log(
    app_id: Address,
    compose_hash: &[u8; 32],
    instance_id: &[u8; 20],
    key_provider_info: &str,
) -> Vec<EventLog> {
    let mut log: Vec<EventLog> = (0..3)
        .map(|imr| EventLog {
            imr,
            event_type: 0x0000_000d,
            digest: hex::encode(Sha384::digest(format!("dstack-simulator/rtmr{imr}"))),
            event: String::new(),
            event_payload: hex::encode(format!("dstack-simulator: simulated RTMR{imr}")),
        })
        .collect();
    let runtime: [(&str, &[u8]); 7] = [
        ("system-preparing", b""),
        ("app-id", app_id.as_slice()),
        ("compose-hash", compose_hash),
        ("instance-id", instance_id),
        ("boot-mr-done", b""),
        ("key-provider", key_provider_info.as_bytes()),
        ("system-ready", b""),
    ];
    for (event, payload) in runtime {
        // dstack's RuntimeEvent digest: sha384(event_type ‖ ":" ‖ event ‖ ":" ‖ payload).
        let digest = Sha384::new()
            .chain_update(DSTACK_RUNTIME_EVENT_TYPE.to_le_bytes())
            .chain_update(b":")
            .chain_update(event.as_bytes())
            .chain_update(b":")
            .chain_update(payload)
            .finalize();
        log.push(EventLog {
            imr: 3,
            event_type: DSTACK_RUNTIME_EVENT_TYPE,
            digest: hex::encode(digest),
            event: event.to_owned(),
            event_payload: hex::encode(payload),
        });
    }
    log
}

/// RTMR replay: start at zero, then `mr = sha384(mr ‖ digest)` per event of that register.
pub(crate) fn replay_rtmr(log: &[EventLog], imr: u32) -> [u8; 48] {
    let mut mr = [0u8; 48];
    for e in log.iter().filter(|e| e.imr == imr) {
        let mut digest = hex::decode(&e.digest).unwrap_or_default();
        digest.resize(48, 0);
        mr = Sha384::new()
            .chain_update(mr)
            .chain_update(&digest)
            .finalize()
            .into();
    }
    mr
}

pub(crate) fn quote_template(
    user_data: &[u8; 20],
    mrtd: &[u8; 48],
    rtmrs: &[[u8; 48]; 4],
) -> Vec<u8> {
    const MARKER: &[u8] = b"dstack-simulator: this quote is not signed";
    let mut q = vec![0u8; QUOTE_HEADER_LEN + TD_REPORT_LEN];
    q[0..2].copy_from_slice(&4u16.to_le_bytes()); // version 4
    q[2..4].copy_from_slice(&2u16.to_le_bytes()); // attestation key type: ECDSA-256
    q[4..8].copy_from_slice(&0x81u32.to_le_bytes()); // TEE type: TDX
    q[12..28].copy_from_slice(&[
        0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06,
        0x07,
    ]); // Intel's QE vendor id
    q[28..48].copy_from_slice(user_data);
    let body = QUOTE_HEADER_LEN;
    q[body + MRTD_OFFSET..body + MRTD_OFFSET + 48].copy_from_slice(mrtd);
    for (i, r) in rtmrs.iter().enumerate() {
        let at = body + RTMR0_OFFSET + 48 * i;
        q[at..at + 48].copy_from_slice(r);
    }
    q.extend_from_slice(&(MARKER.len() as u32).to_le_bytes());
    q.extend_from_slice(MARKER);
    q
}
