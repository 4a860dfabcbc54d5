//! Issue 18: the web console (`atrest console`), driven in headless Chromium through
//! Selenium (tests/py/console_lab.py): the lab's keys, bucket, object and events
//! steps through the pages, a key user refused on Disable, a markup object key shown
//! as text, a request without the CSRF token refused; then the trail is checked for
//! what the pages did (the user's GenerateDataKey and Decrypt, the refused sign-in).
//! Sessions (cookie flags, idle expiry, sign-out, CSRF) are also checked over raw
//! HTTP.
//!
//! Screenshots go to a temporary directory, or to `ATREST_CONSOLE_SCREENSHOTS` when
//! set (docs/console/ was made that way).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{assert_success, require_test_venv, require_tools, venv_bin, Home, Served};
use serde_json::Value;

const ADMIN_ARN: &str = "arn:aws:iam::000000000000:user/KeyAdmin";
const USER_ARN: &str = "arn:aws:iam::000000000000:user/KeyUser";

struct Key {
    id: String,
    secret: String,
}

fn access_key(home: &Home, principal: &str) -> Key {
    let out = home.run(&["iam", "create-access-key", "--principal", principal]);
    let answer: Value = serde_json::from_str(&out).expect("create-access-key prints JSON");
    Key {
        id: answer["AccessKey"]["AccessKeyId"]
            .as_str()
            .unwrap()
            .to_owned(),
        secret: answer["AccessKey"]["SecretAccessKey"]
            .as_str()
            .unwrap()
            .to_owned(),
    }
}

fn console(home: &Home, extra: &[&str]) -> Served {
    let mut args = vec!["console", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    home.serve(&args)
}

fn trail(home: &Home) -> Vec<Value> {
    let text = std::fs::read_to_string(home.path().join("trail/trail.jsonl")).expect("trail");
    text.lines()
        .map(|line| serde_json::from_str(line).expect("a JSON record"))
        .collect()
}

#[test]
fn the_lab_through_the_console_in_chromium() {
    if !(require_tools(&["chromium", "chromedriver"]) && require_test_venv(&["python"])) {
        return;
    }
    let home = Home::new();
    let admin = access_key(&home, ADMIN_ARN);
    let user = access_key(&home, USER_ARN);
    // The lab's unencrypted root volume (step 6 snapshots and copies it).
    std::fs::create_dir_all(home.path().join("volumes")).unwrap();
    let root = home.path().join("volumes/root.vol");
    home.run(&[
        "volume",
        "create",
        root.to_str().unwrap(),
        "--size",
        "16M",
        "--unencrypted",
    ]);
    // A running NBD server with an exports file serves it as `root` (step 6 swaps
    // the export through the pages).
    let exports = home.file("exports.toml");
    std::fs::write(
        &exports,
        format!(
            "# the lab's exports\n[[export]]\nname = \"root\"\npath = \"{}\"\n\
             description = \"the lab's root volume\"\n",
            root.display()
        ),
    )
    .unwrap();
    let nbd = home.serve(&[
        "nbd",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--exports",
        exports.to_str().unwrap(),
    ]);
    let served = console(&home, &[]);
    let scratch = home.file("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let shots = std::env::var_os("ATREST_CONSOLE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.file("screenshots"));
    std::fs::create_dir_all(&shots).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/console_lab.py");
    let out = Command::new(venv_bin("python"))
        .arg(&script)
        .env("ATREST_CONSOLE", format!("http://{}", served.addr))
        .env("ATREST_ADMIN_ID", &admin.id)
        .env("ATREST_ADMIN_SECRET", &admin.secret)
        .env("ATREST_ADMIN_ARN", ADMIN_ARN)
        .env("ATREST_USER_ID", &user.id)
        .env("ATREST_USER_SECRET", &user.secret)
        .env("ATREST_USER_ARN", USER_ARN)
        .env("ATREST_CONSOLE_SCREENSHOTS", &shots)
        .env("ATREST_CONSOLE_SCRATCH", &scratch)
        .env("HOME", &scratch)
        .env("ATREST_BIN", env!("CARGO_BIN_EXE_atrest"))
        .env("ATREST_HOME", home.path())
        .env("ATREST_NBD", nbd.addr.to_string())
        .env("ATREST_NBD_PID", nbd.pid().to_string())
        .env("ATREST_NBD_EXPORTS", &exports)
        .output()
        .expect("running python");
    assert_success(
        &format!(
            "{} (server log:\n{}\nNBD server log:\n{})",
            script.display(),
            served.log(),
            nbd.log()
        ),
        &out,
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let result: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let key_arn = result["keyArn"].as_str().expect("keyArn").to_owned();
    let log = served.log();
    served.stop();
    // The NBD server served the swapped volume and removes its status file on exit;
    // the planted file of a dead process stays (and was shown as gone).
    let status = home.path().join(format!("run/nbd/{}.json", nbd.pid()));
    assert!(status.exists(), "the running server's status file");
    let nbd_log = nbd.log();
    nbd.stop();
    assert!(!status.exists(), "the status file outlived its server");
    // The server swapped `root` once (to the encrypted copy) and refused the swap to
    // a volume another server was writing, keeping what it served.
    assert_eq!(
        nbd_log.matches("swapped [\"root\"]").count(),
        1,
        "{nbd_log}"
    );
    assert!(
        nbd_log.contains("failed [(\"root\""),
        "the refused swap: {nbd_log}"
    );
    let exports_text = std::fs::read_to_string(&exports).unwrap();
    assert!(
        exports_text.starts_with("# the lab's exports\n"),
        "{exports_text}"
    );
    assert!(exports_text.contains("root-enc.vol"), "{exports_text}");

    let records = trail(&home);
    let by = |name: &str, arn: &str| {
        records
            .iter()
            .filter(|r| r["eventName"] == name && r["userIdentity"]["arn"] == arn)
            .count()
    };
    // The pages acted as their principals, through the API.
    assert!(by("CreateKey", ADMIN_ARN) >= 1, "CreateKey by the admin");
    assert!(
        by("GenerateDataKey", USER_ARN) >= 1,
        "GenerateDataKey by the user"
    );
    assert!(
        by("Decrypt", USER_ARN) >= 2,
        "Decrypt by the user (signed reads)"
    );
    assert!(by("DisableKey", ADMIN_ARN) >= 1, "DisableKey by the admin");
    let refused_disable = records.iter().any(|r| {
        r["eventName"] == "DisableKey"
            && r["userIdentity"]["arn"] == USER_ARN
            && r["errorCode"] == "AccessDeniedException"
    });
    assert!(refused_disable, "the user's refused DisableKey is recorded");
    // The request without a CSRF token never reached the key service: one
    // DisableKey by the admin (the button), not two.
    assert_eq!(by("DisableKey", ADMIN_ARN), 1);
    let refused_sign_in = records.iter().any(|r| {
        r["eventName"] == "ConsoleLogin"
            && r["userIdentity"]["accessKeyId"] == admin.id.as_str()
            && r["errorCode"].is_string()
    });
    assert!(
        refused_sign_in,
        "the wrong secret is recorded as a refused ConsoleLogin"
    );
    // Console calls carry the browser's user agent behind the console's mark.
    assert!(records.iter().any(|r| r["userAgent"]
        .as_str()
        .is_some_and(|ua| ua.starts_with("atrest-console (") && ua.contains("Chrome"))));
    assert!(records.iter().any(|r| r["resources"]
        .as_array()
        .is_some_and(|rs| rs.iter().any(|x| x["ARN"] == key_arn.as_str()))));
    // No secret in the server's log or the trail.
    for secret in [&admin.secret, &user.secret] {
        assert!(!log.contains(secret.as_str()), "a secret in the server log");
        let text = std::fs::read_to_string(home.path().join("trail/trail.jsonl")).unwrap();
        assert!(!text.contains(secret.as_str()), "a secret in the trail");
    }
    assert!(result["screenshots"].as_u64().unwrap() >= 21);
    // The volumes page asked for the key's state as the signed-in user.
    assert!(by("DescribeKey", USER_ARN) >= 1);
    // Sign-ins are recorded: the administrator's and the user's, each as itself.
    let signed_in = |arn: &str| {
        records.iter().any(|r| {
            r["eventName"] == "ConsoleLogin"
                && r["userIdentity"]["arn"] == arn
                && r["errorCode"].is_null()
                && r["responseElements"]["ConsoleLogin"] == "Success"
        })
    };
    assert!(signed_in(ADMIN_ARN) && signed_in(USER_ARN), "ConsoleLogin");
    // The volume actions' KMS calls went through the API as the signed-in user: the
    // data keys of the copy and of the new volume (GenerateDataKeyWithoutPlaintext),
    // the rewrap's ReEncrypt.
    assert!(by("ReEncrypt", USER_ARN) >= 1, "ReEncrypt by the user");
    assert!(
        by("GenerateDataKeyWithoutPlaintext", USER_ARN) >= 2,
        "the copy's and the created volume's data keys"
    );
    // The administrator's copy and swap were refused by the key policy, on record.
    let refused_decrypt = records
        .iter()
        .filter(|r| {
            r["eventName"] == "Decrypt"
                && r["userIdentity"]["arn"] == ADMIN_ARN
                && r["errorCode"] == "AccessDeniedException"
        })
        .count();
    assert!(refused_decrypt >= 2, "the admin's refused Decrypts");
    // No data key in the trail or the console's log (plaintext fields never appear).
    let text = std::fs::read_to_string(home.path().join("trail/trail.jsonl")).unwrap();
    assert!(
        !text.contains("\"plaintext\""),
        "a plaintext field in the trail"
    );
    assert!(!log.contains("Plaintext"), "a plaintext in the console log");
}

/// One HTTP/1.1 exchange over a fresh connection: (status, headers text, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn sign_in(addr: SocketAddr, key: &Key) -> (String, String) {
    let body =
        serde_json::json!({ "accessKeyId": key.id, "secretAccessKey": key.secret }).to_string();
    let (status, head, body) = http(
        addr,
        "POST",
        "/console/api/signin",
        &[("content-type", "application/json")],
        &body,
    );
    assert_eq!(status, 200, "{body}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a session cookie")
        .to_owned();
    let session: Value = serde_json::from_str(&body).unwrap();
    (cookie, session["csrf"].as_str().unwrap().to_owned())
}

#[test]
fn console_sessions_are_strict_expire_when_idle_and_end_at_sign_out() {
    let home = Home::new();
    let admin = access_key(&home, ADMIN_ARN);
    let served = console(&home, &["--console-idle-timeout", "2s"]);
    let addr = served.addr;

    let (status, head, page) = http(addr, "GET", "/console/", &[], "");
    assert_eq!(status, 200);
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self';"));
    assert!(!page.contains("<script>") && page.contains("<script src=\"/console/app.js\">"));

    let (cookie, csrf) = sign_in(addr, &admin);
    assert!(
        cookie.contains("httponly") && cookie.contains("samesite=strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains("secure"),
        "no Secure flag over plain HTTP: {cookie}"
    );
    let token = cookie.split(';').next().unwrap().to_owned();
    let session = |token: &str| {
        http(
            addr,
            "GET",
            "/console/api/session",
            &[("cookie", token)],
            "",
        )
        .0
    };
    assert_eq!(session(&token), 200);
    // No session without the cookie; no state change without the CSRF token, nor
    // with another session's.
    assert_eq!(session("atrest_console=forged"), 401);
    let create = r#"{"operation":"CreateKey","input":{}}"#;
    let json = ("content-type", "application/json");
    assert_eq!(
        http(
            addr,
            "POST",
            "/console/api/kms",
            &[("cookie", &token), json],
            create
        )
        .0,
        403
    );
    assert_eq!(
        http(
            addr,
            "POST",
            "/console/api/kms",
            &[("cookie", &token), json, ("x-csrf-token", "x")],
            create
        )
        .0,
        403
    );
    let (status, _, body) = http(
        addr,
        "POST",
        "/console/api/kms",
        &[("cookie", &token), json, ("x-csrf-token", &csrf)],
        create,
    );
    assert_eq!(status, 200, "{body}");
    // Operations that answer with plaintext are not offered.
    let (status, _, body) = http(
        addr,
        "POST",
        "/console/api/kms",
        &[("cookie", &token), json, ("x-csrf-token", &csrf)],
        r#"{"operation":"GenerateDataKey","input":{"KeyId":"alias/x","KeySpec":"AES_256"}}"#,
    );
    assert_eq!(status, 400, "{body}");

    // An object's content is never read through the console API, whatever the query.
    for query in [
        r#"[]"#,
        r#"[["x",""]]"#,
        r#"[["response-content-type","text/html"]]"#,
    ] {
        let call = format!(
            r#"{{"method":"GET","bucket":"lab-bucket","key":"clock.png","query":{query}}}"#
        );
        let (status, _, body) = http(
            addr,
            "POST",
            "/console/api/s3",
            &[("cookie", &token), json, ("x-csrf-token", &csrf)],
            &call,
        );
        assert_eq!(status, 400, "{body}");
    }

    // An upload streams through the console into PutObject (unsigned payload,
    // SigV4-signed headers), here 6 MiB with the bucket's default encryption.
    let auth = [
        ("cookie", token.as_str()),
        json,
        ("x-csrf-token", csrf.as_str()),
    ];
    let (status, _, body) = http(
        addr,
        "POST",
        "/console/api/s3",
        &auth,
        r#"{"method":"PUT","bucket":"big-bucket"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let payload = "x".repeat(6 << 20);
    let (status, _, body) = http(
        addr,
        "PUT",
        "/console/api/upload?bucket=big-bucket&key=dir%2Fbig.bin",
        &[
            ("cookie", &token),
            ("x-csrf-token", &csrf),
            ("content-type", "application/octet-stream"),
        ],
        &payload,
    );
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["status"], 200, "{body}");
    let (status, _, body) = http(
        addr,
        "POST",
        "/console/api/s3",
        &auth,
        r#"{"method":"HEAD","bucket":"big-bucket","key":"dir/big.bin"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let head: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        head["headers"]["content-length"],
        (6 << 20).to_string().as_str(),
        "{body}"
    );
    // Without the CSRF token, no upload.
    let (status, _, _) = http(
        addr,
        "PUT",
        "/console/api/upload?bucket=big-bucket&key=other.bin",
        &[
            ("cookie", &token),
            ("content-type", "application/octet-stream"),
        ],
        "data",
    );
    assert_eq!(status, 403);

    // Idle expiry: the session ends after the idle timeout without requests.
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(session(&token), 401);

    // Sign-out ends the session at once.
    let (cookie, csrf) = sign_in(addr, &admin);
    let token = cookie.split(';').next().unwrap().to_owned();
    assert_eq!(
        http(
            addr,
            "POST",
            "/console/api/signout",
            &[("cookie", &token), json],
            "{}"
        )
        .0,
        403
    );
    assert_eq!(session(&token), 200);
    let (status, head, _) = http(
        addr,
        "POST",
        "/console/api/signout",
        &[("cookie", &token), json, ("x-csrf-token", &csrf)],
        "{}",
    );
    assert_eq!(status, 200);
    assert!(head.contains("max-age=0"));
    assert_eq!(session(&token), 401);

    // Failed sign-ins are throttled per address.
    let wrong = Key {
        id: admin.id.clone(),
        secret: "wrong".into(),
    };
    let body =
        serde_json::json!({ "accessKeyId": wrong.id, "secretAccessKey": wrong.secret }).to_string();
    let statuses: Vec<u16> = (0..12)
        .map(|_| http(addr, "POST", "/console/api/signin", &[json], &body).0)
        .collect();
    assert_eq!(statuses[0], 401);
    assert_eq!(*statuses.last().unwrap(), 429, "{statuses:?}");
    served.stop();
    let refused = trail(&home)
        .iter()
        .filter(|r| r["eventName"] == "ConsoleLogin" && r["errorCode"].is_string())
        .count();
    assert_eq!(
        refused, 10,
        "every checked wrong secret is recorded, throttled ones are not"
    );
}

#[test]
fn under_tls_the_session_cookie_is_secure() {
    if !require_tools(&["curl", "openssl"]) {
        return;
    }
    let home = Home::new();
    let admin = access_key(&home, ADMIN_ARN);
    let (cert, tls_key) = home.self_signed_cert();
    let served = console(
        &home,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            tls_key.to_str().unwrap(),
        ],
    );
    let body = serde_json::json!({ "accessKeyId": admin.id, "secretAccessKey": admin.secret });
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&cert)
        .args([
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-H",
            "content-type: application/json",
            "--data-binary",
            "@-",
        ])
        .arg(format!("https://{}/console/api/signin", served.addr))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(body.to_string().as_bytes())?;
            child.wait_with_output()
        })
        .expect("running curl");
    assert_success("curl signin over TLS", &out);
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a session cookie");
    assert!(
        cookie.contains("; secure")
            && cookie.contains("httponly")
            && cookie.contains("samesite=strict"),
        "{cookie}"
    );
    // The server watches SIGTERM once it has started its digest timer (its last
    // start-up line): stop it only then.
    for _ in 0..200 {
        if served.log().contains("trail digests") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    served.stop();
}
