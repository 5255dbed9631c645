//! The daemon: binds the API, learns this node's identity from dstack, then runs the tasks
//! ([`crate::tasks`]) under one cancellation token until it fires or a task fails, and joins them all.

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use anyhow::Context as _;
use dstack_guest::DstackClient;
use mesh_api::{AppReport, CheckSignal, Command, Listener, Routes, Snapshot};
use mesh_chain::cluster::Cluster;
use mesh_chain::redact::RedactedUrl;
use mesh_chain::view::ChainView;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, info_span, warn};
use unix_socket::UnixSocket;

use crate::attestation::Checker;
use crate::cache;
use crate::causes::Causes;
use crate::config::{ModeArg, RunArgs};
use crate::leadership::state::LeaderState;
use crate::node::NodeIdentity;
use crate::snapshot::{self, AgentFacts};
use crate::state::{ChainState, MeshState, RegState};
use crate::tasks::Shared;
use crate::tasks::chain::ChainTask;
use crate::tasks::chain::attest::Attestor;
use crate::tasks::disputer::Disputer;
use crate::tasks::health::HealthCheck;
use crate::tasks::leader::{self, LeaderTask};
use crate::tasks::mesh::{MeshTask, RelayParts, WireGuard};
use crate::tasks::ports::ForwardedPorts;
use crate::tasks::publisher::{Inputs, Publisher};
use crate::tasks::registrar::Registrar;

/// Runs the daemon until `cancel` fires, or `stop` does and the node has drained (see [`stop_when_asked`]).
///
/// # Errors
/// Settings that cannot work, an API socket that cannot be bound, or a task that needs the operator (an
/// interface that cannot be created). The chain and dstack being unreachable are retried, not errors.
/// `commit` is the one the binary was built from, which the status shows (the binary's build script stamps it,
/// so that a new commit recompiles the binary alone).
pub async fn run(
    args: RunArgs,
    tx_key: Option<PrivateKeySigner>,
    commit: &'static str,
    cancel: CancellationToken,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    // The root of every span: its fields are recorded once known (the instance from dstack, the token once
    // a seat is found), so each log line after that carries them.
    let node = info_span!(
        "node",
        instance = tracing::field::Empty,
        token = tracing::field::Empty
    );
    daemon(args, tx_key, commit, cancel, stop)
        .instrument(node)
        .await
}

/// On `stop` (SIGTERM), drains this node (it hands off if it leads) and waits until it can stop without
/// costing the cluster a failover, at most `grace`; then cancels everything.
async fn stop_when_asked(
    stop: CancellationToken,
    commands: mpsc::Sender<Command>,
    grace: Option<Duration>,
    cancel: CancellationToken,
) {
    stop.cancelled().await;
    if let Some(grace) = grace {
        let (reply, drained) = tokio::sync::oneshot::channel();
        if commands.send(Command::Stop { reply }).await.is_ok() {
            info!(
                ?grace,
                "draining before stopping: handing off if this node leads"
            );
            tokio::select! {
                done = drained => if done.is_ok() { info!("drained: stopping") },
                () = tokio::time::sleep(grace) => warn!(?grace, "the hand-off did not land within --stop-grace-secs: stopping anyway; the others replace this node after the leader timeout"),
                () = cancel.cancelled() => {}
            }
        }
    }
    cancel.cancel();
}

async fn daemon(
    args: RunArgs,
    tx_key: Option<PrivateKeySigner>,
    commit: &'static str,
    cancel: CancellationToken,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let contract = args.validate()?;
    let relay = relay_parts(&args)?;
    let listeners = bind_api(&args).await?;
    // The one handle on the chain, made once: every task reads and sends through it.
    let cluster = Cluster::new(args.endpoints.rpcs()?, contract);
    let rpc = cluster.rpcs().redacted();
    let agent = AgentFacts {
        mode: args.mode.into(),
        contract,
        rpc: rpc.clone(),
        liveness: args.liveness(),
        commit,
        started_at: std::time::SystemTime::now(),
    };
    let (api_tx, api_rx) = watch::channel(snapshot::initial(&agent));
    // The application reports its health to the API, which may come before the tasks.
    let (app_health_tx, app_health) = watch::channel(None);
    let (commands_tx, commands) = mpsc::channel(8);
    // Whether an application reads the peers' health: the mesh task holds every peer to the timeout then.
    let readers = Arc::new(mesh_api::Readers::default());
    let grace = (!args.no_handoff_on_stop).then(|| Duration::from_secs(args.stop_grace_secs));
    let _stopper = owned_task::Task::spawn(
        "stopper",
        stop_when_asked(stop.clone(), commands_tx.clone(), grace, cancel.clone()).in_current_span(),
    );
    // The API outlives the tasks: it answers until they are all joined.
    let api_stop = CancellationToken::new();
    let mut api = JoinSet::new();
    for (listener, routes) in listeners {
        let source = mesh_api::Source {
            snapshot: api_rx.clone(),
            app_health: Some(app_health_tx.clone()),
            commands: Some(commands_tx.clone()),
            readers: Some(Arc::clone(&readers)),
        };
        api.spawn(
            mesh_api::serve(listener, routes, source, api_stop.clone().cancelled_owned())
                .in_current_span(),
        );
    }
    let reports = Reports {
        snapshot: api_tx,
        app_health,
        commands,
        readers,
    };
    let result = member(
        args, cluster, rpc, agent, tx_key, relay, reports, &cancel, &stop,
    )
    .await;
    api_stop.cancel();
    api.join_all().await;
    result
}

/// The API's two channels: where the tasks publish the snapshot, and what the application reports.
struct Reports {
    snapshot: watch::Sender<Snapshot>,
    app_health: watch::Receiver<Option<AppReport>>,
    /// What applications ask of the leadership (`POST /v1/leader/handoff`, `/v1/drain`), and the stop.
    commands: mpsc::Receiver<Command>,
    /// Who reads the API ([`mesh_api::Readers`]).
    readers: Arc<mesh_api::Readers>,
}

/// Binds every place the API is served: the socket (with its mode and group), and the TCP addresses.
async fn bind_api(args: &RunArgs) -> anyhow::Result<Vec<(Listener, Routes)>> {
    if let Some(dir) = args.api_socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let socket = UnixSocket::bind(&args.api_socket)
        .await
        .context("binding the API socket (--api-socket)")?;
    if let Some(group) = &args.api_socket_group {
        let gid = group_id(group)?;
        std::os::unix::fs::chown(socket.path(), None, Some(gid)).with_context(|| {
            format!(
                "giving the API socket {} to group {group} (--api-socket-group)",
                socket.path().display()
            )
        })?;
    }
    socket
        .set_mode(args.api_socket_mode)
        .context("setting the API socket's mode (--api-socket-mode)")?;
    let mut listeners = vec![(Listener::from(socket), Routes::Api)];
    for (addr, routes, flag) in [
        (args.api_listen, Routes::Api, "--api-listen"),
        (args.metrics_listen, Routes::Metrics, "--metrics-listen"),
    ] {
        let Some(addr) = addr else { continue };
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr} ({flag})"))?;
        if routes == Routes::Api && !addr.ip().is_loopback() {
            warn!(%addr, "the API has no authentication: anyone who reaches {addr} reads this node's peers; prefer a loopback address");
        }
        info!(%addr, ?routes, "serving on TCP");
        listeners.push((Listener::from(tcp), routes));
    }
    Ok(listeners)
}

/// `--api-socket-group`: a group name, or a number.
fn group_id(group: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => anyhow::bail!(
            "--api-socket-group {group}: no such group in /etc/group; give a group that exists here, or its number"
        ),
        Err(e) => Err(e).with_context(|| format!("looking up group {group} (--api-socket-group)")),
    }
}

/// The relay's dialler, counters and port, unless relays are off or this node has no tunnel. Made at
/// start so that a bad CA file or a taken port stops the agent at once.
fn relay_parts(args: &RunArgs) -> anyhow::Result<Option<RelayParts>> {
    if args.mode != ModeArg::Wireguard || args.no_relay {
        return Ok(None);
    }
    let metrics = Arc::new(mesh_relay::Metrics::default());
    let dialer = mesh_relay::Dialer::new(
        args.relay_ca_file.as_deref(),
        mesh_relay::Limits::default().idle,
        Arc::clone(&metrics),
    )
    .context("setting up the relay's TLS (--relay-ca-file)")?;
    let reserved = RelayParts::reserve(args.relay_port)?;
    Ok(Some(RelayParts {
        dialer,
        metrics,
        reserved,
    }))
}

/// Waits for dstack to say who this node is, then runs the tasks.
#[allow(clippy::too_many_arguments)] // The daemon's parts, passed once from `daemon`.
async fn member(
    args: RunArgs,
    cluster: Cluster,
    rpc: RedactedUrl,
    agent: AgentFacts,
    tx_key: Option<PrivateKeySigner>,
    relay: Option<RelayParts>,
    api: Reports,
    cancel: &CancellationToken,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let client = DstackClient::discover(args.endpoints.dstack_endpoint.as_deref())
        .context("choosing the dstack endpoint")?;
    let saved = load_state(&args, cluster.address())?;
    let attestor = attestor(&args, &rpc, saved.as_ref())
        .context("setting up the verification of peers' quotes")?;
    // Nothing to drain before there is an identity: a stop then is a stop.
    let Some(identity) = cancel
        .run_until_cancelled(stop.run_until_cancelled(load_identity(
            &client,
            &args.state.key_file(),
            args.wg_key_epoch,
            &api.snapshot,
        )))
        .await
        .flatten()
    else {
        return Ok(());
    };
    let identity = identity?;
    if let Some(raw) = &args.dstack_app_id {
        let platform = crate::config::parse_app_id(raw).context("DSTACK_APP_ID")?;
        if platform != identity.node.app_id {
            anyhow::bail!(
                "DSTACK_APP_ID says this is app {platform}, but dstack's guest agent reports app {}: the variable belongs to another deployment (copied from another app's settings?); correct it, or unset it",
                identity.node.app_id
            );
        }
    }
    let identity = Arc::new(identity);
    tracing::Span::current().record("instance", identity.instance_id());
    info!(instance = %identity.instance_id(), app = %identity.node.app_id, node = %identity.node.address(), wg_key = %identity.wg_public_key(), "identity from dstack and the key store");
    let cached_pace = saved.as_ref().and_then(|s| s.pace);
    let cached = saved.map(|s| s.view);
    let shared = Shared {
        contract: cluster.address(),
        rpc,
        cluster,
        identity,
        tx_key,
        dstack: client,
    };
    let mut tasks = Tasks::new(&args, &shared, agent, relay, attestor);
    tasks.mesh.watchers.readers = Some(Arc::clone(&api.readers));
    tasks.chain.cached_pace = cached_pace;
    tasks.run(cached, api, cancel).await
}

/// Reads this node's identity, retrying every 2 s while dstack does not answer (a local socket: asking is
/// cheap, and one that comes up is seen at once); the status names dstack meanwhile. A key file that does not
/// open is not retried: waiting would not change it, and making new keys in its place would drop the seat's
/// binding without the operator asking.
async fn load_identity(
    client: &DstackClient,
    key_file: &std::path::Path,
    epoch: u32,
    api: &watch::Sender<Snapshot>,
) -> anyhow::Result<NodeIdentity> {
    const RETRY: Duration = Duration::from_secs(2);
    let since = std::time::SystemTime::now();
    loop {
        let delay = RETRY;
        match NodeIdentity::load(client, key_file, epoch).await {
            Ok(identity) => return Ok(identity),
            Err(e @ crate::node::IdentityError::KeyStore(_)) => {
                return Err(e).context("cannot open this node's keys");
            }
            Err(e) => {
                warn!(error = %Causes(&e), retry_in = ?delay, "reading this node's identity from dstack failed; retrying");
                let fault = mesh_api::Fault {
                    dependency: "dstack".into(),
                    detail: format!(
                        "waiting for dstack's guest agent at {}, which this node needs to know who it is: {}",
                        client.endpoint(),
                        Causes(&e)
                    ),
                    since: since
                        .duration_since(std::time::UNIX_EPOCH)
                        .ok()
                        .map(|d| d.as_secs()),
                };
                api.send_modify(|s| s.status.faults = vec![fault]);
            }
        }
        tokio::time::sleep(delay).await;
    }
}

/// How long a PCCS fetch may take: well inside one step of the chain task, so that a PCCS that does not
/// answer is remembered as failing rather than cut off.
const PCCS_TIMEOUT: Duration = Duration::from_secs(10);

/// What peers' quotes are verified under (`--tdx-root-ca`, `--tdx-collateral-file` or `--pccs-url`,
/// `--allow-tcb-status`), starting from the allowlist answers the state file kept.
fn attestor(
    args: &RunArgs,
    rpc: &RedactedUrl,
    saved: Option<&cache::Saved>,
) -> anyhow::Result<Attestor> {
    let trust = args.trust.trust()?;
    if !trust.is_intel() {
        // Asked for by flag, so not a warning; said at start so that nobody runs it so unawares.
        info!(root = ?args.trust.tdx_root_ca, "verifying quotes under this root CA, not Intel's: for tests and simulations only, since whoever holds its key can attest anything");
    }
    let collateral = args
        .trust
        .collateral(Some(&args.state.dir.join("collateral")), Some(PCCS_TIMEOUT))?;
    Ok(Attestor::new(
        Checker::new(trust, args.trust.tcb_statuses()),
        collateral,
        Duration::from_secs(args.full_read_secs.max(1)),
        saved.map(|s| s.allowlists.clone()).unwrap_or_default(),
        rpc.clone(),
    )
    .with_tcb_below(saved.map_or(&[], |s| s.tcb_below.as_slice()))
    .with_grants(saved.and_then(|s| s.grants.clone())))
}

/// What the state file kept, if it is this cluster's. A file that cannot be used, with no good copy,
/// stops the agent unless `--repin` says to start afresh: starting afresh trusts the RPC's chain id and
/// prefix anew and forgets the nonces seen, which is what a lying RPC would want.
fn load_state(args: &RunArgs, contract: Address) -> anyhow::Result<Option<cache::Saved>> {
    match cache::load(&args.state.dir) {
        Ok(Some(s)) if s.view.contract == contract => Ok(Some(s)),
        Ok(Some(s)) => {
            warn!(cached = %s.view.contract, %contract, "the state file is for another cluster; ignoring it");
            Ok(None)
        }
        Ok(None) => Ok(None),
        Err(e) if args.repin => {
            warn!(error = %Causes(&e), "the state file cannot be used; starting afresh, as --repin asks");
            Ok(None)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "the state file in {} cannot be used, and it pins the chain id, the mesh prefix and each seat's nonce high-water mark, so the agent does not start afresh by itself: restore the file (or its .last-good copy), or start once with --repin to trust the RPC's values again",
            args.state.dir.display()
        ))),
    }
}

/// The tasks, configured.
struct Tasks {
    chain: ChainTask,
    registrar: Registrar,
    mesh: MeshTask<WireGuard>,
    leader: LeaderTask,
    disputer: Disputer,
    ports: ForwardedPorts,
    publisher: Publisher,
    dstack: crate::tasks::dstack::DstackWatch,
    /// `--health-url`, `--health-cmd`.
    health: Option<HealthCheck>,
}

impl Tasks {
    /// Each task as the flags set it.
    fn new(
        args: &RunArgs,
        shared: &Shared,
        agent: AgentFacts,
        relay: Option<RelayParts>,
        attestor: Attestor,
    ) -> Self {
        let ports = ForwardedPorts::from_args(args);
        let mut publisher = Publisher::from_args(args, shared, agent);
        publisher.ports.clone_from(&ports.stats);
        Self {
            chain: ChainTask::from_args(args, shared, attestor),
            registrar: Registrar::from_args(args, shared),
            mesh: MeshTask::from_args(args, shared, relay),
            leader: LeaderTask::from_args(args, shared),
            disputer: Disputer::from_args(shared),
            ports,
            publisher,
            dstack: crate::tasks::dstack::DstackWatch {
                client: shared.dstack.clone(),
            },
            health: HealthCheck::from_args(args),
        }
    }

    /// Runs every task until `cancel` fires or one fails; the first failure cancels the rest. Returns once
    /// all have ended, with that failure.
    async fn run(
        self,
        cached: Option<ChainView>,
        api: Reports,
        cancel: &CancellationToken,
    ) -> anyhow::Result<()> {
        let Reports {
            snapshot: api,
            app_health,
            commands,
            // Given to the mesh task when it was made.
            readers: _,
        } = api;
        let (chain_tx, chain_rx) = watch::channel(ChainState::default());
        let (reg_tx, reg_rx) = watch::channel(RegState::default());
        let (mesh_tx, mesh_rx) = watch::channel(MeshState::default());
        let (leader_tx, leader_rx) = watch::channel(LeaderState::default());
        let (check_tx, check_rx) = watch::channel::<Option<CheckSignal>>(None);
        let (dstack_tx, dstack_rx) = watch::channel(None);
        let inputs = Inputs {
            chain: chain_rx.clone(),
            reg: reg_rx,
            mesh: mesh_rx.clone(),
            leader: leader_rx,
            check: check_rx.clone(),
            dstack: dstack_rx,
        };
        let mut set = JoinSet::new();
        if let Some(health) = self.health {
            let c = cancel.clone();
            set.spawn(health.run(check_tx, c).instrument(info_span!("health")));
        }
        let c = cancel.clone();
        set.spawn(
            self.chain
                .run(cached, chain_tx, c)
                .instrument(info_span!("chain")),
        );
        let c = cancel.clone();
        set.spawn(
            self.dstack
                .run(dstack_tx, c)
                .instrument(info_span!("dstack")),
        );
        let c = cancel.clone();
        set.spawn(
            self.registrar
                .run(chain_rx.clone(), reg_tx, c)
                .instrument(info_span!("registrar")),
        );
        let c = cancel.clone();
        let leader_inputs = leader::Inputs {
            chain: chain_rx.clone(),
            mesh: mesh_rx.clone(),
            app_health,
            check: check_rx,
            commands,
        };
        set.spawn(
            self.leader
                .run(leader_inputs, leader_tx, c)
                .instrument(info_span!("leader")),
        );
        let c = cancel.clone();
        set.spawn(
            self.disputer
                .run(chain_rx.clone(), c)
                .instrument(info_span!("disputer")),
        );
        let c = cancel.clone();
        set.spawn(
            self.mesh
                .run(chain_rx, mesh_tx, c)
                .instrument(info_span!("mesh")),
        );
        if !self.ports.is_empty() {
            let c = cancel.clone();
            set.spawn(
                self.ports
                    .run(api.subscribe(), c)
                    .instrument(info_span!("ports")),
            );
        }
        let c = cancel.clone();
        set.spawn(
            self.publisher
                .run(inputs, api, c)
                .instrument(info_span!("publisher")),
        );
        let mut failure = None;
        while let Some(ended) = set.join_next().await {
            let result = ended.unwrap_or_else(|e| Err(anyhow::anyhow!("a task panicked: {e}")));
            if let Err(e) = result {
                if failure.is_none() {
                    failure = Some(e);
                }
                cancel.cancel();
            }
        }
        failure.map_or(Ok(()), Err)
    }
}
