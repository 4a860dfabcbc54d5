//! The NBD wire format (NetworkBlockDevice/nbd `doc/proto.md`): constants, parsers for
//! what a client sends, and encoders for what the server sends.
//!
//! Everything here is a pure function over byte slices: no I/O, no panics on any
//! input, checked arithmetic, trailing bytes rejected. All integers on the wire are
//! big-endian.
//!
//! One file over ~800 lines on purpose: it is one cohesive thing, the wire format of
//! one spec, and a reader checks it against `doc/proto.md` section by section
//! (constants, handshake parsers and replies, request parsing, transmission
//! replies) with every constant in view. Splitting it would part each parser from
//! the constants and encoders it mirrors. Its unit tests live in `proto/tests.rs`.

use crate::volume::Extent;
use crate::{Error, ProtocolError, RequestError};

/// `NBDMAGIC`, the first 8 bytes the server sends.
pub const INIT_PASSWD: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle negotiation, and the magic of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// `NBD_REP_MAGIC`: starts every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// `NBD_REQUEST_MAGIC`: starts every request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// `NBD_SIMPLE_REPLY_MAGIC`: starts every simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// `NBD_STRUCTURED_REPLY_MAGIC`: starts every structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server, 16 bits).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// `NBD_FLAG_NO_ZEROES`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags (32 bits).
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// `NBD_FLAG_C_NO_ZEROES`.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags (16 bits).
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
/// `NBD_FLAG_READ_ONLY`.
pub const FLAG_READ_ONLY: u16 = 1 << 1;
/// `NBD_FLAG_SEND_FLUSH`.
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
/// `NBD_FLAG_SEND_FUA`.
pub const FLAG_SEND_FUA: u16 = 1 << 3;
/// `NBD_FLAG_SEND_TRIM`.
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
/// `NBD_FLAG_SEND_WRITE_ZEROES`.
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// `NBD_FLAG_SEND_DF`.
pub const FLAG_SEND_DF: u16 = 1 << 7;
/// `NBD_FLAG_CAN_MULTI_CONN`.
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// `NBD_FLAG_SEND_CACHE`.
pub const FLAG_SEND_CACHE: u16 = 1 << 10;
/// `NBD_FLAG_SEND_FAST_ZERO`.
pub const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;

/// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
/// `NBD_OPT_ABORT`.
pub const OPT_ABORT: u32 = 2;
/// `NBD_OPT_LIST`.
pub const OPT_LIST: u32 = 3;
/// `NBD_OPT_STARTTLS`.
pub const OPT_STARTTLS: u32 = 5;
/// `NBD_OPT_INFO`.
pub const OPT_INFO: u32 = 6;
/// `NBD_OPT_GO`.
pub const OPT_GO: u32 = 7;
/// `NBD_OPT_STRUCTURED_REPLY`.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// `NBD_OPT_LIST_META_CONTEXT`.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// `NBD_OPT_SET_META_CONTEXT`.
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply types.
pub const REP_ACK: u32 = 1;
/// `NBD_REP_SERVER`.
pub const REP_SERVER: u32 = 2;
/// `NBD_REP_INFO`.
pub const REP_INFO: u32 = 3;
/// `NBD_REP_META_CONTEXT`.
pub const REP_META_CONTEXT: u32 = 4;
/// `NBD_REP_ERR_UNSUP`.
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
/// `NBD_REP_ERR_POLICY`.
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
/// `NBD_REP_ERR_INVALID`.
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
/// `NBD_REP_ERR_TLS_REQD`.
pub const REP_ERR_TLS_REQD: u32 = (1 << 31) + 5;
/// `NBD_REP_ERR_UNKNOWN`.
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
/// `NBD_REP_ERR_TOO_BIG`.
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

/// `NBD_REP_INFO` types.
pub const INFO_EXPORT: u16 = 0;
/// `NBD_INFO_NAME`.
pub const INFO_NAME: u16 = 1;
/// `NBD_INFO_DESCRIPTION`.
pub const INFO_DESCRIPTION: u16 = 2;
/// `NBD_INFO_BLOCK_SIZE`.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Commands.
pub const CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE`.
pub const CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC`.
pub const CMD_DISC: u16 = 2;
/// `NBD_CMD_FLUSH`.
pub const CMD_FLUSH: u16 = 3;
/// `NBD_CMD_TRIM`.
pub const CMD_TRIM: u16 = 4;
/// `NBD_CMD_CACHE`.
pub const CMD_CACHE: u16 = 5;
/// `NBD_CMD_WRITE_ZEROES`.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// `NBD_CMD_BLOCK_STATUS`.
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// `NBD_CMD_FLAG_NO_HOLE`.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// `NBD_CMD_FLAG_DF`.
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// `NBD_CMD_FLAG_REQ_ONE`.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// `NBD_CMD_FLAG_FAST_ZERO`.
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Structured reply flags and chunk types.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// `NBD_REPLY_TYPE_NONE`.
pub const REPLY_TYPE_NONE: u16 = 0;
/// `NBD_REPLY_TYPE_OFFSET_DATA`.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// `NBD_REPLY_TYPE_OFFSET_HOLE`.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// `NBD_REPLY_TYPE_BLOCK_STATUS`.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// `NBD_REPLY_TYPE_ERROR`.
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

/// `base:allocation` state flags.
pub const STATE_HOLE: u32 = 1 << 0;
/// `NBD_STATE_ZERO`.
pub const STATE_ZERO: u32 = 1 << 1;

/// The one metadata context this server knows, and the id it hands out for it.
pub const META_BASE_ALLOCATION: &str = "base:allocation";
/// The id this server gives `base:allocation` in `NBD_REP_META_CONTEXT`.
pub const META_BASE_ALLOCATION_ID: u32 = 1;

/// The largest READ or WRITE payload the server accepts (advertised as the maximum
/// block size).
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;
/// The longest option payload the server reads; longer ones are drained and refused.
pub const MAX_OPTION_LENGTH: u32 = 64 * 1024;
/// The spec's limit for strings (export names, descriptions, error messages).
pub const MAX_STRING: usize = 4096;

/// Bytes in an option header (magic, option, length).
pub const OPTION_HEADER_LEN: usize = 16;
/// Bytes in a request header.
pub const REQUEST_HEADER_LEN: usize = 28;
/// Bytes in a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Bytes in a structured reply chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;
/// A chunk header and the offset of an `NBD_REPLY_TYPE_OFFSET_DATA` chunk.
pub const OFFSET_DATA_HEADER_LEN: usize = CHUNK_HEADER_LEN + 8;

/// The error values the protocol allows in replies. Nothing else goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Errno {
    /// `EPERM`: a write to a read-only export.
    Perm,
    /// `EIO`: the volume could not do it (I/O error, key unavailable).
    Io,
    /// `EINVAL`: a request the server rejects.
    Inval,
    /// `ENOSPC`: no room (a write past the end, a full disk).
    NoSpc,
    /// `EOVERFLOW`: a request larger than the server accepts.
    Overflow,
    /// `ENOTSUP`: not possible as asked (a fast zero that would write).
    NotSup,
}

impl Errno {
    /// The value on the wire.
    pub fn code(self) -> u32 {
        match self {
            Errno::Perm => 1,
            Errno::Io => 5,
            Errno::Inval => 22,
            Errno::NoSpc => 28,
            Errno::Overflow => 75,
            Errno::NotSup => 95,
        }
    }
}

/// What the client answered to the server's handshake flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientFlags {
    /// `NBD_FLAG_C_FIXED_NEWSTYLE`.
    pub fixed_newstyle: bool,
    /// `NBD_FLAG_C_NO_ZEROES`: no 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
    pub no_zeroes: bool,
}

/// Parses the client flags; unknown bits are a protocol violation (the spec says the
/// server must drop the connection).
pub fn parse_client_flags(bytes: [u8; 4]) -> Result<ClientFlags, Error> {
    let flags = u32::from_be_bytes(bytes);
    let known = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;
    if flags & !known != 0 {
        return Err(ProtocolError::UnknownClientFlags(flags & !known).into());
    }
    Ok(ClientFlags {
        fixed_newstyle: flags & FLAG_C_FIXED_NEWSTYLE != 0,
        no_zeroes: flags & FLAG_C_NO_ZEROES != 0,
    })
}

/// The 18 bytes the server opens every connection with.
pub fn server_greeting() -> [u8; 18] {
    let mut out = [0u8; 18];
    out[0..8].copy_from_slice(&INIT_PASSWD.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    out
}

/// The fixed part of a client option: which option, and how many data bytes follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option (`NBD_OPT_*`).
    pub option: u32,
    /// Bytes of option data that follow.
    pub length: u32,
}

impl OptionHeader {
    /// Reads an option header; a wrong magic is a protocol violation.
    pub fn parse(bytes: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, Error> {
        let mut r = Reader::new(bytes);
        let magic = r.u64()?;
        if magic != IHAVEOPT {
            return Err(ProtocolError::OptionMagic(magic).into());
        }
        Ok(OptionHeader {
            option: r.u32()?,
            length: r.u32()?,
        })
    }

    /// The client side of [`OptionHeader::parse`], for test clients and tools.
    pub fn encode(&self) -> [u8; OPTION_HEADER_LEN] {
        let mut out = [0u8; OPTION_HEADER_LEN];
        out[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        out[8..12].copy_from_slice(&self.option.to_be_bytes());
        out[12..16].copy_from_slice(&self.length.to_be_bytes());
        out
    }
}

/// An export and the `NBD_INFO_*` items the client asks about (`NBD_OPT_INFO`/`GO`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportQuery {
    /// The export name (`""` is the default export).
    pub name: String,
    /// The `NBD_INFO_*` items asked for, in order.
    pub info_requests: Vec<u16>,
}

/// `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT` data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaContextQuery {
    /// The export the contexts are for.
    pub export: String,
    /// The context queries (none: all contexts, for LIST).
    pub queries: Vec<String>,
}

/// A client option, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOption {
    /// `NBD_OPT_EXPORT_NAME`: attach to this export (no error reply possible).
    ExportName(String),
    /// `NBD_OPT_ABORT`.
    Abort,
    /// `NBD_OPT_LIST`.
    List,
    /// `NBD_OPT_STARTTLS`: upgrade the connection to TLS (no data).
    StartTls,
    /// `NBD_OPT_INFO`.
    Info(ExportQuery),
    /// `NBD_OPT_GO`.
    Go(ExportQuery),
    /// `NBD_OPT_STRUCTURED_REPLY`.
    StructuredReply,
    /// `NBD_OPT_LIST_META_CONTEXT`.
    ListMetaContext(MetaContextQuery),
    /// `NBD_OPT_SET_META_CONTEXT`.
    SetMetaContext(MetaContextQuery),
    /// An option this server does not implement (answered `NBD_REP_ERR_UNSUP`).
    Unsupported(u32),
}

/// Parses an option's data. `Err(InvalidRequest)` means the option is known but its
/// data is malformed: the server answers `NBD_REP_ERR_INVALID` and goes on.
pub fn parse_option(option: u32, data: &[u8]) -> Result<ClientOption, Error> {
    let mut r = Reader::new(data);
    let parsed = match option {
        OPT_EXPORT_NAME => return Ok(ClientOption::ExportName(string(data, "export name")?)),
        OPT_ABORT => ClientOption::Abort,
        OPT_LIST => ClientOption::List,
        OPT_STARTTLS => ClientOption::StartTls,
        OPT_STRUCTURED_REPLY => ClientOption::StructuredReply,
        OPT_INFO | OPT_GO => {
            let name = r.string("export name")?;
            let count = r.u16()?;
            let mut info_requests = Vec::with_capacity(usize::from(count).min(r.remaining() / 2));
            for _ in 0..count {
                info_requests.push(r.u16()?);
            }
            let query = ExportQuery {
                name,
                info_requests,
            };
            if option == OPT_INFO {
                ClientOption::Info(query)
            } else {
                ClientOption::Go(query)
            }
        }
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
            let export = r.string("export name")?;
            let count = r.u32()?;
            let mut queries = Vec::new();
            for _ in 0..count {
                queries.push(r.string("metadata context query")?);
            }
            let query = MetaContextQuery { export, queries };
            if option == OPT_LIST_META_CONTEXT {
                ClientOption::ListMetaContext(query)
            } else {
                ClientOption::SetMetaContext(query)
            }
        }
        other => return Ok(ClientOption::Unsupported(other)),
    };
    r.finish()?;
    Ok(parsed)
}

/// One option reply: header and data.
pub fn option_reply(option: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let length = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&data[..data.len().min(u32::MAX as usize)]);
    out
}

/// An option error reply carrying a message for the user (nbdinfo prints it).
pub fn option_error(option: u32, reply_type: u32, message: &str) -> Vec<u8> {
    option_reply(option, reply_type, truncate(message).as_bytes())
}

/// `NBD_REP_SERVER` data: the export name, then its description for humans.
pub fn rep_server(name: &str, description: &str) -> Vec<u8> {
    let name = truncate(name);
    let mut out = Vec::new();
    out.extend_from_slice(&len32(name.len()).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(truncate(description).as_bytes());
    out
}

/// `NBD_REP_META_CONTEXT` data.
pub fn rep_meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    out.extend_from_slice(name.as_bytes());
    out
}

/// `NBD_INFO_EXPORT`: size and transmission flags.
pub fn info_export(size: u64, transmission_flags: u16) -> Vec<u8> {
    let mut out = INFO_EXPORT.to_be_bytes().to_vec();
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&transmission_flags.to_be_bytes());
    out
}

/// `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION`.
pub fn info_string(info_type: u16, text: &str) -> Vec<u8> {
    let mut out = info_type.to_be_bytes().to_vec();
    out.extend_from_slice(truncate(text).as_bytes());
    out
}

/// `NBD_INFO_BLOCK_SIZE`.
pub fn info_block_size(minimum: u32, preferred: u32, maximum: u32) -> Vec<u8> {
    let mut out = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    out.extend_from_slice(&minimum.to_be_bytes());
    out.extend_from_slice(&preferred.to_be_bytes());
    out.extend_from_slice(&maximum.to_be_bytes());
    out
}

/// What the server sends after `NBD_OPT_EXPORT_NAME`: size, flags, and 124 zero
/// bytes unless the client negotiated `NO_ZEROES`.
pub fn export_name_reply(size: u64, transmission_flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut out = size.to_be_bytes().to_vec();
    out.extend_from_slice(&transmission_flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
    out
}

/// The transmission flags of an export: every feature the server implements, minus
/// the writing ones on a read-only export. `CAN_MULTI_CONN` holds because every
/// connection to an export shares one volume and the server keeps no cache of its own.
pub fn transmission_flags(read_only: bool, structured: bool) -> u16 {
    let mut flags = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_CACHE | FLAG_CAN_MULTI_CONN;
    if read_only {
        flags |= FLAG_READ_ONLY;
    } else {
        flags |= FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
    }
    if structured {
        flags |= FLAG_SEND_DF;
    }
    flags
}

/// A transmission-phase request header, as the client sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    /// Command flags (`NBD_CMD_FLAG_*`).
    pub flags: u16,
    /// The command (`NBD_CMD_*`).
    pub kind: u16,
    /// The client's handle, echoed in the reply.
    pub cookie: u64,
    /// Byte offset in the export.
    pub offset: u64,
    /// Bytes from `offset` (for a write, the payload's length).
    pub length: u32,
}

impl RequestHeader {
    /// Bad magic is a protocol violation: the stream cannot be resynchronised.
    pub fn parse(bytes: &[u8; REQUEST_HEADER_LEN]) -> Result<RequestHeader, Error> {
        let mut r = Reader::new(bytes);
        let magic = r.u32()?;
        if magic != REQUEST_MAGIC {
            return Err(ProtocolError::RequestMagic(magic).into());
        }
        Ok(RequestHeader {
            flags: r.u16()?,
            kind: r.u16()?,
            cookie: r.u64()?,
            offset: r.u64()?,
            length: r.u32()?,
        })
    }

    /// The client side of [`RequestHeader::parse`], for test clients and tools.
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut out = [0u8; REQUEST_HEADER_LEN];
        out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.kind.to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..28].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    /// Payload bytes that follow this header on the wire, whether or not the request
    /// is accepted (a rejected write's data must still be drained).
    pub fn payload_length(&self) -> u32 {
        if self.kind == CMD_WRITE {
            self.length
        } else {
            0
        }
    }

    /// Checks the request against what was negotiated and the export's bounds, and
    /// returns the command to run. The error says which reply the client gets.
    pub fn validate(&self, session: &SessionLimits) -> Result<Command, Error> {
        let fua = self.flags & CMD_FLAG_FUA != 0;
        let allowed = match self.kind {
            CMD_READ if session.structured => CMD_FLAG_FUA | CMD_FLAG_DF,
            CMD_READ | CMD_WRITE | CMD_DISC | CMD_FLUSH | CMD_TRIM | CMD_CACHE => CMD_FLAG_FUA,
            CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            CMD_BLOCK_STATUS => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
            other => return Err(RequestError::UnknownCommand(other).into()),
        };
        if self.flags & !allowed != 0 {
            return Err(RequestError::FlagsNotValid {
                flags: self.flags & !allowed,
                command: command_name(self.kind),
            }
            .into());
        }
        match self.kind {
            CMD_DISC => return Ok(Command::Disconnect),
            CMD_FLUSH => {
                if self.offset != 0 || self.length != 0 {
                    return Err(RequestError::FlushWithRange.into());
                }
                return Ok(Command::Flush);
            }
            _ => {}
        }
        let writes = matches!(self.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
        if writes && session.read_only {
            return Err(Error::ReadOnly);
        }
        if self.length == 0 {
            return Err(RequestError::ZeroLength {
                command: command_name(self.kind),
            }
            .into());
        }
        if matches!(self.kind, CMD_READ | CMD_WRITE) && self.length > MAX_PAYLOAD {
            return Err(Error::TooLarge {
                length: u64::from(self.length),
                max: u64::from(MAX_PAYLOAD),
            });
        }
        let in_bounds = self
            .offset
            .checked_add(u64::from(self.length))
            .is_some_and(|end| end <= session.size);
        if !in_bounds {
            return Err(Error::OutOfRange {
                offset: self.offset,
                length: u64::from(self.length),
                size: session.size,
            });
        }
        let (offset, length) = (self.offset, self.length);
        Ok(match self.kind {
            CMD_READ => Command::Read { offset, length },
            CMD_WRITE => Command::Write {
                offset,
                length,
                fua,
            },
            CMD_TRIM => Command::Trim {
                offset,
                length,
                fua,
            },
            CMD_CACHE => Command::Cache { offset, length },
            CMD_WRITE_ZEROES => {
                let may_punch = self.flags & CMD_FLAG_NO_HOLE == 0;
                if self.flags & CMD_FLAG_FAST_ZERO != 0 && !may_punch {
                    return Err(Error::NotSupported(
                        "a fast zero that may not punch a hole would have to write data".into(),
                    ));
                }
                Command::WriteZeroes {
                    offset,
                    length,
                    fua,
                    may_punch,
                }
            }
            CMD_BLOCK_STATUS => {
                if !session.block_status {
                    return Err(RequestError::BlockStatusWithoutContext.into());
                }
                Command::BlockStatus {
                    offset,
                    length,
                    one: self.flags & CMD_FLAG_REQ_ONE != 0,
                }
            }
            other => return Err(RequestError::UnknownCommand(other).into()),
        })
    }
}

/// What a request is checked against: the export and what the handshake negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// The export's size in bytes.
    pub size: u64,
    /// The export is offered read-only.
    pub read_only: bool,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// `base:allocation` was selected with `NBD_OPT_SET_META_CONTEXT`.
    pub block_status: bool,
}

/// A validated request: in bounds, flags valid, allowed on the export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `NBD_CMD_READ`.
    Read {
        /// Byte offset in the export.
        offset: u64,
        /// Bytes from `offset`.
        length: u32,
    },
    /// `NBD_CMD_WRITE`; the payload follows the header.
    Write {
        /// Byte offset in the export.
        offset: u64,
        /// Bytes from `offset`.
        length: u32,
        /// `NBD_CMD_FLAG_FUA`: flush before replying.
        fua: bool,
    },
    /// `NBD_CMD_DISC`.
    Disconnect,
    /// `NBD_CMD_FLUSH`.
    Flush,
    /// `NBD_CMD_TRIM`.
    Trim {
        /// Byte offset in the export.
        offset: u64,
        /// Bytes from `offset`.
        length: u32,
        /// `NBD_CMD_FLAG_FUA`: flush before replying.
        fua: bool,
    },
    /// `NBD_CMD_CACHE`.
    Cache {
        /// Byte offset in the export.
        offset: u64,
        /// Bytes from `offset`.
        length: u32,
    },
    /// `NBD_CMD_WRITE_ZEROES`.
    WriteZeroes {
        /// Byte offset in the export.
        offset: u64,
        /// Bytes from `offset`.
        length: u32,
        /// `NBD_CMD_FLAG_FUA`: flush before replying.
        fua: bool,
        /// No `NBD_CMD_FLAG_NO_HOLE`: the range may become a hole.
        may_punch: bool,
    },
    /// `NBD_CMD_BLOCK_STATUS` for `base:allocation`.
    BlockStatus {
        /// Byte offset in the export.
        offset: u64,
        /// Bytes from `offset`.
        length: u32,
        /// `NBD_CMD_FLAG_REQ_ONE`: one descriptor is enough.
        one: bool,
    },
}

/// A command's name for messages and logs (`read`, `write`, ...).
pub fn command_name(kind: u16) -> &'static str {
    match kind {
        CMD_READ => "read",
        CMD_WRITE => "write",
        CMD_DISC => "disconnect",
        CMD_FLUSH => "flush",
        CMD_TRIM => "trim",
        CMD_CACHE => "cache",
        CMD_WRITE_ZEROES => "write zeroes",
        CMD_BLOCK_STATUS => "block status",
        _ => "unknown command",
    }
}

/// A simple reply (no payload follows it except for a successful read).
pub fn simple_reply(cookie: u64, error: Option<Errno>) -> [u8; SIMPLE_REPLY_LEN] {
    let mut out = [0u8; SIMPLE_REPLY_LEN];
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.map_or(0, Errno::code).to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// The header of one structured reply chunk; `length` payload bytes follow.
pub fn chunk_header(
    flags: u16,
    chunk_type: u16,
    cookie: u64,
    length: u32,
) -> [u8; CHUNK_HEADER_LEN] {
    let mut out = [0u8; CHUNK_HEADER_LEN];
    out[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&chunk_type.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out[16..20].copy_from_slice(&length.to_be_bytes());
    out
}

/// The final `NBD_REPLY_TYPE_OFFSET_DATA` chunk's header and offset; `data_len` bytes
/// of data follow. Data longer than a chunk can describe is refused.
pub fn offset_data_header(
    cookie: u64,
    offset: u64,
    data_len: usize,
) -> Result<[u8; OFFSET_DATA_HEADER_LEN], Error> {
    let length = u32::try_from(data_len)
        .ok()
        .and_then(|n| n.checked_add(8))
        .ok_or(Error::TooLarge {
            length: data_len as u64,
            max: u64::from(u32::MAX - 8),
        })?;
    let mut out = [0u8; OFFSET_DATA_HEADER_LEN];
    out[..CHUNK_HEADER_LEN].copy_from_slice(&chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_OFFSET_DATA,
        cookie,
        length,
    ));
    out[CHUNK_HEADER_LEN..].copy_from_slice(&offset.to_be_bytes());
    Ok(out)
}

/// The final `NBD_REPLY_TYPE_OFFSET_HOLE` chunk: `length` bytes at `offset` read as zeros.
pub fn offset_hole_chunk(cookie: u64, offset: u64, length: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..CHUNK_HEADER_LEN].copy_from_slice(&chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_OFFSET_HOLE,
        cookie,
        12,
    ));
    out[20..28].copy_from_slice(&offset.to_be_bytes());
    out[28..32].copy_from_slice(&length.to_be_bytes());
    out
}

/// The final `NBD_REPLY_TYPE_NONE` chunk: success with no payload.
pub fn none_chunk(cookie: u64) -> [u8; CHUNK_HEADER_LEN] {
    chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0)
}

/// The final `NBD_REPLY_TYPE_ERROR` chunk, with a message for the user.
pub fn error_chunk(cookie: u64, errno: Errno, message: &str) -> Vec<u8> {
    let message = truncate(message);
    // `truncate` keeps messages at most MAX_STRING bytes, far below u16::MAX.
    let message_len = u16::try_from(message.len()).unwrap_or(0);
    let message = &message[..usize::from(message_len)];
    let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + 6 + message.len());
    out.extend_from_slice(&chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        6 + u32::from(message_len),
    ));
    out.extend_from_slice(&errno.code().to_be_bytes());
    out.extend_from_slice(&message_len.to_be_bytes());
    out.extend_from_slice(message.as_bytes());
    out
}

/// One `base:allocation` descriptor: a length and its state flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockDescriptor {
    /// Bytes the descriptor covers.
    pub length: u32,
    /// `NBD_STATE_*` flags of the range.
    pub flags: u32,
}

/// Turns a volume's extents into descriptors for a request of `length` bytes: state
/// flags mapped, neighbours with equal flags merged, zero-length extents skipped, the
/// total clipped to the request, one descriptor if `one`. Never empty: when the volume
/// reported nothing usable, the whole range is described as allocated data (status 0
/// is always a safe answer).
pub fn block_descriptors(extents: &[Extent], length: u32, one: bool) -> Vec<BlockDescriptor> {
    let mut out: Vec<BlockDescriptor> = Vec::new();
    let mut left = length;
    for extent in extents {
        if left == 0 {
            break;
        }
        let take = u32::try_from(extent.length).unwrap_or(u32::MAX).min(left);
        if take == 0 {
            continue;
        }
        left -= take;
        let flags =
            if extent.hole { STATE_HOLE } else { 0 } | if extent.zero { STATE_ZERO } else { 0 };
        match out.last_mut() {
            Some(last) if last.flags == flags => last.length += take,
            _ => out.push(BlockDescriptor {
                length: take,
                flags,
            }),
        }
    }
    if out.is_empty() && length > 0 {
        out.push(BlockDescriptor { length, flags: 0 });
    }
    if one {
        out.truncate(1);
    }
    out
}

/// The final `NBD_REPLY_TYPE_BLOCK_STATUS` chunk for one metadata context.
pub fn block_status_chunk(
    cookie: u64,
    context_id: u32,
    descriptors: &[BlockDescriptor],
) -> Vec<u8> {
    let payload_len = descriptors
        .len()
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + 4 + descriptors.len() * 8);
    out.extend_from_slice(&chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        cookie,
        payload_len,
    ));
    out.extend_from_slice(&context_id.to_be_bytes());
    for d in descriptors {
        out.extend_from_slice(&d.length.to_be_bytes());
        out.extend_from_slice(&d.flags.to_be_bytes());
    }
    out
}

/// Cuts a string to the protocol's 4096-byte limit on a character boundary.
pub fn truncate(text: &str) -> &str {
    if text.len() <= MAX_STRING {
        return text;
    }
    let mut end = MAX_STRING;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn string(bytes: &[u8], what: &'static str) -> Result<String, Error> {
    if bytes.len() > MAX_STRING {
        return Err(RequestError::StringTooLong {
            what,
            length: bytes.len(),
            max: MAX_STRING,
        }
        .into());
    }
    let text = std::str::from_utf8(bytes).map_err(|_| RequestError::NotUtf8 { what })?;
    if text.contains('\0') {
        return Err(RequestError::ContainsNul { what }.into());
    }
    Ok(text.to_owned())
}

/// A cursor over untrusted bytes: every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.bytes.len() {
            return Err(RequestError::OptionDataShort {
                wanted: n,
                left: self.bytes.len(),
            }
            .into());
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A string prefixed by its 32-bit length.
    fn string(&mut self, what: &'static str) -> Result<String, Error> {
        let length = self.u32()?;
        let len =
            usize::try_from(length).map_err(|_| RequestError::LengthTooLarge { what, length })?;
        string(self.take(len)?, what)
    }

    fn finish(&self) -> Result<(), Error> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(RequestError::TrailingBytes(self.bytes.len()).into())
        }
    }
}

#[cfg(test)]
mod tests;
