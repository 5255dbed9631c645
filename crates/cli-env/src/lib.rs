//! The environment variables of dstack-mesh's binaries. Every variable is named `DSTACK_MESH_<FLAG>`; the
//! names users already script against (`CLUSTER_CONTRACT`, `RPC_URL`, `PRIVATE_KEY`, `MESH_*`, …) are still
//! read, as [`Alias`]es: before parsing, a binary calls [`adopt_older_names`], which gives each current name
//! its older name's value when only that one is set. clap then reads the current names only.
//!
//! Both names set to different values is a [`Conflict`]: which one the user meant cannot be known.
//!
//! An empty variable counts as unset ([`empty`]): compose files write `NAME: ${NAME:-}` for an optional
//! setting, which sets it to the empty string, and clap would otherwise parse that as a value. That holds for
//! dstack's own variables too (`DSTACK_GATEWAY_DOMAIN`, `DSTACK_APP_ID`), which the compose file passes on the
//! same way and which are empty wherever the platform does not set them.
//!
//! The values that several binaries' flags take are read here too, so that a mistyped one is named the same
//! way everywhere: [`address`].

use std::ffi::OsString;
use std::fmt::Write as _;

/// The prefix of every variable.
pub const PREFIX: &str = "DSTACK_MESH_";

/// The prefix of the variables dstack's platform sets, some of which the binaries read.
pub const PLATFORM_PREFIX: &str = "DSTACK_";

/// An older name still read for a variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alias {
    /// The name to use: `DSTACK_MESH_…`.
    pub name: &'static str,
    /// The name it replaces.
    pub older: &'static str,
}

impl Alias {
    pub const fn new(name: &'static str, older: &'static str) -> Self {
        Self { name, older }
    }
}

/// Both names of a variable are set, to different values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{older} and {name} are both set, to different values; {name} is the name to use: unset {older}, or give both the same value"
)]
pub struct Conflict {
    pub name: &'static str,
    pub older: &'static str,
}

/// What [`adopt_older_names`] would set, for an environment that `get` reads: each current name that is unset
/// while its older name is set, with that value. Pure, so it is tested without touching the environment.
///
/// # Errors
/// The first [`Conflict`].
pub fn plan(
    aliases: &[Alias],
    get: impl Fn(&str) -> Option<OsString>,
) -> Result<Vec<(&'static str, OsString)>, Conflict> {
    let mut set = Vec::new();
    for alias in aliases {
        match (get(alias.name), get(alias.older)) {
            (None, Some(value)) if !set.iter().any(|(name, _)| *name == alias.name) => {
                set.push((alias.name, value));
            }
            (Some(current), Some(older)) if current != older => {
                return Err(Conflict {
                    name: alias.name,
                    older: alias.older,
                });
            }
            _ => {}
        }
    }
    // Two older names for one variable must agree too.
    for (i, a) in aliases.iter().enumerate() {
        for b in &aliases[i + 1..] {
            if a.name == b.name
                && let (Some(x), Some(y)) = (get(a.older), get(b.older))
                && x != y
            {
                return Err(Conflict {
                    name: a.name,
                    older: b.older,
                });
            }
        }
    }
    Ok(set)
}

/// The variables of `vars` that [`parse`] unsets because they are empty: ours (the prefix, or an alias's
/// older name) and dstack's. Pure, so it is tested without touching the environment.
pub fn empty(
    aliases: &[Alias],
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Vec<OsString> {
    vars.into_iter()
        .filter(|(name, value)| {
            value.is_empty()
                && name.to_str().is_some_and(|n| {
                    n.starts_with(PLATFORM_PREFIX) || aliases.iter().any(|a| a.older == n)
                })
        })
        .map(|(name, _)| name)
        .collect()
}

/// Gives each current name its older name's value where only the older one is set.
///
/// # Errors
/// A [`Conflict`]; the environment is then left as it was.
///
/// # Safety
/// It sets environment variables, so no other thread may exist yet: call it first in `main`, before an async
/// runtime or anything else starts a thread.
#[allow(unsafe_code)]
pub unsafe fn adopt_older_names(aliases: &[Alias]) -> Result<(), Conflict> {
    for (name, value) in plan(aliases, |k| std::env::var_os(k))? {
        // SAFETY: the caller guarantees that this process has no other thread.
        unsafe { std::env::set_var(name, value) };
    }
    Ok(())
}

/// Parses the command line into `P`, after [`adopt_older_names`], with [`help`] at the end of `--help` (and a
/// line pointing to it at the end of each subcommand's). Like clap's own parsing, it exits on an error: status 2 for a [`Conflict`].
///
/// # Safety
/// As [`adopt_older_names`]: no other thread may exist yet.
#[allow(unsafe_code)]
pub unsafe fn parse<P: clap::Parser>(aliases: &[Alias]) -> P {
    // SAFETY: passed on to the caller.
    unsafe { parse_command(aliases, P::command) }
}

/// [`parse`], with `version` as `--version` prints it: for a binary whose library defines the command, and
/// whose own crate alone is rebuilt when the version (a commit) changes.
///
/// # Safety
/// As [`adopt_older_names`]: no other thread may exist yet.
#[allow(unsafe_code)]
pub unsafe fn parse_versioned<P: clap::Parser>(aliases: &[Alias], version: &'static str) -> P {
    // SAFETY: passed on to the caller.
    unsafe { parse_command(aliases, || P::command().version(version)) }
}

/// `command` is built only once the environment is settled: clap reads each flag's variable as it builds it.
#[allow(unsafe_code)]
unsafe fn parse_command<P: clap::FromArgMatches>(
    aliases: &[Alias],
    command: impl FnOnce() -> clap::Command,
) -> P {
    for name in empty(aliases, std::env::vars_os()) {
        // SAFETY: the caller guarantees that this process has no other thread.
        unsafe { std::env::remove_var(name) };
    }
    // SAFETY: passed on to the caller.
    if let Err(e) = unsafe { adopt_older_names(aliases) } {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let command = command();
    // The table of older names once, under the binary's own `--help`; a subcommand's help points there.
    let pointer = format!(
        "Environment: every flag can be set with a {PREFIX}* variable, shown with it; `{} --help` lists the older names still read.",
        command.get_name()
    );
    let matches = command
        .after_long_help(help(aliases))
        .mut_subcommands(|s| s.after_long_help(pointer.clone()))
        .get_matches();
    P::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// A `--help` paragraph naming each older name and the name to use instead.
pub fn help(aliases: &[Alias]) -> String {
    let mut text = format!(
        "Environment: every flag can be set with a {PREFIX}* variable, shown with it. These older names are still read; the {PREFIX} name is the one to use, and setting both to different values is an error:\n"
    );
    for alias in aliases {
        let _ = writeln!(text, "  {:<28} use {}", alias.older, alias.name);
    }
    text
}

/// An Ethereum address as a flag or variable gives it: `0x` and 40 hex digits (the `0x` may be left out). The
/// error says what is wrong with the value in a user's terms (how many digits it has, which character is not
/// hex), where a hex decoder would say "odd number of digits".
///
/// # Errors
/// A value that is not an address.
pub fn address(raw: &str) -> Result<[u8; 20], String> {
    let trimmed = raw.trim();
    let hex = trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
        .unwrap_or(trimmed);
    if let Some(bad) = hex.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "{raw:?} is not an address: {bad:?} is not a hex digit (an address is 0x and 40 hex digits)"
        ));
    }
    if hex.len() != 40 {
        return Err(format!(
            "{raw:?} is not an address: it has {} hex digits, and an address has 40 (0x and 40 hex digits); a digit \
             lost or added in copying?",
            hex.len()
        ));
    }
    let mut out = [0u8; 20];
    for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks(2)) {
        let digits = std::str::from_utf8(pair).map_err(|_| format!("{raw:?} is not an address"))?;
        *byte = u8::from_str_radix(digits, 16).map_err(|_| format!("{raw:?} is not an address"))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn empty_variables_of_ours_count_as_unset_and_others_are_left_alone() {
        let vars = [
            ("DSTACK_MESH_GATEWAY_DOMAIN", ""),
            ("DSTACK_MESH_RPC_URL", "http://x"),
            ("RPC_URL", ""),
            ("HOME", ""),
            // What deploy/docker-compose.yml passes on where the platform sets neither.
            ("DSTACK_GATEWAY_DOMAIN", ""),
            ("DSTACK_APP_ID", ""),
            ("DSTACK_APP_DOMAIN", "app.example.com"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        assert_eq!(
            empty(ALIASES, vars),
            vec![
                OsString::from("DSTACK_MESH_GATEWAY_DOMAIN"),
                OsString::from("RPC_URL"),
                OsString::from("DSTACK_GATEWAY_DOMAIN"),
                OsString::from("DSTACK_APP_ID"),
            ]
        );
    }

    const ALIASES: &[Alias] = &[
        Alias::new("DSTACK_MESH_RPC_URL", "RPC_URL"),
        Alias::new("DSTACK_MESH_CONTRACT", "CLUSTER_CONTRACT"),
        Alias::new("DSTACK_MESH_KMS_ROOT", "MESH_KMS_ROOT"),
        Alias::new("DSTACK_MESH_KMS_ROOT", "KMS_ROOT"),
    ];

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: BTreeMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        move |k| map.get(k).cloned()
    }

    /// An older name fills its current name; a current name already set is left alone.
    #[test]
    fn older_names_fill_unset_current_names() {
        let set = plan(
            ALIASES,
            env(&[
                ("RPC_URL", "http://old"),
                ("CLUSTER_CONTRACT", "0x1"),
                ("DSTACK_MESH_CONTRACT", "0x1"),
            ]),
        )
        .unwrap();
        assert_eq!(
            set,
            vec![("DSTACK_MESH_RPC_URL", OsString::from("http://old"))]
        );
        assert!(plan(ALIASES, env(&[])).unwrap().is_empty());
    }

    /// Two names that disagree are an error naming both, and never their values (they may be secrets).
    #[test]
    fn names_that_disagree_are_a_conflict() {
        let err = plan(
            ALIASES,
            env(&[
                ("RPC_URL", "http://a-secret"),
                ("DSTACK_MESH_RPC_URL", "http://b"),
            ]),
        )
        .unwrap_err();
        assert_eq!(
            err,
            Conflict {
                name: "DSTACK_MESH_RPC_URL",
                older: "RPC_URL"
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("unset RPC_URL") && !text.contains("a-secret"),
            "{text}"
        );
        // Two older names of one variable must agree as well.
        let err = plan(
            ALIASES,
            env(&[("MESH_KMS_ROOT", "0x1"), ("KMS_ROOT", "0x2")]),
        )
        .unwrap_err();
        assert_eq!(err.name, "DSTACK_MESH_KMS_ROOT");
        assert!(
            plan(
                ALIASES,
                env(&[("MESH_KMS_ROOT", "0x1"), ("KMS_ROOT", "0x1")])
            )
            .is_ok()
        );
    }

    /// The help names every older name with the one to use.
    #[test]
    fn help_lists_each_older_name() {
        let text = help(ALIASES);
        assert!(
            text.contains("RPC_URL                      use DSTACK_MESH_RPC_URL"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1 + ALIASES.len());
    }

    #[test]
    fn an_address_is_read_with_or_without_0x_and_a_short_one_is_named_by_its_length() {
        let full = "0x00000000000000000000000000000000000000aB";
        assert_eq!(address(full).unwrap()[19], 0xab);
        assert_eq!(address(&full[2..]).unwrap(), address(full).unwrap());
        let short = address(&full[..41]).unwrap_err();
        assert!(
            short.contains("it has 39 hex digits, and an address has 40"),
            "{short}"
        );
        let bad = address("0x00000000000000000000000000000000000000zz").unwrap_err();
        assert!(bad.contains("'z' is not a hex digit"), "{bad}");
        assert!(!address("").unwrap_err().contains("odd number"));
    }
}
