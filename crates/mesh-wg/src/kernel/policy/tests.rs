use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use mesh_policy::Reach;
use mesh_policy::filter::DropCounts;

use super::{Enforcer, PeerRules, parse_counters, render, restricted, table_name};

const B: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const C: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 3);

fn host(ip: Ipv4Addr) -> Vec<Ipv4Network> {
    vec![Ipv4Network::new(ip, 32).unwrap()]
}

fn reach(tcp: &[(u16, u16)], udp: &[(u16, u16)]) -> Reach {
    Reach {
        all: false,
        tcp: tcp.iter().map(|&(a, b)| a..=b).collect(),
        udp: udp.iter().map(|&(a, b)| a..=b).collect(),
    }
}

fn rules<'a>(address: Ipv4Addr, sources: &'a [Ipv4Network], reach: &'a Reach) -> PeerRules<'a> {
    PeerRules {
        address,
        sources,
        reach,
    }
}

/// With every peer unrestricted the script only deletes the table, whether it exists or not.
#[test]
fn no_policy_deletes_the_table() {
    let (b, all) = (host(B), Reach::everything());
    let script = render("dsm0", &[8001], &[rules(B, &b, &all)]).unwrap();
    assert_eq!(
        script,
        "table ip dstack_mesh_dsm0 {}\ndelete table ip dstack_mesh_dsm0\n"
    );
    assert_eq!(render("dsm0", &[], &[]).unwrap(), script);
}

/// A peer that may reach postgres only, beside one that reaches everything.
#[test]
fn a_postgres_only_peer_beside_an_unrestricted_one() {
    let (b, c) = (host(B), host(C));
    let (postgres, all) = (reach(&[(5432, 5432)], &[]), Reach::everything());
    // Given in another order than the addresses': the script is the same whatever the map's order.
    let script = render(
        "dsm0",
        &[8001, 51820],
        &[rules(C, &c, &all), rules(B, &b, &postgres)],
    )
    .unwrap();
    assert_eq!(
        script,
        "table ip dstack_mesh_dsm0 {}
delete table ip dstack_mesh_dsm0
table ip dstack_mesh_dsm0 {
\tcounter no_grant_10_0_1_2 {}
\tcounter protocol_10_0_1_2 {}
\tchain inbound {
\t\ttype filter hook prerouting priority -150; policy accept;
\t\tiifname != \"dsm0\" accept
\t\tip protocol icmp accept
\t\tip frag-off & 0x1fff != 0 accept
\t\tudp dport { 8001, 51820 } accept
\t\tudp sport { 8001, 51820 } accept
\t\tct direction reply accept
\t\tip saddr 10.0.1.3 accept
\t\tip saddr 10.0.1.2 tcp dport { 5432 } accept
\t\tip saddr 10.0.1.2 meta l4proto != { tcp, udp } counter name \"protocol_10_0_1_2\" drop
\t\tip saddr 10.0.1.2 counter name \"no_grant_10_0_1_2\" drop
\t}
}
"
    );
    let reversed = render(
        "dsm0",
        &[51820, 8001, 8001],
        &[rules(B, &b, &postgres), rules(C, &c, &all)],
    )
    .unwrap();
    assert_eq!(
        reversed, script,
        "order and repeats do not change the script"
    );
}

/// UDP ranges and several TCP ranges, the touching ones merged; a peer with no grant at all has only its
/// drops; no exempt ports, so no rule for them.
#[test]
fn ranges_and_no_exempt_ports() {
    let (b, c) = (host(B), host(C));
    let ranged = reach(
        &[(8000, 8099), (22, 22), (8100, 8200), (443, 443)],
        &[(53, 53), (60000, 61000)],
    );
    let nothing = reach(&[], &[]);
    let script = render(
        "wg-a",
        &[],
        &[rules(B, &b, &ranged), rules(C, &c, &nothing)],
    )
    .unwrap();
    assert_eq!(
        script,
        "table ip dstack_mesh_wg_2da {}
delete table ip dstack_mesh_wg_2da
table ip dstack_mesh_wg_2da {
\tcounter no_grant_10_0_1_2 {}
\tcounter protocol_10_0_1_2 {}
\tcounter no_grant_10_0_1_3 {}
\tcounter protocol_10_0_1_3 {}
\tchain inbound {
\t\ttype filter hook prerouting priority -150; policy accept;
\t\tiifname != \"wg-a\" accept
\t\tip protocol icmp accept
\t\tip frag-off & 0x1fff != 0 accept
\t\tct direction reply accept
\t\tip saddr 10.0.1.2 tcp dport { 22, 443, 8000-8200 } accept
\t\tip saddr 10.0.1.2 udp dport { 53, 60000-61000 } accept
\t\tip saddr 10.0.1.2 meta l4proto != { tcp, udp } counter name \"protocol_10_0_1_2\" drop
\t\tip saddr 10.0.1.2 counter name \"no_grant_10_0_1_2\" drop
\t\tip saddr 10.0.1.3 meta l4proto != { tcp, udp } counter name \"protocol_10_0_1_3\" drop
\t\tip saddr 10.0.1.3 counter name \"no_grant_10_0_1_3\" drop
\t}
}
"
    );
}

/// A peer routed more than its /32 is judged on every source it may use, and named by its /32.
#[test]
fn every_prefix_of_a_peer_is_judged() {
    let sources: Vec<Ipv4Network> = ["10.0.9.0/24", "10.0.1.2/32", "10.0.9.7/32"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let postgres = reach(&[(5432, 5432)], &[]);
    let script = render("dsm0", &[], &[rules(B, &sources, &postgres)]).unwrap();
    assert!(
        script.contains(
            "\t\tip saddr { 10.0.1.2, 10.0.9.0/24 } counter name \"no_grant_10_0_1_2\" drop\n"
        ),
        "{script}"
    );
}

/// Table names: letters and digits as they are, anything else in hex, so no two interfaces share one.
#[test]
fn table_names_are_distinct_and_plain() {
    assert_eq!(table_name("dsm0"), "dstack_mesh_dsm0");
    assert_eq!(table_name("wg-a"), "dstack_mesh_wg_2da");
    assert_eq!(table_name("wg_a"), "dstack_mesh_wg_5fa");
    assert_ne!(table_name("wg-a"), table_name("wg_a"));
}

/// A name nft cannot quote is an error that names the interface, not a broken script.
#[test]
fn an_unquotable_ifname_is_an_error() {
    let (b, postgres) = (host(B), reach(&[(5432, 5432)], &[]));
    let err = render("wg\"0", &[], &[rules(B, &b, &postgres)]).unwrap_err();
    assert!(err.to_string().contains("install it"), "{err}");
    // Deleting needs no quoting.
    render("wg\"0", &[], &[]).unwrap();
}

/// What `nft -j list table` printed for the table of `ranges_and_no_exempt_ports` (nft 1.0.6, Linux 6.18),
/// after 10.0.1.2 sent TCP to ports 9999 and 5432 and UDP to port 7 (none granted), UDP to 60005 (granted)
/// and one datagram of IP protocol 253, and 10.0.1.3 TCP to port 22 and two of protocol 253.
#[test]
fn counters_are_read_from_nfts_json() {
    let counts = parse_counters(include_str!("nft_list_table.json")).unwrap();
    let expected = [
        (
            B,
            DropCounts {
                no_grant: 3,
                protocol: 1,
                malformed: 0,
            },
        ),
        (
            C,
            DropCounts {
                no_grant: 1,
                protocol: 2,
                malformed: 0,
            },
        ),
    ];
    assert_eq!(counts, expected.into_iter().collect());
}

/// A table without counters (of no peer restricted, or another program's) reads as no drops; what is not
/// nft's JSON is an error.
#[test]
fn other_json_reads_as_nothing_or_an_error() {
    let empty = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"counter": {"name": "someone_elses", "packets": 9}}, {"counter": {"name": "no_grant_10_0_1", "packets": 9}}]}"#;
    assert!(parse_counters(empty).unwrap().is_empty());
    assert!(parse_counters("Error: No such file or directory").is_err());
    assert!(parse_counters("{}").is_err());
}

/// The counts of a replaced table are kept: a peer's while it stays a peer, and all in the device's total,
/// so neither goes backwards.
#[test]
fn counts_of_replaced_tables_are_kept() {
    let (b, c, postgres) = (host(B), host(C), reach(&[(5432, 5432)], &[]));
    let mut enforcer = Enforcer::new("dsm0", &[]);
    let drops = |no_grant, protocol| DropCounts {
        no_grant,
        protocol,
        malformed: 0,
    };
    let both = [rules(B, &b, &postgres), rules(C, &c, &postgres)];
    enforcer.carry([(B, drops(2, 1)), (C, drops(5, 0))].into(), &both);
    assert_eq!(
        enforcer.per_peer(),
        [(B, drops(2, 1)), (C, drops(5, 0))].into()
    );
    enforcer.carry([(B, drops(1, 0))].into(), &both);
    assert_eq!(enforcer.per_peer()[&B], drops(3, 1));
    // C goes: its drops stay in the total only.
    enforcer.carry([(C, drops(1, 1))].into(), &both[..1]);
    assert_eq!(enforcer.per_peer(), [(B, drops(3, 1))].into());
    assert_eq!(enforcer.total(), drops(9, 2));
}

/// A peer is reported to reach what the table in place lets it: a change nft did not take (here one it
/// cannot be written for) leaves the reach before, so the next plan sets the peer again. Peers not held to a
/// reach, and every peer with no policy in force, reach everything.
#[test]
fn a_peer_reaches_what_the_table_in_place_allows() {
    let (b, c) = (host(B), host(C));
    let (postgres, everything) = (reach(&[(5432, 5432)], &[]), Reach::everything());
    assert_eq!(
        restricted(&[rules(B, &b, &postgres), rules(C, &c, &everything)]),
        [(B, postgres.clone())].into(),
        "only the restricted peer is held to a reach"
    );
    assert!(restricted(&[rules(C, &c, &everything)]).is_empty());

    let mut refused = Enforcer::new("bad\"name", &[]);
    assert!(refused.apply(&[rules(B, &b, &postgres)]).is_err());
    assert_eq!(refused.reach_of(B), everything, "refused: judged as before");
    refused
        .apply(&[rules(B, &b, &everything)])
        .expect("no policy in force needs no table");
    assert_eq!(refused.reach_of(B), everything);
}
