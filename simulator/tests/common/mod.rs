//! Test harness: simulator processes on sockets in a temp dir, killed by PID when dropped, and a raw
//! HTTP helper for requests the agent's client never makes (GET, non-JSON POST).

#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a simulator may take to start answering.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A fixed KMS root key for fresh-cluster tests.
pub const ROOT_KEY: &str = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";
/// An app id for fresh-cluster tests.
pub const APP_ID: &str = "00112233445566778899aabbccddeeff00112233";

/// A running `dstack-simulator`; killed (by its PID) and reaped on drop.
pub struct Sim {
    child: Option<Child>,
    pub socket: PathBuf,
    stderr: PathBuf,
}

impl Sim {
    /// Starts a simulator on `dir/<name>.sock` with `args` and waits until it answers.
    pub fn start(dir: &Path, name: &str, args: &[&str]) -> Self {
        let mut sim = Self::spawn(dir, name, args);
        sim.wait_ready();
        sim
    }

    /// Starts a simulator without waiting.
    pub fn spawn(dir: &Path, name: &str, args: &[&str]) -> Self {
        let socket = dir.join(format!("{name}.sock"));
        Self::spawn_on(dir, name, &socket, args)
    }

    /// Starts a simulator on an explicit socket path without waiting.
    pub fn spawn_on(dir: &Path, name: &str, socket: &Path, args: &[&str]) -> Self {
        let stderr = dir.join(format!("{name}.stderr"));
        let child = Command::new(env!("CARGO_BIN_EXE_dstack-simulator"))
            .arg("--socket")
            .arg(socket)
            .args(args)
            .env("RUST_LOG", "debug")
            .env_remove("DSTACK_MESH_SIM_FIXTURE")
            .env_remove("DSTACK_MESH_SIM_KMS_ROOT_KEY")
            .env_remove("DSTACK_SIM_FIXTURE")
            .env_remove("DSTACK_SIM_KMS_ROOT_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("create stderr file"))
            .spawn()
            .expect("spawn dstack-simulator");
        Self {
            child: Some(child),
            socket: socket.to_owned(),
            stderr,
        }
    }

    /// Waits until the socket accepts connections; panics naming what did not happen.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "dstack-simulator exited ({status}) before serving {}:\n{}",
                    self.socket.display(),
                    self.stderr()
                );
            }
            if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dstack-simulator did not serve {} within {START_TIMEOUT:?}:\n{}",
                self.socket.display(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "dstack-simulator did not exit within {timeout:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM (by PID) and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
        self.wait_exit(Duration::from_secs(10))
    }

    /// The simulator's log so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors are ignored: the process may already have exited, and panicking in drop helps no one.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends one raw HTTP/1.1 request over the socket and returns (status, body).
pub fn raw_request(socket: &Path, request: &str) -> (u16, String) {
    let mut stream = UnixStream::connect(socket).expect("connect to simulator");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set timeout");
    stream.write_all(request.as_bytes()).expect("write request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("read response (Connection: close) within 10 s");
    let response = String::from_utf8(response).expect("utf-8 response");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, body.to_owned())
}

/// A GET with `Connection: close`.
pub fn get(socket: &Path, path_and_query: &str) -> (u16, String) {
    raw_request(
        socket,
        &format!("GET {path_and_query} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
    )
}

/// A POST with the given content type and body, `Connection: close`.
pub fn post(socket: &Path, path: &str, content_type: &str, body: &str) -> (u16, String) {
    raw_request(
        socket,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}
