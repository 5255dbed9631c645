//! What the benchmark and the scenarios measure: [`perf`], throughput and latency; [`transfer`], a bulk
//! TCP transfer checked byte by byte; [`udp_gso`], UDP sent and received as a QUIC stack does.

pub mod perf;
pub mod transfer;
pub mod udp_gso;
