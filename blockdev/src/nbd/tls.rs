//! NBD over TLS: the server's TLS configuration, the client's certificate identity,
//! and the pump that carries one connection's TLS records.
//!
//! rustls keeps one state for both directions of a connection, while the transmission
//! phase reads requests and writes replies from several threads at once. So after the
//! TLS handshake a pump owns the TLS state and one end of a socket pair: one pump
//! thread decrypts what arrives on the TCP socket into the pair, another encrypts
//! what the server writes into the pair onto the socket. The handshake and
//! transmission code runs unchanged on the other (plaintext) end of the pair.
//!
//! Closing: the client's end of TCP (or a `shutdown(Read)` of it by the server, as on
//! shutdown or a volume swap) ends the plaintext stream, so the server stops reading
//! requests; once the server has written its last reply and dropped its end, the pump
//! sends `close_notify` and closes the socket.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, Scope};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use tracing::debug;
use zeroize::Zeroizing;

use crate::{Error, TlsError};

/// Bytes of ciphertext read from the socket at a time.
const RECORD_READ: usize = 256 * 1024;
/// Bytes of plaintext encrypted at a time (a 32 MiB read reply goes in pieces).
const PLAIN_READ: usize = 256 * 1024;

/// Whether a TLS server also serves clients that do not upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// The spec's FORCEDTLS: before `NBD_OPT_STARTTLS` every option but ABORT is
    /// answered `NBD_REP_ERR_TLS_REQD`; nothing is listed or served in plaintext.
    Require,
    /// The spec's SELECTIVETLS: plaintext clients may use the exports that have no
    /// `allowed_clients` (those need a certificate, so TLS).
    Optional,
}

/// The TLS side of an NBD server: certificate, key, optional client CA, mode.
#[derive(Clone)]
pub struct TlsSettings {
    config: Arc<ServerConfig>,
    mode: TlsMode,
    verifies_clients: bool,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("mode", &self.mode)
            .field("verifies_clients", &self.verifies_clients)
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Reads the server's certificate chain and key (PEM) and, with `client_ca`, the
    /// CA bundle that client certificates must chain to (clients without one are then
    /// refused in the TLS handshake). TLS 1.3 only: no renegotiation, no compression.
    pub fn from_pem_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
        mode: TlsMode,
    ) -> Result<TlsSettings, Error> {
        let certs = read_certificates(cert, "--tls-cert")?;
        let key_pem = read_file(key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::KeyNotPem {
            path: key.to_owned(),
            detail: e.to_string(),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Provider(e.to_string()))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for ca in read_certificates(path, "--tls-client-ca")? {
                    roots.add(ca).map_err(|e| TlsError::UnusableCa {
                        path: path.to_owned(),
                        detail: e.to_string(),
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| TlsError::ClientVerifier {
                            path: path.to_owned(),
                            detail: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::KeyMismatch(e.to_string()))?;
        Ok(TlsSettings {
            config: Arc::new(config),
            mode,
            verifies_clients: client_ca.is_some(),
        })
    }

    /// Whether TLS is required or optional.
    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    /// Whether clients must present a certificate from the client CA, so that
    /// `allowed_clients` can be enforced.
    pub fn verifies_clients(&self) -> bool {
        self.verifies_clients
    }
}

fn read_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, Error> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| Error::Io {
            context: format!("reading {}", path.display()),
            source,
        })
}

fn read_certificates(
    path: &Path,
    flag: &'static str,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::CertificatesNotPem {
            flag,
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            flag,
            path: path.to_owned(),
        }
        .into());
    }
    Ok(certs)
}

/// Who a client is, from the certificate it presented (verified against the client
/// CA): its subject's common name and its DNS and URI alternative names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    /// The DNS and URI subject alternative names.
    pub alt_names: Vec<String>,
}

impl ClientIdentity {
    /// Reads the names of a DER certificate; a certificate webpki cannot parse has none.
    pub fn of_certificate(cert: &CertificateDer<'_>) -> ClientIdentity {
        let Ok(parsed) = webpki::EndEntityCert::try_from(cert) else {
            return ClientIdentity::default();
        };
        let mut alt_names: Vec<String> = parsed.valid_dns_names().map(str::to_owned).collect();
        alt_names.extend(parsed.valid_uri_names().map(str::to_owned));
        ClientIdentity {
            common_name: common_name(parsed.subject()),
            alt_names,
        }
    }

    /// Every name the certificate holds, common name first.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.common_name
            .as_deref()
            .into_iter()
            .chain(self.alt_names.iter().map(String::as_str))
    }

    /// Whether one of the certificate's names is in `allowed`.
    pub fn is_any_of(&self, allowed: &[String]) -> bool {
        self.names().any(|name| allowed.iter().any(|a| a == name))
    }
}

impl fmt::Display for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.common_name, self.alt_names.first()) {
            (Some(cn), _) => write!(f, "CN={cn}"),
            (None, Some(san)) => write!(f, "SAN={san}"),
            (None, None) => f.write_str("a certificate without names"),
        }
    }
}

/// The first common name (OID 2.5.4.3) in a DER `Name`'s contents (the RDN sequence
/// without its outer SEQUENCE header, as webpki hands out a certificate's subject), if
/// it is a string type. Never panics on any input (`fuzz/fuzz_targets/nbd_client_name.rs`).
pub fn common_name(mut rdns: &[u8]) -> Option<String> {
    const CN_OID: [u8; 3] = [0x55, 0x04, 0x03];
    const SET: u8 = 0x31;
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    while !rdns.is_empty() {
        let (tag, mut set, rest) = tlv(rdns)?;
        rdns = rest;
        if tag != SET {
            return None;
        }
        while !set.is_empty() {
            let (tag, attribute, rest) = tlv(set)?;
            set = rest;
            if tag != SEQUENCE {
                return None;
            }
            let (oid_tag, oid, value) = tlv(attribute)?;
            if oid_tag != OID || oid != CN_OID {
                continue;
            }
            let (kind, text, trailing) = tlv(value)?;
            if !trailing.is_empty() {
                return None;
            }
            return match kind {
                // UTF8String, PrintableString, TeletexString (as Latin-1 is rare in
                // practice, only its ASCII subset is accepted), IA5String.
                0x0c | 0x13 | 0x14 | 0x16 => String::from_utf8(text.to_vec()).ok(),
                _ => None,
            };
        }
    }
    None
}

/// One DER tag-length-value: (tag, value, what follows). Single-byte tags and
/// definite lengths of up to four bytes only; `None` for anything else or short input.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, after) = rest.split_at(count);
        rest = after;
        bytes.iter().try_fold(0usize, |acc, &b| {
            acc.checked_mul(256)?.checked_add(usize::from(b))
        })?
    };
    if rest.len() < length {
        return None;
    }
    let (value, after) = rest.split_at(length);
    Some((tag, value, after))
}

/// A TLS session after its handshake: the plaintext end for the NBD code, and who the
/// client is.
#[derive(Debug)]
pub(super) struct TlsSession {
    pub plain: UnixStream,
    /// `None` when the server asks for no client certificate.
    pub identity: Option<ClientIdentity>,
}

/// Runs the TLS handshake on `tcp` (after `NBD_REP_ACK` to STARTTLS; `early` is what
/// the server had already read past the option) and starts the pump on `scope`.
/// The socket keeps its read timeout for the handshake, then has none.
pub(super) fn accept<'scope>(
    scope: &'scope Scope<'scope, '_>,
    settings: &TlsSettings,
    tcp: TcpStream,
    early: &[u8],
    name: &str,
) -> Result<TlsSession, Error> {
    let mut tls = ServerConnection::new(Arc::clone(&settings.config))
        .map_err(|e| TlsError::Session(e.to_string()))?;
    let mut wire = Prefixed {
        early,
        stream: &tcp,
    };
    while tls.is_handshaking() {
        match tls.complete_io(&mut wire) {
            Ok((0, 0)) => return Err(TlsError::ClosedInHandshake.into()),
            Ok(_) => {}
            Err(err) => return Err(TlsError::Handshake(err.to_string()).into()),
        }
    }
    if !wire.early.is_empty() {
        // More than one flight before STARTTLS was acknowledged: not TLS as NBD uses it.
        return Err(TlsError::DataBeforeAnswer.into());
    }
    while tls.wants_write() {
        tls.write_tls(&mut &tcp)
            .map_err(|e| TlsError::FinishHandshake(e.to_string()))?;
    }
    let identity = settings.verifies_clients.then(|| {
        tls.peer_certificates()
            .and_then(|chain| chain.first())
            .map(ClientIdentity::of_certificate)
            .unwrap_or_default()
    });
    // Each direction is drained at once, so rustls needs no buffer limit of its own.
    tls.set_buffer_limit(None);
    tcp.set_read_timeout(None).map_err(|source| Error::Io {
        context: "clearing the TLS handshake timeout".into(),
        source,
    })?;
    let io_err = |context: &str| {
        let context = context.to_owned();
        move |source| Error::Io { context, source }
    };
    let (plain, pump_end) = UnixStream::pair().map_err(io_err("creating the TLS socket pair"))?;
    let inbound_tcp = tcp
        .try_clone()
        .map_err(io_err("cloning the socket for TLS"))?;
    let inbound_plain = pump_end
        .try_clone()
        .map_err(io_err("cloning the TLS socket pair"))?;
    let pump = Arc::new(Pump {
        tls: Mutex::new(tls),
        out: Mutex::new(Outgoing {
            tcp,
            records: Vec::new(),
        }),
    });
    let inbound = Arc::clone(&pump);
    thread::Builder::new()
        .name(format!("{name}-tls-in"))
        .spawn_scoped(scope, move || inbound.decrypt(inbound_tcp, inbound_plain))
        .map_err(io_err("starting the TLS threads"))?;
    thread::Builder::new()
        .name(format!("{name}-tls-out"))
        .spawn_scoped(scope, move || pump.encrypt(pump_end))
        .map_err(io_err("starting the TLS threads"))?;
    Ok(TlsSession { plain, identity })
}

/// The socket for the handshake, with the bytes read before STARTTLS was answered
/// put back in front.
struct Prefixed<'a> {
    early: &'a [u8],
    stream: &'a TcpStream,
}

impl Read for Prefixed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.early.is_empty() {
            return self.stream.read(buf);
        }
        self.early.read(buf)
    }
}

impl Write for Prefixed<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// One connection's TLS state, shared by its two pump threads.
struct Pump {
    tls: Mutex<ServerConnection>,
    /// Held while TLS records are taken out of `tls` and written, so records leave
    /// in the order rustls made them.
    out: Mutex<Outgoing>,
}

struct Outgoing {
    tcp: TcpStream,
    records: Vec<u8>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pump {
    /// TCP to plaintext, until the client closes or sends something that is not TLS.
    fn decrypt(&self, mut tcp: TcpStream, mut plain: UnixStream) {
        let mut records = vec![0u8; RECORD_READ];
        let mut clear = Vec::with_capacity(RECORD_READ);
        // The handshake may have read the client's first records already: n = 0 at
        // first hands those over before anything is read.
        let mut n = 0;
        loop {
            let (closed, answer_due) = match self.open(&records[..n], &mut clear) {
                Ok(state) => state,
                Err(err) => {
                    debug!("TLS: {err}; dropping the connection");
                    // rustls queued an alert for the client; send it, then close.
                    let _ = self.send(&[]);
                    let _ = tcp.shutdown(Shutdown::Both);
                    break;
                }
            };
            if answer_due && self.send(&[]).is_err() {
                break;
            }
            if !clear.is_empty() && plain.write_all(&clear).is_err() {
                break;
            }
            clear.clear();
            if closed {
                break;
            }
            n = match tcp.read(&mut records) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => 0,
                Err(err) => {
                    debug!("TLS: reading from the client: {err}");
                    break;
                }
            };
        }
        // The server reads the end of the requests and finishes what it runs.
        let _ = plain.shutdown(Shutdown::Write);
    }

    /// Feeds `input` to rustls and appends the plaintext to `clear`. Returns whether
    /// the client closed the TLS session and whether rustls has records to send.
    fn open(&self, mut input: &[u8], clear: &mut Vec<u8>) -> Result<(bool, bool), Error> {
        let mut tls = lock(&self.tls);
        let mut closed = false;
        loop {
            if !input.is_empty() {
                tls.read_tls(&mut input)
                    .map_err(|e| TlsError::ReadRecord(e.to_string()))?;
                tls.process_new_packets()
                    .map_err(|e| TlsError::BadRecords(e.to_string()))?;
            }
            // Appends all the plaintext there is: it ends in WouldBlock while the
            // session is open, in Ok at the client's close_notify.
            match tls.reader().read_to_end(clear) {
                Ok(_) => closed = true,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(TlsError::ReadPlaintext(err.to_string()).into()),
            }
            if input.is_empty() || closed {
                break;
            }
        }
        Ok((closed, tls.wants_write()))
    }

    /// Plaintext to TCP, until the server drops its end; then closes the session.
    fn encrypt(&self, mut plain: UnixStream) {
        let mut buf = vec![0u8; PLAIN_READ];
        loop {
            let n = match plain.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    debug!("TLS: reading the server's replies: {err}");
                    break;
                }
            };
            if let Err(err) = self.send(&buf[..n]) {
                debug!("TLS: writing to the client: {err}");
                break;
            }
        }
        let mut out = lock(&self.out);
        lock(&self.tls).send_close_notify();
        let _ = self.flush_records(&mut out);
        let _ = out.tcp.shutdown(Shutdown::Both);
        // A server thread still writing a reply learns that the client is gone.
        let _ = plain.shutdown(Shutdown::Both);
    }

    /// Encrypts `data` (may be empty: only what rustls has queued) and writes it.
    fn send(&self, data: &[u8]) -> io::Result<()> {
        let mut out = lock(&self.out);
        if !data.is_empty() {
            lock(&self.tls).writer().write_all(data)?;
        }
        self.flush_records(&mut out)
    }

    fn flush_records(&self, out: &mut Outgoing) -> io::Result<()> {
        {
            let mut tls = lock(&self.tls);
            while tls.wants_write() {
                tls.write_tls(&mut out.records)?;
            }
        }
        let result = out.tcp.write_all(&out.records);
        out.records.clear();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Name` contents: one RDN with C=GB, one with CN=<cn> as a UTF8String.
    fn name_with(cn: &[u8]) -> Vec<u8> {
        let mut out = vec![0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x06];
        out.extend_from_slice(&[0x13, 0x02, b'G', b'B']);
        let attr_len = 5 + 2 + cn.len();
        out.extend_from_slice(&[0x31, (attr_len + 2) as u8, 0x30, attr_len as u8]);
        out.extend_from_slice(&[0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, cn.len() as u8]);
        out.extend_from_slice(cn);
        out
    }

    #[test]
    fn common_name_is_found_after_other_attributes() {
        assert_eq!(
            common_name(&name_with(b"client1")).as_deref(),
            Some("client1")
        );
    }

    #[test]
    fn common_name_of_truncated_or_odd_names_is_none() {
        let name = name_with(b"client1");
        for cut in 0..name.len() {
            assert_eq!(common_name(&name[..cut]), None, "cut at {cut}");
        }
        assert_eq!(common_name(&[0x30, 0x00]), None);
        assert_eq!(common_name(&[0x31, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(common_name(&[0x1f, 0x01, 0x00]), None);
    }

    #[test]
    fn identity_matches_any_of_its_names() {
        let identity = ClientIdentity {
            common_name: Some("client1".into()),
            alt_names: vec!["host.example".into()],
        };
        assert!(identity.is_any_of(&["host.example".into()]));
        assert!(identity.is_any_of(&["x".into(), "client1".into()]));
        assert!(!identity.is_any_of(&["client2".into()]));
        assert!(!identity.is_any_of(&[]));
        assert_eq!(identity.to_string(), "CN=client1");
        assert!(!ClientIdentity::default().is_any_of(&["".into()]));
    }

    proptest::proptest! {
        #[test]
        fn common_name_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = common_name(&bytes);
        }
    }
}
