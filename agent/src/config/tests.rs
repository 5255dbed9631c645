use super::*;

#[test]
fn a_transaction_key_in_the_environment_is_refused_by_name_and_never_shown() {
    const KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
    for name in REFUSED_KEY_VARIABLES {
        let err = refuse_key_in_environment(|n| (n == name).then(|| KEY.into()))
            .expect_err("a key in the environment must be refused")
            .to_string();
        assert!(err.starts_with(&format!("{name} is set")), "{err}");
        assert!(err.contains("--tx-key-file"), "{err}");
        assert!(!err.contains(KEY), "the error shows the key: {err}");
    }
}

#[derive(Debug, clap::Parser)]
struct Flags {
    #[command(flatten)]
    run: RunArgs,
}

fn flags(args: &[&str]) -> Result<RunArgs, clap::Error> {
    use clap::Parser as _;
    Flags::try_parse_from(std::iter::once("p2p-agent").chain(args.iter().copied())).map(|f| f.run)
}

const CONTRACT: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
const INSTANCE: &str = "7987d1133bc8ddfaf8639dbde4bb4d4d2f9152d0";

fn validated(args: &[&str]) -> Result<RunArgs, String> {
    let args: Vec<&str> = ["--contract", CONTRACT]
        .iter()
        .chain(args)
        .copied()
        .collect();
    let parsed = flags(&args).map_err(|e| e.to_string())?;
    parsed.validate().map_err(|e| format!("{e:#}"))?;
    Ok(parsed)
}

#[test]
fn the_platforms_gateway_domain_makes_the_gateway_url_with_the_relay_port_unless_told_otherwise() {
    let phala = ["--dstack-gateway-domain", "dstack-pha-prod7.phala.network"];
    let url = |extra: &[&str]| {
        let args: Vec<&str> = phala.iter().chain(extra).copied().collect();
        validated(&args).unwrap().gateway_url(INSTANCE)
    };
    assert_eq!(
        url(&[]).as_deref(),
        Some(
            "https://7987d1133bc8ddfaf8639dbde4bb4d4d2f9152d0-51820.dstack-pha-prod7.phala.network"
        ),
        "the relay's port: peers reach the relay with no variable of ours"
    );
    assert_eq!(
        url(&["--relay-port", "443"]).unwrap(),
        format!("https://{INSTANCE}-443.dstack-pha-prod7.phala.network")
    );
    assert_eq!(
        url(&["--gateway-port", "8080"]).unwrap(),
        format!("https://{INSTANCE}-8080.dstack-pha-prod7.phala.network")
    );
    assert_eq!(
        url(&["--no-relay"]),
        None,
        "no relay and no port: nothing to point at"
    );
    assert_eq!(
        url(&[
            "--gateway-domain",
            "mine.example.com",
            "--gateway-port",
            "9000"
        ])
        .unwrap(),
        format!("https://{INSTANCE}-9000.mine.example.com"),
        "our own flags win over the platform's variable"
    );
    assert_eq!(
        url(&["--gateway-url", "https://x-1.example.com"]).as_deref(),
        Some("https://x-1.example.com")
    );
    assert_eq!(validated(&[]).unwrap().gateway_url(INSTANCE), None);
    // In tls mode the port is the application's: the platform's domain alone is not enough.
    let tls = validated(&["--mode", "tls", phala[0], phala[1]]).unwrap_err();
    assert!(tls.contains("--gateway-port"), "{tls}");
    validated(&[
        "--mode",
        "tls",
        phala[0],
        phala[1],
        "--gateway-port",
        "8080",
    ])
    .unwrap();
}

#[test]
fn dstacks_own_interface_port_and_malformed_platform_variables_are_refused() {
    let err = validated(&["--interface", "dstack-wg0"]).unwrap_err();
    assert!(
        err.contains("dstack's own WireGuard") && err.contains("dmesh0"),
        "{err}"
    );
    let err = validated(&["--listen-port", "9182"]).unwrap_err();
    assert!(err.contains("9182") && err.contains("51820"), "{err}");
    for bad in [
        "https://dstack-pha-prod7.phala.network",
        "dstack-pha-prod7.phala.network/x",
        "localhost",
        "bad-.example.com",
        "example.com:0",
    ] {
        let err = validated(&["--dstack-gateway-domain", bad]).unwrap_err();
        assert!(
            err.contains("DSTACK_GATEWAY_DOMAIN") && err.contains("host name"),
            "{bad}: {err}"
        );
    }
    validated(&["--dstack-gateway-domain", "gw.example.com:8443"]).unwrap();
    for bad in ["0x1234", "zz87d1133bc8ddfaf8639dbde4bb4d4d2f9152d0", ""] {
        let err = validated(&["--dstack-app-id", bad]).unwrap_err();
        assert!(
            err.contains("DSTACK_APP_ID") && err.contains("40 hex"),
            "{bad:?}: {err}"
        );
    }
    let app = validated(&["--dstack-app-id", INSTANCE]).unwrap();
    assert_eq!(
        parse_app_id(app.dstack_app_id.as_deref().unwrap()).unwrap(),
        parse_app_id(&format!("0x{INSTANCE}")).unwrap()
    );
}

#[test]
fn stun_servers_default_to_two_operators_and_can_be_replaced_or_turned_off() {
    assert_eq!(flags(&[]).unwrap().stun_servers(), DEFAULT_STUN_SERVERS);
    let mine = flags(&[
        "--stun-server",
        "192.0.2.1:3478",
        "--stun-server",
        "stun.example.com:3479",
    ]);
    assert_eq!(
        mine.unwrap().stun_servers(),
        ["192.0.2.1:3478", "stun.example.com:3479"]
    );
    assert!(flags(&["--no-stun"]).unwrap().stun_servers().is_empty());
}

#[test]
fn auto_takes_the_userspace_device_for_a_node_without_an_endpoint() {
    assert_eq!(flags(&[]).unwrap().backend(), BackendChoice::Userspace);
    assert_eq!(
        flags(&["--endpoint", "203.0.113.5:51820"])
            .unwrap()
            .backend(),
        BackendChoice::Auto,
        "a reachable node keeps the kernel's where it has the module"
    );
    assert_eq!(
        flags(&["--wg-backend", "kernel"]).unwrap().backend(),
        BackendChoice::Kernel,
        "asked for, kept"
    );
}

#[test]
fn conflicting_or_malformed_stun_and_mtu_flags_are_refused_with_what_to_give() {
    let both = flags(&["--no-stun", "--stun-server", "192.0.2.1:3478"])
        .unwrap_err()
        .to_string();
    assert!(
        both.contains("--no-stun") && both.contains("--stun-server"),
        "{both}"
    );
    for bad in ["192.0.2.1", "stun.example.com:0", ":3478", "host:port"] {
        let err = flags(&["--stun-server", bad]).unwrap_err().to_string();
        assert!(err.contains("HOST:PORT"), "{bad}: {err}");
    }
    let err = flags(&["--mtu", "500"]).unwrap_err().to_string();
    assert!(err.contains("576"), "{err}");
    assert_eq!(flags(&["--mtu", "1200"]).unwrap().mtu, 1200);
}

#[test]
fn an_empty_or_absent_key_variable_is_not_a_key() {
    assert!(refuse_key_in_environment(|_| None).is_ok());
    assert!(refuse_key_in_environment(|_| Some("".into())).is_ok());
}

#[test]
fn a_leader_port_names_where_clients_connect_and_the_service_port() {
    let args = validated(&["--leader-port", "5432:5433", "--leader-port", "6380:6379"]).unwrap();
    assert_eq!(
        args.leader_ports,
        [
            Forward {
                listen: 5432,
                target: 5433
            },
            Forward {
                listen: 6380,
                target: 6379
            }
        ]
    );
    let err = validated(&["--leader-port", "5432:x"]).unwrap_err();
    assert!(err.contains("is not LISTEN[:TARGET]"), "{err}");
    let err = validated(&["--leader-port", "0"]).unwrap_err();
    assert!(err.contains("is not LISTEN[:TARGET]"), "{err}");
}

#[test]
fn a_forwarded_port_that_would_reach_itself_or_another_is_refused() {
    let err = validated(&["--leader-port", "5432"]).unwrap_err();
    assert!(
        err.contains("which is the port itself") && err.contains("--leader-port 5432:5433"),
        "{err}"
    );
    let err =
        validated(&["--leader-port", "5432:5433", "--replica-port", "5432:5434"]).unwrap_err();
    assert!(err.contains("conflicts with --leader-port"), "{err}");
    let err = validated(&[
        "--mode",
        "tls",
        "--gateway-url",
        "https://x.example.com",
        "--leader-port",
        "5432:5433",
    ])
    .unwrap_err();
    assert!(err.contains("needs the overlay"), "{err}");
}

#[test]
fn peer_relaying_is_automatic_unless_told_and_its_caps_are_off_at_zero() {
    use mesh_wg::RelayOffer;
    let auto = flags(&[]).unwrap().peer_relay.config();
    assert_eq!(auto.offer, RelayOffer::Auto);
    assert_eq!((auto.limits.max_pairs, auto.limits.max_per_seat), (64, 16));
    assert_eq!(
        (auto.limits.pair_mbps, auto.limits.total_mbps),
        (None, None)
    );
    let set = flags(&[
        "--relay-for-peers",
        "always",
        "--peer-relay-pair-mbps",
        "100",
        "--peer-relay-max-pairs",
        "8",
    ])
    .unwrap()
    .peer_relay
    .config();
    assert_eq!(set.offer, RelayOffer::Always);
    assert_eq!((set.limits.max_pairs, set.limits.pair_mbps), (8, Some(100)));
    let err = flags(&["--relay-for-peers", "sometimes"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("auto, always, never"), "{err}");
    assert!(flags(&["--peer-relay-max-pairs", "0"]).is_err());
}
