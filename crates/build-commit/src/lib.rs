//! The commit a binary is built from, so that `--version` says which code runs: a build script calls
//! [`emit`], and the binary reads `env!("DSTACK_MESH_COMMIT")`.
//!
//! The commit comes from `DSTACK_MESH_COMMIT` when the build sets it (a source tarball, an image built
//! without `.git`), else from git, else it is `unknown`.

use std::path::Path;
use std::process::Command;

/// The version and the commit, for clap's `#[command(version = build_commit::version!())]`: expanded in
/// the binary's crate, whose build script ran [`emit`].
#[macro_export]
macro_rules! version {
    () => {
        concat!(
            env!("CARGO_PKG_VERSION"),
            " (commit ",
            env!("DSTACK_MESH_COMMIT"),
            ")"
        )
    };
}

/// The variable, at build time and in the binary.
pub const VARIABLE: &str = "DSTACK_MESH_COMMIT";

/// Sets `DSTACK_MESH_COMMIT` for the crate being built, and asks cargo to run the build script again when
/// the checkout moves to another commit.
pub fn emit() {
    println!("cargo:rerun-if-env-changed={VARIABLE}");
    let given = std::env::var(VARIABLE)
        .ok()
        .filter(|c| !c.trim().is_empty());
    let commit = given
        .or_else(|| {
            let dir = std::env::var("CARGO_MANIFEST_DIR").ok()?;
            from_git(Path::new(&dir))
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env={VARIABLE}={commit}");
}

/// HEAD's short hash, watching the files that change when HEAD moves (HEAD itself, the branch it names,
/// and packed refs).
fn from_git(dir: &Path) -> Option<String> {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for watched in ["HEAD", "packed-refs"]
        .into_iter()
        .map(str::to_owned)
        .chain(branch)
    {
        // Only files that exist: cargo takes a missing one as changed, and would run the script, and build
        // the binary again, at every build. (A branch's ref that gets packed disappears, which is a change,
        // and then packed-refs exists to be watched.)
        if let Some(path) = git(&[
            "rev-parse",
            "--path-format=absolute",
            "--git-path",
            &watched,
        ])
        .filter(|p| Path::new(p).exists())
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    Some(commit)
}
