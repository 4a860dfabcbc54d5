//! Helpers shared by the end-to-end tests: a temporary state directory, running the
//! `atrest` binary, a served `atrest` process that is stopped (and checked) at the end,
//! and (from [`system`]) the `require_*` checks that skip a system test whose real
//! client, root or venv is missing, or fail it under `ATREST_REQUIRE_SYSTEM_TESTS=1`.
// Each test crate uses its own subset of these helpers.
#![allow(dead_code)]

pub mod system;
#[allow(unused_imports)] // Each test crate uses its own subset.
pub use system::{
    nbdsh_needs_system_python, require_nbdsh, require_python3_imports, require_root, require_tools,
    require_venv, venv_dir, venv_missing,
};

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

/// nbdfuse's option for single-threaded FUSE operations, given to every nbdfuse the
/// tests start. nbdfuse 1.14 (Debian 12) counts a command in flight only after
/// issuing it, so with several FUSE threads a fast reply can complete before it is
/// counted and nbdfuse aborts (`completion_callback: Assertion
/// completion->thread->in_flight >= 1 failed`, seen once over TLS); one FUSE thread
/// never has a second command racing the count.
pub const NBDFUSE_SINGLE_THREADED: &str = "-s";

/// How long a server may take to start listening (first run creates a key and a volume).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A fresh, private `ATREST_HOME` (and scratch space) removed when dropped.
pub struct Home {
    dir: TempDir,
}

impl Home {
    pub fn new() -> Home {
        Home {
            dir: tempfile::Builder::new()
                .prefix("atrest-e2e-")
                .tempdir()
                .expect("creating a temporary home"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the home for test files.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A self-signed certificate for 127.0.0.1 and its key, made by openssl in this home.
    pub fn self_signed_cert(&self) -> (PathBuf, PathBuf) {
        let (cert, tls_key) = (self.file("server-cert.pem"), self.file("server-key.pem"));
        let made = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .arg("-keyout")
            .arg(&tls_key)
            .arg("-out")
            .arg(&cert)
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .output()
            .expect("running openssl");
        assert_success("openssl req", &made);
        (cert, tls_key)
    }

    /// The `atrest` binary with this home and no inherited `ATREST_*` settings.
    pub fn atrest(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_atrest"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ATREST_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("ATREST_HOME", self.path());
        cmd
    }

    /// Runs `atrest ARGS` and returns its stdout; panics with its stderr on failure.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.atrest().args(args).output().expect("running atrest");
        assert_success(&format!("atrest {}", args.join(" ")), &out);
        String::from_utf8(out.stdout).expect("atrest printed UTF-8")
    }

    /// Starts `atrest ARGS` (a serving command) and waits for `listening on ADDR`.
    pub fn serve(&self, args: &[&str]) -> Served {
        Served::start(self.atrest().args(args))
    }

    /// Starts `atrest ARGS` with extra environment variables, waiting as [`Home::serve`].
    pub fn serve_env(&self, env: &[(&str, &str)], args: &[&str]) -> Served {
        Served::start(self.atrest().envs(env.iter().copied()).args(args))
    }

    /// `atrest serve --listen 127.0.0.1:0`: the zero-config default volume.
    pub fn serve_default(&self) -> Served {
        self.serve(&["serve", "--listen", "127.0.0.1:0"])
    }
}

/// Panics unless the command succeeded, showing what it printed.
pub fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command to completion, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_success(&what, &out);
    out
}

/// `nbdsh` (python3-libnbd); the test has checked [`require_nbdsh`]. Debian installs
/// the `nbd` module for the system Python, which may not be the first `python3` on
/// PATH (pyenv and the like), so the PATH is arranged for the interpreter that can
/// import it.
pub fn nbdsh() -> Command {
    let system_python = nbdsh_needs_system_python().expect(
        "nbdsh needs the python3 `nbd` module (python3-libnbd); install it with scripts/install-test-deps.sh",
    );
    let path = std::env::var("PATH").unwrap_or_default();
    let mut cmd = Command::new("nbdsh");
    if system_python {
        cmd.env("PATH", format!("/usr/bin:{path}"));
    }
    cmd
}

/// A running `atrest` server. Dropping it kills the process; [`Served::stop`] asks it
/// to shut down with SIGTERM and checks that it exits 0.
pub struct Served {
    child: Option<Child>,
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Served {
    fn start(cmd: &mut Command) -> Served {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (found, listening) = mpsc::channel();
        let collected = Arc::clone(&log);
        thread::spawn(move || {
            let mut found = Some(found);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    if let (Some(tx), Ok(addr)) = (found.take(), addr.trim().parse::<SocketAddr>())
                    {
                        let _ = tx.send(addr);
                    }
                }
                let mut log = collected.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        match listening.recv_timeout(START_TIMEOUT) {
            Ok(addr) => Served {
                child: Some(child),
                addr,
                stderr: log,
            },
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                thread::sleep(Duration::from_millis(100));
                panic!(
                    "{what} never printed `listening on` ({status:?}); stderr:\n{}",
                    log.lock().unwrap()
                );
            }
        }
    }

    /// `nbd://ADDR/EXPORT`
    pub fn uri(&self, export: &str) -> String {
        format!("nbd://{}/{export}", self.addr)
    }

    /// What the server printed so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, then waits; the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
        child.wait().expect("waiting for atrest")
    }

    /// SIGTERM and checks the clean exit the server promises.
    pub fn stop(self) {
        let stderr = Arc::clone(&self.stderr);
        let status = self.terminate();
        thread::sleep(Duration::from_millis(50));
        assert!(
            status.success(),
            "atrest exited with {status} after SIGTERM; stderr:\n{}",
            stderr.lock().unwrap()
        );
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Bytes of the file actually allocated on disk (st_blocks * 512).
pub fn allocated_bytes(path: &Path) -> u64 {
    let out = run(Command::new("stat").args(["-c", "%b %B"]).arg(path));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text
        .split_whitespace()
        .map(|f| f.parse::<u64>().expect("stat output"));
    let (blocks, unit) = (fields.next().expect("blocks"), fields.next().expect("unit"));
    blocks * unit
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Every CMK's material, unsealed from the keystore with the root key as
/// docs/FORMAT.md describes it (`materials[v].sealed` = base64(nonce ‖ AES-256-GCM
/// ciphertext ‖ tag), AAD `atrest cmk material v1` ‖ key uuid ‖ v as u32 LE).
pub fn unseal_cmk_material(home: &Path, root_key: &[u8]) -> Vec<Vec<u8>> {
    use aes_gcm::aead::{AeadInOut, KeyInit};
    use aes_gcm::{Aes256Gcm, Nonce};
    use base64::Engine;

    let text = std::fs::read_to_string(home.join("kms/keystore.json")).expect("keystore");
    let (_, body) = text.split_once('\n').expect("keystore header line");
    let store: serde_json::Value = serde_json::from_str(body).expect("keystore body");
    let cipher = Aes256Gcm::new_from_slice(root_key).expect("32-byte root key");
    let mut materials = Vec::new();
    for (id, key) in store["keys"].as_object().expect("keys") {
        let uuid: Vec<u8> = (0..32)
            .step_by(2)
            .map(|i| {
                let hex_digits = id.replace('-', "");
                u8::from_str_radix(&hex_digits[i..i + 2], 16).expect("uuid hex")
            })
            .collect();
        for (version, material) in key["materials"]
            .as_array()
            .expect("materials")
            .iter()
            .enumerate()
        {
            let sealed = base64::engine::general_purpose::STANDARD
                .decode(material["sealed"].as_str().expect("sealed"))
                .expect("base64");
            let (nonce, rest) = sealed.split_at(12);
            let (ciphertext, tag) = rest.split_at(rest.len() - 16);
            let mut aad = b"atrest cmk material v1".to_vec();
            aad.extend_from_slice(&uuid);
            aad.extend_from_slice(&u32::try_from(version).expect("version").to_le_bytes());
            let mut plain = ciphertext.to_vec();
            let nonce: [u8; 12] = nonce.try_into().expect("nonce");
            cipher
                .decrypt_inout_detached(
                    &Nonce::from(nonce),
                    &aad,
                    plain.as_mut_slice().into(),
                    tag.try_into().expect("tag"),
                )
                .expect("the keystore's material unseals as documented");
            assert_eq!(plain.len(), 32);
            materials.push(plain);
        }
    }
    materials
}

/// Every way a secret could be spelt in text or bytes.
pub fn spellings(secret: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine;
    vec![
        secret.to_vec(),
        base64::engine::general_purpose::STANDARD
            .encode(secret)
            .into_bytes(),
        hex(secret).into_bytes(),
        hex(secret).to_uppercase().into_bytes(),
        format!("{secret:?}").into_bytes(),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.len() <= haystack.len() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A program of the test venv (boto3, the aws CLI, moto): `$ATREST_TEST_VENV`, else
/// `.venv-test` in the repository, made by scripts/install-test-deps.sh. The test has
/// checked [`require_test_venv`].
pub fn venv_bin(name: &str) -> PathBuf {
    let path = venv_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .join("bin")
        .join(name);
    assert!(path.exists(), "{}", venv_missing(&path));
    path
}

/// `true` when the test venv has every program in `names` (`python`, `aws`,
/// `moto_server`); otherwise the skip decision (see [`system`]).
#[must_use = "a test returns early when this is false"]
pub fn require_test_venv(names: &[&str]) -> bool {
    require_venv(Path::new(env!("CARGO_MANIFEST_DIR")), names)
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// The trail records of `event` in `home`, most recent first, as stored.
pub fn trail_records(home: &Home, event: &str) -> Vec<serde_json::Value> {
    let out = home.run(&["trail", "lookup", "--event-name", event]);
    let answer: serde_json::Value = serde_json::from_str(&out).expect("trail lookup prints JSON");
    answer["Events"]
        .as_array()
        .expect("Events")
        .iter()
        .map(|e| {
            let text = e["CloudTrailEvent"].as_str().expect("CloudTrailEvent");
            serde_json::from_str(text).expect("CloudTrailEvent is JSON")
        })
        .collect()
}
