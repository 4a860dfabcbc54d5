//! NBD over TLS: the server's TLS configuration, the client's certificate identity,
//! the handshake, and the record layer that carries the session on the transmission
//! threads themselves.
//!
//! rustls runs the handshake (its unbuffered API, so that nothing is left buffered
//! inside it), then hands out the traffic keys of both directions and a
//! [`rustls::kernel::KernelConnection`] that derives the next keys on a KeyUpdate
//! (`enable_secret_extraction`). From then on [`connection::TlsStream`] seals and
//! opens TLS 1.3 records itself with ring's AEAD ([`record`]): the thread reading
//! requests (under the connection's read lock) owns the client's key and sequence
//! number, the thread writing a reply (under the write lock) owns the server's, so
//! the transmission code runs unchanged with no pump thread and no socket pair. A
//! read reply's data is sealed where the volume decrypted it, without a copy: each
//! record between the first and the last borrows the next record's first byte for its
//! content type, and the records' headers and tags go beside the data in one `writev`
//! (`Wire::write_reply`). Other replies are framed into records in one buffer, sealed
//! in place and sent with one `write`, so replies gathered together share full
//! records. A request's records are read many at a time and opened in place; the
//! transmission code may also ask whether another request has come
//! (`Wire::ready`: one `recv` that does not wait), and a record that fails then is
//! reported by the next read, after the replies gathered before it are sent.
//!
//! The rules (fail-closed, each ends the connection, with an alert where one is due):
//! only protected records after the handshake; at most 2^14 + 256 bytes of ciphertext
//! and 2^14 of plaintext per record; a record that fails authentication; inner
//! content types application data, alert (close_notify ends the stream cleanly, any
//! other alert is an error) and handshake, where a KeyUpdate alone in its record is
//! the only message a client may send (a NewSessionTicket from a client is refused).
//! A KeyUpdate from the client switches its key; one with `update_requested` is
//! answered with the server's own before its next record. Sequence numbers never wrap;
//! the server updates its key before the cipher suite's confidentiality limit
//! (2^24 records for AES-GCM) and asks the client to update at half of it, refusing
//! a client that goes past it. close_notify goes out on an orderly end.
//!
//! Closing: the client's close_notify or end of TCP (or a `shutdown(Read)` of the
//! socket by the server, as on shutdown or a volume swap) ends the request stream;
//! once the server has written its last reply and dropped its handles, close_notify
//! goes out and the socket closes.

mod connection;
mod record;

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection, WebPkiClientVerifier};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, InsufficientSizeError, UnbufferedStatus,
};
use rustls::{RootCertStore, ServerConfig};
use zeroize::Zeroizing;

pub(super) use connection::TlsStream;

use crate::{Error, TlsError};

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

/// A TLS 1.3 cipher suite the server can offer (RFC 8446 section B.4; the record layer
/// implements these three).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsCipher {
    /// `TLS_AES_128_GCM_SHA256`, the suite every TLS 1.3 peer must implement.
    Aes128Gcm,
    /// `TLS_AES_256_GCM_SHA384`.
    Aes256Gcm,
    /// `TLS_CHACHA20_POLY1305_SHA256`, for clients without AES instructions.
    Chacha20Poly1305,
}

impl TlsCipher {
    const ALL: [TlsCipher; 3] = [
        TlsCipher::Aes256Gcm,
        TlsCipher::Aes128Gcm,
        TlsCipher::Chacha20Poly1305,
    ];

    /// The name `--tls-ciphers` takes.
    pub fn name(self) -> &'static str {
        match self {
            TlsCipher::Aes128Gcm => "aes128-gcm",
            TlsCipher::Aes256Gcm => "aes256-gcm",
            TlsCipher::Chacha20Poly1305 => "chacha20-poly1305",
        }
    }

    /// The suite's IANA name.
    pub fn iana_name(self) -> &'static str {
        match self {
            TlsCipher::Aes128Gcm => "TLS_AES_128_GCM_SHA256",
            TlsCipher::Aes256Gcm => "TLS_AES_256_GCM_SHA384",
            TlsCipher::Chacha20Poly1305 => "TLS_CHACHA20_POLY1305_SHA256",
        }
    }

    fn of_name(name: &str) -> Option<TlsCipher> {
        let name = name.trim();
        TlsCipher::ALL.into_iter().find(|cipher| {
            name.eq_ignore_ascii_case(cipher.name())
                || name.eq_ignore_ascii_case(cipher.iana_name())
                || (*cipher == TlsCipher::Chacha20Poly1305 && name.eq_ignore_ascii_case("chacha20"))
        })
    }

    fn suite(self) -> rustls::SupportedCipherSuite {
        use rustls::crypto::ring::cipher_suite;
        match self {
            TlsCipher::Aes128Gcm => cipher_suite::TLS13_AES_128_GCM_SHA256,
            TlsCipher::Aes256Gcm => cipher_suite::TLS13_AES_256_GCM_SHA384,
            TlsCipher::Chacha20Poly1305 => cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        }
    }
}

impl fmt::Display for TlsCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which cipher suites a TLS server accepts, and whose order of preference decides.
///
/// The default accepts all three and takes the client's first choice among them (a
/// client knows whether it has AES instructions: GnuTLS puts ChaCha20 first where it
/// has none; GnuTLS elsewhere, OpenSSL and rustls ask for AES-256-GCM first). A list
/// given with `--tls-ciphers`
/// (`aes128-gcm,aes256-gcm`) accepts only those suites and the server's order wins,
/// as with GnuTLS's `%SERVER_PRECEDENCE` or OpenSSL's `SSL_OP_CIPHER_SERVER_PREFERENCE`:
/// whoever writes a list means its first entry. A client that offers none of them
/// fails the handshake (`handshake_failure`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsCiphers {
    suites: Vec<TlsCipher>,
    server_order: bool,
}

impl Default for TlsCiphers {
    fn default() -> TlsCiphers {
        TlsCiphers {
            suites: TlsCipher::ALL.to_vec(),
            server_order: false,
        }
    }
}

impl TlsCiphers {
    /// The suites accepted, in the order the server prefers them.
    pub fn suites(&self) -> &[TlsCipher] {
        &self.suites
    }

    /// Whether the server's order decides (a list was given) rather than the client's.
    pub fn server_order(&self) -> bool {
        self.server_order
    }
}

impl std::str::FromStr for TlsCiphers {
    type Err = TlsError;

    /// A comma-separated list of suite names (`aes128-gcm`, `aes256-gcm`,
    /// `chacha20-poly1305` or `chacha20`, or the IANA names), most preferred first.
    fn from_str(list: &str) -> Result<TlsCiphers, TlsError> {
        let mut suites = Vec::new();
        for name in list.split(',') {
            let cipher = TlsCipher::of_name(name).ok_or_else(|| TlsError::UnknownCipher {
                name: name.trim().to_owned(),
            })?;
            if suites.contains(&cipher) {
                return Err(TlsError::DuplicateCipher(cipher.name()));
            }
            suites.push(cipher);
        }
        Ok(TlsCiphers {
            suites,
            server_order: true,
        })
    }
}

impl fmt::Display for TlsCiphers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.suites.iter().map(|c| c.name()).collect();
        f.write_str(&names.join(","))
    }
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
    /// refused in the TLS handshake). TLS 1.3 only: no renegotiation, no compression;
    /// the cipher suites and whose order decides come from `ciphers`.
    pub fn from_pem_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
        mode: TlsMode,
        ciphers: &TlsCiphers,
    ) -> Result<TlsSettings, Error> {
        let certs = read_certificates(cert, "--tls-cert")?;
        let key_pem = read_file(key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::KeyNotPem {
            path: key.to_owned(),
            detail: e.to_string(),
        })?;
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = ciphers.suites.iter().map(|c| c.suite()).collect();
        let provider = Arc::new(provider);
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
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::KeyMismatch(e.to_string()))?;
        // The record layer after the handshake is atrest's own (see the module doc).
        config.enable_secret_extraction = true;
        config.ignore_client_order = ciphers.server_order;
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

/// Opens the bytes of `data` as TLS 1.3 records from a client, under a fixed test key,
/// and checks what the opener promises: every record opens to at most 2^14 bytes of
/// plaintext inside the record, or is refused; nothing panics. The first byte picks
/// whether the rest is opened as it is (headers, lengths, tags) or is first sealed
/// into records of the sizes and inner bytes it gives (so that the checks after
/// decryption are reached: padding, content types). For
/// `fuzz/fuzz_targets/nbd_tls_record.rs`.
pub fn check_record_opener(data: &[u8]) {
    record::check_opener(data);
}

/// A TLS session after its handshake: the stream for the NBD code, and who the
/// client is.
#[derive(Debug)]
pub(super) struct TlsSession {
    pub stream: TlsStream,
    /// `None` when the server asks for no client certificate.
    pub identity: Option<ClientIdentity>,
}

/// Largest handshake flight buffered from a client (a certificate chain fits many
/// times over); a client sending more is refused.
const MAX_HANDSHAKE_BUFFER: usize = 256 * 1024;

/// Runs the TLS handshake on `tcp` (after `NBD_REP_ACK` to STARTTLS; `early` is what
/// the server had already read past the option) with rustls, then takes the traffic
/// keys out of rustls for the record layer in [`connection`]. The socket keeps its
/// timeouts.
pub(super) fn accept(
    settings: &TlsSettings,
    tcp: TcpStream,
    early: &[u8],
) -> Result<TlsSession, Error> {
    accept_with_limit(settings, tcp, early, u64::MAX)
}

/// [`accept`], with the records per key at most `max_records` (tests use a few, to
/// see keys updated).
fn accept_with_limit(
    settings: &TlsSettings,
    tcp: TcpStream,
    early: &[u8],
    max_records: u64,
) -> Result<TlsSession, Error> {
    let mut tls = UnbufferedServerConnection::new(Arc::clone(&settings.config))
        .map_err(|e| TlsError::Session(e.to_string()))?;
    let mut incoming = early.to_vec();
    let mut filled = incoming.len();
    let mut outgoing = vec![0u8; 16 * 1024];
    let mut queued = 0;
    // Application data that came with the client's Finished (its first option).
    let mut plaintext = Vec::new();
    // The client's close_notify came with its Finished (rustls read it).
    let mut peer_closed = false;
    loop {
        let UnbufferedStatus { discard, state } = tls.process_tls_records(&mut incoming[..filled]);
        let state = match state {
            Ok(state) => state,
            Err(err) => {
                send_handshake_alert(&mut tls, &tcp);
                return Err(TlsError::Handshake(err.to_string()).into());
            }
        };
        let wait_for_client = match state {
            ConnectionState::EncodeTlsData(mut data) => {
                encode(&mut data, &mut outgoing, &mut queued)?;
                false
            }
            ConnectionState::TransmitTlsData(data) => {
                (&tcp)
                    .write_all(&outgoing[..queued])
                    .map_err(|e| TlsError::FinishHandshake(e.to_string()))?;
                queued = 0;
                data.done();
                false
            }
            ConnectionState::ReadTraffic(mut traffic) => {
                while let Some(record) = traffic.next_record() {
                    let record = record.map_err(|e| TlsError::Handshake(e.to_string()))?;
                    plaintext.extend_from_slice(record.payload);
                }
                false
            }
            ConnectionState::BlockedHandshake => true,
            // The server may send from its Finished on; the client's Finished ends
            // the handshake.
            ConnectionState::WriteTraffic(_) => true,
            // Refused below unless the handshake is over: a client may send its
            // Finished, its data and close_notify at once, and rustls then reads
            // them all before this loop sees the handshake end.
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                peer_closed = true;
                true
            }
            _ => {
                return Err(
                    TlsError::Handshake("unexpected handshake state (early data?)".into()).into(),
                )
            }
        };
        if peer_closed && tls.is_handshaking() {
            return Err(TlsError::ClosedInHandshake.into());
        }
        incoming.copy_within(discard..filled, 0);
        filled -= discard;
        if !wait_for_client {
            continue;
        }
        if !tls.is_handshaking() {
            break;
        }
        if incoming.len() - filled < record::MAX_CIPHERTEXT + record::HEADER_LEN {
            let grown = incoming.len() + 64 * 1024;
            if grown > MAX_HANDSHAKE_BUFFER {
                return Err(
                    TlsError::Handshake("the client's handshake is too large".into()).into(),
                );
            }
            incoming.resize(grown, 0);
        }
        match (&tcp).read(&mut incoming[filled..]) {
            Ok(0) => return Err(TlsError::ClosedInHandshake.into()),
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(TlsError::Handshake(err.to_string()).into()),
        }
    }
    let identity = settings.verifies_clients.then(|| {
        tls.peer_certificates()
            .and_then(|chain| chain.first())
            .map(ClientIdentity::of_certificate)
            .unwrap_or_default()
    });
    let (secrets, kernel) = tls
        .dangerous_into_kernel_connection()
        .map_err(|e| TlsError::Session(e.to_string()))?;
    let limit = kernel
        .negotiated_cipher_suite()
        .tls13()
        .map(|suite| suite.common.confidentiality_limit.min(max_records))
        .ok_or_else(|| TlsError::Session("not TLS 1.3".into()))?;
    tracing::debug!(
        suite = ?kernel.negotiated_cipher_suite().suite(),
        "TLS 1.3 session established"
    );
    let stream = TlsStream::new(
        tcp,
        secrets.tx,
        secrets.rx,
        kernel,
        plaintext,
        &incoming[..filled],
        peer_closed,
        limit,
    )
    .map_err(|e| TlsError::Session(e.to_string()))?;
    Ok(TlsSession { stream, identity })
}

/// Appends one handshake record rustls made to `outgoing` (grown to fit).
fn encode(
    data: &mut EncodeTlsData<'_, ServerConnectionData>,
    outgoing: &mut Vec<u8>,
    queued: &mut usize,
) -> Result<(), Error> {
    loop {
        match data.encode(&mut outgoing[*queued..]) {
            Ok(n) => {
                *queued += n;
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                outgoing.resize(*queued + required_size, 0);
            }
            Err(err) => return Err(TlsError::Handshake(err.to_string()).into()),
        }
    }
}

/// After a failed handshake, sends the alert rustls queued (best effort), so the
/// client learns why (a missing or rejected certificate, ...).
fn send_handshake_alert(tls: &mut UnbufferedServerConnection, tcp: &TcpStream) {
    let mut outgoing = vec![0u8; 1024];
    let mut queued = 0;
    while let ConnectionState::EncodeTlsData(mut data) =
        match tls.process_tls_records(&mut []).state {
            Ok(state) => state,
            Err(_) => return,
        }
    {
        if encode(&mut data, &mut outgoing, &mut queued).is_err() {
            return;
        }
    }
    let _ = (&*tcp).write_all(&outgoing[..queued]);
}

#[cfg(test)]
mod session_tests;

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
    fn cipher_lists_parse_in_order_with_either_spelling() {
        let ciphers: TlsCiphers = "aes128-gcm, TLS_AES_256_GCM_SHA384,ChaCha20"
            .parse()
            .unwrap();
        assert_eq!(
            ciphers.suites(),
            [
                TlsCipher::Aes128Gcm,
                TlsCipher::Aes256Gcm,
                TlsCipher::Chacha20Poly1305
            ]
        );
        assert!(ciphers.server_order());
        assert_eq!(
            ciphers.to_string(),
            "aes128-gcm,aes256-gcm,chacha20-poly1305"
        );
        let default = TlsCiphers::default();
        assert_eq!(default.suites().len(), 3);
        assert!(!default.server_order(), "the client's choice by default");
    }

    #[test]
    fn unknown_empty_and_repeated_cipher_names_are_refused() {
        for (list, says) in [
            ("aes-128-cbc", "unknown TLS 1.3 cipher suite 'aes-128-cbc'"),
            ("aes128-gcm,,aes256-gcm", "unknown TLS 1.3 cipher suite ''"),
            ("", "unknown TLS 1.3 cipher suite ''"),
            ("TLS_AES_128_CCM_SHA256", "'TLS_AES_128_CCM_SHA256'"),
            (
                "aes128-gcm,TLS_AES_128_GCM_SHA256",
                "aes128-gcm is listed twice",
            ),
        ] {
            let err = list.parse::<TlsCiphers>().unwrap_err().to_string();
            assert!(err.contains(says), "{list:?}: {err}");
        }
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
