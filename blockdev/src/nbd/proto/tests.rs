//! Unit tests of the wire format: parsers against hand-built bytes, encoders
//! against the spec's layouts.

use super::*;
use proptest::prelude::*;

fn limits() -> SessionLimits {
    SessionLimits {
        size: 1 << 20,
        read_only: false,
        structured: true,
        block_status: true,
    }
}

fn request(kind: u16, flags: u16, offset: u64, length: u32) -> RequestHeader {
    RequestHeader {
        flags,
        kind,
        cookie: 7,
        offset,
        length,
    }
}

fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut data = (name.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for info in infos {
        data.extend_from_slice(&info.to_be_bytes());
    }
    data
}

#[test]
fn greeting_is_nbdmagic_ihaveopt_and_flags() {
    let g = server_greeting();
    assert_eq!(&g[0..8], b"NBDMAGIC");
    assert_eq!(&g[8..16], b"IHAVEOPT");
    assert_eq!(&g[16..18], &[0, 3]);
}

#[test]
fn client_flags_with_unknown_bits_are_a_violation() {
    assert_eq!(
        parse_client_flags([0, 0, 0, 3]).unwrap(),
        ClientFlags {
            fixed_newstyle: true,
            no_zeroes: true
        }
    );
    assert!(matches!(
        parse_client_flags([0, 0, 0, 4]),
        Err(Error::Protocol(ProtocolError::UnknownClientFlags(4)))
    ));
}

#[test]
fn go_parses_name_and_info_requests() {
    let parsed = parse_option(OPT_GO, &go_data("disk", &[INFO_NAME, INFO_BLOCK_SIZE])).unwrap();
    assert_eq!(
        parsed,
        ClientOption::Go(ExportQuery {
            name: "disk".into(),
            info_requests: vec![INFO_NAME, INFO_BLOCK_SIZE]
        })
    );
}

#[test]
fn go_with_trailing_bytes_or_short_data_is_invalid() {
    let mut data = go_data("disk", &[]);
    data.push(0);
    assert!(matches!(
        parse_option(OPT_GO, &data),
        Err(Error::InvalidRequest(RequestError::TrailingBytes(1)))
    ));
    let data = go_data("disk", &[INFO_NAME]);
    assert!(matches!(
        parse_option(OPT_INFO, &data[..data.len() - 1]),
        Err(Error::InvalidRequest(RequestError::OptionDataShort {
            wanted: 2,
            left: 1
        }))
    ));
    assert!(matches!(
        parse_option(OPT_GO, &[0xff, 0xff, 0xff, 0xff]),
        Err(Error::InvalidRequest(RequestError::OptionDataShort { .. }))
    ));
}

#[test]
fn options_without_data_reject_data() {
    assert!(matches!(
        parse_option(OPT_LIST, &[1]),
        Err(Error::InvalidRequest(RequestError::TrailingBytes(1)))
    ));
    assert!(matches!(
        parse_option(OPT_STRUCTURED_REPLY, &[1]),
        Err(Error::InvalidRequest(RequestError::TrailingBytes(1)))
    ));
    assert_eq!(parse_option(OPT_ABORT, &[]).unwrap(), ClientOption::Abort);
    assert!(matches!(
        parse_option(OPT_STARTTLS, &[0]),
        Err(Error::InvalidRequest(RequestError::TrailingBytes(1)))
    ));
    assert_eq!(
        parse_option(OPT_STARTTLS, &[]).unwrap(),
        ClientOption::StartTls
    );
}

#[test]
fn unknown_options_are_unsupported_not_errors() {
    assert_eq!(parse_option(4, b"x").unwrap(), ClientOption::Unsupported(4));
    assert_eq!(
        parse_option(99, &[]).unwrap(),
        ClientOption::Unsupported(99)
    );
}

#[test]
fn meta_context_queries_parse() {
    let mut data = go_data("disk", &[]);
    data.truncate(8);
    data.extend_from_slice(&1u32.to_be_bytes());
    data.extend_from_slice(&15u32.to_be_bytes());
    data.extend_from_slice(META_BASE_ALLOCATION.as_bytes());
    assert_eq!(
        parse_option(OPT_SET_META_CONTEXT, &data).unwrap(),
        ClientOption::SetMetaContext(MetaContextQuery {
            export: "disk".into(),
            queries: vec![META_BASE_ALLOCATION.into()]
        })
    );
}

#[test]
fn export_names_must_be_utf8_without_nul() {
    assert!(matches!(
        parse_option(OPT_EXPORT_NAME, &[0xff]),
        Err(Error::InvalidRequest(RequestError::NotUtf8 {
            what: "export name"
        }))
    ));
    assert!(matches!(
        parse_option(OPT_EXPORT_NAME, b"a\0b"),
        Err(Error::InvalidRequest(RequestError::ContainsNul {
            what: "export name"
        }))
    ));
    assert_eq!(
        parse_option(OPT_EXPORT_NAME, b"").unwrap(),
        ClientOption::ExportName(String::new())
    );
}

#[test]
fn bad_request_magic_is_a_violation() {
    let mut bytes = request(CMD_READ, 0, 0, 512).encode();
    bytes[0] ^= 1;
    assert!(matches!(
        RequestHeader::parse(&bytes),
        Err(Error::Protocol(ProtocolError::RequestMagic(magic))) if magic == REQUEST_MAGIC ^ (1 << 24)
    ));
}

#[test]
fn reads_and_writes_in_bounds_are_accepted() {
    assert_eq!(
        request(CMD_READ, CMD_FLAG_DF, 4096, 4096)
            .validate(&limits())
            .unwrap(),
        Command::Read {
            offset: 4096,
            length: 4096
        }
    );
    assert_eq!(
        request(CMD_WRITE, CMD_FLAG_FUA, (1 << 20) - 1, 1)
            .validate(&limits())
            .unwrap(),
        Command::Write {
            offset: (1 << 20) - 1,
            length: 1,
            fua: true
        }
    );
}

#[test]
fn past_the_end_is_out_of_range_even_when_the_sum_overflows() {
    for kind in [
        CMD_READ,
        CMD_WRITE,
        CMD_TRIM,
        CMD_BLOCK_STATUS,
        CMD_CACHE,
        CMD_WRITE_ZEROES,
    ] {
        assert!(matches!(
            request(kind, 0, (1 << 20) - 1, 2).validate(&limits()),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            request(kind, 0, u64::MAX, 2).validate(&limits()),
            Err(Error::OutOfRange { .. })
        ));
    }
}

#[test]
fn writes_to_read_only_exports_are_refused() {
    let ro = SessionLimits {
        read_only: true,
        ..limits()
    };
    for kind in [CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES] {
        assert!(matches!(
            request(kind, 0, 0, 512).validate(&ro),
            Err(Error::ReadOnly)
        ));
    }
    assert!(request(CMD_READ, 0, 0, 512).validate(&ro).is_ok());
}

#[test]
fn unknown_commands_and_flags_are_invalid() {
    assert!(matches!(
        request(42, 0, 0, 512).validate(&limits()),
        Err(Error::InvalidRequest(RequestError::UnknownCommand(42)))
    ));
    assert!(matches!(
        request(CMD_WRITE, CMD_FLAG_NO_HOLE, 0, 512).validate(&limits()),
        Err(Error::InvalidRequest(RequestError::FlagsNotValid {
            flags: CMD_FLAG_NO_HOLE,
            command: "write"
        }))
    ));
    assert!(matches!(
        request(CMD_READ, 1 << 15, 0, 512).validate(&limits()),
        Err(Error::InvalidRequest(RequestError::FlagsNotValid {
            flags: 0x8000,
            command: "read"
        }))
    ));
    let simple = SessionLimits {
        structured: false,
        block_status: false,
        ..limits()
    };
    assert!(request(CMD_READ, CMD_FLAG_DF, 0, 512)
        .validate(&simple)
        .is_err());
    assert!(request(CMD_BLOCK_STATUS, 0, 0, 512)
        .validate(&simple)
        .is_err());
}

#[test]
fn oversize_payloads_are_too_large() {
    let big = SessionLimits {
        size: u64::MAX,
        ..limits()
    };
    assert!(matches!(
        request(CMD_WRITE, 0, 0, MAX_PAYLOAD + 1).validate(&big),
        Err(Error::TooLarge { .. })
    ));
    assert_eq!(
        request(CMD_WRITE, 0, 0, MAX_PAYLOAD + 1).payload_length(),
        MAX_PAYLOAD + 1
    );
    assert!(request(CMD_TRIM, 0, 0, u32::MAX).validate(&big).is_ok());
}

#[test]
fn fast_zero_that_may_not_punch_is_not_supported() {
    assert!(matches!(
        request(
            CMD_WRITE_ZEROES,
            CMD_FLAG_FAST_ZERO | CMD_FLAG_NO_HOLE,
            0,
            512
        )
        .validate(&limits()),
        Err(Error::NotSupported(_))
    ));
    assert_eq!(
        request(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 0, 512)
            .validate(&limits())
            .unwrap(),
        Command::WriteZeroes {
            offset: 0,
            length: 512,
            fua: false,
            may_punch: true
        }
    );
}

#[test]
fn flush_must_have_zero_offset_and_length() {
    assert_eq!(
        request(CMD_FLUSH, 0, 0, 0).validate(&limits()).unwrap(),
        Command::Flush
    );
    assert!(request(CMD_FLUSH, 0, 0, 1).validate(&limits()).is_err());
}

#[test]
fn descriptors_merge_clip_and_never_come_back_empty() {
    let e = |length, hole, zero| Extent { length, hole, zero };
    let got = block_descriptors(
        &[
            e(4096, false, false),
            e(4096, true, true),
            e(8192, true, true),
            e(1 << 40, false, false),
        ],
        20000,
        false,
    );
    assert_eq!(
        got,
        vec![
            BlockDescriptor {
                length: 4096,
                flags: 0
            },
            BlockDescriptor {
                length: 12288,
                flags: STATE_HOLE | STATE_ZERO
            },
            BlockDescriptor {
                length: 3616,
                flags: 0
            },
        ]
    );
    assert_eq!(
        block_descriptors(&[e(4096, true, true), e(4096, false, false)], 8192, true).len(),
        1
    );
    assert_eq!(
        block_descriptors(&[], 512, false),
        vec![BlockDescriptor {
            length: 512,
            flags: 0
        }]
    );
}

#[test]
fn error_chunk_messages_are_capped() {
    let chunk = error_chunk(1, Errno::Io, &"é".repeat(5000));
    let message_len = u16::from_be_bytes([chunk[24], chunk[25]]) as usize;
    assert!(message_len <= MAX_STRING);
    assert_eq!(chunk.len(), CHUNK_HEADER_LEN + 6 + message_len);
    assert!(std::str::from_utf8(&chunk[26..]).is_ok());
}

proptest! {
    #[test]
    fn request_headers_round_trip(flags: u16, kind: u16, cookie: u64, offset: u64, length: u32) {
        let header = RequestHeader { flags, kind, cookie, offset, length };
        prop_assert_eq!(RequestHeader::parse(&header.encode()).unwrap(), header);
    }

    #[test]
    fn option_headers_round_trip(option: u32, length: u32) {
        let header = OptionHeader { option, length };
        prop_assert_eq!(OptionHeader::parse(&header.encode()).unwrap(), header);
    }

    #[test]
    fn go_round_trips(name in "[a-z0-9/_.-]{0,64}", infos in proptest::collection::vec(any::<u16>(), 0..8)) {
        let parsed = parse_option(OPT_GO, &go_data(&name, &infos)).unwrap();
        prop_assert_eq!(parsed, ClientOption::Go(ExportQuery { name, info_requests: infos }));
    }

    #[test]
    fn option_parser_never_panics(option in 0u32..16, data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_option(option, &data);
    }

    #[test]
    fn validated_requests_are_in_bounds(flags: u16, kind in 0u16..10, offset: u64, length: u32, size: u64) {
        let session = SessionLimits { size, ..limits() };
        let header = RequestHeader { flags, kind, cookie: 0, offset, length };
        if let Ok(cmd) = header.validate(&session) {
            let range = match cmd {
                Command::Read { offset, length }
                | Command::Write { offset, length, .. }
                | Command::Trim { offset, length, .. }
                | Command::Cache { offset, length }
                | Command::WriteZeroes { offset, length, .. }
                | Command::BlockStatus { offset, length, .. } => Some((offset, length)),
                Command::Disconnect | Command::Flush => None,
            };
            if let Some((offset, length)) = range {
                prop_assert!(length > 0);
                prop_assert!(offset.checked_add(u64::from(length)).is_some_and(|end| end <= size));
            }
        }
    }

    #[test]
    fn descriptors_cover_at_most_the_request(
        extents in proptest::collection::vec((0u64..100_000, any::<bool>(), any::<bool>()), 0..20),
        length in 1u32..1_000_000,
        one: bool,
    ) {
        let extents: Vec<Extent> = extents.into_iter().map(|(length, hole, zero)| Extent { length, hole, zero }).collect();
        let got = block_descriptors(&extents, length, one);
        prop_assert!(!got.is_empty());
        prop_assert!(got.iter().all(|d| d.length > 0));
        prop_assert!(got.iter().map(|d| u64::from(d.length)).sum::<u64>() <= u64::from(length));
    }
}
