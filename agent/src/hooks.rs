//! Telling the rest of the CVM about peer-set changes: the `--on-change` command.
//!
//! The command runs under `sh -c` in its own process group, with the peer list as JSON on stdin and a
//! cleaned environment: only what a shell needs (`PATH`, `HOME`, locale, time zone), never the agent's
//! transaction key, RPC credentials or other settings. Writing stdin counts against the time limit, so a
//! command that never reads it is killed with everything it started, not left behind.

use std::os::fd::AsFd as _;
use std::process::Stdio;
use std::time::Duration;

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
    // Its output goes to the agent's log (stderr); stdout is where the agent prints registrations to relay.
    if let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() {
        cmd.stdout(Stdio::from(fd));
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
}
