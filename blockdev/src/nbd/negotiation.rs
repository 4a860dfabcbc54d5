//! The handshake's option haggling (fixed newstyle): one [`Negotiation`] per run (in
//! plaintext, and again over TLS after STARTTLS), and the one admission check
//! ([`Negotiation::admit`]) every option naming an export goes through.

use std::io::{Read, Write};
use std::sync::PoisonError;

use tracing::{debug, warn};

use super::proto::{self, ClientFlags, ClientOption, OptionHeader, SessionLimits};
use super::server::{io_error, ConnectionContext, Export, ExportTable, Refusal, DEFAULT_EXPORT};
use super::tls::{ClientIdentity, TlsMode, TlsSettings};
use super::transmission::drain;
use crate::{Error, ProtocolError, RequestError};

/// Audited refusals one negotiation run answers before it closes the connection. Each
/// refusal writes an audit record (an `AttachVolume` refusal in the trail), and options
/// cost the client a few bytes each: without a bound one connection could write records
/// for as long as it liked. A client that is refused this often is probing, not
/// mistaken; a connection has at most two runs (plaintext, then over TLS).
pub const MAX_REFUSALS_PER_NEGOTIATION: u32 = 8;

/// What the handshake settled on.
pub(super) struct Session {
    pub(super) export: Export,
    pub(super) limits: SessionLimits,
}

fn resolve(exports: &ExportTable, name: &str) -> Option<(String, Export)> {
    let table = exports.read().unwrap_or_else(PoisonError::into_inner);
    if let Some(export) = table.get(name) {
        return Some((name.to_owned(), export.clone()));
    }
    if !name.is_empty() {
        return None;
    }
    if let Some(export) = table.get(DEFAULT_EXPORT) {
        return Some((DEFAULT_EXPORT.to_owned(), export.clone()));
    }
    match (table.len(), table.iter().next()) {
        (1, Some((only, export))) => Some((only.clone(), export.clone())),
        _ => None,
    }
}

pub(super) fn read_array<const N: usize>(reader: &mut impl Read) -> Result<[u8; N], Error> {
    let mut buf = [0u8; N];
    reader
        .read_exact(&mut buf)
        .map_err(io_error("reading from the client"))?;
    Ok(buf)
}

fn send_option(writer: &mut impl Write, bytes: &[u8]) -> Result<(), Error> {
    writer
        .write_all(bytes)
        .map_err(io_error("writing an option reply"))
}

/// How a negotiation ended.
pub(super) enum Outcome {
    /// The client aborted.
    Abort,
    /// The client attached to the export of that name (the default export's name
    /// when it asked for `""`).
    Attach(Session, String),
    /// STARTTLS was acknowledged: TLS begins on the socket.
    StartTls(TlsSettings),
}

/// Why an export named in an option is not served to this client.
enum Denial {
    /// No export by that name (the name as the client sent it).
    Unknown(String),
    /// The export is served only over TLS and the client is in plaintext.
    TlsRequired(String),
    /// Not for this client; the refusal is already logged and audited.
    Refused { name: String, reason: String },
}

impl Denial {
    /// The option error reply to option `code` (every option but EXPORT_NAME).
    fn option_error(&self, code: u32) -> Vec<u8> {
        use proto::{option_error, REP_ERR_POLICY, REP_ERR_TLS_REQD, REP_ERR_UNKNOWN};
        match self {
            Denial::Unknown(name) => {
                option_error(code, REP_ERR_UNKNOWN, &format!("no export named {name:?}"))
            }
            Denial::TlsRequired(name) => {
                let message = format!("export {name:?} is served only over TLS");
                option_error(code, REP_ERR_TLS_REQD, &message)
            }
            Denial::Refused { reason, .. } => option_error(code, REP_ERR_POLICY, reason),
        }
    }
}

/// Whether a client may use an export on this connection.
enum Admission {
    Open,
    /// Only over TLS (answered `NBD_REP_ERR_TLS_REQD`).
    TlsRequired,
    /// Not for this client (answered `NBD_REP_ERR_POLICY`); the reason.
    Refused(String),
}

/// One run of the option haggling: in plaintext, or over TLS after STARTTLS (a new
/// run, so nothing negotiated before TLS carries over).
pub(super) struct Negotiation<'a> {
    pub(super) context: &'a ConnectionContext,
    pub(super) client: ClientFlags,
    /// `Some` over TLS, with the client's certificate identity when the server asks
    /// for one.
    pub(super) secured: Option<Option<&'a ClientIdentity>>,
}

impl Negotiation<'_> {
    /// FORCEDTLS before STARTTLS: every option but STARTTLS and ABORT is refused.
    fn tls_forced(&self) -> bool {
        self.secured.is_none()
            && self
                .context
                .gate
                .tls
                .as_ref()
                .is_some_and(|tls| tls.mode() == TlsMode::Require)
    }

    fn admission(&self, export: &Export) -> Admission {
        if self.tls_forced() {
            return Admission::TlsRequired;
        }
        if export.allowed_clients.is_empty() {
            return Admission::Open;
        }
        match (self.secured, &self.context.gate.tls) {
            (Some(Some(identity)), _) if identity.is_any_of(&export.allowed_clients) => {
                Admission::Open
            }
            (Some(Some(identity)), _) => Admission::Refused(format!(
                "the client certificate ({identity}) is not allowed to use this export"
            )),
            (Some(None), _) => Admission::Refused(
                "this export needs a client certificate, and the server asks for none".into(),
            ),
            (None, Some(_)) => Admission::TlsRequired,
            (None, None) => Admission::Refused(
                "this export needs TLS with a client certificate, which this server does not offer"
                    .into(),
            ),
        }
    }

    /// The one admission check: the export the client names (`""` resolves to the
    /// default export), if this client may use it on this connection. Every option
    /// that names an export for use (EXPORT_NAME, INFO, GO, LIST_META_CONTEXT,
    /// SET_META_CONTEXT) comes here, so every refusal is logged and audited the same
    /// way.
    fn admit(&self, requested: &str) -> Result<(String, Export), Denial> {
        let Some((name, export)) = resolve(&self.context.exports, requested) else {
            return Err(Denial::Unknown(requested.to_owned()));
        };
        match self.admission(&export) {
            Admission::Open => Ok((name, export)),
            Admission::TlsRequired => Err(Denial::TlsRequired(name)),
            Admission::Refused(reason) => {
                self.refused(&name, &export, &reason);
                Err(Denial::Refused { name, reason })
            }
        }
    }

    /// Logs a refused attach and tells the audit hook.
    fn refused(&self, name: &str, export: &Export, reason: &str) {
        let client = self.secured.flatten();
        let who = client.map_or_else(|| "no client certificate".to_owned(), |c| c.to_string());
        warn!(
            "{}: refused export {name:?} to {who}: {reason}",
            self.context.peer
        );
        if let Some(audit) = &self.context.gate.audit {
            let key_arn = export.volume.encryption_key_arn();
            audit(&Refusal {
                export: name,
                client,
                peer: &self.context.peer,
                key_arn: key_arn.as_deref(),
                reason,
            });
        }
    }

    /// Answers a denied option and counts it: the refusal that reaches
    /// [`MAX_REFUSALS_PER_NEGOTIATION`] is answered, then the connection is closed.
    fn deny(
        &self,
        writer: &mut impl Write,
        code: u32,
        denial: &Denial,
        refusals: &mut u32,
    ) -> Result<(), Error> {
        send_option(writer, &denial.option_error(code))?;
        if matches!(denial, Denial::Refused { .. }) {
            *refusals += 1;
            if *refusals >= MAX_REFUSALS_PER_NEGOTIATION {
                warn!(
                    "{}: {refusals} refused options; closing the connection",
                    self.context.peer
                );
                return Err(ProtocolError::TooManyRefusals(*refusals).into());
            }
        }
        Ok(())
    }

    /// Runs the option haggling to its end.
    pub(super) fn run(
        &self,
        reader: &mut impl Read,
        writer: &mut impl Write,
    ) -> Result<Outcome, Error> {
        use proto::{
            option_error, option_reply, INFO_BLOCK_SIZE, INFO_DESCRIPTION, INFO_NAME,
            META_BASE_ALLOCATION, META_BASE_ALLOCATION_ID, REP_ACK, REP_ERR_INVALID,
            REP_ERR_POLICY, REP_ERR_TLS_REQD, REP_ERR_TOO_BIG, REP_ERR_UNSUP, REP_INFO,
            REP_META_CONTEXT, REP_SERVER,
        };
        let exports = &self.context.exports;
        let mut structured = false;
        // The export `base:allocation` was selected for, if it was.
        let mut meta_export: Option<String> = None;
        // Audited refusals so far (see [`MAX_REFUSALS_PER_NEGOTIATION`]).
        let mut refusals = 0;
        loop {
            let header = OptionHeader::parse(&read_array(reader)?)?;
            let code = header.option;
            debug!("option {code} with {} bytes of data", header.length);
            if header.length > proto::MAX_OPTION_LENGTH {
                if code == proto::OPT_EXPORT_NAME {
                    return Err(ProtocolError::ExportNameTooLong(header.length).into());
                }
                drain(reader, header.length)?;
                send_option(
                    writer,
                    &option_error(code, REP_ERR_TOO_BIG, "option data too long"),
                )?;
                continue;
            }
            let mut data = vec![0u8; header.length as usize];
            reader
                .read_exact(&mut data)
                .map_err(io_error("reading option data"))?;
            if self.tls_forced() && !matches!(code, proto::OPT_STARTTLS | proto::OPT_ABORT) {
                if code == proto::OPT_EXPORT_NAME {
                    // EXPORT_NAME has no error reply; the spec says to drop the connection.
                    return Err(ProtocolError::ExportNameBeforeStartTls.into());
                }
                let message = "this server requires TLS: send NBD_OPT_STARTTLS first";
                send_option(writer, &option_error(code, REP_ERR_TLS_REQD, message))?;
                continue;
            }
            let option = match proto::parse_option(code, &data) {
                Ok(option) => option,
                // EXPORT_NAME has no error reply; the spec says to drop the connection.
                Err(err) if code == proto::OPT_EXPORT_NAME => return Err(err),
                Err(err) => {
                    send_option(
                        writer,
                        &option_error(code, REP_ERR_INVALID, &err.to_string()),
                    )?;
                    continue;
                }
            };
            match option {
                ClientOption::ExportName(name) => {
                    // EXPORT_NAME has no error reply: a denial drops the connection.
                    let (name, export) = self.admit(&name).map_err(|denial| match denial {
                        Denial::Unknown(name) => RequestError::UnknownExport(name),
                        Denial::TlsRequired(name) => RequestError::ExportNeedsTls(name),
                        Denial::Refused { name, reason } => {
                            RequestError::ExportRefused { name, reason }
                        }
                    })?;
                    export.volume.check_attach()?;
                    let limits = session_limits(&export, structured, false);
                    let flags = proto::transmission_flags(limits.read_only, structured);
                    writer
                        .write_all(&proto::export_name_reply(
                            limits.size,
                            flags,
                            self.client.no_zeroes,
                        ))
                        .map_err(io_error("writing the export reply"))?;
                    return Ok(Outcome::Attach(Session { export, limits }, name));
                }
                ClientOption::Abort => {
                    // The client may already be gone; the spec says not to mind.
                    let _ = writer.write_all(&option_reply(code, REP_ACK, &[]));
                    return Ok(Outcome::Abort);
                }
                ClientOption::StartTls => match (&self.context.gate.tls, self.secured) {
                    (Some(settings), None) => {
                        send_option(writer, &option_reply(code, REP_ACK, &[]))?;
                        return Ok(Outcome::StartTls(settings.clone()));
                    }
                    (Some(_), Some(_)) => {
                        let message = "TLS is already active on this connection";
                        send_option(writer, &option_error(code, REP_ERR_INVALID, message))?;
                    }
                    (None, _) => {
                        let message = "this server is not configured for TLS";
                        send_option(writer, &option_error(code, REP_ERR_UNSUP, message))?;
                    }
                },
                ClientOption::List => {
                    // Exports this client could not use are not shown.
                    let table: Vec<(String, Option<String>)> = exports
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .iter()
                        .filter(|(_, e)| matches!(self.admission(e), Admission::Open))
                        .map(|(name, e)| (name.clone(), e.description.clone()))
                        .collect();
                    for (name, description) in table {
                        let data = proto::rep_server(&name, description.as_deref().unwrap_or(""));
                        send_option(writer, &option_reply(code, REP_SERVER, &data))?;
                    }
                    send_option(writer, &option_reply(code, REP_ACK, &[]))?;
                }
                ClientOption::Info(query) | ClientOption::Go(query) => {
                    debug!(
                        "option {code}: export {:?}, information requested {:?}",
                        query.name, query.info_requests
                    );
                    let (name, export) = match self.admit(&query.name) {
                        Ok(admitted) => admitted,
                        Err(denial) => {
                            self.deny(writer, code, &denial, &mut refusals)?;
                            continue;
                        }
                    };
                    if let Err(err) = export.volume.check_attach() {
                        send_option(
                            writer,
                            &option_error(code, REP_ERR_POLICY, &err.to_string()),
                        )?;
                        continue;
                    }
                    let block_status = meta_export.as_deref() == Some(name.as_str());
                    let limits = session_limits(&export, structured, block_status);
                    let flags = proto::transmission_flags(limits.read_only, structured);
                    let mut infos = vec![proto::info_export(limits.size, flags)];
                    if query.info_requests.contains(&INFO_NAME) {
                        infos.push(proto::info_string(INFO_NAME, &name));
                    }
                    if let (true, Some(text)) = (
                        query.info_requests.contains(&INFO_DESCRIPTION),
                        &export.description,
                    ) {
                        infos.push(proto::info_string(INFO_DESCRIPTION, text));
                    }
                    if query.info_requests.contains(&INFO_BLOCK_SIZE) {
                        infos.push(proto::info_block_size(
                            1,
                            export.volume.block_size(),
                            proto::MAX_PAYLOAD,
                        ));
                    }
                    for info in infos {
                        send_option(writer, &option_reply(code, REP_INFO, &info))?;
                    }
                    send_option(writer, &option_reply(code, REP_ACK, &[]))?;
                    if code == proto::OPT_GO {
                        return Ok(Outcome::Attach(Session { export, limits }, name));
                    }
                }
                ClientOption::StructuredReply => {
                    structured = true;
                    send_option(writer, &option_reply(code, REP_ACK, &[]))?;
                }
                ClientOption::ListMetaContext(query) | ClientOption::SetMetaContext(query) => {
                    if !structured {
                        let message = "negotiate structured replies before metadata contexts";
                        send_option(writer, &option_error(code, REP_ERR_INVALID, message))?;
                        continue;
                    }
                    let name = match self.admit(&query.export) {
                        Ok((name, _)) => name,
                        Err(denial) => {
                            self.deny(writer, code, &denial, &mut refusals)?;
                            continue;
                        }
                    };
                    let listing = code == proto::OPT_LIST_META_CONTEXT;
                    let selected = if query.queries.is_empty() {
                        listing
                    } else {
                        query
                            .queries
                            .iter()
                            .any(|q| q == META_BASE_ALLOCATION || (listing && q == "base:"))
                    };
                    if selected {
                        let id = if listing { 0 } else { META_BASE_ALLOCATION_ID };
                        let data = proto::rep_meta_context(id, META_BASE_ALLOCATION);
                        send_option(writer, &option_reply(code, REP_META_CONTEXT, &data))?;
                    }
                    if !listing {
                        meta_export = selected.then_some(name);
                    }
                    send_option(writer, &option_reply(code, REP_ACK, &[]))?;
                }
                ClientOption::Unsupported(other) => {
                    let message = format!("option {other} is not supported");
                    send_option(writer, &option_error(code, REP_ERR_UNSUP, &message))?;
                }
            }
        }
    }
}

pub(super) fn session_limits(
    export: &Export,
    structured: bool,
    block_status: bool,
) -> SessionLimits {
    SessionLimits {
        size: export.volume.size(),
        read_only: export.read_only(),
        structured,
        block_status,
    }
}
