//! Negative NBD protocol cases beyond tests/e2e_nbd.rs, against `atrest nbd serve`
//! with nbdsh (python3-libnbd) as the good client and raw sockets for what libnbd
//! will not send: bad handshake flags and magic, unknown and oversized options, GO
//! to unknown exports and with malformed data, clients that vanish mid-handshake and
//! mid-payload (a half-sent write is never applied), bad request magic, unknown
//! request flags, BLOCK_STATUS without a negotiated context, a burst of connections
//! that open and close, and a volume file cut short while served (EIO past the cut,
//! never zeros). After every case a second, well-behaved client is still served.

mod common;

use common::{nbdsh, require_nbdsh, Home};

const SCRIPT: &str = r#"
import errno, os, socket, struct
host, port = os.environ["ADDR"].rsplit(":", 1)
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3e889045565a9
good = nbd.NBD()
good.connect_uri(os.environ["URI"])
size = good.get_size()
good.pwrite(b"\x5a" * 8192, 0)
good.flush()
def still_served():
    assert good.pread(8192, 0) == b"\x5a" * 8192

class Raw:
    def __init__(self, flags=3):
        self.s = socket.create_connection((host, int(port)), timeout=30)
        assert self.recv(18)[:16] == b"NBDMAGICIHAVEOPT"
        self.s.sendall(struct.pack(">I", flags))
    def recv(self, n):
        out = b""
        while len(out) < n:
            chunk = self.s.recv(n - len(out))
            if not chunk:
                raise EOFError(len(out))
            out += chunk
        return out
    def closed(self):
        try:
            return self.s.recv(1) == b""
        except ConnectionResetError:
            return True
    def option(self, code, data=b"", magic=IHAVEOPT):
        self.s.sendall(struct.pack(">QII", magic, code, len(data)) + data)
    def replies(self, code):
        out = []
        while True:
            magic, option, reply, length = struct.unpack(">QIII", self.recv(20))
            assert magic == REPLY_MAGIC and option == code, (hex(magic), option, code)
            out.append((reply, self.recv(length)))
            if reply == 1 or reply >= 1 << 31:
                return out
    def go(self, name=b"default"):
        self.option(7, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
        return self.replies(7)
    def request(self, cmd, offset, length, flags=0, cookie=1, magic=0x25609513):
        self.s.sendall(struct.pack(">IHHQQI", magic, flags, cmd, cookie, offset, length))
    def simple_reply(self):
        magic, error, cookie = struct.unpack(">IIQ", self.recv(16))
        assert magic == 0x67446698, hex(magic)
        return error, cookie

# Unknown client flags and a bad option magic end the connection.
assert Raw(flags=0x80000003).closed()
raw = Raw()
raw.option(7, b"", magic=0x1234)
assert raw.closed()
still_served()

# An unknown option, an oversized one and a GO to an unknown export or with
# malformed data get error replies, and the same connection then attaches.
raw = Raw()
raw.option(99)
assert raw.replies(99)[-1][0] == (1 << 31) + 1, "NBD_REP_ERR_UNSUP"
raw.option(6, b"\0" * 70000)
assert raw.replies(6)[-1][0] == (1 << 31) + 9, "NBD_REP_ERR_TOO_BIG"
assert raw.go(b"nope")[-1][0] == (1 << 31) + 6, "NBD_REP_ERR_UNKNOWN"
raw.option(7, struct.pack(">I", 200) + b"default" + struct.pack(">H", 0))
assert raw.replies(7)[-1][0] == (1 << 31) + 3, "NBD_REP_ERR_INVALID"
raw.option(7, struct.pack(">I", 7) + b"default" + struct.pack(">H", 5) + b"\0\0")
assert raw.replies(7)[-1][0] == (1 << 31) + 3, "info count beyond the data"
assert raw.go()[-1][0] == 1, "GO after refused options"
raw.request(0, 0, 4, cookie=11)
assert raw.simple_reply() == (0, 11)
assert raw.recv(4) == b"\x5a" * 4

# Unknown request flags and BLOCK_STATUS without base:allocation: EINVAL, and the
# connection goes on.
raw.request(0, 0, 512, flags=1 << 9, cookie=12)
assert raw.simple_reply() == (errno.EINVAL, 12)
raw.request(7, 0, 4096, cookie=13)
assert raw.simple_reply() == (errno.EINVAL, 13)
raw.request(0, 8190, 2, cookie=14)
assert raw.simple_reply() == (0, 14)
assert raw.recv(2) == b"\x5a\x5a"
# Bad request magic: the server drops this connection only.
raw.request(0, 0, 512, magic=0xdeadbeef)
assert raw.closed()
still_served()

# Clients that vanish mid-handshake, mid-option and mid-payload.
Raw().s.close()
raw = Raw()
raw.s.sendall(struct.pack(">QII", IHAVEOPT, 7, 100) + b"\0" * 10)
raw.s.close()
raw = Raw()
raw.go()
raw.request(1, 0, 4096, cookie=21)
raw.s.sendall(b"\xee" * 100)
raw.s.close()
still_served()

# A burst of connections that open and close at once.
for _ in range(64):
    socket.create_connection((host, int(port))).close()
still_served()

# The volume file cut short under the server: EIO past the cut, never zeros.
cut = os.environ["CUT"]
os.truncate(os.environ["VOLUME"], int(cut))
try:
    good.pread(4096, size - 4096)
except nbd.Error as e:
    got = getattr(errno, e.errno) if isinstance(e.errno, str) else e.errno
    assert got == errno.EIO, e.string
else:
    raise AssertionError("a read past the end of a truncated volume file succeeded")
still_served()
print("ok")
"#;

#[test]
fn hostile_and_broken_clients_get_spec_answers_and_never_hurt_others() {
    if !require_nbdsh() {
        return;
    }
    let home = Home::new();
    let key: serde_json::Value =
        serde_json::from_str(&home.run(&["kms", "create-key"])).expect("JSON");
    let key = key["KeyMetadata"]["Arn"].as_str().expect("arn");
    let volume = home.file("hostile.vol");
    home.run(&[
        "volume",
        "create",
        volume.to_str().unwrap(),
        "--size",
        "8M",
        "--key-id",
        key,
    ]);
    let file_len = std::fs::metadata(&volume).unwrap().len();
    let served = home.serve(&[
        "nbd",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--export",
        &format!("default={}", volume.display()),
    ]);
    let out = nbdsh()
        .env("URI", served.uri("default"))
        .env("ADDR", served.addr.to_string())
        .env("VOLUME", &volume)
        .env("CUT", (file_len - 1024 * 1024).to_string())
        .args(["-c", SCRIPT])
        .output()
        .expect("run nbdsh");
    assert!(
        out.status.success() && out.stdout == b"ok\n",
        "nbdsh:\n{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        served.log()
    );
    let log = served.log();
    assert!(!log.contains("panicked"), "{log}");
    served.stop();
}
