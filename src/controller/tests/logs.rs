//! Get Log Page: every page, offsets, lengths and bounds; admin host data.

use super::*;

#[test]
fn log_pages_and_offsets() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    let (cqe, page) = get_log(&ctrlr, lid::SUPPORTED_LOGS, 1024, 0, false);
    assert_eq!(cqe.status, Status::SUCCESS);
    for id in 0..=5 {
        assert_eq!(page[id * 4], 1, "log {id:#x} supported");
    }
    assert_eq!(page[0x70 * 4], 0);
    let (_, smart) = get_log(&ctrlr, lid::SMART, 512, 0, false);
    assert_eq!((smart.len(), smart[3]), (512, 100));
    let (_, fw) = get_log(&ctrlr, lid::FIRMWARE_SLOT, 512, 0, false);
    assert_eq!(fw[0], 1);
    assert_eq!(
        &fw[8..13],
        env!("CARGO_PKG_VERSION")
            .as_bytes()
            .get(..5)
            .unwrap_or(b"0.1.0")
    );
    let (_, effects) = get_log(&ctrlr, lid::COMMAND_EFFECTS, 4096, 0, false);
    assert_eq!(effects[usize::from(admin::IDENTIFY) * 4], 1);
    assert_eq!(effects[1024 + usize::from(io::WRITE) * 4], 0b11);
    assert_eq!(effects[1024 + usize::from(io::READ) * 4], 0b01);
    for opc in [
        admin::CREATE_IO_SQ,
        admin::DELETE_IO_CQ,
        admin::DOORBELL_BUFFER_CONFIG,
    ] {
        assert_eq!(effects[usize::from(opc) * 4], 0, "{opc:#x} is PCIe's");
    }
    let (cqe, err) = get_log(&ctrlr, lid::ERROR, 128, 0, false);
    assert_eq!((cqe.status, err.len()), (Status::SUCCESS, 128));

    // Offset and length: the same bytes as slicing the whole page.
    let (_, part) = get_log(&ctrlr, lid::COMMAND_EFFECTS, 16, 1024 + 4, false);
    assert_eq!(part, effects[1028..1044].to_vec());
    // Past the end of the page: zero padded up to NUMD.
    let (_, tail) = get_log(&ctrlr, lid::SMART, 64, 480, false);
    assert_eq!(tail.len(), 64);
    assert!(tail[32..].iter().all(|&b| b == 0));
    // Wholly beyond the page: zeroes, as SPDK answers.
    let (cqe, beyond) = get_log(&ctrlr, lid::SMART, 8, 1024, false);
    assert_eq!((cqe.status, beyond), (Status::SUCCESS, vec![0; 8]));
    // Unaligned offset: invalid.
    let invalid = Status::INVALID_FIELD.with_dnr();
    assert_eq!(get_log(&ctrlr, lid::SMART, 4, 2, false).0.status, invalid);
    assert_eq!(
        get_log(&ctrlr, 0x70, 16, 0, false).0.status,
        Status::INVALID_FIELD.with_dnr()
    );
    // NUMDU counts: 0x1_0001 dwords do not fit a 300-byte buffer.
    let mut sqe = admin_cmd(admin::GET_LOG_PAGE, 0, 0, 0, 300);
    GetLogPageCmd {
        lid: lid::COMMAND_EFFECTS,
        lsp: 0,
        rae: false,
        numd: 0x0001_0000,
        offset: 0,
    }
    .emit(&mut sqe);
    assert_eq!(run(&ctrlr, &sqe).0.status, invalid);
    // NUMDU and the upper offset dword are honoured; but no transfer exceeds MDTS (128 KiB
    // here), however large the buffer the host names.
    let mut sqe = admin_cmd(admin::GET_LOG_PAGE, 0, 0, 0, 1 << 30);
    GetLogPageCmd {
        lid: lid::COMMAND_EFFECTS,
        lsp: 0,
        rae: false,
        numd: 0x0001_0000,
        offset: 1 << 32,
    }
    .emit(&mut sqe);
    assert_eq!(run(&ctrlr, &sqe).0.status, invalid);
    let huge = GetLogPageCmd {
        lid: lid::COMMAND_EFFECTS,
        lsp: 0,
        rae: false,
        numd: (64 << 20) - 1,
        offset: 0,
    };
    huge.emit(&mut sqe);
    assert_eq!(run(&ctrlr, &sqe).0.status, invalid, "256 MiB asked for");
    GetLogPageCmd {
        numd: (128 << 10) / 4 - 1,
        offset: 1 << 32,
        ..huge
    }
    .emit(&mut sqe);
    match ctrlr.handle_admin_sgl(&sqe, &[], b.now) {
        AdminOutcome::Complete { cqe, data, zeroes } => {
            assert_eq!(cqe.status, Status::SUCCESS);
            // Wholly past the page: counted as zeroes, nothing stored.
            assert_eq!((data.len(), zeroes), (0, 128 << 10));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn admin_host_data_is_known_before_any_transfer() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    let with_sgl = |opcode: u8, len: u32| {
        let mut sqe = Sqe::new(opcode, 1);
        sqe.set_sgl(Sgl::transport(len));
        ctrlr.admin_host_data_len_sgl(&sqe)
    };
    // Unknown opcodes, even those whose direction bits say host to controller, are refused
    // before any R2T.
    for opcode in [0x01, 0x05, 0x0D, 0x11, 0x81, 0xC1] {
        assert_eq!(
            with_sgl(opcode, 4096),
            Err(Status::INVALID_OPCODE.with_dnr()),
            "opcode {opcode:#x}"
        );
    }
    assert_eq!(with_sgl(admin::IDENTIFY, 4096), Ok(0));
    assert_eq!(with_sgl(admin::SET_FEATURES, 16), Ok(16));
    assert_eq!(
        with_sgl(admin::SET_FEATURES, 1 << 20),
        Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr())
    );
    // Before CC.EN, anything but a fabrics command is out of sequence, known or not.
    let fresh = b.connect_admin(SUB_A, HOST_1);
    for opcode in [0x81, admin::IDENTIFY] {
        let mut sqe = Sqe::new(opcode, 1);
        sqe.set_sgl(Sgl::transport(4096));
        assert_eq!(
            fresh.admin_host_data_len_sgl(&sqe),
            Err(Status::COMMAND_SEQUENCE_ERROR.with_dnr())
        );
    }
}
