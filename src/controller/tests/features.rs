//! Get and Set Features.

use super::*;

#[test]
fn features() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    // Number of Queues: asked 7 (8 queues), max 4 -> 3 (0-based) each.
    let cqe = set_feature(&ctrlr, fid::NUMBER_OF_QUEUES, 0x0007_0007);
    assert_eq!((cqe.status, cqe.dw0), (Status::SUCCESS, 0x0003_0003));
    let cqe = set_feature(&ctrlr, fid::NUMBER_OF_QUEUES, 0x0001_0001);
    assert_eq!(cqe.dw0, 0x0001_0001);
    assert_eq!(
        get_feature(&ctrlr, fid::NUMBER_OF_QUEUES, 0, 0).0.dw0,
        0x0001_0001
    );
    assert_eq!(
        set_feature(&ctrlr, fid::NUMBER_OF_QUEUES, 0xFFFF_0000).status,
        Status::INVALID_FIELD.with_dnr()
    );
    // Saving is refused.
    let (cqe, _) = run(
        &ctrlr,
        &admin_cmd(
            admin::SET_FEATURES,
            0,
            (1 << 31) | u32::from(fid::ARBITRATION),
            0,
            0,
        ),
    );
    assert_eq!(cqe.status, Status::FEATURE_ID_NOT_SAVEABLE.with_dnr());
    // Keep Alive Timer.
    assert_eq!(get_feature(&ctrlr, fid::KEEP_ALIVE_TIMER, 0, 0).0.dw0, 5000);
    set_feature(&ctrlr, fid::KEEP_ALIVE_TIMER, 30_000);
    assert_eq!(ctrlr.kato(), Some(Duration::from_secs(30)));
    // Host Identifier: 16 bytes with EXHID, invalid without; cannot be set.
    let (cqe, data) = get_feature(&ctrlr, fid::HOST_IDENTIFIER, 0, 1);
    assert_eq!((cqe.status, data), (Status::SUCCESS, vec![0x42; 16]));
    assert_eq!(
        get_feature(&ctrlr, fid::HOST_IDENTIFIER, 0, 0).0.status,
        Status::INVALID_FIELD.with_dnr()
    );
    assert_eq!(
        set_feature(&ctrlr, fid::HOST_IDENTIFIER, 1).status,
        Status::COMMAND_SEQUENCE_ERROR.with_dnr()
    );
    // Stored features read back; defaults and capabilities.
    for (id, value) in [
        (fid::ARBITRATION, 0x0102_0303),
        (fid::ERROR_RECOVERY, 0x0000_0010),
        (fid::WRITE_ATOMICITY, 1),
        (fid::ASYNC_EVENT_CONFIG, 0x0000_0100),
    ] {
        assert_eq!(set_feature(&ctrlr, id, value).status, Status::SUCCESS);
        assert_eq!(
            get_feature(&ctrlr, id, 0, 0).0.dw0,
            value,
            "feature {id:#x}"
        );
    }
    assert_eq!(get_feature(&ctrlr, fid::ARBITRATION, 1, 0).0.dw0, 0);
    assert_eq!(get_feature(&ctrlr, fid::ARBITRATION, 3, 0).0.dw0, 0b100);
    assert_eq!(
        set_feature(&ctrlr, fid::POWER_MANAGEMENT, 1).status,
        Status::INVALID_FIELD.with_dnr()
    );
    assert_eq!(
        set_feature(&ctrlr, fid::POWER_MANAGEMENT, 0).status,
        Status::SUCCESS
    );
    // Temperature threshold: over and under kept apart.
    set_feature(&ctrlr, fid::TEMPERATURE_THRESHOLD, 0x0000_0160);
    set_feature(&ctrlr, fid::TEMPERATURE_THRESHOLD, 0x0010_0100);
    assert_eq!(
        get_feature(&ctrlr, fid::TEMPERATURE_THRESHOLD, 0, 0).0.dw0 & 0xFFFF,
        0x160
    );
    assert_eq!(
        get_feature(&ctrlr, fid::TEMPERATURE_THRESHOLD, 0, 0x0010_0000)
            .0
            .dw0
            & 0xFFFF,
        0x100
    );
    // Volatile write cache: off means writes go out with FUA.
    assert_eq!(
        get_feature(&ctrlr, fid::VOLATILE_WRITE_CACHE, 0, 0).0.dw0,
        1
    );
    set_feature(&ctrlr, fid::VOLATILE_WRITE_CACHE, 0);
    let plan = ctrlr
        .prepare_io_sgl(&write_cmd(1, 0, 0, 4096, false))
        .expect("valid");
    assert_eq!(
        plan.op,
        IoOp::Write {
            offset: 0,
            len: 4096,
            fua: true
        }
    );
    // Unknown feature.
    assert_eq!(
        get_feature(&ctrlr, 0x08, 0, 0).0.status,
        Status::INVALID_FIELD.with_dnr()
    );
    // Number of Queues is fixed once I/O queues exist.
    assert!(matches!(
        b.connect_io(&ctrlr, 1, 31),
        ConnectOutcome::Io { .. }
    ));
    assert_eq!(
        set_feature(&ctrlr, fid::NUMBER_OF_QUEUES, 0).status,
        Status::COMMAND_SEQUENCE_ERROR.with_dnr()
    );
}
