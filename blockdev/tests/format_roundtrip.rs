//! Property tests of the one header parser: valid headers round-trip, and no input,
//! however damaged, makes it panic or decode to something else silently.

use blockdev::format::{Encryption, HeaderDefect, VolumeHeader, WrappedDataKey, HEADER_SIZE};
use proptest::prelude::*;
use uuid::Uuid;

fn any_header() -> impl Strategy<Value = VolumeHeader> {
    let encryption = prop_oneof![
        Just(Encryption::None),
        (
            "[ -~]{1,300}",
            proptest::collection::vec(any::<u8>(), 1..=1024)
        )
            .prop_map(|(key_arn, blob)| {
                Encryption::Aes256XtsPlain64(WrappedDataKey { key_arn, blob })
            }),
    ];
    (
        any::<u128>(),
        1u64..(1 << 40),
        encryption,
        0u64..5,
        any::<bool>(),
    )
        .prop_map(|(id, sectors, encryption, bumps, read_only)| {
            let mut header =
                VolumeHeader::new(Uuid::from_u128(id), sectors * 4096, Encryption::None)
                    .expect("valid size");
            for _ in 0..bumps {
                header = header
                    .with_encryption(Encryption::None)
                    .expect("generation fits");
            }
            header = header
                .with_encryption(encryption)
                .expect("valid encryption");
            if read_only {
                header = header
                    .with_flags(blockdev::format::FLAG_READ_ONLY)
                    .expect("known flag");
            }
            header
        })
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(header in any_header()) {
        let block = header.encode();
        prop_assert_eq!(block.len(), HEADER_SIZE);
        prop_assert_eq!(VolumeHeader::decode(&block), Ok(header));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
        let _ = VolumeHeader::decode(&bytes);
    }

    #[test]
    fn damaged_blocks_are_rejected(header in any_header(), at in 0usize..HEADER_SIZE, flip in 1u8..=255) {
        let mut block = header.encode();
        block[at] ^= flip;
        let decoded = VolumeHeader::decode(&block);
        if at < 8 {
            prop_assert_eq!(decoded, Err(HeaderDefect::NoMagic));
        } else {
            prop_assert_eq!(decoded, Err(HeaderDefect::ChecksumMismatch));
        }
    }

    #[test]
    fn truncated_blocks_are_rejected(header in any_header(), len in 8usize..HEADER_SIZE) {
        let block = header.encode();
        prop_assert_eq!(VolumeHeader::decode(&block[..len]), Err(HeaderDefect::Truncated { len }));
    }
}
