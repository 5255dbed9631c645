//! `meshctl app-auth`: the cluster's app-auth contract: the allowlists dstack's KMS consults through
//! `isAppAllowed`, the OS images agents accept, the TCB policy ([`crate::cmd::tcb`]), and a dry run of a boot.

use std::{io::Read, path::PathBuf, process::ExitCode};

use alloy::primitives::{Address, B256};
use anyhow::{Context, bail};
use mesh_chain::contract::{DstackClusterNFT, IAppAuth};
use serde::Deserialize;
use serde_json::json;

use crate::cluster::{self, ClusterOpts, tx_json, tx_text};
use crate::cmd::seat::Write;
use crate::output::Output;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Allow boots of this compose hash.
    AllowCompose(HashArgs),
    /// Stop allowing a compose hash.
    DisallowCompose(HashArgs),
    /// Allow boots on this device id (used when the device allowlist is required).
    AllowDevice(HashArgs),
    /// Stop allowing a device id.
    DisallowDevice(HashArgs),
    /// Let agents accept nodes on this OS image: keccak256(MRTD ‖ RTMR0 ‖ RTMR1 ‖ RTMR2) of their TDX quotes.
    AllowOs(HashArgs),
    /// Stop accepting nodes on an OS image.
    DisallowOs(HashArgs),
    /// Choose what a boot must also satisfy.
    Policy(PolicyArgs),
    /// The cluster's TCB policy, which every agent applies to its peers' quotes.
    Tcb(crate::cmd::tcb::Args),
    /// Evaluate a boot as dstack's KMS would: a JSON boot info (dstack's webhook body) from a file or stdin.
    /// Exits 0 when the boot is allowed and 1 when it is refused.
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
struct HashArgs {
    #[command(flatten)]
    write: Write,
    /// 32 bytes as hex.
    value: B256,
    /// Disallow it even when seats in the mesh run it: every agent then refuses them within a minute.
    #[arg(long)]
    yes: bool,
}

#[derive(Debug, clap::Args)]
struct PolicyArgs {
    #[command(flatten)]
    write: Write,
    /// Require the device id to be on the allowlist.
    #[arg(long)]
    require_device: bool,
    /// Require the instance to be bound to an active seat. Off by default: a CVM's instance id is random
    /// until the KMS first releases its keys, so it cannot be bound before its first boot.
    #[arg(long)]
    require_bound_instance: bool,
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    #[command(flatten)]
    cluster: ClusterOpts,
    /// A file with the boot info as JSON, or - for stdin.
    file: PathBuf,
}

/// The boot info as dstack's KMS sends it to an auth webhook (camelCase, hex strings).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BootInfo {
    app_id: String,
    compose_hash: String,
    #[serde(default)]
    instance_id: String,
    #[serde(default)]
    device_id: String,
    #[serde(default)]
    mr_aggregated: String,
    #[serde(default)]
    mr_system: String,
    #[serde(default)]
    os_image_hash: String,
    #[serde(default)]
    tcb_status: String,
    #[serde(default)]
    advisory_ids: Vec<String>,
}

/// dstack's auth-eth left-pads its hex fields to their width, with or without `0x`; so do we.
fn padded<const N: usize>(field: &str, hex: &str) -> anyhow::Result<[u8; N]> {
    let h = hex.trim_start_matches("0x");
    let bytes = alloy::hex::decode(if h.len() % 2 == 1 {
        format!("0{h}")
    } else {
        h.to_string()
    })
    .with_context(|| format!("boot info field {field} is not hex: {hex:?}"))?;
    if bytes.len() > N {
        bail!(
            "boot info field {field} has {} bytes, at most {N} expected",
            bytes.len()
        );
    }
    let mut out = [0u8; N];
    out[N - bytes.len()..].copy_from_slice(&bytes);
    Ok(out)
}

fn boot_info(b: &BootInfo) -> anyhow::Result<IAppAuth::AppBootInfo> {
    Ok(IAppAuth::AppBootInfo {
        appId: Address::from(padded::<20>("appId", &b.app_id)?),
        composeHash: B256::from(padded::<32>("composeHash", &b.compose_hash)?),
        instanceId: Address::from(padded::<20>("instanceId", &b.instance_id)?),
        deviceId: B256::from(padded::<32>("deviceId", &b.device_id)?),
        mrAggregated: B256::from(padded::<32>("mrAggregated", &b.mr_aggregated)?),
        mrSystem: B256::from(padded::<32>("mrSystem", &b.mr_system)?),
        osImageHash: B256::from(padded::<32>("osImageHash", &b.os_image_hash)?),
        tcbStatus: b.tcb_status.clone(),
        advisoryIds: b.advisory_ids.clone(),
    })
}

pub(crate) async fn run(args: Args, out: &Output) -> anyhow::Result<ExitCode> {
    let (what, receipt) = match args.action {
        Action::Check(a) => return check(a, out).await,
        Action::Tcb(a) => return crate::cmd::tcb::run(a, out).await,
        Action::AllowCompose(a) => {
            let c =
                cluster::app_auth(&cluster::open_write(&a.write.cluster, &a.write.signer).await?)
                    .await?;
            let r = cluster::send("setComposeHash", c.setComposeHash(a.value, true)).await?;
            (format!("compose hash {} allowed", a.value), r)
        }
        Action::DisallowCompose(a) => {
            let cluster = cluster::open_write(&a.write.cluster, &a.write.signer).await?;
            refuse_unless_no_seat_runs(&cluster, Measurement::Compose, a.value, a.yes).await?;
            let c = cluster::app_auth(&cluster).await?;
            let r = cluster::send("setComposeHash", c.setComposeHash(a.value, false)).await?;
            (format!("compose hash {} no longer allowed", a.value), r)
        }
        Action::AllowDevice(a) => {
            let c =
                cluster::app_auth(&cluster::open_write(&a.write.cluster, &a.write.signer).await?)
                    .await?;
            let r = cluster::send("setDevice", c.setDevice(a.value, true)).await?;
            (format!("device {} allowed", a.value), r)
        }
        Action::DisallowDevice(a) => {
            let c =
                cluster::app_auth(&cluster::open_write(&a.write.cluster, &a.write.signer).await?)
                    .await?;
            let r = cluster::send("setDevice", c.setDevice(a.value, false)).await?;
            (format!("device {} no longer allowed", a.value), r)
        }
        Action::AllowOs(a) => {
            let c =
                cluster::app_auth(&cluster::open_write(&a.write.cluster, &a.write.signer).await?)
                    .await?;
            let r = cluster::send("setOsMeasurement", c.setOsMeasurement(a.value, true)).await?;
            (format!("OS measurement {} allowed", a.value), r)
        }
        Action::DisallowOs(a) => {
            let cluster = cluster::open_write(&a.write.cluster, &a.write.signer).await?;
            refuse_unless_no_seat_runs(&cluster, Measurement::Os, a.value, a.yes).await?;
            let c = cluster::app_auth(&cluster).await?;
            let r = cluster::send("setOsMeasurement", c.setOsMeasurement(a.value, false)).await?;
            (format!("OS measurement {} no longer allowed", a.value), r)
        }
        Action::Policy(a) => {
            let c =
                cluster::app_auth(&cluster::open_write(&a.write.cluster, &a.write.signer).await?)
                    .await?;
            let r = cluster::send(
                "setAppAuthPolicy",
                c.setAppAuthPolicy(a.require_device, a.require_bound_instance),
            )
            .await?;
            let what = format!(
                "policy: require allowed device = {}, require bound instance = {}",
                a.require_device, a.require_bound_instance
            );
            (what, r)
        }
    };
    out.emit(
        || format!("{what}\n  {}\n", tx_text(&receipt)),
        || json!({ "set": what, "receipt": tx_json(&receipt) }),
    );
    Ok(ExitCode::SUCCESS)
}

/// Which of a seat's claimed measurements an allowlist change is about.
#[derive(Debug, Clone, Copy)]
enum Measurement {
    Compose,
    Os,
}

/// The seats with a record whose binding evidence claims `value` as its `which`: the seats that every agent
/// refuses once `value` is disallowed. A seat whose evidence cannot be read is left out: agents refuse it
/// already.
async fn seats_running(
    c: &DstackClusterNFT::DstackClusterNFTInstance<crate::cluster::Chain>,
    which: Measurement,
    value: B256,
) -> anyhow::Result<Vec<u64>> {
    let mut peers = c
        .getPeers()
        .call()
        .await
        .context("reading the seats, to see which run what is disallowed")?;
    peers.sort_by_key(|p| p.tokenId);
    let mut running = Vec::new();
    for p in &peers {
        let Ok(Some(binding)) = mesh_chain::contract::binding_event(c, p).await else {
            continue;
        };
        let Ok(evidence) = mesh_attest::Evidence::decode(&binding.evidence) else {
            continue;
        };
        let Ok(m) = mesh_attest::claimed_measurements(&evidence) else {
            continue;
        };
        let claimed = match which {
            Measurement::Compose => m.compose_hash,
            Measurement::Os => m.os_measurement,
        };
        if B256::from(claimed) == value {
            running.push(u64::try_from(p.tokenId).unwrap_or(u64::MAX));
        }
    }
    Ok(running)
}

/// Refuses to disallow what seats in the mesh run, unless `yes`: disallowing the old image before every
/// node is rebound on the new one drops them all.
async fn refuse_unless_no_seat_runs(
    c: &DstackClusterNFT::DstackClusterNFTInstance<crate::cluster::Chain>,
    which: Measurement,
    value: B256,
    yes: bool,
) -> anyhow::Result<()> {
    let running = seats_running(c, which, value).await?;
    if running.is_empty() {
        return Ok(());
    }
    let what = match which {
        Measurement::Compose => "compose hash",
        Measurement::Os => "OS image",
    };
    let seats = running
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if yes {
        eprintln!(
            "warning: seat(s) {seats} run {what} {value}: every agent refuses them within a minute (--yes)"
        );
        return Ok(());
    }
    bail!(
        "seat(s) {seats} run {what} {value}, and every agent would refuse them within a minute of this change: \
         move them to an allowed image first (allow the new one, roll the nodes, bind each seat again with its new \
         binding), then disallow this one; or pass --yes to disallow it now"
    )
}

async fn check(a: CheckArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let text = if a.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the boot info from stdin")?;
        s
    } else {
        std::fs::read_to_string(&a.file)
            .with_context(|| format!("reading the boot info {}", a.file.display()))?
    };
    let parsed: BootInfo =
        serde_json::from_str(&text).context("the boot info is not dstack's webhook JSON")?;
    let info = boot_info(&parsed)?;
    let c = cluster::app_auth(&cluster::open_read(&a.cluster).await?).await?;
    let answer = c
        .isAppAllowed(info)
        .call()
        .await
        .context("calling isAppAllowed")?;
    out.emit(
        || {
            if answer.isAllowed {
                "allowed\n".to_string()
            } else {
                format!("refused: {}\n", answer.reason)
            }
        },
        || json!({ "isAllowed": answer.isAllowed, "reason": answer.reason }),
    );
    Ok(if answer.isAllowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Short hex fields are left-padded as dstack's auth-eth does, with or without 0x.
    #[test]
    fn boot_info_fields_are_left_padded() {
        assert_eq!(padded::<4>("x", "0x0102").unwrap(), [0, 0, 1, 2]);
        assert_eq!(padded::<4>("x", "102").unwrap(), [0, 0, 1, 2]);
        let err = padded::<2>("deviceId", "010203").unwrap_err().to_string();
        assert!(err.contains("deviceId has 3 bytes"), "{err}");
    }
}
