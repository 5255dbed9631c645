//! What the benchmark and the scenarios measure: [`perf`], throughput and latency; [`transfer`], a bulk
//! TCP transfer checked byte by byte.

pub mod perf;
pub mod transfer;
