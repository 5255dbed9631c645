//! `docs/runbook.md` names only commands that exist: each `meshctl` line in its shell blocks names a
//! subcommand `meshctl` has, with flags that subcommand takes (read from its own `--help`). What the steps do
//! is shown by the scenarios that run them (`seat_request`, `compose`) and by `meshctl_cli`.

use std::process::Command;

use netns_tests::run::process::workspace_bin;

/// The runbook's `meshctl` command lines, without comments.
fn meshctl_lines(markdown: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut in_shell = false;
    for line in markdown.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_shell = trimmed == "```sh";
            continue;
        }
        if in_shell && trimmed.starts_with("meshctl ") {
            let command = trimmed.split(" #").next().unwrap_or(trimmed).trim();
            lines.push(command.to_owned());
        }
    }
    lines
}

/// The subcommand path (`["bind"]`, `["owner", "accept"]`) and the `--flags` of a command line.
fn shape(line: &str) -> (Vec<&str>, Vec<&str>) {
    let words: Vec<&str> = line.split_whitespace().skip(1).collect();
    let path = words
        .iter()
        .take_while(|w| {
            w.chars().all(|c| c.is_ascii_lowercase() || c == '-') && !w.starts_with('-')
        })
        .copied()
        .collect();
    let flags = words
        .iter()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.split('=').next().unwrap_or(w))
        .collect();
    (path, flags)
}

#[test]
fn every_meshctl_line_of_the_runbook_names_a_real_subcommand_and_its_flags() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/runbook.md");
    let runbook = std::fs::read_to_string(&path).expect("docs/runbook.md");
    let lines = meshctl_lines(&runbook);
    assert!(
        lines.len() >= 10,
        "the runbook's meshctl lines were not found: {lines:?}"
    );
    for line in &lines {
        let (subcommand, flags) = shape(line);
        assert!(!subcommand.is_empty(), "no subcommand in {line:?}");
        let out = Command::new(workspace_bin("meshctl"))
            .args(&subcommand)
            .arg("--help")
            .env_clear()
            .output()
            .expect("run meshctl");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "`meshctl {} --help` failed, so {line:?} names no subcommand: {}",
            subcommand.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        for flag in flags {
            assert!(
                help.contains(&format!("{flag} "))
                    || help.contains(&format!("{flag}\n"))
                    || help.contains(&format!("{flag}="))
                    || help.contains(&format!("{flag} <")),
                "`meshctl {}` has no {flag}, which the runbook's {line:?} passes",
                subcommand.join(" ")
            );
        }
    }
}

#[test]
fn the_shape_of_a_line_is_its_subcommands_and_flags() {
    assert_eq!(
        shape("meshctl bind --instance <instance id> --allow-os"),
        (vec!["bind"], vec!["--instance", "--allow-os"])
    );
    assert_eq!(
        shape("meshctl owner accept --calldata"),
        (vec!["owner", "accept"], vec!["--calldata"])
    );
    assert_eq!(
        shape("meshctl app-auth allow-compose 0x<compose hash>"),
        (vec!["app-auth", "allow-compose"], vec![])
    );
    assert_eq!(
        meshctl_lines(
            "```sh\nmeshctl peers          # a comment --not-a-flag\n```\nmeshctl outside\n"
        ),
        vec!["meshctl peers"]
    );
}
