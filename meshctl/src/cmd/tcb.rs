//! `meshctl app-auth tcb`: the cluster's TCB policy, which every agent applies to its peers' quotes: the TCB
//! statuses accepted, the lowest TCB evaluation data number, the advisories accepted below UpToDate, and how
//! long a peer that falls below it is warned, then no longer admitted, before it is dropped.

use std::collections::BTreeSet;
use std::process::ExitCode;

use anyhow::{Context, bail};
use mesh_attest::TcbStatus;
use mesh_attest::tcb::{self, TcbPolicy};
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
    /// Print the policy agents apply, or say that each goes by its own flags.
    Show(ShowArgs),
    /// Set the policy. UpToDate is always accepted; Revoked never is.
    Set(SetArgs),
    /// Stop applying an on-chain policy: each agent goes by its own --allow-tcb-status flags again.
    Clear(ClearArgs),
    /// Accept platforms affected by an Intel advisory (INTEL-SA-00837, say), below UpToDate.
    AllowAdvisory(AdvisoryArgs),
    /// Stop accepting an advisory.
    DisallowAdvisory(AdvisoryArgs),
}

#[derive(Debug, clap::Args)]
struct ShowArgs {
    #[command(flatten)]
    cluster: ClusterOpts,
}

#[derive(Debug, clap::Args)]
struct SetArgs {
    #[command(flatten)]
    write: Write,
    /// A TCB status to accept besides UpToDate (repeat it, or separate with commas).
    #[arg(long = "status", value_delimiter = ',')]
    statuses: Vec<TcbStatus>,
    /// The lowest TCB evaluation data number a verdict may rest on (Intel raises it at each TCB recovery);
    /// 0 for any.
    #[arg(long, default_value_t = 0)]
    min_evaluation_data_number: u32,
    /// How long a peer that falls below the policy stays admitted, with a warning.
    #[arg(long, value_parser = seconds)]
    grace: u32,
    /// How long after the grace it is no longer admitted (no new sessions) before it is dropped.
    #[arg(long, value_parser = seconds)]
    drop: u32,
}

#[derive(Debug, clap::Args)]
struct ClearArgs {
    #[command(flatten)]
    write: Write,
}

#[derive(Debug, clap::Args)]
struct AdvisoryArgs {
    #[command(flatten)]
    write: Write,
    /// The advisory id, as Intel's TCB info spells it.
    advisory: String,
}

/// A period as seconds, or with a unit: `90s`, `15m`, `24h`, `7d`.
fn seconds(text: &str) -> Result<u32, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a period: write 90s, 15m, 24h or 7d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit is s, m, h or d")),
    };
    n.checked_mul(scale)
        .and_then(|s| u32::try_from(s).ok())
        .ok_or_else(|| format!("{text:?} is longer than 136 years"))
}

pub(crate) async fn run(args: Args, out: &Output) -> anyhow::Result<ExitCode> {
    let (what, receipt) = match args.action {
        Action::Show(a) => return show(a, out).await,
        Action::Set(a) => {
            if a.statuses.contains(&TcbStatus::Revoked) {
                bail!(
                    "--status Revoked: a revoked platform's keys are known to be compromised, and is never accepted"
                );
            }
            let mut statuses: BTreeSet<TcbStatus> = a.statuses.iter().copied().collect();
            statuses.insert(TcbStatus::UpToDate);
            let c = app_auth(&a.write).await?;
            let r = cluster::send(
                "setTcbPolicy",
                c.setTcbPolicy(
                    tcb::bits_of(&statuses),
                    a.min_evaluation_data_number,
                    a.grace,
                    a.drop,
                ),
            )
            .await?;
            let names: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
            let what = format!(
                "TCB policy: accept {}, evaluation data number {} or later; a peer below it is warned for {}s, then not admitted for {}s, then dropped",
                names.join(", "),
                a.min_evaluation_data_number,
                a.grace,
                a.drop
            );
            (what, r)
        }
        Action::Clear(a) => {
            let c = app_auth(&a.write).await?;
            let r = cluster::send("setTcbPolicy", c.setTcbPolicy(0, 0, 0, 0)).await?;
            (
                "TCB policy cleared: each agent goes by its own --allow-tcb-status flags"
                    .to_owned(),
                r,
            )
        }
        Action::AllowAdvisory(a) => {
            let c = app_auth(&a.write).await?;
            let r =
                cluster::send("setTcbAdvisory", c.setTcbAdvisory(a.advisory.clone(), true)).await?;
            (format!("advisory {} accepted", a.advisory), r)
        }
        Action::DisallowAdvisory(a) => {
            let c = app_auth(&a.write).await?;
            let r = cluster::send(
                "setTcbAdvisory",
                c.setTcbAdvisory(a.advisory.clone(), false),
            )
            .await?;
            (format!("advisory {} no longer accepted", a.advisory), r)
        }
    };
    out.emit(
        || format!("{what}\n  {}\n", tx_text(&receipt)),
        || json!({ "set": what, "receipt": tx_json(&receipt) }),
    );
    Ok(ExitCode::SUCCESS)
}

async fn app_auth(
    write: &Write,
) -> anyhow::Result<
    mesh_chain::contract::DstackClusterAppAuth::DstackClusterAppAuthInstance<crate::cluster::Chain>,
> {
    cluster::app_auth(&cluster::open_write(&write.cluster, &write.signer).await?).await
}

async fn show(a: ShowArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let c = cluster::app_auth(&cluster::open_read(&a.cluster).await?).await?;
    let p = c
        .tcbPolicy()
        .call()
        .await
        .context("reading the TCB policy")?;
    let policy = TcbPolicy::from_chain(
        p.statuses,
        p.minEvaluationDataNumber,
        p.graceSeconds,
        p.dropSeconds,
        p.advisoryIds,
    );
    let Some(policy) = policy else {
        out.emit(
            || {
                "no TCB policy on-chain: each agent goes by its own --allow-tcb-status flags\n"
                    .to_owned()
            },
            || json!({ "policy": null }),
        );
        return Ok(ExitCode::SUCCESS);
    };
    let statuses: Vec<&str> = policy.statuses.iter().map(|s| s.as_str()).collect();
    let advisories: Vec<&String> = policy.advisories.iter().collect();
    out.emit(
        || {
            format!(
                "statuses accepted:       {}\nevaluation data number:  {} or later\nadvisories accepted:     {}\nbelow the policy:        warned for {}s, then not admitted for {}s, then dropped\n",
                statuses.join(", "),
                policy.min_evaluation_data_number,
                if advisories.is_empty() {
                    "none".to_owned()
                } else {
                    advisories
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                policy.grace.as_secs(),
                policy.drop.as_secs()
            )
        },
        || {
            json!({
                "policy": {
                    "statuses": statuses,
                    "minEvaluationDataNumber": policy.min_evaluation_data_number,
                    "advisories": advisories,
                    "graceSecs": policy.grace.as_secs(),
                    "dropSecs": policy.drop.as_secs(),
                }
            })
        },
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::seconds;

    #[test]
    fn periods_take_a_unit_or_are_seconds() {
        assert_eq!(seconds("90"), Ok(90));
        assert_eq!(seconds("15m"), Ok(900));
        assert_eq!(seconds("24h"), Ok(86_400));
        assert_eq!(seconds("7d"), Ok(604_800));
        assert!(
            seconds("1w")
                .unwrap_err()
                .contains("the unit is s, m, h or d")
        );
        assert!(seconds("h").unwrap_err().contains("is not a period"));
        assert!(seconds("99999d").unwrap_err().contains("136 years"));
    }
}
