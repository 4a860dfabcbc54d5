//! The skip rule of the system tests (the ones that need a real client, root or the
//! test venv). On a developer machine a test whose needs are missing prints one line to
//! stderr saying what is missing and returns early; with `ATREST_REQUIRE_SYSTEM_TESTS=1`
//! (scripts/test.sh sets it, and so the CI) anything missing is a failure instead.
//!
//! Each `require_*` function returns the decision: `true` when the test can run,
//! `false` when it is to be skipped (after the line). A test begins with
//! `if !require_tools(&["nbdinfo"]) { return; }`.
//!
//! Only std is used, so other crates' tests can include this file with `#[path]`.
// Each test crate uses its own subset of these helpers.
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The environment variable that turns a skip into a failure (any value but empty or
/// `0`).
pub const REQUIRE_SYSTEM_TESTS: &str = "ATREST_REQUIRE_SYSTEM_TESTS";

/// Whether a missing tool, root or venv fails the test instead of skipping it.
pub fn system_tests_required() -> bool {
    std::env::var_os(REQUIRE_SYSTEM_TESTS).is_some_and(|value| !value.is_empty() && value != "0")
}

/// The decision when something is missing: with [`REQUIRE_SYSTEM_TESTS`] a panic
/// with `failure`, else one `skipped` line on stderr naming the test and `missing`,
/// and `false`. The line is written to the stderr file descriptor, not through
/// `eprintln!`, so the test harness does not capture it.
fn skip(missing: &str, failure: &str) -> bool {
    assert!(!system_tests_required(), "{failure}");
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("system test");
    let _ = writeln!(
        std::io::stderr(),
        "skipped {test}: {missing} ({REQUIRE_SYSTEM_TESTS}=1 makes this a failure)"
    );
    false
}

/// Whether `name` is a program on PATH.
pub fn on_path(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `true` when every program in `names` is on PATH; otherwise the skip decision,
/// naming all the missing ones.
#[must_use = "a test returns early when this is false"]
pub fn require_tools(names: &[&str]) -> bool {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| !on_path(name))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let list = missing.join(", ");
    skip(
        &format!("{list} not on PATH"),
        &format!("{list} is required by this test; install it with scripts/install-test-deps.sh"),
    )
}

/// `true` when the test runs as root (loop devices, mounts, mount namespaces);
/// otherwise the skip decision.
#[must_use = "a test returns early when this is false"]
pub fn require_root() -> bool {
    // /proc/self belongs to the effective user of the process.
    let root = std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0);
    root || skip(
        "needs root (loop devices and mounts)",
        "this test needs root (loop devices and mounts): run it as root",
    )
}

/// Whether `python` can `import nbd` (python3-libnbd).
fn imports_nbd(python: &str) -> bool {
    Command::new(python)
        .args(["-c", "import nbd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether the `python3` first on PATH cannot import `nbd` but `/usr/bin/python3`
/// can, so nbdsh needs `/usr/bin` first on its PATH; `None` when neither can.
pub fn nbdsh_needs_system_python() -> Option<bool> {
    if imports_nbd("python3") {
        Some(false)
    } else if imports_nbd("/usr/bin/python3") {
        Some(true)
    } else {
        None
    }
}

/// `true` when the `python3` on PATH can import every module in `modules`
/// (requirements-test.txt); otherwise the skip decision.
#[must_use = "a test returns early when this is false"]
pub fn require_python3_imports(modules: &[&str]) -> bool {
    let missing: Vec<&str> = modules
        .iter()
        .copied()
        .filter(|module| {
            !Command::new("python3")
                .args(["-c", &format!("import {module}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let list = missing.join(", ");
    skip(
        &format!("python3 cannot import {list}"),
        &format!(
            "python3 must import {list}: install requirements-test.txt with scripts/install-test-deps.sh"
        ),
    )
}

/// `true` when `nbdsh` and the python3 `nbd` module it runs on are installed;
/// otherwise the skip decision.
#[must_use = "a test returns early when this is false"]
pub fn require_nbdsh() -> bool {
    if !require_tools(&["nbdsh"]) {
        return false;
    }
    nbdsh_needs_system_python().is_some()
        || skip(
            "the python3 nbd module (python3-libnbd) is not installed",
            "nbdsh needs the python3 `nbd` module (python3-libnbd); install it with scripts/install-test-deps.sh",
        )
}

/// The test venv (boto3, the aws CLI, moto): `$ATREST_TEST_VENV`, else `.venv-test`
/// in the repository `repo`, made by scripts/install-test-deps.sh.
pub fn venv_dir(repo: &Path) -> PathBuf {
    std::env::var_os("ATREST_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".venv-test"))
}

/// The message of a venv program that is missing.
pub fn venv_missing(path: &Path) -> String {
    format!(
        "{} is missing: run scripts/install-test-deps.sh (it makes the venv with boto3, \
         awscli and moto[server])",
        path.display()
    )
}

/// `true` when the test venv of `repo` has every program in `names` (`python`, `aws`,
/// `moto_server`); otherwise the skip decision.
#[must_use = "a test returns early when this is false"]
pub fn require_venv(repo: &Path, names: &[&str]) -> bool {
    let bin = venv_dir(repo).join("bin");
    match names.iter().map(|name| bin.join(name)).find(|path| !path.exists()) {
        None => true,
        Some(path) => skip(
            &format!(
                "the test venv has no {} (set ATREST_TEST_VENV or run scripts/install-test-deps.sh)",
                path.display()
            ),
            &venv_missing(&path),
        ),
    }
}
