//! The S3 endpoint in one process: a `RunningGateway` serving S3 over a real
//! `ObjectStore` and `LocalKms`, reached by hand-made HTTP requests signed here (so
//! that every authentication failure, broken aws-chunked body and range edge can be
//! produced exactly).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use crypto_core::kms::{CreateKeyRequest, KeyService, LocalKms, LocalKmsConfig};
use gateway::sigv4::{self, ChunkChain, PathEncoding, Signer, SigningCredentials};
use gateway::{CredentialStore, Gateway, RunningGateway};
use objstore::ObjectStore;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use zeroize::Zeroizing;

const REGION: &str = "us-east-1";
const ROOT: &str = "arn:aws:iam::000000000000:root";
const ALICE: &str = "arn:aws:iam::000000000000:user/alice";
const OTHER_ACCOUNT: &str = "arn:aws:iam::111111111111:root";
/// The headers of a PUT under SSE-KMS with the test key (`alias/MyKMSKey`).
const SSE_KMS_MY_KEY: [(&str, &str); 2] = [
    ("x-amz-server-side-encryption", "aws:kms"),
    (
        "x-amz-server-side-encryption-aws-kms-key-id",
        "alias/MyKMSKey",
    ),
];

struct Endpoint {
    home: tempfile::TempDir,
    server: RunningGateway,
    kms: LocalKms,
    root: SigningCredentials,
    key_arn: String,
}

struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `<Code>` of an S3 error body.
    fn code(&self) -> String {
        let text = self.text();
        text.split_once("<Code>")
            .and_then(|(_, rest)| rest.split_once("</Code>"))
            .map(|(code, _)| code.to_owned())
            .unwrap_or_else(|| panic!("no error code in {text:?} ({})", self.status))
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }
}

/// How a request is signed.
enum Auth<'a> {
    Anonymous,
    /// Header auth with this payload hash (`None`: the body's SHA-256).
    Header {
        credentials: &'a SigningCredentials,
        payload_hash: Option<&'a str>,
        at: OffsetDateTime,
    },
}

impl<'a> Auth<'a> {
    /// Header auth by `credentials`, now, over the body's SHA-256.
    fn now(credentials: &'a SigningCredentials) -> Auth<'a> {
        Auth::Header {
            credentials,
            payload_hash: None,
            at: OffsetDateTime::now_utc(),
        }
    }
}

fn credentials_for(home: &std::path::Path, principal: &str) -> SigningCredentials {
    let key = CredentialStore::open(home)
        .create_access_key(principal)
        .unwrap();
    SigningCredentials {
        access_key_id: key.access_key_id.clone(),
        secret_access_key: key.secret_access_key.clone(),
        session_token: None,
    }
}

impl Endpoint {
    fn start() -> Endpoint {
        let home = tempfile::tempdir().unwrap();
        let mut config = LocalKmsConfig::new();
        config.region = REGION.into();
        let kms = LocalKms::open(home.path(), config).unwrap();
        let root_kms = kms.as_principal(ROOT).unwrap();
        let key = root_kms.create_key(&CreateKeyRequest::default()).unwrap();
        root_kms
            .create_alias("alias/MyKMSKey", &key.key_id)
            .unwrap();
        let gateway = Gateway::new(kms.clone(), home.path())
            .with_s3(ObjectStore::open(home.path()).unwrap())
            .without_kms_api();
        let server = RunningGateway::start(gateway, "127.0.0.1:0", None).unwrap();
        let root = credentials_for(home.path(), ROOT);
        Endpoint {
            home,
            server,
            kms: root_kms,
            root,
            key_arn: key.arn,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    fn signed(&self) -> Auth<'_> {
        Auth::now(&self.root)
    }

    /// Builds the request head (signed as `auth`) for `method path?query`.
    fn head(
        &self,
        method: &str,
        path: &str,
        query: &str,
        extra: &[(&str, &str)],
        body: &[u8],
        auth: &Auth<'_>,
    ) -> (http::HeaderMap, Option<String>) {
        let mut headers = http::HeaderMap::new();
        headers.insert("host", self.addr().to_string().parse().unwrap());
        for (name, value) in extra {
            headers.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let mut seed = None;
        if let Auth::Header {
            credentials,
            payload_hash,
            at,
        } = auth
        {
            let hash = payload_hash
                .map(str::to_owned)
                .unwrap_or_else(|| hex::encode(Sha256::digest(body)));
            headers.insert("x-amz-content-sha256", hash.parse().unwrap());
            seed = Some(
                sigv4::sign_headers_as(
                    &Signer::new(credentials, REGION, "s3", *at),
                    method,
                    path,
                    query,
                    &mut headers,
                    &hash,
                    PathEncoding::Single,
                )
                .unwrap(),
            );
        }
        (headers, seed)
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        query: &str,
        extra: &[(&str, &str)],
        body: &[u8],
        auth: &Auth<'_>,
    ) -> Reply {
        let (headers, _) = self.head(method, path, query, extra, body, auth);
        self.raw(method, path, query, &headers, body, body.len(), false)
    }

    /// Sends a request as given; `cut` shuts the connection's write side after the
    /// first `sent` bytes of a body announced as `body.len()`.
    #[allow(clippy::too_many_arguments)]
    fn raw(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: &http::HeaderMap,
        body: &[u8],
        sent: usize,
        cut: bool,
    ) -> Reply {
        let mut stream = TcpStream::connect(self.addr()).unwrap();
        let target = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        let mut head = format!("{method} {target} HTTP/1.1\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
        }
        head.push_str(&format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        ));
        stream.write_all(head.as_bytes()).unwrap();
        // The server may answer (and close) before reading a body it refuses.
        let _ = stream.write_all(&body[..sent]);
        if cut {
            let _ = stream.shutdown(Shutdown::Write);
        }
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        parse_reply(&answer, method == "HEAD")
    }

    /// Sends `method path?query` signed by the account's root.
    fn call(
        &self,
        method: &str,
        path: &str,
        query: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        self.send(method, path, query, extra, body, &self.signed())
    }

    /// DeleteObjects of `batch` (a `<Delete>` document) in `bucket`, with its
    /// Content-MD5, signed by the root.
    fn delete_objects(&self, bucket: &str, batch: &[u8]) -> Reply {
        let md5 = BASE64.encode(md5_of(batch));
        self.call(
            "POST",
            &format!("/{bucket}"),
            "delete",
            &[("content-md5", &md5)],
            batch,
        )
    }

    fn get(&self, path: &str, extra: &[(&str, &str)]) -> Reply {
        self.send("GET", path, "", extra, b"", &self.signed())
    }

    fn put_object(&self, path: &str, body: &[u8], extra: &[(&str, &str)]) -> Reply {
        self.send("PUT", path, "", extra, body, &self.signed())
    }

    fn make_bucket(&self, bucket: &str) {
        let r = self.send("PUT", &format!("/{bucket}"), "", &[], b"", &self.signed());
        assert_eq!(r.status, 200, "{}", r.text());
    }

    fn object_exists(&self, path: &str) -> bool {
        let r = self.send("HEAD", path, "", &[], b"", &self.signed());
        match r.status {
            200 => true,
            404 => false,
            other => panic!("HEAD {path}: {other}"),
        }
    }
}

fn parse_reply(answer: &[u8], head_only: bool) -> Reply {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(answer)));
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if head_only {
        Vec::new()
    } else {
        answer[split + 4..].to_vec()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// An aws-chunked body of `data` in `chunk`-byte chunks, signed through `chain`
/// (or unsigned), with the trailing headers given.
fn aws_chunked(
    data: &[u8],
    chunk: usize,
    mut chain: Option<&mut ChunkChain>,
    trailers: &[(&str, &str)],
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pieces: Vec<&[u8]> = data.chunks(chunk).collect();
    pieces.push(b"");
    for piece in pieces {
        match chain.as_deref_mut() {
            Some(chain) => out.extend_from_slice(
                format!(
                    "{:x};chunk-signature={}\r\n",
                    piece.len(),
                    chain.sign_chunk(piece)
                )
                .as_bytes(),
            ),
            None => out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes()),
        }
        out.extend_from_slice(piece);
        if !piece.is_empty() {
            out.extend_from_slice(b"\r\n");
        }
    }
    let mut canonical = String::new();
    for (name, value) in trailers {
        out.extend_from_slice(format!("{name}:{value}\r\n").as_bytes());
        canonical.push_str(&format!("{name}:{value}\n"));
    }
    if let (Some(chain), false) = (chain, trailers.is_empty()) {
        out.extend_from_slice(
            format!(
                "x-amz-trailer-signature:{}\r\n",
                chain.sign_trailer(canonical.as_bytes())
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[test]
fn objects_round_trip_with_ranges_listing_and_bucket_encryption() {
    let e = Endpoint::start();
    e.make_bucket("data");
    let again = e.call("PUT", "/data", "", &[], b"");
    assert_eq!(
        (again.status, again.code().as_str()),
        (409, "BucketAlreadyOwnedByYou")
    );

    // No key named and no bucket default: SSE-S3 under alias/aws/s3, as S3 since 2023.
    let r = e.put_object("/data/a", b"x", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-amz-server-side-encryption"), "AES256");
    let r = e.call("GET", "/data", "encryption", &[], b"");
    assert!(
        r.text().contains("<SSEAlgorithm>AES256</SSEAlgorithm>"),
        "{}",
        r.text()
    );
    let config = br#"<ServerSideEncryptionConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Rule><ApplyServerSideEncryptionByDefault><SSEAlgorithm>aws:kms</SSEAlgorithm><KMSMasterKeyID>alias/MyKMSKey</KMSMasterKeyID></ApplyServerSideEncryptionByDefault></Rule></ServerSideEncryptionConfiguration>"#;
    let r = e.call("PUT", "/data", "encryption", &[], config);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = e.call("PUT", "/data", "encryption", &[], b"<Nope/>");
    assert_eq!((r.status, r.code().as_str()), (400, "MalformedXML"));
    let r = e.call("GET", "/data", "encryption", &[], b"");
    assert!(r
        .text()
        .contains("<KMSMasterKeyID>alias/MyKMSKey</KMSMasterKeyID>"));

    let data = pattern(200_000);
    let context = BASE64.encode(br#"{"project":"lab"}"#);
    let r = e.put_object(
        "/data/dir/my%20file.bin",
        &data,
        &[
            ("content-type", "application/x-test"),
            ("x-amz-meta-color", "blue"),
            ("x-amz-server-side-encryption", "aws:kms"),
            ("x-amz-server-side-encryption-context", &context),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let etag = format!("\"{}\"", hex::encode(md5_of(&data)));
    assert_eq!(r.header("etag"), etag);
    assert_eq!(r.header("x-amz-server-side-encryption"), "aws:kms");
    assert_eq!(
        r.header("x-amz-server-side-encryption-aws-kms-key-id"),
        e.key_arn
    );
    let echoed = BASE64
        .decode(r.header("x-amz-server-side-encryption-context"))
        .unwrap();
    let echoed: HashMap<String, String> = serde_json::from_slice(&echoed).unwrap();
    assert_eq!(echoed["project"], "lab");
    assert_eq!(echoed["aws:s3:arn"], "arn:aws:s3:::data/dir/my file.bin");

    let r = e.get("/data/dir/my%20file.bin", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, data);
    assert_eq!(r.header("content-length"), "200000");
    assert_eq!(r.header("content-type"), "application/x-test");
    assert_eq!(r.header("x-amz-meta-color"), "blue");
    assert_eq!(r.header("etag"), etag);
    assert!(r.header("last-modified").ends_with(" GMT"));
    assert_eq!(
        r.header("x-amz-server-side-encryption-aws-kms-key-id"),
        e.key_arn
    );
    assert!(!r.header("x-amz-request-id").is_empty());

    let head = e.call("HEAD", "/data/dir/my%20file.bin", "", &[], b"");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), "200000");
    assert_eq!(head.header("x-amz-server-side-encryption"), "aws:kms");

    // Ranges: inside one segment, across segments, open-ended, suffix, clamped end.
    for (range, first, last) in [
        ("bytes=0-0", 0usize, 0usize),
        ("bytes=100-199", 100, 199),
        ("bytes=65530-131080", 65530, 131080),
        ("bytes=199990-", 199990, 199999),
        ("bytes=-10", 199990, 199999),
        ("bytes=199000-999999", 199000, 199999),
    ] {
        let r = e.get("/data/dir/my%20file.bin", &[("range", range)]);
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.body, &data[first..=last], "{range}");
        assert_eq!(
            r.header("content-range"),
            format!("bytes {first}-{last}/200000")
        );
        assert_eq!(r.header("content-length"), (last - first + 1).to_string());
    }
    for range in ["bytes=200000-", "bytes=300000-300001", "bytes=-0"] {
        let r = e.get("/data/dir/my%20file.bin", &[("range", range)]);
        assert_eq!(
            (r.status, r.code().as_str()),
            (416, "InvalidRange"),
            "{range}"
        );
    }
    // A Range S3 does not understand serves the whole object.
    let r = e.get("/data/dir/my%20file.bin", &[("range", "bytes=5-1")]);
    assert_eq!((r.status, r.body.len()), (200, data.len()));

    for key in ["dir/b", "dir/sub/c", "top"] {
        assert_eq!(
            e.put_object(&format!("/data/{key}"), key.as_bytes(), &[])
                .status,
            200
        );
    }
    let r = e.call("GET", "/data", "list-type=2&delimiter=%2F", &[], b"");
    let text = r.text();
    assert!(text.contains("<Key>top</Key>"), "{text}");
    assert!(text.contains("<CommonPrefixes><Prefix>dir/</Prefix></CommonPrefixes>"));
    // `a` (SSE-S3, above), `top` and the prefix `dir/`.
    assert!(text.contains("<KeyCount>3</KeyCount>"), "{text}");
    let r = e.call(
        "GET",
        "/data",
        "list-type=2&prefix=dir%2F&max-keys=2",
        &[],
        b"",
    );
    let text = r.text();
    assert!(text.contains("<IsTruncated>true</IsTruncated>"), "{text}");
    let token = text
        .split_once("<NextContinuationToken>")
        .and_then(|(_, rest)| rest.split_once("</NextContinuationToken>"))
        .map(|(t, _)| t.to_owned())
        .unwrap();
    let r = e.call(
        "GET",
        "/data",
        &format!("continuation-token={token}&list-type=2&prefix=dir%2F"),
        &[],
        b"",
    );
    assert!(r.text().contains("<Key>dir/sub/c</Key>"), "{}", r.text());
    assert!(r.text().contains("<IsTruncated>false</IsTruncated>"));
    let r = e.call(
        "GET",
        "/data",
        "encoding-type=url&list-type=2&start-after=dir%2Fmy%20file.bin",
        &[],
        b"",
    );
    assert!(r.text().contains("<Key>dir/sub/c</Key>"), "{}", r.text());
    assert!(!r.text().contains("<Key>dir/my%20file.bin</Key>"));
    assert!(r
        .text()
        .contains("<StartAfter>dir/my%20file.bin</StartAfter>"));

    let r = e.call("DELETE", "/data", "", &[], b"");
    assert_eq!((r.status, r.code().as_str()), (409, "BucketNotEmpty"));
    let delete = b"<Delete><Object><Key>dir/b</Key></Object><Object><Key>dir/sub/c</Key></Object><Object><Key>bad/../key</Key></Object></Delete>";
    let r = e.call("POST", "/data", "delete", &[], delete);
    assert_eq!((r.status, r.code().as_str()), (400, "InvalidRequest"));
    let r = e.delete_objects("data", delete);
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    assert!(
        text.contains("<Deleted><Key>dir/b</Key></Deleted>"),
        "{text}"
    );
    assert!(
        text.contains("<Deleted><Key>dir/sub/c</Key></Deleted>"),
        "{text}"
    );
    assert!(
        text.contains("<Error><Key>bad/../key</Key><Code>InvalidArgument</Code>"),
        "{text}"
    );
    assert!(!e.object_exists("/data/dir/b"));
    let r = e.call("DELETE", "/data/top", "", &[], b"");
    assert_eq!(r.status, 204);
    let r = e.get("/data/top", &[]);
    assert_eq!((r.status, r.code().as_str()), (404, "NoSuchKey"));
    assert!(r.text().contains("<Resource>/data/top</Resource>"));
    let r = e.get("/nothere/top", &[]);
    assert_eq!((r.status, r.code().as_str()), (404, "NoSuchBucket"));
    let r = e.get("/", &[]);
    assert!(r.text().contains("<Name>data</Name>"), "{}", r.text());
    let r = e.call("GET", "/data", "versioning", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        !r.text().contains("<Status>"),
        "never configured: {}",
        r.text()
    );
    let r = e.call("GET", "/data", "lifecycle", &[], b"");
    assert_eq!(
        (r.status, r.code().as_str()),
        (404, "NoSuchLifecycleConfiguration")
    );
    let r = e.call("GET", "/data", "cors", &[], b"");
    assert_eq!((r.status, r.code().as_str()), (501, "NotImplemented"));
}

fn md5_of(data: &[u8]) -> [u8; 16] {
    use md5::Digest as _;
    md5::Md5::digest(data).into()
}

#[test]
fn signatures_dates_and_payload_hashes_are_enforced() {
    let e = Endpoint::start();
    e.make_bucket("auth");
    let stranger = SigningCredentials {
        access_key_id: "AKIAUNKNOWNUNKNOWN00".into(),
        secret_access_key: Zeroizing::new("x".repeat(40)),
        session_token: None,
    };
    let r = e.send("GET", "/", "", &[], b"", &Auth::now(&stranger));
    assert_eq!((r.status, r.code().as_str()), (403, "InvalidAccessKeyId"));

    let wrong_secret = SigningCredentials {
        access_key_id: e.root.access_key_id.clone(),
        secret_access_key: Zeroizing::new("y".repeat(40)),
        session_token: None,
    };
    let r = e.send("GET", "/", "", &[], b"", &Auth::now(&wrong_secret));
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "SignatureDoesNotMatch")
    );

    for minutes in [-16i64, 16] {
        let r = e.send(
            "GET",
            "/",
            "",
            &[],
            b"",
            &Auth::Header {
                credentials: &e.root,
                payload_hash: None,
                at: OffsetDateTime::now_utc() + time::Duration::minutes(minutes),
            },
        );
        assert_eq!((r.status, r.code().as_str()), (403, "RequestTimeTooSkewed"));
    }

    // A header added after signing.
    let (mut headers, _) = e.head("PUT", "/auth/k", "", &[], b"abc", &e.signed());
    headers.insert("x-amz-meta-sneaky", "1".parse().unwrap());
    let r = e.raw("PUT", "/auth/k", "", &headers, b"abc", 3, false);
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "SignatureDoesNotMatch")
    );

    // The body is not the one whose SHA-256 was signed: nothing is stored.
    let config = br#"<ServerSideEncryptionConfiguration><Rule><ApplyServerSideEncryptionByDefault><SSEAlgorithm>aws:kms</SSEAlgorithm><KMSMasterKeyID>alias/MyKMSKey</KMSMasterKeyID></ApplyServerSideEncryptionByDefault></Rule></ServerSideEncryptionConfiguration>"#;
    assert_eq!(
        e.call("PUT", "/auth", "encryption", &[], config).status,
        200
    );
    let (headers, _) = e.head("PUT", "/auth/k", "", &[], b"original", &e.signed());
    let r = e.raw("PUT", "/auth/k", "", &headers, b"replaced", 8, false);
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "XAmzContentSHA256Mismatch")
    );
    assert!(!e.object_exists("/auth/k"));

    // A bad x-amz-content-sha256 value, and a missing one.
    let r = e.send(
        "PUT",
        "/auth/k",
        "",
        &[],
        b"abc",
        &Auth::Header {
            credentials: &e.root,
            payload_hash: Some("not-a-hash"),
            at: OffsetDateTime::now_utc(),
        },
    );
    assert_eq!((r.status, r.code().as_str()), (400, "InvalidArgument"));

    // UNSIGNED-PAYLOAD is accepted; a wrong Content-MD5 is not.
    let unsigned = Auth::Header {
        credentials: &e.root,
        payload_hash: Some("UNSIGNED-PAYLOAD"),
        at: OffsetDateTime::now_utc(),
    };
    let r = e.send("PUT", "/auth/u", "", &[], b"free", &unsigned);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(e.get("/auth/u", &[]).body, b"free");
    let md5 = BASE64.encode(md5_of(b"other"));
    let r = e.send(
        "PUT",
        "/auth/m",
        "",
        &[("content-md5", &md5)],
        b"body",
        &unsigned,
    );
    assert_eq!((r.status, r.code().as_str()), (400, "BadDigest"));
    assert!(!e.object_exists("/auth/m"));

    // A flexible checksum in a header must match.
    let crc = BASE64.encode(crc32fast::hash(b"checked").to_be_bytes());
    let r = e.put_object("/auth/c", b"checked", &[("x-amz-checksum-crc32", &crc)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-amz-checksum-crc32"), crc);
    let r = e.put_object("/auth/c2", b"checkeD", &[("x-amz-checksum-crc32", &crc)]);
    assert_eq!((r.status, r.code().as_str()), (400, "BadDigest"));
    assert!(!e.object_exists("/auth/c2"));

    // Buckets belong to their account.
    let other = credentials_for(e.home.path(), OTHER_ACCOUNT);
    let r = e.send("GET", "/auth/u", "", &[], b"", &Auth::now(&other));
    assert_eq!((r.status, r.code().as_str()), (403, "AccessDenied"));
}

#[test]
fn aws_chunked_uploads_verify_every_chunk_and_the_trailer() {
    let e = Endpoint::start();
    e.make_bucket("chunks");
    let data = pattern(100_000);
    let put = |path: &str,
               mode: &str,
               trailer: Option<&str>,
               decoded: usize,
               build: &dyn Fn(Option<&mut ChunkChain>) -> Vec<u8>,
               mangle: &dyn Fn(&mut Vec<u8>)| {
        let mut extra = vec![
            ("content-encoding", "aws-chunked".to_owned()),
            ("x-amz-decoded-content-length", decoded.to_string()),
        ];
        extra.extend(SSE_KMS_MY_KEY.map(|(name, value)| (name, value.to_owned())));
        if let Some(name) = trailer {
            extra.push(("x-amz-trailer", name.to_owned()));
        }
        let extra: Vec<(&str, &str)> = extra.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let at = OffsetDateTime::now_utc();
        let auth = Auth::Header {
            credentials: &e.root,
            payload_hash: Some(mode),
            at,
        };
        let (headers, seed) = e.head("PUT", path, "", &extra, b"", &auth);
        let signer = Signer::new(&e.root, REGION, "s3", at);
        let mut chain = ChunkChain::for_client(&signer, &seed.unwrap()).unwrap();
        let signed = mode != "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
        let mut body = build(signed.then_some(&mut chain));
        mangle(&mut body);
        let len = body.len();
        e.raw("PUT", path, "", &headers, &body, len, false)
    };
    let crc = BASE64.encode(crc32fast::hash(&data).to_be_bytes());
    let signed = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
    let plain = |c: Option<&mut ChunkChain>| aws_chunked(&data, 8192, c, &[]);
    let keep = |_: &mut Vec<u8>| {};

    let r = put("/chunks/good", signed, None, data.len(), &plain, &keep);
    assert_eq!(r.status, 200, "{}", r.text());
    let got = e.get("/chunks/good", &[]);
    assert_eq!(got.body, data);
    // aws-chunked was the upload's encoding, not the object's: it is not stored.
    assert!(
        !got.headers.contains_key("content-encoding"),
        "{:?}",
        got.headers
    );

    // One data byte changed: its chunk's signature no longer matches.
    let flip = |body: &mut Vec<u8>| {
        let at = body.len() / 2;
        body[at] ^= 1;
    };
    let r = put("/chunks/flipped", signed, None, data.len(), &plain, &flip);
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "SignatureDoesNotMatch")
    );
    assert!(!e.object_exists("/chunks/flipped"));

    // A chunk signed out of order (the chain starts from another seed).
    let replay = |_: Option<&mut ChunkChain>| {
        let signer = Signer::new(&e.root, REGION, "s3", OffsetDateTime::now_utc());
        let mut other = ChunkChain::for_client(&signer, &"0".repeat(64)).unwrap();
        aws_chunked(&data, 8192, Some(&mut other), &[])
    };
    let r = put("/chunks/replayed", signed, None, data.len(), &replay, &keep);
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "SignatureDoesNotMatch")
    );

    // Declared length differs from what the chunks hold.
    let r = put("/chunks/short", signed, None, data.len() + 1, &plain, &keep);
    assert_eq!((r.status, r.code().as_str()), (400, "IncompleteBody"));
    assert!(!e.object_exists("/chunks/short"));

    // The final chunk is missing.
    let drop_tail = |body: &mut Vec<u8>| {
        let end = body.len() - 90;
        body.truncate(end);
    };
    let r = put("/chunks/cut", signed, None, data.len(), &plain, &drop_tail);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(!e.object_exists("/chunks/cut"));

    // Signed chunks with a signed CRC32 trailer; then a wrong CRC.
    let with_trailer = |c: Option<&mut ChunkChain>| {
        aws_chunked(&data, 16384, c, &[("x-amz-checksum-crc32", crc.as_str())])
    };
    let r = put(
        "/chunks/trailer",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
        Some("x-amz-checksum-crc32"),
        data.len(),
        &with_trailer,
        &keep,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-amz-checksum-crc32"), crc);
    assert_eq!(e.get("/chunks/trailer", &[]).body, data);
    let bad_crc = |c: Option<&mut ChunkChain>| {
        aws_chunked(&data, 16384, c, &[("x-amz-checksum-crc32", "AAAAAA==")])
    };
    let r = put(
        "/chunks/badcrc",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
        Some("x-amz-checksum-crc32"),
        data.len(),
        &bad_crc,
        &keep,
    );
    assert_eq!((r.status, r.code().as_str()), (400, "BadDigest"));

    // What botocore sends over HTTPS: unsigned chunks with a CRC32 trailer.
    let r = put(
        "/chunks/unsigned",
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        Some("x-amz-checksum-crc32"),
        data.len(),
        &with_trailer,
        &keep,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(e.get("/chunks/unsigned", &[]).body, data);

    // A connection that goes away mid-body leaves no object.
    let at = OffsetDateTime::now_utc();
    let auth = Auth::Header {
        credentials: &e.root,
        payload_hash: Some("UNSIGNED-PAYLOAD"),
        at,
    };
    let extra = SSE_KMS_MY_KEY;
    let (headers, _) = e.head("PUT", "/chunks/dropped", "", &extra, b"", &auth);
    let r = e.raw("PUT", "/chunks/dropped", "", &headers, &data, 50_000, true);
    assert_eq!((r.status, r.code().as_str()), (400, "IncompleteBody"));
    assert!(!e.object_exists("/chunks/dropped"));
}

#[test]
fn presigned_urls_and_anonymous_requests_follow_s3() {
    let e = Endpoint::start();
    e.make_bucket("pub");
    let extra = SSE_KMS_MY_KEY;
    assert_eq!(e.put_object("/pub/private", b"secret", &extra).status, 200);
    let mut public = extra.to_vec();
    public.push(("x-amz-acl", "public-read"));
    assert_eq!(e.put_object("/pub/public", b"shared", &public).status, 200);

    let presign = |path: &str, at: OffsetDateTime, expires: u32| {
        sigv4::presign_query(
            &Signer::new(&e.root, REGION, "s3", at),
            "GET",
            &e.addr().to_string(),
            path,
            &[],
            expires,
            PathEncoding::Single,
        )
        .unwrap()
    };
    let query = presign("/pub/private", OffsetDateTime::now_utc(), 300);
    let r = e.send("GET", "/pub/private", &query, &[], b"", &Auth::Anonymous);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, b"secret");

    let old = OffsetDateTime::now_utc() - time::Duration::hours(2);
    let query = presign("/pub/private", old, 60);
    let r = e.send("GET", "/pub/private", &query, &[], b"", &Auth::Anonymous);
    assert_eq!((r.status, r.code().as_str()), (403, "AccessDenied"));
    assert!(r.text().contains("Request has expired"), "{}", r.text());

    let query = presign("/pub/private", OffsetDateTime::now_utc(), 300);
    let tampered = query.replace("X-Amz-Expires=300", "X-Amz-Expires=301");
    let r = e.send("GET", "/pub/private", &tampered, &[], b"", &Auth::Anonymous);
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "SignatureDoesNotMatch")
    );
    let r = e.send("GET", "/pub/public", &query, &[], b"", &Auth::Anonymous);
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "SignatureDoesNotMatch")
    );
    let too_long = query.replace("X-Amz-Expires=300", "X-Amz-Expires=604801");
    let r = e.send("GET", "/pub/private", &too_long, &[], b"", &Auth::Anonymous);
    assert_eq!(r.status, 400, "{}", r.text());

    let r = e.send("GET", "/pub/private", "", &[], b"", &Auth::Anonymous);
    assert_eq!((r.status, r.code().as_str()), (403, "AccessDenied"));
    let r = e.send("GET", "/pub/missing", "", &[], b"", &Auth::Anonymous);
    assert_eq!((r.status, r.code().as_str()), (403, "AccessDenied"));
    let r = e.send("GET", "/pub/public", "", &[], b"", &Auth::Anonymous);
    assert_eq!((r.status, r.code().as_str()), (400, "InvalidArgument"));
    assert!(r
        .text()
        .contains("Requests specifying Server Side Encryption with AWS KMS managed keys require AWS Signature Version 4"));
    let r = e.send("PUT", "/pub/new", "", &[], b"x", &Auth::Anonymous);
    assert_eq!((r.status, r.code().as_str()), (403, "AccessDenied"));
    let r = e.send("GET", "/", "", &[], b"", &Auth::Anonymous);
    assert_eq!((r.status, r.code().as_str()), (403, "AccessDenied"));

    // The ACL can be read back and changed.
    let r = e.call("GET", "/pub/public", "acl", &[], b"");
    assert!(r
        .text()
        .contains("http://acs.amazonaws.com/groups/global/AllUsers"));
    let r = e.call(
        "PUT",
        "/pub/public",
        "acl",
        &[("x-amz-acl", "private")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = e.send("GET", "/pub/public", "", &[], b"", &Auth::Anonymous);
    assert_eq!((r.status, r.code().as_str()), (403, "AccessDenied"));
}

#[test]
fn key_state_and_key_policy_decide_object_access() {
    let e = Endpoint::start();
    e.make_bucket("keys");
    let extra = SSE_KMS_MY_KEY;
    assert_eq!(e.put_object("/keys/o", b"payload", &extra).status, 200);

    e.kms.disable_key(&e.key_arn).unwrap();
    let r = e.get("/keys/o", &[]);
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "KMS.DisabledException")
    );
    let r = e.put_object("/keys/p", b"payload", &extra);
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "KMS.DisabledException")
    );
    // HEAD needs no key.
    assert!(e.object_exists("/keys/o"));
    e.kms.enable_key(&e.key_arn).unwrap();
    assert_eq!(e.get("/keys/o", &[]).body, b"payload");

    e.kms.schedule_key_deletion(&e.key_arn, Some(7)).unwrap();
    let r = e.get("/keys/o", &[]);
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "KMS.KMSInvalidStateException")
    );
    e.kms.cancel_key_deletion(&e.key_arn).unwrap();
    e.kms.enable_key(&e.key_arn).unwrap();
    assert_eq!(e.get("/keys/o", &[]).body, b"payload");

    // alice is in the account but the key policy does not let her use the key.
    let alice = credentials_for(e.home.path(), ALICE);
    let as_alice = Auth::now(&alice);
    let r = e.send("GET", "/keys/o", "", &[], b"", &as_alice);
    assert_eq!((r.status, r.code().as_str()), (403, "AccessDenied"));
    let r = e.send("PUT", "/keys/a", "", &extra, b"x", &as_alice);
    assert_eq!((r.status, r.code().as_str()), (403, "AccessDenied"));
    let r = e.send("HEAD", "/keys/o", "", &[], b"", &as_alice);
    assert_eq!(r.status, 200);
}

#[test]
fn bucket_keys_follow_the_bucket_default_and_the_put_header() {
    let e = Endpoint::start();
    e.make_bucket("bkt");
    let config = br#"<ServerSideEncryptionConfiguration><Rule><ApplyServerSideEncryptionByDefault><SSEAlgorithm>aws:kms</SSEAlgorithm><KMSMasterKeyID>alias/MyKMSKey</KMSMasterKeyID></ApplyServerSideEncryptionByDefault><BucketKeyEnabled>true</BucketKeyEnabled></Rule></ServerSideEncryptionConfiguration>"#;
    assert_eq!(e.call("PUT", "/bkt", "encryption", &[], config).status, 200);
    let r = e.call("GET", "/bkt", "encryption", &[], b"");
    assert!(
        r.text()
            .contains("<BucketKeyEnabled>true</BucketKeyEnabled>"),
        "{}",
        r.text()
    );

    let r = e.put_object("/bkt/derived", b"under the bucket key", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-amz-server-side-encryption-bucket-key-enabled"),
        "true"
    );
    let r = e.get("/bkt/derived", &[]);
    assert_eq!(r.body, b"under the bucket key");
    assert_eq!(
        r.header("x-amz-server-side-encryption-bucket-key-enabled"),
        "true"
    );

    let own = [("x-amz-server-side-encryption-bucket-key-enabled", "false")];
    let r = e.put_object("/bkt/own", b"own data key", &own);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r
        .headers
        .contains_key("x-amz-server-side-encryption-bucket-key-enabled"));
    assert_eq!(e.get("/bkt/own", &[]).body, b"own data key");
    let bad = [("x-amz-server-side-encryption-bucket-key-enabled", "maybe")];
    let r = e.put_object("/bkt/bad", b"x", &bad);
    assert_eq!((r.status, r.code().as_str()), (400, "InvalidArgument"));
}

#[test]
fn multipart_uploads_assemble_in_order_and_refuse_bad_part_lists() {
    let e = Endpoint::start();
    e.make_bucket("mpu");
    let [sse, key_id] = SSE_KMS_MY_KEY;
    let extra = [sse, key_id, ("content-type", "text/x-parts")];
    let start = |key: &str| {
        let r = e.call("POST", &format!("/mpu/{key}"), "uploads", &extra, b"");
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
            .split_once("<UploadId>")
            .and_then(|(_, rest)| rest.split_once("</UploadId>"))
            .map(|(id, _)| id.to_owned())
            .unwrap()
    };
    let part = |key: &str, id: &str, n: u32, body: &[u8]| {
        let r = e.call(
            "PUT",
            &format!("/mpu/{key}"),
            &format!("partNumber={n}&uploadId={id}"),
            &[],
            body,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.header("etag").to_owned()
    };
    let complete = |key: &str, id: &str, parts: &[(u32, &str)]| {
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (n, etag) in parts {
            xml.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag></Part>",
                etag.replace('"', "&quot;")
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        e.call(
            "POST",
            &format!("/mpu/{key}"),
            &format!("uploadId={id}"),
            &[],
            xml.as_bytes(),
        )
    };
    // Every part but the last must be at least 5 MiB.
    let one = pattern(5 << 20);
    let two = vec![7u8; 1000];
    let id = start("joined");
    let e2 = part("joined", &id, 2, &two);
    let e1 = part("joined", &id, 1, &one);
    let r = complete("joined", &id, &[(2, &e2), (1, &e1)]);
    assert_eq!((r.status, r.code().as_str()), (400, "InvalidPartOrder"));
    let r = complete(
        "joined",
        &id,
        &[(1, "\"00000000000000000000000000000000\""), (2, &e2)],
    );
    assert_eq!((r.status, r.code().as_str()), (400, "InvalidPart"));
    let r = complete("joined", &id, &[(1, &e1), (3, &e2)]);
    assert_eq!((r.status, r.code().as_str()), (400, "InvalidPart"));
    // Part 2 (1000 bytes) may only be the last.
    let r = complete("joined", &id, &[(2, &e2), (3, &e1)]);
    assert_eq!((r.status, r.code().as_str()), (400, "EntityTooSmall"));
    let r = complete("joined", &id, &[(1, &e1), (2, &e2)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-amz-server-side-encryption-aws-kms-key-id"),
        e.key_arn
    );
    let got = e.get("/mpu/joined", &[]);
    let mut whole = one.clone();
    whole.extend_from_slice(&two);
    assert_eq!(got.body, whole);
    assert_eq!(got.header("content-type"), "text/x-parts");
    assert!(got.header("etag").ends_with("-2\""), "{:?}", got.headers);
    // A retried Complete (its first answer lost) gets the object's ETag, as on S3;
    // another part list for the finished upload does not.
    let etag = got.header("etag").to_owned();
    let r = complete("joined", &id, &[(1, &e1), (2, &e2)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(xml_leaf(&r, "ETag"), etag.replace('"', "&quot;"));
    let r = complete("joined", &id, &[(1, &e1)]);
    assert_eq!((r.status, r.code().as_str()), (404, "NoSuchUpload"));
    // The upload is gone, and no part file is left.
    let uploads = e.home.path().join("s3/buckets/mpu/uploads");
    assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 0);

    // Abort; an upload another account cannot see; a bad upload id.
    let id = start("aborted");
    part("aborted", &id, 1, b"x");
    let r = e.call(
        "DELETE",
        "/mpu/aborted",
        &format!("uploadId={id}"),
        &[],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(!e.object_exists("/mpu/aborted"));
    let id = start("mine");
    let other = credentials_for(e.home.path(), OTHER_ACCOUNT);
    let r = e.send(
        "PUT",
        "/mpu/mine",
        &format!("partNumber=1&uploadId={id}"),
        &[],
        b"x",
        &Auth::now(&other),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = e.call(
        "PUT",
        "/mpu/mine",
        "partNumber=1&uploadId=../../x",
        &[],
        b"x",
    );
    assert_eq!((r.status, r.code().as_str()), (404, "NoSuchUpload"));
    let r = e.call(
        "PUT",
        "/mpu/mine",
        &format!("partNumber=10001&uploadId={id}"),
        &[],
        b"x",
    );
    assert_eq!((r.status, r.code().as_str()), (400, "InvalidArgument"));
}

/// The text of the first `<tag>` of an XML answer.
fn xml_leaf(reply: &Reply, tag: &str) -> String {
    let text = reply.text();
    text.split_once(&format!("<{tag}>"))
        .and_then(|(_, rest)| rest.split_once(&format!("</{tag}>")))
        .map(|(value, _)| value.to_owned())
        .unwrap_or_else(|| panic!("no {tag} in {text:?}"))
}

#[test]
fn multipart_uploads_stream_parts_through_aws_chunked_bodies() {
    let e = Endpoint::start();
    e.make_bucket("mpu");
    let sse = SSE_KMS_MY_KEY;
    let r = e.call("POST", "/mpu/obj", "uploads", &sse, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-amz-server-side-encryption-aws-kms-key-id"),
        e.key_arn
    );
    let id = xml_leaf(&r, "UploadId");

    // Part 1: a signed aws-chunked body with a signed CRC32 trailer.
    let p1 = pattern(5 << 20);
    let crc = BASE64.encode(crc32fast::hash(&p1).to_be_bytes());
    let query = format!("partNumber=1&uploadId={id}");
    let chunked_part = |flip: bool| {
        let decoded = p1.len().to_string();
        let extra = [
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", decoded.as_str()),
            ("x-amz-trailer", "x-amz-checksum-crc32"),
        ];
        let at = OffsetDateTime::now_utc();
        let auth = Auth::Header {
            credentials: &e.root,
            payload_hash: Some("STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"),
            at,
        };
        let (headers, seed) = e.head("PUT", "/mpu/obj", &query, &extra, b"", &auth);
        let signer = Signer::new(&e.root, REGION, "s3", at);
        let mut chain = ChunkChain::for_client(&signer, &seed.unwrap()).unwrap();
        let mut body = aws_chunked(
            &p1,
            64 * 1024,
            Some(&mut chain),
            &[("x-amz-checksum-crc32", crc.as_str())],
        );
        if flip {
            let at = body.len() / 2;
            body[at] ^= 1;
        }
        let len = body.len();
        e.raw("PUT", "/mpu/obj", &query, &headers, &body, len, false)
    };
    let r = chunked_part(true);
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "SignatureDoesNotMatch")
    );
    let r = e.call("GET", "/mpu/obj", &format!("uploadId={id}"), &[], b"");
    assert!(
        !r.text().contains("<Part>"),
        "a refused part was kept: {}",
        r.text()
    );
    let r = chunked_part(false);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-amz-checksum-crc32"), crc);
    let e1 = r.header("etag").to_owned();
    assert_eq!(e1, format!("\"{}\"", hex::encode(md5_of(&p1))));

    // Part 2: plain body with Content-MD5 (a wrong one first).
    let p2 = pattern(1000);
    let query2 = format!("partNumber=2&uploadId={id}");
    let md5 = BASE64.encode(md5_of(&p2));
    let wrong = BASE64.encode([0u8; 16]);
    let r = e.call("PUT", "/mpu/obj", &query2, &[("content-md5", &wrong)], &p2);
    assert_eq!((r.status, r.code().as_str()), (400, "BadDigest"));
    let r = e.call("PUT", "/mpu/obj", &query2, &[("content-md5", &md5)], &p2);
    assert_eq!(r.status, 200, "{}", r.text());
    let e2 = r.header("etag").to_owned();

    let r = e.call("GET", "/mpu/obj", &format!("uploadId={id}"), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text().matches("<Part>").count(), 2, "{}", r.text());
    let r = e.call("GET", "/mpu", "uploads", &[], b"");
    assert!(
        r.text().contains(&format!("<UploadId>{id}</UploadId>")),
        "{}",
        r.text()
    );

    let complete = |parts: &[(u32, &str)]| {
        let mut body = String::from("<CompleteMultipartUpload>");
        for (n, etag) in parts {
            body.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
            ));
        }
        body.push_str("</CompleteMultipartUpload>");
        let query = format!("uploadId={id}");
        e.call("POST", "/mpu/obj", &query, &[], body.as_bytes())
    };
    let r = complete(&[(2, &e2), (1, &e1)]);
    assert_eq!((r.status, r.code().as_str()), (400, "InvalidPartOrder"));
    let r = complete(&[(1, &e2), (2, &e2)]);
    assert_eq!((r.status, r.code().as_str()), (400, "InvalidPart"));
    let r = complete(&[(1, &e1), (2, &e2)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let etag = xml_leaf(&r, "ETag");
    assert!(
        etag.ends_with("-2&quot;") || etag.ends_with("-2\""),
        "{etag}"
    );
    let got = e.get("/mpu/obj", &[]);
    assert_eq!(got.body, [p1, p2].concat());
    assert!(got.header("etag").ends_with("-2\""), "{:?}", got.headers);

    // The upload is gone, and aborting another removes it.
    let r = e.call("DELETE", "/mpu/obj", &format!("uploadId={id}"), &[], b"");
    assert_eq!((r.status, r.code().as_str()), (404, "NoSuchUpload"));
    let r = e.call("POST", "/mpu/other", "uploads", &sse, b"");
    let other = xml_leaf(&r, "UploadId");
    let r = e.call(
        "DELETE",
        "/mpu/other",
        &format!("uploadId={other}"),
        &[],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let r = e.call(
        "PUT",
        "/mpu/other",
        &format!("partNumber=1&uploadId={other}"),
        &[],
        b"x",
    );
    assert_eq!((r.status, r.code().as_str()), (404, "NoSuchUpload"));
    assert!(!e
        .home
        .path()
        .join("s3/buckets/mpu/uploads")
        .read_dir()
        .unwrap()
        .any(|_| true));
}

#[test]
fn copies_and_buckets_stay_inside_their_account() {
    let e = Endpoint::start();
    e.make_bucket("mine");
    let r = e.put_object("/mine/secret", b"mine only", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let other = credentials_for(e.home.path(), OTHER_ACCOUNT);
    let as_other = Auth::now(&other);
    // Bucket names are global: another account gets BucketAlreadyExists, and its
    // ListBuckets does not show the bucket.
    let r = e.send("PUT", "/mine", "", &[], b"", &as_other);
    assert_eq!((r.status, r.code().as_str()), (409, "BucketAlreadyExists"));
    let r = e.send("PUT", "/theirs", "", &[], b"", &as_other);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = e.send("GET", "/", "", &[], b"", &as_other);
    assert!(r.text().contains("<Name>theirs</Name>") && !r.text().contains("<Name>mine</Name>"));
    // Another account cannot copy out of the bucket, into its own or into ours.
    for target in ["/theirs/stolen", "/mine/stolen"] {
        let r = e.send(
            "PUT",
            target,
            "",
            &[("x-amz-copy-source", "/mine/secret")],
            b"",
            &as_other,
        );
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "AccessDenied"),
            "{target}"
        );
    }
    // Nor through UploadPartCopy into an upload of its own.
    let r = e.send("POST", "/theirs/parts", "uploads", &[], b"", &as_other);
    assert_eq!(r.status, 200, "{}", r.text());
    let id = xml_leaf(&r, "UploadId");
    let r = e.send(
        "PUT",
        "/theirs/parts",
        &format!("partNumber=1&uploadId={id}"),
        &[("x-amz-copy-source", "mine/secret")],
        b"",
        &as_other,
    );
    assert_eq!((r.status, r.code().as_str()), (403, "AccessDenied"));
    // A copy source that names no key, or a version, is refused.
    for source in ["/mine", "mine/", "/mine/secret?versionId=3"] {
        let r = e.call("PUT", "/mine/x", "", &[("x-amz-copy-source", source)], b"");
        assert!(r.status == 400 || r.status == 501, "{source}: {}", r.status);
    }
    assert!(!e.object_exists("/mine/x"));
}

#[test]
fn read_conditions_follow_rfc_9110_order() {
    let e = Endpoint::start();
    e.make_bucket("cond");
    let r = e.put_object("/cond/k", b"body", &[]);
    let etag = r.header("etag").to_owned();
    let code = |extra: &[(&str, &str)]| e.get("/cond/k", extra).status;
    let later = "Fri, 01 Jan 2100 00:00:00 GMT";
    let earlier = "Mon, 01 Jan 2001 00:00:00 GMT";
    // If-Match holds, so a failing If-Unmodified-Since is ignored (as S3).
    assert_eq!(
        code(&[("if-match", &etag), ("if-unmodified-since", earlier)]),
        200
    );
    assert_eq!(code(&[("if-match", "\"nope\"")]), 412);
    assert_eq!(code(&[("if-match", "*")]), 200);
    assert_eq!(code(&[("if-unmodified-since", earlier)]), 412);
    // If-None-Match does not match, so If-Modified-Since is ignored.
    assert_eq!(
        code(&[("if-none-match", "\"nope\""), ("if-modified-since", later)]),
        200
    );
    assert_eq!(code(&[("if-none-match", &etag)]), 304);
    assert_eq!(code(&[("if-modified-since", later)]), 304);
    assert_eq!(code(&[("if-modified-since", earlier)]), 200);
    // A date that is not an HTTP date is ignored, as RFC 9110 says.
    assert_eq!(code(&[("if-modified-since", "yesterday")]), 200);
    let r = e.get("/cond/k", &[("if-none-match", &etag)]);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), etag);
    // Writes: other If-None-Match values are refused, never ignored.
    let r = e.put_object("/cond/k", b"new", &[("if-none-match", "\"abc\"")]);
    assert_eq!(r.status, 501);
    let r = e.call(
        "DELETE",
        "/cond/k",
        "",
        &[("x-amz-if-match-size", "4")],
        b"",
    );
    assert_eq!(r.status, 501);
    assert_eq!(e.get("/cond/k", &[]).body, b"body");
    // ACL grants are refused, not accepted and dropped.
    let grant = [(
        "x-amz-grant-read",
        "uri=\"http://acs.amazonaws.com/groups/global/AllUsers\"",
    )];
    let r = e.put_object("/cond/granted", b"x", &grant);
    assert_eq!((r.status, r.code().as_str()), (501, "NotImplemented"));
    assert!(!e.object_exists("/cond/granted"));
    let r = e.call("PUT", "/granted-bucket", "", &grant, b"");
    assert_eq!(r.status, 501);
}

#[test]
fn list_objects_v1_pages_with_markers() {
    let e = Endpoint::start();
    e.make_bucket("list-v1");
    for key in ["a", "dir/x", "dir/y", "z"] {
        assert_eq!(
            e.put_object(&format!("/list-v1/{key}"), b"1", &[]).status,
            200
        );
    }
    let list = |query: &str| e.call("GET", "/list-v1", query, &[], b"");
    let r = list("delimiter=%2F&max-keys=2");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(xml_leaf(&r, "IsTruncated"), "true");
    assert_eq!(xml_leaf(&r, "NextMarker"), "dir/");
    assert!(r.text().contains("<Key>a</Key>") && r.text().contains("<Prefix>dir/</Prefix>"));
    assert!(r.text().contains("<Owner>"), "v1 always names the owner");
    // The marker of a common prefix skips every key under it.
    let r = list("delimiter=%2F&marker=dir%2F");
    assert_eq!(xml_leaf(&r, "IsTruncated"), "false");
    assert!(r.text().contains("<Key>z</Key>"), "{}", r.text());
    assert!(!r.text().contains("<Key>dir/"), "{}", r.text());
    assert!(!r.text().contains("<Prefix>dir/"), "{}", r.text());
    // Without a delimiter the marker is a key.
    let r = list("marker=dir%2Fx&max-keys=1");
    assert!(r.text().contains("<Key>dir/y</Key>"), "{}", r.text());
    assert_eq!(xml_leaf(&r, "NextMarker"), "dir/y");
    let r = list("prefix=dir%2F");
    assert!(r.text().contains("<Key>dir/x</Key>") && !r.text().contains("<Key>a</Key>"));
    let r = list("max-keys=x");
    assert_eq!(r.status, 400);
}

#[test]
fn bucket_policies_grant_other_accounts_and_deny_as_written() {
    let e = Endpoint::start();
    e.make_bucket("shared");
    assert_eq!(
        e.put_object("/shared/open/k", b"shared data", &[]).status,
        200
    );
    assert_eq!(
        e.put_object("/shared/closed/k", b"private", &[]).status,
        200
    );
    let other = credentials_for(e.home.path(), OTHER_ACCOUNT);
    let as_other = || Auth::now(&other);
    let policy_put = |doc: &str| e.call("PUT", "/shared", "policy", &[], doc.as_bytes());
    // No policy: another account is refused; it cannot put one either.
    assert_eq!(
        e.send("GET", "/shared/open/k", "", &[], b"", &as_other())
            .status,
        403
    );
    let grant = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"111111111111"},"Action":["s3:GetObject","s3:ListBucket"],"Resource":["arn:aws:s3:::shared","arn:aws:s3:::shared/open/*"]},{"Effect":"Deny","Principal":"*","Action":"s3:DeleteObject","Resource":"arn:aws:s3:::shared/closed/*"}]}"#;
    let r = e.send(
        "PUT",
        "/shared",
        "policy",
        &[],
        grant.as_bytes(),
        &as_other(),
    );
    assert_eq!(r.status, 403);
    let r = policy_put(grant);
    assert_eq!(r.status, 204, "{}", r.text());
    let r = e.call("GET", "/shared", "policy", &[], b"");
    assert_eq!(r.body, grant.as_bytes());
    // The grant: GET under open/ (SSE-S3: the managed key serves every principal),
    // and listing; nothing else.
    let r = e.send("GET", "/shared/open/k", "", &[], b"", &as_other());
    assert_eq!((r.status, r.body.as_slice()), (200, &b"shared data"[..]));
    let r = e.send("GET", "/shared", "list-type=2", &[], b"", &as_other());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        e.send("GET", "/shared/closed/k", "", &[], b"", &as_other())
            .status,
        403
    );
    assert_eq!(
        e.send("PUT", "/shared/open/new", "", &[], b"x", &as_other())
            .status,
        403
    );
    assert_eq!(
        e.send("DELETE", "/shared/open/k", "", &[], b"", &as_other())
            .status,
        403
    );
    // The Deny binds the owner too, one key at a time in DeleteObjects.
    assert_eq!(
        e.call("DELETE", "/shared/closed/k", "", &[], b"").status,
        403
    );
    let batch = b"<Delete><Object><Key>closed/k</Key></Object><Object><Key>open/gone</Key></Object></Delete>";
    let r = e.delete_objects("shared", batch);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("<Code>AccessDenied</Code>"),
        "{}",
        r.text()
    );
    assert!(
        r.text().contains("<Deleted><Key>open/gone</Key>"),
        "{}",
        r.text()
    );
    assert!(e.object_exists("/shared/closed/k"));

    // Deny unencrypted (not SSE-KMS under one key) uploads, and every non-TLS request
    // but the policy's own management.
    let strict = r#"{"Statement":[{"Effect":"Deny","Principal":"*","Action":"s3:PutObject","Resource":"arn:aws:s3:::shared/*","Condition":{"StringNotEquals":{"s3:x-amz-server-side-encryption":"aws:kms"}}},{"Effect":"Deny","Principal":"*","Action":"s3:PutObject","Resource":"arn:aws:s3:::shared/*","Condition":{"StringNotEqualsIfExists":{"s3:x-amz-server-side-encryption-aws-kms-key-id":"x"}}}]}"#;
    let r = policy_put(strict);
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "MalformedPolicy"),
        "IfExists is refused"
    );
    let strict = r#"{"Statement":[{"Effect":"Deny","Principal":"*","Action":"s3:PutObject","Resource":"arn:aws:s3:::shared/*","Condition":{"StringNotEquals":{"s3:x-amz-server-side-encryption":"aws:kms"}}},{"Effect":"Deny","Principal":"*","Action":"s3:PutObject","Resource":"arn:aws:s3:::shared/*","Condition":{"StringNotLike":{"s3:x-amz-server-side-encryption-aws-kms-key-id":"alias/MyKMSKey"}}}]}"#;
    assert_eq!(policy_put(strict).status, 204);
    assert_eq!(e.put_object("/shared/plain", b"x", &[]).status, 403);
    let s3 = [("x-amz-server-side-encryption", "AES256")];
    assert_eq!(e.put_object("/shared/plain", b"x", &s3).status, 403);
    let other_key = [
        ("x-amz-server-side-encryption", "aws:kms"),
        (
            "x-amz-server-side-encryption-aws-kms-key-id",
            e.key_arn.as_str(),
        ),
    ];
    assert_eq!(e.put_object("/shared/arn", b"x", &other_key).status, 403);
    let kms = SSE_KMS_MY_KEY;
    let r = e.put_object("/shared/kms", b"x", &kms);
    assert_eq!(r.status, 200, "{}", r.text());
    let tls = r#"{"Statement":{"Effect":"Deny","Principal":"*","Action":"s3:*","Resource":["arn:aws:s3:::shared","arn:aws:s3:::shared/*"],"Condition":{"Bool":{"aws:SecureTransport":"false"}}}}"#;
    assert_eq!(policy_put(tls).status, 204);
    // This endpoint is plain HTTP.
    assert_eq!(e.get("/shared/kms", &[]).status, 403);
    assert_eq!(
        e.call("GET", "/shared", "list-type=2", &[], b"").status,
        403
    );
    // The owner can still take the policy away.
    assert_eq!(e.call("DELETE", "/shared", "policy", &[], b"").status, 204);
    assert_eq!(e.get("/shared/kms", &[]).status, 200);
    let r = e.call("GET", "/shared", "policy", &[], b"");
    assert_eq!((r.status, r.code().as_str()), (404, "NoSuchBucketPolicy"));
    // A policy naming another bucket is refused.
    let r = policy_put(
        r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::other/*"}}"#,
    );
    assert_eq!((r.status, r.code().as_str()), (400, "MalformedPolicy"));
}

#[test]
fn public_access_blocks_apply_to_acls_and_policies() {
    let e = Endpoint::start();
    e.make_bucket("blocked");
    let public = [("x-amz-acl", "public-read")];
    assert_eq!(e.put_object("/blocked/early", b"x", &public).status, 200);
    let anonymous = |path: &str| e.send("GET", path, "", &[], b"", &Auth::Anonymous);
    assert_eq!(
        anonymous("/blocked/early").status,
        400,
        "public-read: S3's SSE message"
    );
    let r = e.call("GET", "/blocked", "publicAccessBlock", &[], b"");
    assert_eq!(
        (r.status, r.code().as_str()),
        (404, "NoSuchPublicAccessBlockConfiguration")
    );
    let config = |acls: bool, policy: bool, restrict: bool| {
        format!(
            "<PublicAccessBlockConfiguration><BlockPublicAcls>{acls}</BlockPublicAcls>\
             <IgnorePublicAcls>{acls}</IgnorePublicAcls><BlockPublicPolicy>{policy}</BlockPublicPolicy>\
             <RestrictPublicBuckets>{restrict}</RestrictPublicBuckets></PublicAccessBlockConfiguration>"
        )
    };
    let put_block =
        |body: String| e.call("PUT", "/blocked", "publicAccessBlock", &[], body.as_bytes());
    assert_eq!(put_block(config(true, true, false)).status, 200);
    let r = e.call("GET", "/blocked", "publicAccessBlock", &[], b"");
    assert!(
        r.text().contains("<BlockPublicAcls>true</BlockPublicAcls>"),
        "{}",
        r.text()
    );
    // BlockPublicAcls and IgnorePublicAcls.
    assert_eq!(e.put_object("/blocked/late", b"x", &public).status, 403);
    assert!(!e.object_exists("/blocked/late"));
    let r = e.call("PUT", "/blocked/early", "acl", &public, b"");
    assert_eq!(r.status, 403);
    let r = e.call("POST", "/blocked/mpu", "uploads", &public, b"");
    assert_eq!(r.status, 403);
    assert_eq!(
        anonymous("/blocked/early").status,
        403,
        "the public ACL is ignored"
    );
    // BlockPublicPolicy refuses a policy that allows anyone, not one for an account.
    let anyone = r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::blocked/*"}}"#;
    let account = r#"{"Statement":{"Effect":"Allow","Principal":{"AWS":"111111111111"},"Action":"s3:GetObject","Resource":"arn:aws:s3:::blocked/*"}}"#;
    let put_policy = |doc: &str| e.call("PUT", "/blocked", "policy", &[], doc.as_bytes());
    assert_eq!(put_policy(anyone).status, 403);
    assert_eq!(put_policy(account).status, 204);
    // RestrictPublicBuckets: a public policy no longer lets other accounts in.
    let other = credentials_for(e.home.path(), OTHER_ACCOUNT);
    let as_other = || Auth::now(&other);
    assert_eq!(put_block(config(false, false, false)).status, 200);
    assert_eq!(put_policy(anyone).status, 204);
    assert_eq!(
        e.send("GET", "/blocked/early", "", &[], b"", &as_other())
            .status,
        200
    );
    assert_eq!(put_block(config(false, false, true)).status, 200);
    assert_eq!(
        e.send("GET", "/blocked/early", "", &[], b"", &as_other())
            .status,
        403
    );
    assert_eq!(
        e.get("/blocked/early", &[]).status,
        200,
        "the owner's account still can"
    );
    let r = e.call("DELETE", "/blocked", "publicAccessBlock", &[], b"");
    assert_eq!(r.status, 204);
    assert_eq!(
        e.send("GET", "/blocked/early", "", &[], b"", &as_other())
            .status,
        200
    );
}

/// Operations that take no body still read and check the one they get (its signed
/// SHA-256, its size) before they act: a body that fails changes nothing.
#[test]
fn bodiless_operations_check_the_body_before_acting() {
    let e = Endpoint::start();
    e.make_bucket("keep");
    assert_eq!(e.put_object("/keep/k", b"v", &[]).status, 200);
    let other_hash = hex::encode(Sha256::digest(b"not the body"));
    let lying = Auth::Header {
        credentials: &e.root,
        payload_hash: Some(&other_hash),
        at: OffsetDateTime::now_utc(),
    };
    for (method, path, query) in [
        ("DELETE", "/keep", ""),
        ("DELETE", "/keep/k", ""),
        ("DELETE", "/keep", "policy"),
        ("PUT", "/keep/k", "tagging"),
    ] {
        let r = e.send(method, path, query, &[], b"a body", &lying);
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "XAmzContentSHA256Mismatch"),
            "{method} {path}?{query}: {}",
            r.text()
        );
    }
    assert!(e.object_exists("/keep/k"));
    let r = e.call("GET", "/keep/k", "tagging", &[], b"");
    assert!(!r.text().contains("<Tag>"), "{}", r.text());

    // More than a configuration's 1 MiB is refused before the operation runs.
    let big = vec![b' '; (1 << 20) + 1];
    let r = e.call("DELETE", "/keep/k", "", &[], &big);
    assert_eq!((r.status, r.code().as_str()), (400, "InvalidRequest"));
    assert!(e.object_exists("/keep/k"));
}
