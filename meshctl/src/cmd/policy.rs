//! `meshctl policy`: who may reach whom. The owner tags seats and apps and grants tags ports on other tags;
//! every agent enforces the policy on what it receives (see docs/security.md).

use std::process::ExitCode;

use alloy::eips::BlockId;
use alloy::primitives::{Address, U256};
use alloy::rpc::types::TransactionReceipt;
use anyhow::{Context, bail};
use mesh_chain::contract::DstackClusterAppAuth::DstackClusterAppAuthInstance;
use mesh_chain::contract::DstackClusterGrants;
use mesh_chain::policy::ClusterPolicy;
use mesh_policy::{Grant, Policy, Protocol, Why};
use serde_json::{Value, json};

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
    /// Print the policy: whether it is in force, the tags of seats and apps, and the grants, numbered.
    Show(ShowArgs),
    /// Change the policy (each change is a transaction of its own, in the order of the flags below).
    Set(SetArgs),
    /// Say whether seat --from may reach port --port of seat --to, and which rule decides it. Exits 1
    /// when it may not.
    Test(TestArgs),
}

#[derive(Debug, clap::Args)]
struct ShowArgs {
    #[command(flatten)]
    cluster: ClusterOpts,
}

#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args(["tags", "seats", "apps", "grants", "add_grant", "remove_grant", "enforce"])
))]
struct SetArgs {
    #[command(flatten)]
    write: Write,
    /// Name the tags, bit 0 first (commas between): lowercase letters, digits and dashes.
    #[arg(long, value_delimiter = ',')]
    tags: Option<Vec<String>>,
    /// A seat's own tags, `SEAT=TAG[+TAG...]`, or `SEAT=` for none (repeat it).
    #[arg(long = "seat", value_name = "SEAT=TAGS")]
    seats: Vec<String>,
    /// The tags of every seat serving an app, `APP_ID=TAG[+TAG...]`, or `APP_ID=` for none (repeat it).
    #[arg(long = "app", value_name = "APP_ID=TAGS")]
    apps: Vec<String>,
    /// Replace every grant: `FROM:TO:PROTOCOL:PORT[-PORT]`, tags by name, protocol tcp, udp or any (repeat
    /// it). The policy is in force from then on, unless --enforce false.
    #[arg(long = "grant", value_name = "GRANT", conflicts_with_all = ["add_grant", "remove_grant"])]
    grants: Vec<String>,
    /// Add one grant, as --grant writes it.
    #[arg(long, value_name = "GRANT", conflicts_with = "remove_grant")]
    add_grant: Option<String>,
    /// Remove grant N, as `meshctl policy show` numbers them; the last takes its place.
    #[arg(long, value_name = "N")]
    remove_grant: Option<u64>,
    /// Put the policy in force (true) or out of it (false: everyone reaches everyone again), grants kept.
    #[arg(long, value_name = "BOOL")]
    enforce: Option<bool>,
}

#[derive(Debug, clap::Args)]
struct TestArgs {
    #[command(flatten)]
    cluster: ClusterOpts,
    /// The seat the flow comes from.
    #[arg(long)]
    from: u64,
    /// The seat it goes to.
    #[arg(long)]
    to: u64,
    #[arg(long)]
    port: u16,
    #[arg(long, default_value = "tcp", value_parser = protocol)]
    protocol: Protocol,
}

fn protocol(text: &str) -> Result<Protocol, String> {
    match text {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => Err(format!("{text:?}: the protocol is tcp or udp")),
    }
}

pub(crate) async fn run(args: Args, out: &Output) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::Show(a) => show(a, out).await,
        Action::Set(a) => set(a, out).await,
        Action::Test(a) => test(a, out).await,
    }
}

async fn read<P: alloy::providers::Provider>(
    auth: &DstackClusterAppAuthInstance<P>,
) -> anyhow::Result<ClusterPolicy> {
    mesh_chain::policy::read(auth, BlockId::latest())
        .await
        .context("reading the policy from the cluster's app auth")
}

async fn show(a: ShowArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let c = cluster::open_read(&a.cluster).await?;
    let p = read(&cluster::app_auth(&c).await?).await?;
    let rules = &p.rules;
    let grants: Vec<String> = rules.grants.iter().map(|g| describe(rules, g)).collect();
    let seats: Vec<(u64, Vec<String>)> = p
        .seat_tags
        .iter()
        .map(|(s, t)| (*s, rules.tag_names(*t)))
        .collect();
    let apps: Vec<(Address, Vec<String>)> = p
        .app_tags
        .iter()
        .map(|(a, t)| (*a, rules.tag_names(*t)))
        .collect();
    let text = || {
        let mut s = match rules.enforced {
            true => format!(
                "in force (version {}): only what a grant allows gets through\n",
                rules.version
            ),
            false => format!(
                "not in force (version {}): every seat reaches every port of every other\n",
                rules.version
            ),
        };
        s.push_str(&format!("tags:   {}\n", list(&rules.tag_names)));
        for (seat, tags) in &seats {
            s.push_str(&format!("seat {seat}: {}\n", list(tags)));
        }
        for (app, tags) in &apps {
            s.push_str(&format!("app {app}: {}\n", list(tags)));
        }
        for (i, g) in grants.iter().enumerate() {
            s.push_str(&format!("grant {i}: {g}\n"));
        }
        s
    };
    let value = || {
        json!({
            "enforced": rules.enforced,
            "version": rules.version,
            "tags": rules.tag_names,
            "seats": seats.iter().map(|(s, t)| json!({ "seat": s, "tags": t })).collect::<Vec<_>>(),
            "apps": apps.iter().map(|(a, t)| json!({ "appId": a, "tags": t })).collect::<Vec<_>>(),
            "grants": grants,
        })
    };
    out.emit(text, value);
    Ok(ExitCode::SUCCESS)
}

fn list(names: &[String]) -> String {
    match names.is_empty() {
        true => "(none)".to_owned(),
        false => names.join(", "),
    }
}

/// `web -> db tcp 5432`, as `--grant` writes it but readable.
fn describe(rules: &Policy, g: &Grant) -> String {
    let protocol = g.protocol.map_or("tcp+udp", Protocol::as_str);
    let ports = match g.ports.start() == g.ports.end() {
        true => g.ports.start().to_string(),
        false => format!("{}-{}", g.ports.start(), g.ports.end()),
    };
    format!(
        "{} -> {} {protocol} {ports}",
        rules.tag_names(g.from).join("+"),
        rules.tag_names(g.to).join("+")
    )
}

/// The tags `text` names (`web+db`), as bits, by `names`.
fn tags(names: &[String], text: &str) -> anyhow::Result<u32> {
    let rules = Policy {
        tag_names: names.to_vec(),
        ..Policy::default()
    };
    text.split('+')
        .filter(|t| !t.is_empty())
        .try_fold(0u32, |bits, t| match rules.tag_bit(t) {
            Some(bit) => Ok(bits | bit),
            None => bail!(
                "no tag is named {t:?}: the tags are {}; name them with --tags",
                list(names)
            ),
        })
}

/// A grant as `--grant` writes it: `FROM:TO:PROTOCOL:PORT[-PORT]`.
fn grant(names: &[String], text: &str) -> anyhow::Result<DstackClusterGrants::Grant> {
    let parts: Vec<&str> = text.split(':').collect();
    let [from, to, protocol, ports] = parts[..] else {
        bail!("--grant {text:?}: write FROM:TO:PROTOCOL:PORT[-PORT], e.g. web:db:tcp:5432");
    };
    let protocol = match protocol {
        "tcp" => 6,
        "udp" => 17,
        "any" => 0,
        _ => bail!("--grant {text:?}: the protocol is tcp, udp or any"),
    };
    let port = |p: &str| {
        p.parse::<u16>()
            .with_context(|| format!("--grant {text:?}: {p:?} is not a port"))
    };
    let (first, last) = match ports.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => (port(ports)?, port(ports)?),
    };
    if first > last {
        bail!("--grant {text:?}: the ports run backwards");
    }
    let (from, to) = (tags(names, from)?, tags(names, to)?);
    if from == 0 || to == 0 {
        bail!("--grant {text:?}: name a tag on each side");
    }
    Ok(DstackClusterGrants::Grant {
        from,
        to,
        protocol,
        firstPort: first,
        lastPort: last,
    })
}

fn assignment<'a>(flag: &str, text: &'a str) -> anyhow::Result<(&'a str, &'a str)> {
    text.split_once('=')
        .with_context(|| format!("--{flag} {text:?}: write WHO=TAG[+TAG...], or WHO= for none"))
}

async fn set(a: SetArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let c = cluster::open_write(&a.write.cluster, &a.write.signer).await?;
    let auth = cluster::app_auth(&c).await?;
    let current = read(&auth).await?;
    let names = a.tags.clone().unwrap_or(current.rules.tag_names.clone());
    // Everything is parsed before the first transaction: a typo sends nothing.
    let seats = a
        .seats
        .iter()
        .map(|s| {
            let (seat, t) = assignment("seat", s)?;
            let seat: u64 = seat
                .parse()
                .with_context(|| format!("--seat {s:?}: {seat:?} is not a seat number"))?;
            Ok((seat, tags(&names, t)?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let apps = a
        .apps
        .iter()
        .map(|s| {
            let (app, t) = assignment("app", s)?;
            let app = cluster::address(app).map_err(|e| anyhow::anyhow!("--app {s:?}: {e}"))?;
            Ok((app, tags(&names, t)?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let grants = a
        .grants
        .iter()
        .map(|g| grant(&names, g))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let added = a
        .add_grant
        .as_deref()
        .map(|g| grant(&names, g))
        .transpose()?;
    let mut done: Vec<(String, TransactionReceipt)> = Vec::new();
    if let Some(t) = &a.tags {
        let r = cluster::send("setTagNames", auth.setTagNames(t.clone())).await?;
        done.push((format!("tags: {}", list(t)), r));
    }
    for (seat, bits) in seats {
        let r = cluster::send("setSeatTags", auth.setSeatTags(U256::from(seat), bits)).await?;
        done.push((format!("seat {seat}: {}", tag_list(&names, bits)), r));
    }
    for (app, bits) in apps {
        let r = cluster::send("setAppTags", auth.setAppTags(app, bits)).await?;
        done.push((format!("app {app}: {}", tag_list(&names, bits)), r));
    }
    if !a.grants.is_empty() {
        let enforce = a.enforce.unwrap_or(true);
        let r = cluster::send("setGrants", auth.setGrants(grants, enforce)).await?;
        done.push((format!("{} grants, in force: {enforce}", a.grants.len()), r));
    } else if let Some(enforce) = a.enforce {
        let kept: Vec<DstackClusterGrants::Grant> =
            current.rules.grants.iter().map(to_contract).collect();
        let r = cluster::send("setGrants", auth.setGrants(kept, enforce)).await?;
        done.push((format!("in force: {enforce}"), r));
    }
    if let (Some(g), Some(text)) = (added, &a.add_grant) {
        let r = cluster::send("addGrant", auth.addGrant(g)).await?;
        done.push((format!("grant added: {text}"), r));
    }
    if let Some(n) = a.remove_grant {
        let r = cluster::send("removeGrant", auth.removeGrant(U256::from(n))).await?;
        done.push((format!("grant {n} removed"), r));
    }
    out.emit(
        || {
            done.iter()
                .map(|(what, r)| format!("{what}\n  {}\n", tx_text(r)))
                .collect()
        },
        || {
            Value::Array(
                done.iter()
                    .map(|(what, r)| json!({ "set": what, "receipt": tx_json(r) }))
                    .collect(),
            )
        },
    );
    Ok(ExitCode::SUCCESS)
}

fn tag_list(names: &[String], bits: u32) -> String {
    let rules = Policy {
        tag_names: names.to_vec(),
        ..Policy::default()
    };
    list(&rules.tag_names(bits))
}

fn to_contract(g: &Grant) -> DstackClusterGrants::Grant {
    DstackClusterGrants::Grant {
        from: g.from,
        to: g.to,
        protocol: g.protocol.map_or(0, Protocol::number),
        firstPort: *g.ports.start(),
        lastPort: *g.ports.end(),
    }
}

async fn test(a: TestArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let c = cluster::open_read(&a.cluster).await?;
    let p = read(&cluster::app_auth(&c).await?).await?;
    let app_of = |seat: u64| {
        let c = &c;
        async move {
            c.seatAppOf(U256::from(seat))
                .call()
                .await
                .with_context(|| format!("reading the app seat {seat} serves"))
                .map(|a| (a != Address::ZERO).then_some(a))
        }
    };
    let (from_app, to_app) = (app_of(a.from).await?, app_of(a.to).await?);
    let (from, to) = (p.tags_of(a.from, from_app), p.tags_of(a.to, to_app));
    let rules = &p.rules;
    let verdict = rules.decide(from, to, a.protocol, a.port);
    let flow = format!(
        "seat {} ({}) -> seat {} ({}) {} {}",
        a.from,
        list(&rules.tag_names(from)),
        a.to,
        list(&rules.tag_names(to)),
        a.protocol.as_str(),
        a.port
    );
    let why = match verdict.why {
        Why::NotEnforced => "no policy is in force: every seat reaches every port".to_owned(),
        Why::Grant(i) => format!("grant {i} allows it: {}", describe(rules, &rules.grants[i])),
        Why::NoGrant => "the policy is in force and no grant allows it".to_owned(),
    };
    let word = if verdict.allowed {
        "allowed"
    } else {
        "refused"
    };
    out.emit(
        || format!("{flow}: {word}\n  {why}\n"),
        || {
            json!({
                "allowed": verdict.allowed,
                "why": why,
                "rule": match verdict.why { Why::Grant(i) => Some(i), _ => None },
                "fromTags": rules.tag_names(from),
                "toTags": rules.tag_names(to),
            })
        },
    );
    Ok(match verdict.allowed {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(1),
    })
}
