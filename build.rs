//! Stamps the git revision into the binary for `confab --version` and the
//! `confab_build_info` metric. Outside a git checkout (a source tarball, a
//! Docker build without .git) it says "unknown"; CONFAB_GIT_REVISION in the
//! environment wins, for packagers.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=CONFAB_GIT_REVISION");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs");
    println!("cargo:rerun-if-changed=.git/packed-refs");
    let revision = std::env::var("CONFAB_GIT_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(|| {
            Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=CONFAB_GIT_REVISION={revision}");
}
