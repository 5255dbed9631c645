//! `meshctl leader`: the elected leader and the no-confidence votes.

use std::process::ExitCode;

use alloy::primitives::U256;
use anyhow::Context;
use serde_json::json;

use mesh_chain::contract::{DstackClusterElection, DstackClusterNFT};

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
    /// Show the leader, the threshold and every vote.
    Show(ClusterOpts),
    /// With no leader, elect the lowest-id active seat under the threshold. Any active seat may call it.
    Elect(SeatArgs),
    /// Vote no-confidence from one of your seats against another seat.
    Vote(VoteArgs),
    /// Withdraw a seat's vote.
    Withdraw(SeatArgs),
    /// Hand the leader's term to another seat, as the leader's holder: a planned change with no failover.
    ///
    /// The term grows by one (`reason: handoff` in every node's /v1/leader). The old leader's agent sees its
    /// term go and tells every seat at its next heartbeat; the successor then leads within a second or so,
    /// and leader ports send to it from then. Applications following the leader with the SDKs demote the old
    /// one and promote the new one. Faster still, and with no lease for the old leader to run out: ask the
    /// leader's own agent (`POST /v1/leader/handoff` on its API, or stop it with SIGTERM), which gives up its
    /// lease before it sends the transaction.
    Handoff(HandoffArgs),
}

#[derive(Debug, clap::Args)]
struct HandoffArgs {
    #[command(flatten)]
    write: Write,
    /// The leader's seat, which you hold.
    #[arg(long)]
    token: u64,
    /// The seat to hand to; by default the lowest active seat that is not draining and is under the
    /// no-confidence threshold.
    #[arg(long)]
    to: Option<u64>,
}

#[derive(Debug, clap::Args)]
struct SeatArgs {
    #[command(flatten)]
    write: Write,
    /// Your seat's token id.
    #[arg(long)]
    token: u64,
}

#[derive(Debug, clap::Args)]
struct VoteArgs {
    #[command(flatten)]
    write: Write,
    /// Your seat's token id.
    #[arg(long)]
    token: u64,
    /// The seat you have no confidence in.
    #[arg(long)]
    against: u64,
}

pub(crate) async fn run(args: Args, out: &Output) -> anyhow::Result<ExitCode> {
    let (what, receipt) = match args.action {
        Action::Show(opts) => return show(opts, out).await,
        Action::Elect(a) => {
            let c = cluster::open_write(&a.write.cluster, &a.write.signer).await?;
            let c = cluster::election(&c).await?;
            let r = cluster::send("electLeader", c.electLeader(U256::from(a.token))).await?;
            let leader = c
                .leaderTokenId()
                .call()
                .await
                .context("reading the leader")?;
            (format!("seat {leader} is the leader"), r)
        }
        Action::Vote(a) => {
            let c = cluster::open_write(&a.write.cluster, &a.write.signer).await?;
            let c = cluster::election(&c).await?;
            let r = cluster::send(
                "castVote",
                c.castVote(U256::from(a.token), U256::from(a.against)),
            )
            .await?;
            let leader = c
                .leaderTokenId()
                .call()
                .await
                .context("reading the leader")?;
            (
                format!(
                    "seat {} voted against seat {}; the leader is seat {leader}",
                    a.token, a.against
                ),
                r,
            )
        }
        Action::Handoff(a) => {
            let c = cluster::open_write(&a.write.cluster, &a.write.signer).await?;
            let e = cluster::election(&c).await?;
            let to = match a.to {
                Some(to) => to,
                None => successor(&c, &e, a.token).await?,
            };
            let r =
                cluster::send("handOff", e.handOff(U256::from(a.token), U256::from(to))).await?;
            let term = e.leaderTerm().call().await.context("reading the term")?;
            (
                format!("seat {} handed the lead to seat {to}: term {term}", a.token),
                r,
            )
        }
        Action::Withdraw(a) => {
            let c = cluster::open_write(&a.write.cluster, &a.write.signer).await?;
            let c = cluster::election(&c).await?;
            let r = cluster::send("withdrawVote", c.withdrawVote(U256::from(a.token))).await?;
            (format!("seat {} withdrew its vote", a.token), r)
        }
    };
    out.emit(
        || format!("{what}\n  {}\n", tx_text(&receipt)),
        || json!({ "done": what, "receipt": tx_json(&receipt) }),
    );
    Ok(ExitCode::SUCCESS)
}

/// The lowest active seat other than `leader` that is not draining and is under the threshold, as the
/// contract takes it.
async fn successor<P: alloy::providers::Provider>(
    c: &DstackClusterNFT::DstackClusterNFTInstance<P>,
    e: &DstackClusterElection::DstackClusterElectionInstance<P>,
    leader: u64,
) -> anyhow::Result<u64> {
    let read = "reading the seats to hand to";
    let threshold = e.voteThreshold().call().await.context(read)?;
    let last = c.lastTokenId().call().await.context(read)?.to::<u64>();
    for id in (1..=last).filter(|id| *id != leader) {
        let seat = U256::from(id);
        let Ok(info) = c.seatInfo(seat).call().await else {
            continue; // revoked
        };
        if !info.active
            || e.draining(seat).call().await.context(read)?
            || e.votesAgainst(seat).call().await.context(read)? >= threshold
        {
            continue;
        }
        return Ok(id);
    }
    anyhow::bail!(
        "no other active seat can take the lead (each is draining or at the no-confidence threshold): undrain one with `meshctl drain --token <seat> --undo`"
    )
}

async fn show(opts: ClusterOpts, out: &Output) -> anyhow::Result<ExitCode> {
    let c = cluster::open_read(&opts).await?;
    let e = cluster::election(&c).await?;
    let read = "reading the election state";
    let leader = e.leaderTokenId().call().await.context(read)?.to::<u64>();
    let term = e.leaderTerm().call().await.context(read)?.to::<u64>();
    let threshold = e.voteThreshold().call().await.context(read)?.to::<u64>();
    let last = c.lastTokenId().call().await.context(read)?.to::<u64>();
    let mut seats = Vec::new();
    for id in 1..=last {
        let Ok(info) = c.seatInfo(U256::from(id)).call().await else {
            continue;
        }; // revoked
        if !info.active {
            continue;
        }
        let against = e
            .votesAgainst(U256::from(id))
            .call()
            .await
            .context(read)?
            .to::<u64>();
        let vote = e
            .voteOf(U256::from(id))
            .call()
            .await
            .context(read)?
            .to::<u64>();
        seats.push(json!({ "tokenId": id, "votesAgainst": against, "votesAgainstSeat": (vote != 0).then_some(vote) }));
    }
    out.emit(
        || {
            let mut s = if leader == 0 {
                format!("no leader (run `meshctl leader elect --token <your seat>`), term {term}; {threshold} votes replace a leader\n")
            } else {
                format!("leader: seat {leader}, term {term}; {threshold} no-confidence votes replace it\n")
            };
            for seat in &seats {
                let vote = seat["votesAgainstSeat"].as_u64().map(|t| format!("votes against seat {t}")).unwrap_or_default();
                s.push_str(&format!(
                    "  seat {:<4} {} against  {vote}\n",
                    seat["tokenId"], seat["votesAgainst"]
                ));
            }
            s
        },
        || json!({ "leaderTokenId": (leader != 0).then_some(leader), "leaderTerm": term, "threshold": threshold, "seats": seats }),
    );
    Ok(ExitCode::SUCCESS)
}
