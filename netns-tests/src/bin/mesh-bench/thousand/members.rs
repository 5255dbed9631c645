//! The cluster's other members, without agents: each a simulated CVM of the cluster's app in this process,
//! its seat minted and bound to it, and its record registered by the agent's own registration code, with a
//! WireGuard key and endpoint (one simulated peer of the swarm, or none at all).

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::network::TransactionBuilder as _;
use alloy::primitives::{Address, U256};
use alloy::providers::Provider as _;
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use anyhow::Context as _;
use dstack_simulator::platform::SimulatorConfig;
use mesh_chain::contract::DstackClusterNFT;
use mesh_chain::registration::{Desired, Outcome};
use mesh_wg::Key;
use netns_tests::in_process::chain::{TestCluster, signing_provider};
use netns_tests::in_process::node::SimulatedInstance;
use netns_tests::in_process::swarm::SwarmPeer;
use netns_tests::system::cluster::account_key;
use netns_tests::system::lan::rpc_url;

/// How many members are registered at once, each by its own payer (anvil accounts 1, 2, …): a registration
/// is mostly waiting for its blocks, and the owner's mints share one nonce manager. A block holds up to this
/// many of their transactions (see [`BLOCK_EVERY`]).
pub(crate) const AT_ONCE: usize = 64;

/// While the members register, anvil mines a block this often, holding whatever was sent meanwhile, rather
/// than one per transaction: it computes the state root over the whole state anew for every block, a cost
/// that grows with the seats registered. At 10,000 seats, a block per transaction made registering the
/// members 48 minutes, nearly all of it hashing the contract's storage.
const BLOCK_EVERY: Duration = Duration::from_millis(250);

/// One member: its seat, its instance, and the WireGuard key its record holds.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) token: u64,
    pub(crate) instance_id: String,
    pub(crate) wg_key: Key,
}

/// Mints and registers a member per simulated peer of `peers`, [`AT_ONCE`] at a time, each from an instance
/// of `configs` (one per peer). The members come back in the order of `peers`; their seats are numbered in
/// the order they were minted. Call on a runtime inside the namespace of the chain.
///
/// # Errors
/// When a registration fails; a mint that reverts panics, as in the harness.
pub(crate) async fn register_all(
    configs: Vec<SimulatorConfig>,
    peers: &[SwarmPeer],
    contract: Address,
) -> anyhow::Result<Vec<Member>> {
    let owner = signing_provider(&rpc_url(), &account_key(0));
    let holder =
        PrivateKeySigner::from_slice(alloy::hex::decode(account_key(0))?.as_slice())?.address();
    let cluster = DstackClusterNFT::new(contract, owner.clone());
    // Not the owner: its provider caches the owner's nonce, which these transactions would move.
    let payers: Vec<PrivateKeySigner> = (1..=AT_ONCE)
        .map(|i| account_key(i).parse())
        .collect::<Result<_, _>>()?;
    fund(&owner, &payers).await?;
    let blocks = BatchedBlocks::start(&owner).await?;
    let pins = Arc::new(connect(contract).await?.contract_pins().await?);
    let began = Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut work: Vec<Vec<(usize, SimulatorConfig, SwarmPeer)>> = vec![Vec::new(); AT_ONCE];
    for (i, (config, peer)) in configs.into_iter().zip(peers).enumerate() {
        work[i % AT_ONCE].push((i, config, *peer));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (payer, work) in payers.into_iter().zip(work) {
        // A registrar each, as each node has: one client's requests in flight are capped.
        let one = One {
            cluster: cluster.clone(),
            holder,
            registrar: Arc::new(connect(contract).await?),
            pins: pins.clone(),
            payer,
        };
        let (done, total) = (done.clone(), peers.len());
        tasks.spawn(async move {
            let mut members = Vec::with_capacity(work.len());
            for (i, config, peer) in work {
                let member = one
                    .register(config, &peer)
                    .await
                    .with_context(|| format!("registering member {}", i + 1))?;
                members.push((i, member));
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n % (total / 10).max(100) == 0 {
                    eprintln!(
                        "   {n} members minted and registered ({:.0?})",
                        began.elapsed()
                    );
                }
            }
            anyhow::Ok(members)
        });
    }
    let mut members = Vec::with_capacity(peers.len());
    while let Some(joined) = tasks.join_next().await {
        members.extend(joined.context("a registration task panicked")??);
    }
    blocks.stop().await?;
    members.sort_by_key(|(i, _)| *i);
    Ok(members.into_iter().map(|(_, m)| m).collect())
}

/// Anvil mining a block every [`BLOCK_EVERY`] instead of one per transaction, until [`Self::stop`]. Dropped
/// without it (a registration failed), blocks stop coming at all; the section has failed by then.
struct BatchedBlocks {
    owner: alloy::providers::DynProvider,
    miner: owned_task::Task<()>,
}

impl BatchedBlocks {
    async fn start(owner: &alloy::providers::DynProvider) -> anyhow::Result<Self> {
        owner
            .raw_request::<_, serde_json::Value>("evm_setAutomine".into(), (false,))
            .await
            .context("turning anvil's automine off")?;
        let miner = owned_task::Task::spawn("mine", {
            let owner = owner.clone();
            async move {
                let mut every = tokio::time::interval(BLOCK_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    if let Err(e) = owner.raw_request::<_, String>("evm_mine".into(), ()).await {
                        eprintln!("   anvil did not mine a block (evm_mine): {e}");
                    }
                }
            }
        });
        Ok(Self {
            owner: owner.clone(),
            miner,
        })
    }

    /// Back to a block per transaction, as the measurements after the registrations expect.
    async fn stop(self) -> anyhow::Result<()> {
        drop(self.miner);
        self.owner
            .raw_request::<_, serde_json::Value>("evm_setAutomine".into(), (true,))
            .await
            .context("turning anvil's automine back on")?;
        Ok(())
    }
}

/// Gives the payers that anvil did not fund (the harness funds the first few accounts) 10 ETH each.
async fn fund(
    owner: &alloy::providers::DynProvider,
    payers: &[PrivateKeySigner],
) -> anyhow::Result<()> {
    let ten_eth = U256::from(10u64) * U256::from(10u64).pow(U256::from(18u64));
    for payer in payers {
        if owner.get_balance(payer.address()).await? >= ten_eth {
            continue;
        }
        let tx = TransactionRequest::default()
            .with_to(payer.address())
            .with_value(ten_eth);
        owner
            .send_transaction(tx)
            .await?
            .get_receipt()
            .await
            .context("funding a payer")?;
    }
    Ok(())
}

/// What registering one member takes, shared by the members one payer registers.
pub(crate) struct One {
    cluster: TestCluster,
    holder: Address,
    registrar: Arc<mesh_chain::cluster::Cluster>,
    pins: Arc<mesh_chain::membership::Pins>,
    payer: PrivateKeySigner,
}

/// Registers one member at a time from `payer` (an anvil account [`register_all`] funded): for a newcomer
/// whose two blocks are measured apart.
pub(crate) async fn registrar(contract: Address, payer: usize) -> anyhow::Result<One> {
    let owner = signing_provider(&rpc_url(), &account_key(0));
    let holder =
        PrivateKeySigner::from_slice(alloy::hex::decode(account_key(0))?.as_slice())?.address();
    let registrar = connect(contract).await?;
    Ok(One {
        cluster: DstackClusterNFT::new(contract, owner),
        holder,
        pins: Arc::new(registrar.contract_pins().await?),
        registrar: Arc::new(registrar),
        payer: account_key(payer).parse()?,
    })
}

/// The cluster as a node's registration code reaches it, through the one provider.
async fn connect(contract: Address) -> anyhow::Result<mesh_chain::cluster::Cluster> {
    mesh_chain::cluster::Cluster::connect(mesh_chain::rpc::Rpcs::one(rpc_url().parse()?)?, contract)
        .await
        .context("connecting a registration to the chain")
}

impl One {
    async fn register(&self, config: SimulatorConfig, peer: &SwarmPeer) -> anyhow::Result<Member> {
        let instance = SimulatedInstance::start_with(config).await;
        self.bind(&instance).await?;
        self.record(&instance, peer).await
    }

    /// The instance's seat minted and bound to it: one block. Its gas is twice the estimate: mints sent
    /// at once are estimated on a state before the others', and the first seat in a new word of the
    /// contract's bitmaps costs more than the estimate said.
    pub(crate) async fn bind(&self, instance: &SimulatedInstance) -> anyhow::Result<()> {
        let chain_id = self.cluster.provider().get_chain_id().await?;
        let binding = instance
            .binding(self.holder, chain_id, *self.cluster.address())
            .await;
        let call =
            (self.cluster).mintNodeAccess(self.holder, mesh_chain::contract::binding_arg(&binding));
        let gas = call.estimate_gas().await.context("estimating a mint")?;
        let receipt = call.gas(gas * 2).send().await?.get_receipt().await?;
        anyhow::ensure!(receipt.status(), "the mint reverted: {receipt:?}");
        Ok(())
    }

    /// The bound instance's record registered: one block.
    pub(crate) async fn record(
        &self,
        instance: &SimulatedInstance,
        peer: &SwarmPeer,
    ) -> anyhow::Result<Member> {
        let identity = instance.identity(0).await;
        let desired = Desired {
            wg_public_key: Some(Key::from_bytes(peer.public_key)),
            endpoint: peer.endpoint.to_string(),
            gateway_url: String::new(),
        };
        // The mint's receipt can come before the registrar's reads see its block (another member's read may
        // have just fixed what "now" is): a seat not found yet is looked for again, a few times.
        let mut tries = 0;
        let outcome = loop {
            match (self.registrar)
                .register(&identity.node, &desired, Some(&self.payer), &self.pins)
                .await
            {
                Err(mesh_chain::registration::RegistrationError::NoSeat { .. }) if tries < 20 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                other => break other?,
            }
        };
        let Outcome::Registered { token_id, .. } = outcome else {
            anyhow::bail!("not registered: {outcome:?}");
        };
        Ok(Member {
            token: token_id.to(),
            instance_id: instance.instance_id.clone(),
            wg_key: Key::from_bytes(peer.public_key),
        })
    }
}
