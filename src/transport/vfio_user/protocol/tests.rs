use proptest::prelude::*;

use super::*;

/// A buffer pre-filled with junk, so that emit is seen to append and not to rely on zeroes.
fn junk() -> Vec<u8> {
    vec![0xa5; 3]
}

fn emitted(emit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = junk();
    emit(&mut out);
    assert_eq!(&out[..3], &[0xa5; 3], "emit overwrote what was there");
    out.split_off(3)
}

/// One whole command message.
fn message(msg_id: u16, command: Command, flags: u32, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    emit_message(&mut out, msg_id, command, flags, 0, body).unwrap();
    out
}

#[test]
fn header_fixture_both_ways() {
    let bytes = [
        0x34, 0x12, 0x0a, 0x00, 0x24, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00,
    ];
    let header = Header::parse(&bytes).unwrap();
    assert_eq!(
        header,
        Header {
            msg_id: 0x1234,
            command: Command::RegionWrite,
            msg_size: 36,
            flags: flags::NO_REPLY,
            error: 0,
        }
    );
    assert!(header.no_reply());
    assert!(!header.is_error());
    assert_eq!(header.message_type(), MessageType::Command);
    assert_eq!(header.body_len(), 20);
    assert_eq!(emitted(|out| header.emit(out)), bytes);
}

#[test]
fn header_checks_its_size() {
    assert!(matches!(
        Header::parse(&[0; 15]),
        Err(ProtocolError::Truncated {
            needed: 16,
            len: 15,
            ..
        })
    ));
    let mut bytes = [0u8; 16];
    bytes[4] = 15;
    assert!(matches!(
        Header::parse(&bytes),
        Err(ProtocolError::SizeBelowHeader { size: 15 })
    ));
    bytes[4] = 16;
    assert_eq!(Header::parse(&bytes).unwrap().body_len(), 0);
}

#[test]
fn message_types() {
    let header = |flags| Header {
        msg_id: 0,
        command: Command::Version,
        msg_size: 16,
        flags,
        error: 0,
    };
    assert_eq!(header(0).message_type(), MessageType::Command);
    assert_eq!(header(0x31).message_type(), MessageType::Reply);
    assert!(header(0x31).is_error());
    assert_eq!(header(0x5).message_type(), MessageType::Unknown(5));
    assert_eq!(header(0xf).message_type(), MessageType::Unknown(15));
}

#[test]
fn command_codes_round_trip() {
    for code in 0..=0x40u16 {
        let command = Command::from(code);
        assert_eq!(u16::from(command), code);
        let known = (1..=0x12).contains(&code);
        assert_eq!(!matches!(command, Command::Unknown(_)), known, "{code}");
    }
    assert_eq!(Command::from(1), Command::Version);
    assert_eq!(Command::from(5), Command::DeviceGetRegionInfo);
    assert_eq!(Command::from(10), Command::RegionWrite);
    assert_eq!(Command::from(13), Command::DeviceReset);
    assert_eq!(Command::from(0xffff), Command::Unknown(0xffff));
}

#[test]
fn frame_waits_for_whole_messages_and_checks_sizes() {
    let msg = message(7, Command::DeviceReset, 0, |out| {
        out.extend_from_slice(&[1, 2, 3])
    });
    assert_eq!(msg.len(), 19);
    for len in 0..msg.len() {
        assert!(frame(&msg[..len], 100).unwrap().is_none(), "prefix {len}");
    }
    let (header, len) = frame(&msg, 100).unwrap().unwrap();
    assert_eq!(
        (header.msg_id, header.command, len),
        (7, Command::DeviceReset, 19)
    );
    // Bytes of the next message do not change the first one's length.
    let mut two = msg.clone();
    two.extend_from_slice(&msg[..5]);
    assert_eq!(frame(&two, 100).unwrap().unwrap().1, 19);
    // A size above the limit is refused as soon as the header is there.
    assert!(matches!(
        frame(&msg[..16], 18),
        Err(ProtocolError::TooLarge { size: 19, max: 18 })
    ));
    let mut short = msg.clone();
    short[4..8].copy_from_slice(&3u32.to_le_bytes());
    assert!(matches!(
        frame(&short, 100),
        Err(ProtocolError::SizeBelowHeader { size: 3 })
    ));
}

#[test]
fn emit_message_fills_in_the_size_and_replies_echo_the_request() {
    let request = Header {
        msg_id: 0x4242,
        command: Command::DmaUnmap,
        msg_size: 40,
        flags: 0,
        error: 0,
    };
    let mut out = junk();
    emit_reply(&mut out, &request, |out| out.extend_from_slice(&[9; 24])).unwrap();
    let reply = Header::parse(&out[3..]).unwrap();
    assert_eq!(
        reply,
        Header {
            msg_id: 0x4242,
            command: Command::DmaUnmap,
            msg_size: 40,
            flags: flags::TYPE_REPLY,
            error: 0,
        }
    );
    let mut out = Vec::new();
    emit_error_reply(&mut out, &request, 95);
    assert_eq!(out.len(), 16);
    let reply = Header::parse(&out).unwrap();
    assert_eq!(reply.message_type(), MessageType::Reply);
    assert!(reply.is_error());
    assert_eq!(
        (reply.msg_size, reply.error, reply.msg_id),
        (16, 95, 0x4242)
    );
}

/// What QEMU 10.1+ sends (`caps_json` in hw/vfio-user/proxy.c), major 0 minor 0.
const QEMU_CAPS: &str = r#"{"capabilities":{"migration":{"pgsize":4096,"max_bitmap_size":268435456},"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true}}"#;
/// What the `vfio_user` crate's Client sends, major 0 minor 1.
const CLIENT_CAPS: &str = r#"{"capabilities":{"max_msg_fds":1,"max_data_xfer_size":1048576,"migration":{"pgsize":4096}}}"#;

fn version_body(major: u16, minor: u16, text: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&major.to_le_bytes());
    body.extend_from_slice(&minor.to_le_bytes());
    body.extend_from_slice(text);
    body
}

#[test]
fn version_reads_what_qemu_sends() {
    let mut text = QEMU_CAPS.as_bytes().to_vec();
    text.push(0);
    let version = Version::parse(&version_body(0, 0, &text)).unwrap();
    assert_eq!((version.major, version.minor), (0, 0));
    assert_eq!(
        version.capabilities,
        Capabilities {
            max_msg_fds: 16,
            max_data_xfer_size: 1 << 20,
            pgsizes: 4096,
            max_dma_maps: 65535,
            write_multiple: true,
        }
    );
}

#[test]
fn version_reads_what_the_vfio_user_client_sends_and_defaults_the_rest() {
    let mut text = CLIENT_CAPS.as_bytes().to_vec();
    text.push(0);
    let version = Version::parse(&version_body(0, 1, &text)).unwrap();
    assert_eq!((version.major, version.minor), (0, 1));
    assert_eq!(version.capabilities.max_msg_fds, 1);
    assert_eq!(version.capabilities.pgsizes, 4096);
    assert_eq!(version.capabilities.max_dma_maps, 65535);
    assert!(!version.capabilities.write_multiple);
}

#[test]
fn version_without_capabilities_or_terminator() {
    let defaults = Capabilities::default();
    for text in [
        &b""[..],
        b"\0",
        b"{}\0",
        b"{\"capabilities\":{}}",
        b"  \0junk",
    ] {
        let version = Version::parse(&version_body(0, 0, text)).unwrap();
        assert_eq!(version.capabilities, defaults, "{text:?}");
    }
    let version = Version::parse(&version_body(
        0,
        0,
        br#"{"capabilities":{"max_msg_fds":3}}"#,
    ));
    assert_eq!(version.unwrap().capabilities.max_msg_fds, 3);
}

#[test]
fn version_refuses_bad_capabilities() {
    for text in [
        &b"{\0"[..],
        b"[1,2]\0",
        b"{\"capabilities\":{\"max_msg_fds\":\"eight\"}}\0",
        b"{\"capabilities\":{\"max_msg_fds\":-1}}\0",
        b"{\"capabilities\":{\"max_msg_fds\":4294967296}}\0",
        b"{\"capabilities\":[]}\0",
        b"\xff\xfe\0",
    ] {
        assert!(
            matches!(
                Version::parse(&version_body(0, 0, text)),
                Err(ProtocolError::Capabilities(_))
            ),
            "{text:?}"
        );
    }
    assert!(matches!(
        Version::parse(&[0, 0, 0]),
        Err(ProtocolError::Truncated {
            needed: 4,
            len: 3,
            ..
        })
    ));
}

#[test]
fn version_emits_the_fixture_and_round_trips() {
    let version = Version {
        major: 0,
        minor: 0,
        capabilities: Capabilities {
            max_msg_fds: 8,
            max_data_xfer_size: 1 << 20,
            pgsizes: 4096,
            max_dma_maps: 1024,
            write_multiple: false,
        },
    };
    let bytes = emitted(|out| version.emit(out));
    let text = br#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":1024}}"#;
    assert_eq!(&bytes[..4], &[0, 0, 0, 0]);
    assert_eq!(&bytes[4..bytes.len() - 1], text);
    assert_eq!(bytes.last(), Some(&0));
    assert_eq!(Version::parse(&bytes).unwrap(), version);
    // QEMU checks the byte before the end is the NUL and parses the rest as a whole.
    assert!(!bytes[4..bytes.len() - 1].contains(&0));

    let multi = Version {
        major: 0,
        minor: 3,
        capabilities: Capabilities {
            write_multiple: true,
            ..version.capabilities
        },
    };
    let bytes = emitted(|out| multi.emit(out));
    assert!(String::from_utf8_lossy(&bytes).contains("\"write_multiple\":true"));
    assert_eq!(Version::parse(&bytes).unwrap(), multi);
}

#[test]
fn dma_map_fixture_both_ways() {
    let map = DmaMap {
        flags: dma_map_flags::READ | dma_map_flags::WRITE,
        offset: 0x1000,
        iova: 0x1_0000_0000,
        size: 0x20_0000,
    };
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&32u32.to_le_bytes());
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&0x1000u64.to_le_bytes());
    bytes.extend_from_slice(&0x1_0000_0000u64.to_le_bytes());
    bytes.extend_from_slice(&0x20_0000u64.to_le_bytes());
    assert_eq!(DmaMap::parse(&bytes).unwrap(), map);
    assert_eq!(emitted(|out| map.emit(out)), bytes);
    assert!(matches!(
        DmaMap::parse(&bytes[..31]),
        Err(ProtocolError::Truncated {
            needed: 32,
            len: 31,
            ..
        })
    ));
}

#[test]
fn dma_unmap_fixture_both_ways() {
    let unmap = DmaUnmap {
        flags: dma_unmap_flags::ALL,
        iova: 0,
        size: 0,
    };
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&24u32.to_le_bytes());
    bytes.extend_from_slice(&2u32.to_le_bytes());
    bytes.extend_from_slice(&[0; 16]);
    assert_eq!(DmaUnmap::parse(&bytes).unwrap(), unmap);
    assert_eq!(emitted(|out| unmap.emit(out)), bytes);
    // A dirty bitmap after the body is not read.
    bytes.extend_from_slice(&[7; 16]);
    assert_eq!(DmaUnmap::parse(&bytes).unwrap(), unmap);
    assert!(DmaUnmap::parse(&bytes[..23]).is_err());
}

#[test]
fn device_info_both_ways() {
    let info = DeviceInfo {
        flags: device_flags::RESET | device_flags::PCI,
        num_regions: 9,
        num_irqs: 5,
    };
    let bytes = emitted(|out| info.emit(out));
    assert_eq!(bytes, [16, 0, 0, 0, 3, 0, 0, 0, 9, 0, 0, 0, 5, 0, 0, 0]);
    assert_eq!(DeviceInfo::parse(&bytes).unwrap(), info);
    let request = DeviceInfoRequest { argsz: 16 };
    let bytes = emitted(|out| request.emit(out));
    assert_eq!(bytes.len(), 16);
    assert_eq!(DeviceInfoRequest::parse(&bytes).unwrap(), request);
    assert!(DeviceInfoRequest::parse(&bytes[..15]).is_err());
}

#[test]
fn irq_info_both_ways() {
    let info = IrqInfo {
        flags: irq_info_flags::EVENTFD | irq_info_flags::NORESIZE,
        count: 33,
    };
    let bytes = emitted(|out| info.emit(2, out));
    assert_eq!(bytes, [16, 0, 0, 0, 9, 0, 0, 0, 2, 0, 0, 0, 33, 0, 0, 0]);
    assert_eq!(IrqInfo::parse(&bytes).unwrap(), (2, info));
    let request = IrqInfoRequest {
        argsz: 16,
        index: 4,
    };
    let bytes = emitted(|out| request.emit(out));
    assert_eq!(IrqInfoRequest::parse(&bytes).unwrap(), request);
    assert!(IrqInfoRequest::parse(&bytes[..12]).is_err());
}

#[test]
fn irq_set_with_bools_and_with_eventfds() {
    let bools = IrqSet {
        flags: irq_set_flags::DATA_BOOL | irq_set_flags::ACTION_TRIGGER,
        index: 2,
        start: 1,
        count: 3,
        data: vec![1, 0, 1],
    };
    let bytes = emitted(|out| bools.emit(out));
    assert_eq!(&bytes[..4], &23u32.to_le_bytes());
    assert_eq!(bytes.len(), 23);
    assert_eq!(IrqSet::parse(&bytes).unwrap(), bools);
    assert!(matches!(
        IrqSet::parse(&bytes[..22]),
        Err(ProtocolError::Truncated {
            needed: 23,
            len: 22,
            ..
        })
    ));

    let eventfds = IrqSet {
        flags: irq_set_flags::DATA_EVENTFD | irq_set_flags::ACTION_TRIGGER,
        index: 2,
        start: 0,
        count: 4,
        data: Vec::new(),
    };
    let bytes = emitted(|out| eventfds.emit(out));
    assert_eq!(bytes.len(), 20);
    assert_eq!(IrqSet::parse(&bytes).unwrap(), eventfds);
    assert!(IrqSet::parse(&bytes[..19]).is_err());
    // A count of u32::MAX with DATA_BOOL is short, not a huge allocation or a panic.
    let mut huge = bytes.clone();
    huge[4..8].copy_from_slice(&irq_set_flags::DATA_BOOL.to_le_bytes());
    huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(IrqSet::parse(&huge).is_err());
}

#[test]
fn region_access_and_data() {
    let read = RegionAccess {
        offset: 0x1008,
        region: 0,
        count: 4,
    };
    let bytes = emitted(|out| read.emit(out));
    assert_eq!(bytes, [8, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0]);
    assert_eq!(RegionAccess::parse(&bytes).unwrap(), read);

    let payload = [1, 2, 3, 4];
    let write = RegionData {
        offset: 0x1008,
        region: 0,
        data: &payload,
    };
    let mut bytes = emitted(|out| write.emit(out));
    assert_eq!(bytes.len(), 20);
    assert_eq!(RegionData::parse(&bytes).unwrap(), write);
    // A count beyond the data, and data beyond the count, are both refused.
    assert!(matches!(
        RegionData::parse(&bytes[..19]),
        Err(ProtocolError::CountMismatch { count: 4, data: 3 })
    ));
    bytes.push(5);
    assert!(matches!(
        RegionData::parse(&bytes),
        Err(ProtocolError::CountMismatch { count: 4, data: 5 })
    ));
    assert!(RegionData::parse(&bytes[..15]).is_err());
}

fn sparse_reply() -> RegionInfoReply {
    RegionInfoReply {
        argsz: 32 + 16 + 32,
        flags: region_flags::READ | region_flags::WRITE | region_flags::MMAP,
        index: 0,
        size: 0x4000,
        offset: 0x1_0000,
        sparse_mmap: Some(vec![(0x2000, 0x1000), (0x3000, 0x1000)]),
    }
}

#[test]
fn region_info_with_sparse_mmap_layout() {
    let reply = sparse_reply();
    assert_eq!(reply.emitted_len(), 80);
    let bytes = emitted(|out| reply.emit(out));
    assert_eq!(bytes.len(), 80);
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!(u32_at(0), 80, "argsz");
    assert_eq!(u32_at(4), 0xf, "flags: read, write, mmap, caps");
    assert_eq!(u32_at(12), 32, "cap_offset");
    assert_eq!(&bytes[16..24], &0x4000u64.to_le_bytes());
    assert_eq!(&bytes[24..32], &0x1_0000u64.to_le_bytes());
    assert_eq!(&bytes[32..36], &[1, 0, 1, 0], "id 1, version 1");
    assert_eq!(u32_at(36), 0, "next");
    assert_eq!(u32_at(40), 2, "nr_areas");
    assert_eq!(&bytes[48..56], &0x2000u64.to_le_bytes());
    assert_eq!(&bytes[72..80], &0x1000u64.to_le_bytes());
    assert_eq!(RegionInfoReply::parse(&bytes).unwrap(), reply);
}

#[test]
fn region_info_without_capabilities() {
    let reply = RegionInfoReply {
        argsz: 80,
        flags: region_flags::READ,
        index: 7,
        size: 4096,
        offset: 0,
        sparse_mmap: None,
    };
    let bytes = emitted(|out| reply.emit(out));
    assert_eq!(bytes.len(), 32);
    assert_eq!(&bytes[4..8], &1u32.to_le_bytes(), "no CAPS flag");
    assert_eq!(&bytes[12..16], &[0; 4], "no cap_offset");
    assert_eq!(RegionInfoReply::parse(&bytes).unwrap(), reply);
    let request = RegionInfoRequest {
        argsz: 32,
        index: 7,
    };
    let bytes = emitted(|out| request.emit(out));
    assert_eq!(bytes.len(), 32);
    assert_eq!(RegionInfoRequest::parse(&bytes).unwrap(), request);
    assert!(RegionInfoRequest::parse(&bytes[..31]).is_err());
}

#[test]
fn region_info_chain_skips_unknown_capabilities() {
    let mut bytes = emitted(|out| {
        RegionInfoReply {
            sparse_mmap: None,
            ..sparse_reply()
        }
        .emit(out);
    });
    bytes[4..8].copy_from_slice(&(region_flags::MMAP | region_flags::CAPS).to_le_bytes());
    bytes[12..16].copy_from_slice(&32u32.to_le_bytes());
    // An unknown capability (id 3) at 32 pointing at a sparse one at 44.
    bytes.extend_from_slice(&[3, 0, 1, 0, 44, 0, 0, 0, 0xee, 0xee, 0xee, 0xee]);
    bytes.extend_from_slice(&[1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    bytes.extend_from_slice(&0x40u64.to_le_bytes());
    bytes.extend_from_slice(&0x80u64.to_le_bytes());
    let parsed = RegionInfoReply::parse(&bytes).unwrap();
    assert_eq!(parsed.flags, region_flags::MMAP);
    assert_eq!(parsed.sparse_mmap, Some(vec![(0x40, 0x80)]));
}

#[test]
fn region_info_broken_chains_are_errors() {
    let good = emitted(|out| sparse_reply().emit(out));
    let with = |at: usize, value: u32| {
        let mut bytes = good.clone();
        bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        bytes
    };
    for (what, bytes) in [
        ("cap_offset inside the info", with(12, 16)),
        ("cap_offset past the end", with(12, 200)),
        ("cap_offset at the last byte", with(12, 79)),
        ("next points back at itself", with(36, 32)),
        ("next points backwards", with(36, 8)),
        ("next past the end", with(36, 0xffff_ffff)),
        ("more areas than bytes", with(40, 3)),
        ("u32::MAX areas", with(40, u32::MAX)),
    ] {
        assert!(
            matches!(
                RegionInfoReply::parse(&bytes),
                Err(ProtocolError::CapabilityChain { .. })
            ),
            "{what}"
        );
    }
    assert!(RegionInfoReply::parse(&good[..40]).is_err());
}

/// One valid message of each kind the server reads.
fn valid_messages() -> Vec<Vec<u8>> {
    let mut caps = CLIENT_CAPS.as_bytes().to_vec();
    caps.push(0);
    vec![
        message(1, Command::Version, 0, |out| {
            out.extend_from_slice(&version_body(0, 0, &caps))
        }),
        message(2, Command::DmaMap, 0, |out| {
            DmaMap {
                flags: 3,
                offset: 0,
                iova: 0x1000,
                size: 0x1000,
            }
            .emit(out);
        }),
        message(3, Command::DmaUnmap, 0, |out| {
            DmaUnmap {
                flags: 0,
                iova: 0x1000,
                size: 0x1000,
            }
            .emit(out);
        }),
        message(4, Command::DeviceGetInfo, 0, |out| {
            DeviceInfoRequest { argsz: 16 }.emit(out);
        }),
        message(5, Command::DeviceGetRegionInfo, 0, |out| {
            RegionInfoRequest {
                argsz: 32,
                index: 0,
            }
            .emit(out);
        }),
        message(6, Command::DeviceGetIrqInfo, 0, |out| {
            IrqInfoRequest {
                argsz: 16,
                index: 2,
            }
            .emit(out);
        }),
        message(7, Command::DeviceSetIrqs, 0, |out| {
            IrqSet {
                flags: irq_set_flags::DATA_BOOL | irq_set_flags::ACTION_TRIGGER,
                index: 2,
                start: 0,
                count: 2,
                data: vec![1, 1],
            }
            .emit(out);
        }),
        message(8, Command::RegionRead, 0, |out| {
            RegionAccess {
                offset: 0,
                region: 0,
                count: 8,
            }
            .emit(out);
        }),
        message(9, Command::RegionWrite, flags::NO_REPLY, |out| {
            RegionData {
                offset: 0x1000,
                region: 0,
                data: &[1, 0, 0, 0],
            }
            .emit(out);
        }),
        message(10, Command::DeviceReset, 0, |_| {}),
    ]
}

#[test]
fn valid_messages_parse_to_their_requests() {
    let messages = valid_messages();
    let kinds: Vec<_> = messages
        .iter()
        .map(|msg| {
            let (header, len) = frame(msg, 1 << 20).unwrap().unwrap();
            assert_eq!(len, msg.len());
            let request = Request::parse(header.command, &msg[HEADER_LEN..]).unwrap();
            std::mem::discriminant(&request)
        })
        .collect();
    let distinct: std::collections::HashSet<_> = kinds.iter().collect();
    assert_eq!(distinct.len(), kinds.len());
    assert!(matches!(
        Request::parse(Command::RegionWrite, &valid_messages()[8][HEADER_LEN..]),
        Ok(Request::RegionWrite(RegionData {
            offset: 0x1000,
            region: 0,
            data: [1, 0, 0, 0]
        }))
    ));
}

#[test]
fn unserved_commands_are_unsupported_whatever_their_body() {
    for command in [
        Command::DeviceGetRegionIoFds,
        Command::DmaRead,
        Command::DmaWrite,
        Command::DirtyPages,
        Command::RegionWriteMulti,
        Command::DeviceFeature,
        Command::MigDataRead,
        Command::MigDataWrite,
        Command::Unknown(0),
        Command::Unknown(999),
    ] {
        assert_eq!(
            Request::parse(command, &[0xff; 3]).unwrap(),
            Request::Unsupported(command)
        );
    }
    assert_eq!(
        Request::parse(Command::DeviceReset, &[1, 2, 3]).unwrap(),
        Request::DeviceReset
    );
}

#[test]
fn every_prefix_of_a_valid_message_is_incomplete_or_an_error() {
    for msg in valid_messages() {
        let command = Header::parse(&msg).unwrap().command;
        for len in 0..msg.len() {
            assert!(frame(&msg[..len], 1 << 20).unwrap().is_none());
            let body = msg.get(HEADER_LEN..len).unwrap_or(&[]);
            // A body cut short parses to an error, except where the bytes cut off are optional
            // (VERSION's capabilities, RESET's nothing); never a panic.
            let parsed = Request::parse(command, body);
            match command {
                Command::Version | Command::DeviceReset => {}
                _ => assert!(parsed.is_err(), "{command:?} body of {}", body.len()),
            }
        }
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200),
                                code in 0u16..24) {
        let _ = frame(&bytes, 1 << 20);
        if let Ok(Some((header, len))) = frame(&bytes, 1 << 20) {
            let _ = Request::parse(header.command, &bytes[HEADER_LEN..len]);
        }
        let _ = Request::parse(Command::from(code), &bytes);
        let _ = RegionInfoReply::parse(&bytes);
        let _ = IrqInfo::parse(&bytes);
        let _ = DeviceInfo::parse(&bytes);
    }

    #[test]
    fn random_region_info_chains_never_panic(
        mut bytes in proptest::collection::vec(any::<u8>(), 32..160),
        cap_offset in 0u32..170,
    ) {
        bytes[4..8].copy_from_slice(&region_flags::CAPS.to_le_bytes());
        bytes[12..16].copy_from_slice(&cap_offset.to_le_bytes());
        let _ = RegionInfoReply::parse(&bytes);
    }

    #[test]
    fn messages_in_random_cuts_frame_the_same(cuts in proptest::collection::vec(0usize..400, 0..6)) {
        // All valid messages back to back, fed in random pieces: framing finds each whole.
        let stream: Vec<u8> = valid_messages().concat();
        let mut cuts = cuts;
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut buf = Vec::new();
        let mut fed = 0;
        let mut ids = Vec::new();
        for cut in cuts {
            let cut = cut.min(stream.len());
            buf.extend_from_slice(&stream[fed.min(cut)..cut]);
            fed = fed.max(cut);
            while let Some((header, len)) = frame(&buf, 1 << 20).unwrap() {
                Request::parse(header.command, &buf[HEADER_LEN..len]).unwrap();
                ids.push(header.msg_id);
                buf.drain(..len);
            }
        }
        prop_assert_eq!(ids, (1..=10).collect::<Vec<u16>>());
    }
}
