//! `meshctl fund`: ETH for an address, typically an agent's node address so it pays its own registration.

use std::process::ExitCode;

use alloy::{
    network::TransactionBuilder,
    primitives::{Address, utils::format_ether, utils::parse_ether},
    providers::Provider,
    rpc::types::TransactionRequest,
};
use anyhow::Context;
use serde_json::json;

use crate::cluster::{self, ChainOpts, SignerOpts, tx_json, tx_text};
use crate::output::Output;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    chain: ChainOpts,
    #[command(flatten)]
    signer: SignerOpts,
    /// The address to fund.
    #[arg(value_parser = crate::cluster::address)]
    address: Address,
    /// How much ETH to send.
    #[arg(long, value_name = "ETH")]
    amount: String,
}

pub(crate) async fn run(args: Args, out: &Output) -> anyhow::Result<ExitCode> {
    let wei = parse_ether(&args.amount)
        .with_context(|| format!("--amount {:?} is not an ETH amount", args.amount))?;
    let signing = cluster::Chain::new(&args.chain, args.signer.signer()?)?;
    let tx = TransactionRequest::default()
        .with_to(args.address)
        .with_value(wei);
    let receipt = signing
        .send_request("funding", tx)
        .await
        .with_context(|| format!("sending {} ETH to {}", args.amount, args.address))?;
    let balance = signing
        .get_balance(args.address)
        .await
        .context("reading the new balance")?;
    out.emit(
        || {
            format!(
                "sent {} ETH to {}; its balance is {} ETH\n  {}\n",
                args.amount,
                args.address,
                format_ether(balance),
                tx_text(&receipt)
            )
        },
        || json!({ "to": args.address, "amountEth": args.amount, "balanceEth": format_ether(balance), "receipt": tx_json(&receipt) }),
    );
    Ok(ExitCode::SUCCESS)
}
