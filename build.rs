//! Names the commit a binary was built from, for `--version` and `spdk_get_version`: the
//! short hash from git; `NVMF_TGT_COMMIT` in the environment wins (a package built from a
//! tarball has no git); "unknown" otherwise. Uncommitted edits are not noticed: watching the
//! index would rebuild the crate at every `git status`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=NVMF_TGT_COMMIT");
    // A checkout moves HEAD, a commit its branch.
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let commit = std::env::var("NVMF_TGT_COMMIT")
        .ok()
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]));
    println!(
        "cargo:rustc-env=NVMF_TGT_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
}
