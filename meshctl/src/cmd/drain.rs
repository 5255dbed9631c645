//! `meshctl drain`: take a seat's node out of service for maintenance, or put it back.

use std::process::ExitCode;

use alloy::primitives::U256;
use anyhow::Context;
use serde_json::json;

use crate::cluster::{self, tx_json, tx_text};
use crate::cmd::seat::Write;
use crate::output::Output;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    write: Write,
    /// The seat to drain, which you hold.
    #[arg(long)]
    token: u64,
    /// Put the seat back in service.
    #[arg(long)]
    undo: bool,
}

pub(crate) async fn run(args: Args, out: &Output) -> anyhow::Result<ExitCode> {
    let c = cluster::open_write(&args.write.cluster, &args.write.signer).await?;
    let e = cluster::election(&c).await?;
    let on = !args.undo;
    let receipt = cluster::send("setDraining", e.setDraining(U256::from(args.token), on)).await?;
    let draining = e
        .drainingSeats()
        .call()
        .await
        .context("reading the draining seats")?;
    let what = match on {
        true => format!(
            "seat {} is draining: if it leads, its agent hands its term off; replica ports leave it out",
            args.token
        ),
        false => format!("seat {} is back in service", args.token),
    };
    let draining: Vec<u64> = draining.iter().map(|t| t.to::<u64>()).collect();
    out.emit(
        || {
            format!(
                "{what}\n  draining now: {draining:?}\n  {}\n",
                tx_text(&receipt)
            )
        },
        || json!({ "done": what, "draining": draining, "receipt": tx_json(&receipt) }),
    );
    Ok(ExitCode::SUCCESS)
}
