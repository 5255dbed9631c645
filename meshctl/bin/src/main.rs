//! `meshctl`: the operator CLI of a dstack-mesh cluster. Everything but the commit in `--version` is in its
//! library (`meshctl`).

use std::process::ExitCode;

#[allow(unsafe_code)]
fn main() -> ExitCode {
    // SAFETY: first in `main`, before the runtime or any other thread exists.
    unsafe { meshctl::main(build_commit::version!()) }
}
