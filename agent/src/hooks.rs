//! Telling the rest of the CVM about peer-set changes: the `--on-change` command ([`run`]) and the hosts
//! file ([`write_hosts`]).
//!
//! The command runs under `sh -c` in its own process group, with the peer list as JSON on stdin and a
//! cleaned environment: only what a shell needs (`PATH`, `HOME`, locale, time zone), never the agent's
//! transaction key, RPC credentials or other settings. Writing stdin counts against the time limit, so a
//! command that never reads it is killed with everything it started, not left behind.

use std::net::Ipv4Addr;
use std::os::fd::AsFd as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use mesh_chain::roster::Members;

use tokio::io::AsyncWriteExt as _;

/// The variables a hook inherits from the agent, if set; everything else is left out.
const INHERITED: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "TZ", "TMPDIR",
];

/// Why a hook did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    #[error("cannot start it")]
    Spawn(#[source] std::io::Error),
    #[error("waiting for it failed")]
    Wait(#[source] std::io::Error),
    #[error("it exited with {0}")]
    Failed(std::process::ExitStatus),
    #[error("it did not finish within {} s (writing its input included) and was killed", .0.as_secs_f32())]
    TimedOut(Duration),
}

/// Runs `command` with `input` on its stdin, within `limit`.
///
/// # Errors
/// [`HookError`]; on [`HookError::TimedOut`] the command's whole process group has been killed.
pub async fn run(command: &str, input: &[u8], limit: Duration) -> Result<(), HookError> {
    run_as(command, input, limit, Output::ToLog).await
}

/// [`run`] for a command run every few seconds (`--health-cmd`): its output is discarded, so that it does
/// not fill the log; its exit status says all.
///
/// # Errors
/// As [`run`].
pub async fn run_quietly(command: &str, limit: Duration) -> Result<(), HookError> {
    run_as(command, &[], limit, Output::Discard).await
}

/// Where a command's output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// stdout and stderr to the agent's stderr, its log.
    ToLog,
    Discard,
}

async fn run_as(
    command: &str,
    input: &[u8],
    limit: Duration,
    output: Output,
) -> Result<(), HookError> {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .env_clear()
        .envs(
            INHERITED
                .iter()
                .filter_map(|k| std::env::var_os(k).map(|v| (k, v))),
        )
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    match output {
        // Its output goes to the agent's log (stderr); stdout is where the agent prints registrations to
        // relay.
        Output::ToLog => {
            if let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() {
                cmd.stdout(Stdio::from(fd));
            }
        }
        Output::Discard => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    let mut child = cmd.spawn().map_err(HookError::Spawn)?;
    let group = child.id().and_then(|id| i32::try_from(id).ok());
    let mut stdin = child.stdin.take();
    let finished = tokio::time::timeout(limit, async {
        if let Some(pipe) = stdin.as_mut() {
            // A command that exits without reading its input is not an error of the hook's.
            let _ = pipe.write_all(input).await;
        }
        drop(stdin.take());
        child.wait().await
    })
    .await;
    match finished {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(HookError::Failed(status)),
        Ok(Err(e)) => Err(HookError::Wait(e)),
        Err(_) => {
            if let Some(pgid) = group {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pgid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait().await;
            Err(HookError::TimedOut(limit))
        }
    }
}

const HOSTS_BEGIN: &str = "# BEGIN dstack-mesh (managed by p2p-agent)";
const HOSTS_END: &str = "# END dstack-mesh";

/// Replaces the marked block of `path` with one `overlay-ip node-<token>.<suffix>` line per member, keeping
/// every other line.
pub fn hosts_block(existing: &str, members: &[(u64, Ipv4Addr)], suffix: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in existing.lines() {
        if line == HOSTS_BEGIN {
            inside = true;
        } else if line == HOSTS_END {
            inside = false;
        } else if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(HOSTS_BEGIN);
    out.push('\n');
    for (token, ip) in members {
        out.push_str(&format!("{ip}\tnode-{token}.{suffix}\n"));
    }
    out.push_str(HOSTS_END);
    out.push('\n');
    out
}

/// Keeps `path`'s marked block in step with `members`, written atomically.
///
/// # Errors
/// When the file cannot be read or replaced.
pub fn write_hosts(path: &Path, members: &Members, suffix: &str) -> anyhow::Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let entries: Vec<(u64, Ipv4Addr)> = members
        .values()
        .map(|m| (m.token_id, m.overlay_ip))
        .collect();
    let text = hosts_block(&existing, &entries, suffix);
    let tmp = path.with_extension("dstack-mesh.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: i32) -> bool {
        // A killed process whose parent is gone may linger as a zombie until it is reaped: that is dead.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                let state = s.rsplit(')').next().unwrap_or("").trim_start();
                !state.starts_with('Z')
            })
            .unwrap_or(false)
    }

    /// A hook that never reads its input, with more input than a pipe holds, is killed at the limit
    /// together with what it started, instead of blocking the write forever.
    #[tokio::test]
    async fn a_hook_that_never_reads_stdin_is_killed_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let command = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
        let input = vec![b'x'; 4 << 20];
        let started = std::time::Instant::now();
        let err = run(&command, &input, Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(matches!(err, HookError::TimedOut(_)), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while alive(pid) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(pid), "the hook's child {pid} outlived it");
    }

    /// The input arrives whole, and a failing hook is reported with its exit status.
    #[tokio::test]
    async fn input_arrives_and_failures_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let command = format!("cat > {}", out.display());
        run(&command, b"[1,2,3]", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "[1,2,3]");
        let err = run("exit 3", b"", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("exit status: 3"), "{err}");
    }

    /// The managed block is replaced in place; the rest of the hosts file is kept.
    #[test]
    fn hosts_block_replaces_only_its_own_lines() {
        let existing = "127.0.0.1 localhost\n# BEGIN dstack-mesh (managed by p2p-agent)\n10.0.1.9\tnode-9.mesh\n# END dstack-mesh\n::1 ip6-localhost\n";
        let out = hosts_block(existing, &[(2, Ipv4Addr::new(10, 0, 1, 2))], "mesh");
        assert_eq!(
            out,
            "127.0.0.1 localhost\n::1 ip6-localhost\n# BEGIN dstack-mesh (managed by p2p-agent)\n10.0.1.2\tnode-2.mesh\n# END dstack-mesh\n"
        );
        assert_eq!(
            hosts_block(&out, &[(2, Ipv4Addr::new(10, 0, 1, 2))], "mesh"),
            out,
            "idempotent"
        );
    }
}
