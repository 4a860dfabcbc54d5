//! A volume whose key lives in a remote key service: `atrest --kms-endpoint URL volume
//! create` and `nbd serve` on one home, the key in another home's `atrest kms serve`
//! (reached over HTTP with SigV4, as AWS KMS would be). Disabling the key there makes
//! the attached connection's reads fail (fail closed) and new attaches be refused;
//! enabling it brings reads back on the same connection.

mod common;
mod lab;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use common::{nbdsh, require_nbdsh, require_tools, Home, Served};
use lab::nbdinfo;
use serde_json::Value;

const REGION: &str = "us-east-1";
/// The errno the server sends while the key is unusable, as libnbd names it.
const EIO: &str = "EIO";

/// The client side's environment: the endpoint and the AWS credentials.
fn remote_env(served: &Served, key: &Value) -> Vec<(String, String)> {
    vec![
        (
            "ATREST_KMS_ENDPOINT".into(),
            format!("http://{}", served.addr),
        ),
        (
            "AWS_ACCESS_KEY_ID".into(),
            key["AccessKeyId"].as_str().unwrap().into(),
        ),
        (
            "AWS_SECRET_ACCESS_KEY".into(),
            key["SecretAccessKey"].as_str().unwrap().into(),
        ),
        ("AWS_REGION".into(), REGION.into()),
    ]
}

/// An nbdsh session on one connection, driven line by line: it writes a sector,
/// then on each `expect-ok` / `expect-error` line polls reads until they succeed or
/// fail, and answers `ok` or `error <errno>`.
const SESSION: &str = r#"
import sys, time
data = bytes(range(256)) * 16
h.pwrite(data, 0)
h.flush()
assert h.pread(4096, 0) == data
print("attached", flush=True)
for line in sys.stdin:
    want = line.strip()
    deadline = time.monotonic() + 60
    while True:
        try:
            got = h.pread(4096, 0)
            outcome = "ok" if got == data else "wrong-data"
        except nbd.Error as e:
            outcome = "error %s" % e.errno
        if (want == "expect-ok") == (outcome == "ok") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    print(outcome, flush=True)
"#;

#[test]
fn a_volume_under_a_remote_key_fails_closed_when_the_key_is_disabled_there() {
    if !(require_nbdsh() && require_tools(&["nbdinfo"])) {
        return;
    }
    // The key service's machine.
    let keys_home = Home::new();
    let created: Value =
        serde_json::from_str(&keys_home.run(&["kms", "create-key", "--alias", "alias/remote"]))
            .unwrap();
    // The key's id: its ARN names the region of whoever asks.
    let key_id = created["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned();
    let access: Value = serde_json::from_str(&keys_home.run(&[
        "iam",
        "create-access-key",
        "--principal",
        "arn:aws:iam::000000000000:root",
    ]))
    .unwrap();
    let kms_server = keys_home.serve_env(
        &[("ATREST_REGION", REGION)],
        &["kms", "serve", "--listen", "127.0.0.1:0"],
    );
    let env = remote_env(&kms_server, &access["AccessKey"]);

    // The volume's machine: no local keys at all.
    let home = Home::new();
    let volume = home.file("remote.vol");
    let out = home
        .atrest()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args([
            "volume",
            "create",
            volume.to_str().unwrap(),
            "--size",
            "16M",
            "--key-id",
            "alias/remote",
        ])
        .output()
        .unwrap();
    common::assert_success("volume create with --kms-endpoint", &out);
    assert!(
        !home.path().join("kms").exists(),
        "the volume's home grew a local keystore"
    );
    let export = format!("remote={}", volume.display());
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let nbd = home.serve_env(
        &env_refs,
        &[
            "nbd",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--export",
            &export,
            "--key-check-interval",
            "200ms",
        ],
    );
    let uri = nbd.uri("remote");

    let mut session = nbdsh()
        .args(["-u", &uri, "-c", SESSION])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting nbdsh");
    let mut to_session = session.stdin.take().unwrap();
    let mut from_session = BufReader::new(session.stdout.take().unwrap());
    let mut say = |line: &str| -> String {
        if !line.is_empty() {
            writeln!(to_session, "{line}").unwrap();
        }
        let mut answer = String::new();
        from_session.read_line(&mut answer).unwrap();
        answer.trim().to_owned()
    };
    assert_eq!(say(""), "attached", "server log:\n{}", nbd.log());

    // Disabled on the remote key service: the open connection's reads fail with EIO.
    keys_home.run(&["kms", "disable-key", "--key-id", "alias/remote"]);
    let answer = say("expect-error");
    assert_eq!(answer, format!("error {EIO}"), "server log:\n{}", nbd.log());
    let (ok, said) = nbdinfo(&uri);
    assert!(
        !ok && said.contains(&key_id) && said.contains("Disabled"),
        "a new attach was not refused naming the key:\n{said}"
    );

    // Enabled again: the same connection reads the same data.
    keys_home.run(&["kms", "enable-key", "--key-id", "alias/remote"]);
    assert_eq!(say("expect-ok"), "ok", "server log:\n{}", nbd.log());
    let (ok, said) = nbdinfo(&uri);
    assert!(ok, "nbdinfo refused after enable-key:\n{said}");

    drop(to_session);
    let status = session.wait().unwrap();
    assert!(status.success(), "nbdsh exited with {status}");
    nbd.stop();

    // The key service's trail shows the volume host's calls, signed as root.
    let trail = keys_home.run(&["trail", "lookup", "--event-name", "Decrypt"]);
    assert!(trail.contains("arn:aws:iam::000000000000:root"), "{trail}");
    let generate = keys_home.run(&[
        "trail",
        "lookup",
        "--event-name",
        "GenerateDataKeyWithoutPlaintext",
    ]);
    assert!(generate.contains("atrest:volume-id"), "{generate}");
    kms_server.stop();
}

#[test]
fn kms_commands_follow_kms_endpoint_and_serve_refuses_it() {
    let keys_home = Home::new();
    let access: Value = serde_json::from_str(&keys_home.run(&[
        "iam",
        "create-access-key",
        "--principal",
        "arn:aws:iam::000000000000:root",
    ]))
    .unwrap();
    let kms_server = keys_home.serve_env(
        &[("ATREST_REGION", REGION)],
        &["kms", "serve", "--listen", "127.0.0.1:0"],
    );
    let env = remote_env(&kms_server, &access["AccessKey"]);
    let home = Home::new();
    let run = |args: &[&str]| {
        home.atrest()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["kms", "create-key", "--alias", "alias/over-http"]);
    common::assert_success("kms create-key --kms-endpoint", &out);
    let listed = keys_home.run(&["kms", "list-aliases"]);
    assert!(listed.contains("alias/over-http"), "{listed}");
    let out = run(&["kms", "serve", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--kms-endpoint"));
    let mut wrong = home.atrest();
    wrong
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .args(["kms", "list-keys"])
        .stdout(Stdio::null());
    let out = wrong.output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("InvalidSignatureException"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    kms_server.stop();
}
