//! Containers, for the compose scenario: docker and docker-compose, each call bounded, and every network,
//! container, project and volume a test makes removed when its guard drops, on success and on panic.
//!
//! The images come from `scripts/image --local --test-images` (which `scripts/test` runs): the mesh
//! image assembled from release builds as `deploy/Dockerfile` describes it, and anvil's and a busybox
//! app's. The daemon is Debian's `docker.io` (`scripts/dockerd` starts it).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::run::process::{clean_env, run_command_timeout, text};

/// The mesh image `scripts/image --local` assembles.
pub const MESH_IMAGE: &str = "dstack-mesh:local";
/// anvil, from the npm package's binary.
pub const ANVIL_IMAGE: &str = "dstack-mesh-test/anvil:local";
/// busybox (sh, wget, id) and iputils' ping, as uid 999 (as Postgres runs).
pub const APP_IMAGE: &str = "dstack-mesh-test/app:local";

/// How long one docker or compose call may take.
const CALL: Duration = Duration::from_secs(240);

/// Fails the test (never skips) unless a docker daemon answers, docker-compose runs, and the images exist;
/// says what to run for each.
pub fn require_container_runtime() {
    let info = docker_output(&["info", "--format", "{{.ServerVersion}}"]);
    assert!(
        info.status.success(),
        "the compose scenario needs a running docker daemon: apt-get install docker.io docker-compose, then \
         scripts/dockerd (or run scripts/test, which does both); docker info said: {}",
        text(&info)
    );
    let mut version = compose_command(Path::new("."), "version-check", &[]);
    version.arg("version");
    let compose = run_command_timeout(version, "docker-compose version", CALL);
    assert!(
        compose.status.success(),
        "the compose scenario needs docker-compose: apt-get install docker-compose; it said: {}",
        text(&compose)
    );
    for image in [MESH_IMAGE, ANVIL_IMAGE, APP_IMAGE] {
        let found = docker_output(&["image", "inspect", "--format", "{{.Id}}", image]);
        assert!(
            found.status.success(),
            "the compose scenario needs image {image}: run scripts/image --local --test-images (after \
             scripts/bootstrap); docker said: {}",
            text(&found)
        );
    }
}

/// `docker <args>`, whatever its status, bounded.
pub fn docker_output(args: &[&str]) -> Output {
    let mut cmd = Command::new("docker");
    clean_env(&mut cmd).args(args);
    run_command_timeout(cmd, &format!("docker {}", args.join(" ")), CALL)
}

/// `docker <args>`, which must succeed; its stdout, trimmed.
pub fn docker(args: &[&str]) -> String {
    let out = docker_output(args);
    assert!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// An internal bridge network (no route out of it) with a /24 of its own; removed on drop.
pub struct Network {
    pub name: String,
    prefix: [u8; 3],
}

impl Network {
    /// Creates `name` on 198.18.`third`.0/24 (the benchmarking range, RFC 2544: never routed).
    pub fn create(name: &str, third: u8) -> Self {
        let prefix = [198, 18, third];
        let subnet = format!("198.18.{third}.0/24");
        docker(&[
            "network",
            "create",
            "--internal",
            "--driver",
            "bridge",
            "--subnet",
            &subnet,
            "--label",
            "dstack-mesh-test=1",
            name,
        ]);
        Self {
            name: name.to_owned(),
            prefix,
        }
    }

    /// Host `host`'s address on it.
    pub fn ip(&self, host: u8) -> Ipv4Addr {
        let [a, b, c] = self.prefix;
        Ipv4Addr::new(a, b, c, host)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let out = docker_output(&["network", "rm", &self.name]);
        if !out.status.success() {
            eprintln!("cannot remove network {}: {}", self.name, text(&out));
        }
    }
}

/// A container started with `docker run -d`; removed with its anonymous volumes on drop.
pub struct Container {
    pub name: String,
}

impl Container {
    /// `docker run -d --name <name> <args>`.
    pub fn run(name: &str, args: &[&str]) -> Self {
        let mut all = vec!["run", "-d", "--name", name, "--label", "dstack-mesh-test=1"];
        all.extend_from_slice(args);
        docker(&all);
        Self {
            name: name.to_owned(),
        }
    }

    /// Its logs, for a failure message.
    pub fn logs(&self) -> String {
        logs(&self.name)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker_output(&["rm", "-f", "-v", &self.name]);
    }
}

/// A container's last log lines, stdout and stderr.
pub fn logs(container: &str) -> String {
    let out = docker_output(&["logs", "--tail", "60", container]);
    format!(
        "--- docker logs {container}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A compose project: the files, the project name and the variables it is interpolated with. `down -v` on
/// drop removes its containers, networks and volumes.
pub struct Project {
    pub name: String,
    dir: PathBuf,
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
}

fn compose_command(dir: &Path, project: &str, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new("docker-compose");
    clean_env(&mut cmd)
        .current_dir(dir)
        .env("COMPOSE_PROJECT_NAME", project)
        // docker-compose prints progress with ANSI codes unless told otherwise.
        .env("COMPOSE_INTERACTIVE_NO_CLI", "1")
        // Without HOME, `docker-compose run` exits 0 and loses the container's output (docker-compose 1.29).
        .env(
            "HOME",
            std::env::var_os("HOME").unwrap_or_else(|| std::env::temp_dir().into_os_string()),
        )
        .arg("--no-ansi");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

impl Project {
    /// A project of `files` (the first one's directory is the project directory), with `env`.
    pub fn new(name: &str, files: &[PathBuf], env: Vec<(String, String)>) -> Self {
        let dir = files[0]
            .parent()
            .expect("a compose file has a directory")
            .to_owned();
        Self {
            name: name.to_owned(),
            dir,
            files: files.to_vec(),
            env,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = compose_command(&self.dir, &self.name, &self.env);
        for f in &self.files {
            cmd.arg("-f").arg(f);
        }
        cmd.args(args);
        cmd
    }

    /// `docker-compose -f … <args>`, whatever its status.
    pub fn compose_output(&self, args: &[&str]) -> Output {
        let cmd = self.command(args);
        run_command_timeout(
            cmd,
            &format!("docker-compose -p {} {}", self.name, args.join(" ")),
            CALL,
        )
    }

    /// `docker-compose -f … <args>`, which must succeed; its stdout, trimmed.
    pub fn compose(&self, args: &[&str]) -> String {
        let out = self.compose_output(args);
        assert!(
            out.status.success(),
            "docker-compose -p {} {} failed: {}\n{}",
            self.name,
            args.join(" "),
            text(&out),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A one-off `service` container running `args` to its end; its stdout, which must be all of it.
    ///
    /// Not `docker-compose run` attached: docker-compose 1.29 attaches after starting the container and
    /// can lose the start of the output, or all of it, and still exit 0 (seen under load: a binding that
    /// began mid-number). Started detached, the container's whole output is in its log, read once it has
    /// exited; `-T` keeps stderr out of stdout.
    pub fn run_to_end(&self, service: &str, args: &[&str]) -> String {
        let name = format!("{}-{service}-run", self.name);
        let mut all = vec!["run", "-d", "-T", "--name", name.as_str(), service];
        all.extend_from_slice(args);
        self.compose(&all);
        let status = docker_output(&["wait", &name]);
        let out = docker_output(&["logs", &name]);
        let _ = docker_output(&["rm", "-f", &name]);
        let code = String::from_utf8_lossy(&status.stdout).trim().to_owned();
        assert!(
            status.status.success() && code == "0" && out.status.success(),
            "docker-compose -p {} run {service} {} exited with {code:?}: {}\n{}",
            self.name,
            args.join(" "),
            text(&status),
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The container of `service`.
    pub fn container(&self, service: &str) -> String {
        let id = self.compose(&["ps", "-q", service]);
        assert!(
            !id.is_empty(),
            "project {} has no {service} container",
            self.name
        );
        id
    }

    /// `docker exec <service's container> <args>`, whatever its status.
    pub fn exec(&self, service: &str, args: &[&str]) -> Output {
        let id = self.container(service);
        let mut all = vec!["exec", id.as_str()];
        all.extend_from_slice(args);
        docker_output(&all)
    }

    /// Every service's last log lines.
    pub fn logs(&self) -> String {
        let cmd = self.command(&["logs", "--no-color", "--tail", "60"]);
        let out = run_command_timeout(cmd, "docker-compose logs", CALL);
        format!(
            "--- docker-compose -p {} logs:\n{}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let out = self.compose_output(&["down", "-v", "--remove-orphans", "-t", "5"]);
        if !out.status.success() {
            eprintln!("cannot take down project {}: {}", self.name, text(&out));
        }
    }
}
