//! Stamps the git revision into the binary for `confab --version` and the
//! `confab_build_info` metric. Outside a git checkout (a source tarball, a
//! Docker build without .git) it says "unknown"; CONFAB_GIT_REVISION in the
//! environment wins, for packagers.
//!
//! Only files that exist are watched: cargo treats a missing
//! `rerun-if-changed` path as always changed and would rebuild the crate on
//! every `cargo build`. `.git` may be a directory, or a file saying
//! `gitdir: …` (git worktrees, submodules).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=CONFAB_GIT_REVISION");
    let from_env = std::env::var("CONFAB_GIT_REVISION")
        .ok()
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    let revision = from_env
        .or_else(|| {
            let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
            let git = GitDir::find(&manifest_dir)?;
            for path in git.watched() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
            git_head(&manifest_dir)
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=CONFAB_GIT_REVISION={revision}");
}

/// Where a checkout keeps HEAD (`git_dir`) and its refs (`common_dir`; the
/// main repository's .git for a worktree).
struct GitDir {
    git_dir: PathBuf,
    common_dir: PathBuf,
}

impl GitDir {
    /// The `.git` of `start` or of its nearest ancestor that has one.
    fn find(start: &Path) -> Option<GitDir> {
        let dot_git = start
            .ancestors()
            .map(|dir| dir.join(".git"))
            .find(|p| p.exists())?;
        let git_dir = if dot_git.is_dir() {
            dot_git
        } else {
            // A worktree or submodule: `gitdir: <path>`, relative to the file.
            let text = std::fs::read_to_string(&dot_git).ok()?;
            let target = text.lines().find_map(|l| l.strip_prefix("gitdir:"))?.trim();
            let base = dot_git.parent()?;
            base.join(target)
        };
        if !git_dir.join("HEAD").is_file() {
            return None;
        }
        // A worktree's refs live in the main repository (`commondir`).
        let common_dir = std::fs::read_to_string(git_dir.join("commondir"))
            .ok()
            .map(|c| git_dir.join(c.trim()))
            .filter(|c| c.is_dir())
            .unwrap_or_else(|| git_dir.clone());
        Some(GitDir {
            git_dir,
            common_dir,
        })
    }

    /// HEAD, the ref it points to (or, while that ref is only packed, the
    /// directory its loose file would appear in), and packed-refs: each only
    /// if it exists. Not all of refs/: other branches moving is no reason to
    /// rebuild (and worktrees share refs/ with every other checkout).
    fn watched(&self) -> Vec<PathBuf> {
        let head = self.git_dir.join("HEAD");
        let mut paths = vec![head.clone()];
        let branch = std::fs::read_to_string(&head).ok().and_then(|h| {
            h.trim()
                .strip_prefix("ref:")
                .map(|r| PathBuf::from(r.trim()))
        });
        if let Some(branch) = branch {
            // Per-worktree refs (rare) live in git_dir; branches in common_dir.
            let loose = [&self.git_dir, &self.common_dir]
                .iter()
                .map(|d| d.join(&branch))
                .find(|p| p.is_file());
            match loose {
                Some(file) => paths.push(file),
                None => {
                    if let Some(parent) = self.common_dir.join(&branch).parent() {
                        if parent.is_dir() {
                            paths.push(parent.to_path_buf());
                        }
                    }
                }
            }
        }
        for shared in ["packed-refs", "reftable"] {
            let path = self.common_dir.join(shared);
            if path.exists() {
                paths.push(path);
            }
        }
        paths.dedup();
        paths
    }
}

/// `git rev-parse --short=12 HEAD`, or None without git or a commit.
fn git_head(dir: &Path) -> Option<String> {
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}
