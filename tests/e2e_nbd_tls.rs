//! NBD over TLS with the real clients: nbdinfo, nbdcopy and nbdfuse with `nbds://`
//! URIs and gnutls certificate directories, made here with the openssl CLI. Client
//! certificates decide which exports a client may use (`allowed_clients`); refusals
//! are logged and recorded in the audit trail.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

use common::{pseudo_random, require_nbdsh, require_root, require_tools, run, Home, Served};

/// Certificates in the gnutls layout libnbd reads (`tls-certificates=DIR`):
/// DIR/ca-cert.pem, DIR/client-cert.pem, DIR/client-key.pem.
struct Pki {
    root: PathBuf,
}

const EXTENSIONS_CA: &[&str] = &[
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
];

impl Pki {
    /// A CA, a server certificate for 127.0.0.1/localhost, client certificates
    /// `client1` and `client2` from that CA, `rogue` (CN=client1) from another CA, and
    /// `anonymous` (the CA only, no client certificate).
    fn new(home: &Home) -> Pki {
        let root = home.file("pki");
        fs::create_dir_all(&root).unwrap();
        let pki = Pki { root };
        pki.authority("ca");
        pki.authority("otherca");
        pki.leaf(
            "server",
            "ca",
            "localhost",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        for (name, ca, cn) in [
            ("client1", "ca", "client1"),
            ("client2", "ca", "client2"),
            ("rogue", "otherca", "client1"),
        ] {
            pki.leaf(name, ca, cn, "extendedKeyUsage=clientAuth\n");
            let dir = pki.client(name);
            fs::create_dir_all(&dir).unwrap();
            fs::copy(pki.file("ca-cert.pem"), dir.join("ca-cert.pem")).unwrap();
            fs::copy(
                pki.file(&format!("{name}-cert.pem")),
                dir.join("client-cert.pem"),
            )
            .unwrap();
            fs::copy(
                pki.file(&format!("{name}-key.pem")),
                dir.join("client-key.pem"),
            )
            .unwrap();
        }
        let anonymous = pki.client("anonymous");
        fs::create_dir_all(&anonymous).unwrap();
        fs::copy(pki.file("ca-cert.pem"), anonymous.join("ca-cert.pem")).unwrap();
        pki
    }

    fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The `tls-certificates` directory of a client.
    fn client(&self, name: &str) -> PathBuf {
        self.root.join(format!("dir-{name}"))
    }

    fn authority(&self, name: &str) {
        run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .arg("-keyout")
            .arg(self.file(&format!("{name}-key.pem")))
            .arg("-out")
            .arg(self.file(&format!("{name}-cert.pem")))
            .args(["-subj", &format!("/CN={name}")])
            .args(EXTENSIONS_CA));
    }

    fn leaf(&self, name: &str, ca: &str, cn: &str, extensions: &str) {
        let csr = self.file(&format!("{name}.csr"));
        let ext = self.file(&format!("{name}.ext"));
        run(Command::new("openssl")
            .args(["req", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes"])
            .arg("-keyout")
            .arg(self.file(&format!("{name}-key.pem")))
            .arg("-out")
            .arg(&csr)
            .args(["-subj", &format!("/CN={cn}")]));
        fs::write(
            &ext,
            format!("{extensions}keyUsage=critical,digitalSignature\n"),
        )
        .unwrap();
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(self.file(&format!("{ca}-cert.pem")))
            .arg("-CAkey")
            .arg(self.file(&format!("{ca}-key.pem")))
            .arg("-out")
            .arg(self.file(&format!("{name}-cert.pem")))
            .arg("-extfile")
            .arg(&ext));
    }

    /// `--tls-cert ... --tls-key ...`, and the client CA when `verify_clients`.
    fn server_args(&self, verify_clients: bool) -> Vec<String> {
        let mut args = vec![
            "--tls-cert".to_owned(),
            self.file("server-cert.pem").display().to_string(),
            "--tls-key".to_owned(),
            self.file("server-key.pem").display().to_string(),
        ];
        if verify_clients {
            args.push("--tls-client-ca".to_owned());
            args.push(self.file("ca-cert.pem").display().to_string());
        }
        args
    }
}

/// A home with a key, two 64 MiB encrypted volumes and an exports file: `a` for
/// `client1` only, `b` for any client the TLS layer admits.
struct Setup {
    home: Home,
    pki: Pki,
    exports: PathBuf,
}

/// The home, or `None` when the test is to be skipped (a client missing).
fn setup() -> Option<Setup> {
    if !require_tools(&["nbdinfo", "nbdcopy", "openssl"]) {
        return None;
    }
    let home = Home::new();
    let pki = Pki::new(&home);
    home.run(&["kms", "create-key", "--alias", "alias/tls"]);
    for name in ["a", "b"] {
        let path = home.file(&format!("{name}.vol"));
        home.run(&[
            "volume",
            "create",
            path.to_str().unwrap(),
            "--size",
            "64M",
            "--key-id",
            "alias/tls",
        ]);
    }
    let exports = home.file("exports.toml");
    fs::write(
        &exports,
        "[[export]]\nname = \"a\"\npath = \"a.vol\"\nallowed_clients = [\"client1\"]\n\n\
         [[export]]\nname = \"b\"\npath = \"b.vol\"\n",
    )
    .unwrap();
    Some(Setup { home, pki, exports })
}

impl Setup {
    fn serve(&self, verify_clients: bool, extra: &[&str]) -> Served {
        let mut args: Vec<String> = ["nbd", "serve", "--listen", "127.0.0.1:0", "--exports"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(self.exports.display().to_string());
        args.extend(self.pki.server_args(verify_clients));
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.home.serve(&args)
    }
}

/// `nbds://ADDR/EXPORT?tls-certificates=DIR` for client `client`.
fn tls_uri(served: &Served, export: &str, pki: &Pki, client: &str) -> String {
    format!(
        "nbds://{}/{export}?tls-certificates={}",
        served.addr,
        pki.client(client).display()
    )
}

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The export names `nbdinfo --list` shows (it fails when the server lists nothing).
fn listed(uri: &str) -> (bool, Vec<String>) {
    let out = output(Command::new("nbdinfo").args(["--list", uri]));
    let names = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("export=\""))
        .filter_map(|l| l.strip_suffix("\":"))
        .map(str::to_owned)
        .collect();
    (out.status.success(), names)
}

#[test]
fn tls_clients_list_copy_and_read_back_intact() {
    let Some(setup) = setup() else { return };
    let served = setup.serve(true, &[]);
    let pki = &setup.pki;

    let (ok, names) = listed(&tls_uri(&served, "", pki, "client1"));
    assert!(ok, "{}", served.log());
    assert_eq!(names, ["a", "b"], "client1 may use both exports");
    let (ok, names) = listed(&tls_uri(&served, "", pki, "client2"));
    assert!(ok, "{}", served.log());
    assert_eq!(names, ["b"], "client2 is not shown export a");

    let info = run(Command::new("nbdinfo").arg(tls_uri(&served, "a", pki, "client1")));
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    assert!(info.contains("with TLS"), "{info}");
    assert!(info.contains("export-size: 67108864"), "{info}");

    for (export, client, seed) in [("a", "client1", 7), ("b", "client2", 8)] {
        let data = pseudo_random(64 << 20, seed);
        let source = setup.home.file(&format!("in-{export}.bin"));
        let back = setup.home.file(&format!("out-{export}.bin"));
        fs::write(&source, &data).unwrap();
        let uri = tls_uri(&served, export, pki, client);
        run(Command::new("nbdcopy").arg(&source).arg(&uri));
        run(Command::new("nbdcopy").arg(&uri).arg(&back));
        assert!(
            fs::read(&back).unwrap() == data,
            "export {export} read back over TLS differs from what was copied in"
        );
    }
    served.stop();
}

/// qemu's own NBD client (gnutls, `tls-creds-x509`) over `nbds`: qemu-io writes of
/// sizes that straddle TLS records, then `qemu-img compare` against the file that
/// holds the same bytes, and nbdcopy reading it all back through the record layer.
#[test]
fn qemu_img_compares_over_tls() {
    let Some(setup) = setup() else { return };
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let served = setup.serve(true, &[]);
    let pki = &setup.pki;
    let mut data = pseudo_random(64 << 20, 9);
    let source = setup.home.file("in.bin");
    fs::write(&source, &data).unwrap();
    run(Command::new("nbdcopy")
        .arg(&source)
        .arg(tls_uri(&served, "b", pki, "client2")));
    let creds = format!(
        "tls-creds-x509,id=tls0,endpoint=client,dir={}",
        pki.client("client2").display()
    );
    let nbd = format!(
        "driver=nbd,server.type=inet,server.host={},server.port={},export=b,tls-creds=tls0",
        served.addr.ip(),
        served.addr.port()
    );
    // 16 KiB of plaintext is one record: writes one byte either side of that, a
    // 3 MiB one across many, at offsets that are not record-aligned.
    for (offset, len, pattern) in [
        (512usize, 16383usize, 0x11u8),
        (1 << 20, 16385, 0x22),
        ((5 << 20) + 4096, 3 << 20, 0x33),
    ] {
        let write = format!("write -P {pattern} {offset} {len}");
        run(Command::new("qemu-io").args(["--object", &creds, "--image-opts", &nbd, "-c", &write]));
        data[offset..offset + len].fill(pattern);
    }
    fs::write(&source, &data).unwrap();
    let compared = output(
        Command::new("qemu-img")
            .args(["compare", "--object", &creds, "--image-opts"])
            .arg(format!(
                "driver=raw,file.driver=file,file.filename={}",
                source.display()
            ))
            .arg(&nbd),
    );
    assert!(
        compared.status.success(),
        "{}\n{}",
        text(&compared),
        served.log()
    );
    let back = setup.home.file("back.bin");
    run(Command::new("nbdcopy")
        .arg(tls_uri(&served, "b", pki, "client2"))
        .arg(&back));
    assert!(
        fs::read(&back).unwrap() == data,
        "read back over TLS differs"
    );
    served.stop();
}

#[test]
fn plaintext_clients_of_a_require_server_list_and_read_nothing() {
    let Some(setup) = setup() else { return };
    let served = setup.serve(true, &[]);
    let (ok, names) = listed(&served.uri(""));
    assert!(
        !ok && names.is_empty(),
        "plaintext listing showed {names:?}"
    );
    for export in ["a", "b"] {
        let out = output(
            Command::new("nbdcopy")
                .arg(served.uri(export))
                .arg(setup.home.file("leak.bin")),
        );
        assert!(!out.status.success(), "plaintext read of {export} worked");
        let leaked = fs::metadata(setup.home.file("leak.bin")).map_or(0, |m| m.len());
        assert_eq!(leaked, 0, "plaintext read of {export} produced data");
    }
    served.stop();
}

#[test]
fn clients_without_the_right_certificate_are_refused_and_audited() {
    let Some(setup) = setup() else { return };
    let served = setup.serve(true, &[]);
    let pki = &setup.pki;
    for client in ["anonymous", "rogue"] {
        let out = output(Command::new("nbdinfo").arg(tls_uri(&served, "b", pki, client)));
        assert!(
            !out.status.success(),
            "{client} was served export b: {}",
            text(&out)
        );
        assert!(text(&out).contains("TLS"), "{client}: {}", text(&out));
    }
    let out = output(
        Command::new("nbdcopy")
            .arg(tls_uri(&served, "a", pki, "client2"))
            .arg(setup.home.file("stolen.bin")),
    );
    assert!(!out.status.success(), "client2 read export a");
    let out = output(Command::new("nbdinfo").arg(tls_uri(&served, "a", pki, "client2")));
    assert!(
        !out.status.success(),
        "client2 got export a: {}",
        text(&out)
    );

    let log = served.log();
    assert!(
        log.contains("refused export \"a\" to CN=client2"),
        "the refusal is not logged:\n{log}"
    );
    assert!(log.contains("peer sent no certificates") || log.contains("TLS handshake failed"));
    let trail = fs::read_to_string(setup.home.path().join("trail/trail.jsonl")).unwrap();
    let refusals: Vec<serde_json::Value> = trail
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["eventName"] == "AttachVolume")
        .collect();
    assert!(!refusals.is_empty(), "no AttachVolume record in the trail");
    for record in &refusals {
        assert_eq!(record["errorCode"], "AccessDenied");
        assert_eq!(record["userIdentity"]["arn"], "CN=client2");
        assert_eq!(record["requestParameters"]["exportName"], "a");
        assert_eq!(
            record["requestParameters"]["clientCertificate"]["commonName"],
            "client2"
        );
        let key = record["requestParameters"]["keyId"].as_str().unwrap();
        assert!(key.starts_with("arn:aws:kms:"), "{record}");
    }
    run(setup.home.atrest().args(["trail", "validate"]));
    // Refused clients leave the server serving the allowed ones.
    run(Command::new("nbdinfo").arg(tls_uri(&served, "a", pki, "client1")));
    served.stop();
}

#[test]
fn handshake_rules_hold_at_the_byte_level() {
    if !require_tools(&["/usr/bin/python3"]) {
        return;
    }
    let Some(setup) = setup() else { return };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/nbd_tls_protocol.py");
    let client1 = setup.pki.client("client1");
    for (mode, extra) in [
        ("forced", &[][..]),
        ("optional", &["--tls", "optional"][..]),
    ] {
        let served = setup.serve(true, extra);
        let out = output(
            Command::new("/usr/bin/python3")
                .arg(&script)
                .arg(mode)
                .arg(served.addr.ip().to_string())
                .arg(served.addr.port().to_string())
                .arg(&client1),
        );
        assert!(
            out.status.success(),
            "{mode}: {}\nserver log:\n{}",
            text(&out),
            served.log()
        );
        // The garbage ClientHello hurt only its own connection.
        run(Command::new("nbdinfo").arg(tls_uri(&served, "b", &setup.pki, "client2")));
        served.stop();
    }
}

#[test]
fn nbdsh_sees_tls_required_before_starttls() {
    if !require_nbdsh() {
        return;
    }
    let Some(setup) = setup() else { return };
    let served = setup.serve(true, &[]);
    let script = format!(
        "import nbd\n\
         h = nbd.NBD()\n\
         h.set_opt_mode(True)\n\
         h.set_tls(nbd.TLS_DISABLE)\n\
         h.connect_uri('{uri}')\n\
         seen = []\n\
         try:\n    h.opt_list(lambda name, description: seen.append(name))\n    raise SystemExit('listed in plaintext: %r' % seen)\n\
         except nbd.Error as e:\n    print('list refused:', e)\n\
         try:\n    h.set_export_name('b')\n    h.opt_info()\n    raise SystemExit('INFO answered in plaintext')\n\
         except nbd.Error as e:\n    print('info refused:', e)\n\
         h.opt_abort()\n\
         t = nbd.NBD()\n\
         t.set_tls(nbd.TLS_REQUIRE)\n\
         t.set_tls_certificates('{certs}')\n\
         t.set_export_name('b')\n\
         t.connect_tcp('{host}', '{port}')\n\
         assert t.get_tls_negotiated(), 'TLS not negotiated'\n\
         assert t.pread(4096, 0) == bytes(4096)\n\
         t.shutdown()\n",
        uri = served.uri("b"),
        certs = setup.pki.client("client2").display(),
        host = served.addr.ip(),
        port = served.addr.port(),
    );
    let out = output(common::nbdsh().args(["-c", &script]));
    assert!(
        out.status.success(),
        "{}\nserver log:\n{}",
        text(&out),
        served.log()
    );
    served.stop();
}

#[test]
fn optional_mode_serves_plaintext_and_tls_clients() {
    let Some(setup) = setup() else { return };
    // No client CA: export a (allowed_clients) cannot be served, so only b.
    fs::write(
        &setup.exports,
        "[[export]]\nname = \"b\"\npath = \"b.vol\"\n",
    )
    .unwrap();
    let served = setup.serve(false, &["--tls", "optional"]);
    let data = pseudo_random(8 << 20, 3);
    let source = setup.home.file("in.bin");
    fs::write(&source, &data).unwrap();
    run(Command::new("nbdcopy").arg(&source).arg(served.uri("b")));
    let back = setup.home.file("back.bin");
    run(Command::new("nbdcopy")
        .arg(tls_uri(&served, "b", &setup.pki, "anonymous"))
        .arg(&back));
    assert!(fs::read(&back).unwrap()[..data.len()] == data[..]);
    let info = run(Command::new("nbdinfo").arg(served.uri("b")));
    assert!(String::from_utf8_lossy(&info.stdout).contains("without TLS"));
    served.stop();
}

#[test]
fn allowed_clients_without_client_certificates_is_a_startup_error() {
    let Some(setup) = setup() else { return };
    let mut args: Vec<String> = ["nbd", "serve", "--listen", "127.0.0.1:0", "--exports"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(setup.exports.display().to_string());
    args.extend(setup.pki.server_args(false));
    let out = output(setup.home.atrest().args(&args));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("allowed_clients"),
        "the error does not name the cause: {}",
        text(&out)
    );
}

/// Runs inside a private mount namespace (`unshare --mount`): libnbd run as root reads
/// its certificates from /etc/pki/libnbd, and nbdfuse allows no `tls-certificates` in
/// a URI, so the client's directory is put there on an overlay of /etc that only this
/// namespace sees. nbdfuse shows the export as a file, losetup makes it a block device;
/// mkfs.ext4, mount, write, remount, read back. Mounts die with the namespace; the
/// trap detaches the loop device and stops nbdfuse on any failure.
const MOUNT_OVER_TLS: &str = r#"
set -euo pipefail
dir=$1 uri=$2 certs=$3 data=$4
mkdir -p "$dir/etc-upper" "$dir/etc-work" "$dir/fuse" "$dir/mnt"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$dir/etc-upper,workdir=$dir/etc-work" /etc
mkdir -p /etc/pki/libnbd
cp "$certs"/*.pem /etc/pki/libnbd/
loop_device= fuse_pid=
cleanup() {
    umount --lazy "$dir/mnt" 2>/dev/null || true
    if [ -n "$loop_device" ]; then losetup --detach "$loop_device" || true; fi
    umount --lazy "$dir/fuse" 2>/dev/null || true
    if [ -n "$fuse_pid" ]; then kill "$fuse_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT
# -s: see tests/common/mod.rs, NBDFUSE_SINGLE_THREADED.
nbdfuse -s -P "$dir/nbdfuse.pid" "$dir/fuse/disk" "$uri" &
fuse_pid=$!
for _ in $(seq 600); do
    [ -e "$dir/nbdfuse.pid" ] && break
    kill -0 "$fuse_pid"
    sleep 0.1
done
[ -e "$dir/nbdfuse.pid" ]
loop_device=$(losetup --find --show "$dir/fuse/disk")
mkfs.ext4 -q -F "$loop_device"
mount "$loop_device" "$dir/mnt"
cp "$data" "$dir/mnt/over-tls.bin"
umount "$dir/mnt"
# Drop the cached pages: the second mount reads through nbdfuse and TLS.
blockdev --flushbufs "$loop_device"
mount "$loop_device" "$dir/mnt"
cmp "$data" "$dir/mnt/over-tls.bin"
echo "read back equal over TLS"
"#;

#[test]
fn ext4_mounted_over_tls() {
    if !(require_root()
        && require_tools(&[
            "nbdfuse",
            "losetup",
            "mkfs.ext4",
            "mount",
            "umount",
            "unshare",
            "blockdev",
        ]))
    {
        return;
    }
    let Some(setup) = setup() else { return };
    let served = setup.serve(true, &[]);
    let data = pseudo_random((5 << 20) + 17, 11);
    let source = setup.home.file("payload.bin");
    fs::write(&source, &data).unwrap();
    let uri = format!("nbds://{}/a", served.addr);
    let out = output(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "bash", "-c"])
            .arg(MOUNT_OVER_TLS)
            .arg("mount-over-tls")
            .arg(setup.home.file("ns"))
            .arg(&uri)
            .arg(setup.pki.client("client1"))
            .arg(&source),
    );
    assert!(
        out.status.success() && text(&out).contains("read back equal over TLS"),
        "{}\nserver log:\n{}",
        text(&out),
        served.log()
    );
    assert!(
        served
            .log()
            .contains("TLS with a client certificate, CN=client1"),
        "{}",
        served.log()
    );
    served.stop();
}

/// `--tls-ciphers`: each suite is negotiated with libnbd's GnuTLS (nbdinfo names it
/// with `LIBNBD_DEBUG=1`) and carries nbdcopy's data both ways; with a list the
/// server's first choice wins over GnuTLS's (AES-256-GCM first); a client that offers
/// none of the listed suites fails its handshake while the server goes on serving the
/// next; an unknown suite name is a startup error.
#[test]
fn tls_ciphers_choose_the_suite_and_refuse_clients_without_one() {
    let Some(setup) = setup() else { return };
    let pki = &setup.pki;
    let data = pseudo_random(3 << 20, 31);
    let source = setup.home.file("ciphers-in.bin");
    fs::write(&source, &data).unwrap();
    let cipher_of = |uri: &str, env: &[(&str, &PathBuf)]| {
        let mut cmd = Command::new("nbdinfo");
        cmd.arg(uri).env("LIBNBD_DEBUG", "1");
        for (key, value) in env {
            cmd.env(key, value);
        }
        let out = output(&mut cmd);
        let said = text(&out);
        let cipher = said
            .lines()
            .find_map(|l| l.split_once("connection is using TLS: cipher "))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(str::to_owned);
        (out.status.success(), cipher, said)
    };
    for (list, gnutls_name) in [
        ("aes128-gcm", "AES-128-GCM"),
        ("aes256-gcm", "AES-256-GCM"),
        ("chacha20-poly1305", "CHACHA20-POLY1305"),
        ("aes128-gcm,aes256-gcm", "AES-128-GCM"),
        (
            "TLS_CHACHA20_POLY1305_SHA256,aes256-gcm",
            "CHACHA20-POLY1305",
        ),
    ] {
        let served = setup.serve(true, &["--tls-ciphers", list]);
        let uri = tls_uri(&served, "b", pki, "client2");
        let (ok, cipher, said) = cipher_of(&uri, &[]);
        assert!(ok, "{list}: {said}\n{}", served.log());
        assert_eq!(cipher.as_deref(), Some(gnutls_name), "{list}: {said}");
        let back = setup.home.file("ciphers-out.bin");
        run(Command::new("nbdcopy").arg(&source).arg(&uri));
        run(Command::new("nbdcopy").arg(&uri).arg(&back));
        let read = fs::read(&back).unwrap();
        assert!(read[..data.len()] == data[..], "{list}: data differs");
        served.stop();
    }

    // Without a list the client's choice wins: GnuTLS puts AES-256-GCM first.
    let served = setup.serve(true, &[]);
    let (ok, cipher, said) = cipher_of(&tls_uri(&served, "b", pki, "client2"), &[]);
    assert!(ok, "{said}");
    assert_eq!(cipher.as_deref(), Some("AES-256-GCM"), "{said}");
    served.stop();

    // A GnuTLS client with AES-128-GCM disabled offers AES-256-GCM, ChaCha20 and
    // AES-128-CCM only.
    let no_aes128 = setup.home.file("gnutls-no-aes128.conf");
    fs::write(
        &no_aes128,
        "[overrides]\ntls-disabled-cipher = AES-128-GCM\n",
    )
    .unwrap();
    let env = [("GNUTLS_SYSTEM_PRIORITY_FILE", &no_aes128)];
    let served = setup.serve(true, &["--tls-ciphers", "aes128-gcm"]);
    let uri = tls_uri(&served, "b", pki, "client2");
    let (ok, _, said) = cipher_of(&uri, &env);
    assert!(!ok, "a client without the server's suite connected: {said}");
    assert!(
        said.to_lowercase().contains("handshake"),
        "the client is told its handshake failed: {said}"
    );
    let (ok, cipher, said) = cipher_of(&uri, &[]);
    assert!(ok, "the next client is served: {said}\n{}", served.log());
    assert_eq!(cipher.as_deref(), Some("AES-128-GCM"), "{said}");
    assert!(
        served.log().contains("handshake failed"),
        "the refused handshake is logged: {}",
        served.log()
    );
    served.stop();
    // The same client against the default server gets AES-256-GCM.
    let served = setup.serve(true, &[]);
    let (ok, cipher, said) = cipher_of(&tls_uri(&served, "b", pki, "client2"), &env);
    assert!(ok, "{said}");
    assert_eq!(cipher.as_deref(), Some("AES-256-GCM"), "{said}");
    served.stop();

    for (list, says) in [
        ("aes128-cbc", "unknown TLS 1.3 cipher suite 'aes128-cbc'"),
        ("aes128-gcm,aes128-gcm", "aes128-gcm is listed twice"),
        ("", "unknown TLS 1.3 cipher suite ''"),
    ] {
        let mut args = vec![
            "nbd".to_owned(),
            "serve".to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--exports".to_owned(),
            setup.exports.display().to_string(),
        ];
        args.extend(pki.server_args(true));
        args.extend(["--tls-ciphers".to_owned(), list.to_owned()]);
        let out = output(setup.home.atrest().args(&args));
        assert!(!out.status.success(), "{list:?} was accepted");
        assert!(text(&out).contains(says), "{list:?}: {}", text(&out));
    }
}
