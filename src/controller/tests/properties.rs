//! Property Get/Set and the CC/CSTS state machine; fabrics commands in the wrong place.

use super::*;

#[test]
fn property_state_machine() {
    let b = Bench::new();
    let ctrlr = b.connect_admin(SUB_A, HOST_1);
    let cap = prop_get(&ctrlr, offset::CAP, true, b.now);
    let cap = u64::from(cap.dw0) | (u64::from(cap.dw1) << 32);
    assert_eq!(cap & 0xFFFF, 127, "MQES = max_queue_depth - 1");
    assert_eq!((cap >> 16) & 1, 1, "CQR");
    assert_eq!((cap >> 24) & 0xFF, 15, "TO");
    assert_eq!((cap >> 37) & 0xFF, 1, "CSS NVM");
    assert_eq!((cap >> 48) & 0xFF, 0, "MPSMIN/MPSMAX 4K");
    // Halves of CAP through 4-byte reads.
    assert_eq!(
        u64::from(prop_get(&ctrlr, offset::CAP, false, b.now).dw0),
        cap & 0xFFFF_FFFF
    );
    assert_eq!(u64::from(prop_get(&ctrlr, 4, false, b.now).dw0), cap >> 32);
    assert_eq!(prop_get(&ctrlr, offset::VS, false, b.now).dw0, 0x0001_0300);
    assert_eq!(prop_get(&ctrlr, offset::AQA, false, b.now).dw0, 0x001F_001F);
    assert_eq!(
        prop_get(&ctrlr, offset::ASQ, true, b.now).status,
        Status::SUCCESS
    );
    // Wrong sizes and offsets.
    let invalid = Status::INVALID_FIELD.with_dnr();
    assert_eq!(prop_get(&ctrlr, offset::VS, true, b.now).status, invalid);
    assert_eq!(prop_get(&ctrlr, 0x40, false, b.now).status, invalid);
    assert_eq!(
        prop_get(&ctrlr, offset::INTMS, false, b.now).status,
        invalid
    );
    assert_eq!(prop_set(&ctrlr, offset::CSTS, 1, b.now).status, invalid);
    assert_eq!(prop_set(&ctrlr, offset::VS, 1, b.now).status, invalid);
    // AQA, ASQ and ACQ read back what was written (halves of ASQ too).
    assert_eq!(
        prop_set(&ctrlr, offset::AQA, 0x000F_0007, b.now).status,
        Status::SUCCESS
    );
    assert_eq!(prop_get(&ctrlr, offset::AQA, false, b.now).dw0, 0x000F_0007);
    assert_eq!(
        prop_set(&ctrlr, offset::AQA, 0x0FFF_0FFF, b.now).status,
        invalid
    );
    prop_set(&ctrlr, offset::ASQ, 0x1000, b.now);
    prop_set(&ctrlr, offset::ASQ + 4, 0x2, b.now);
    let asq = prop_get(&ctrlr, offset::ASQ, true, b.now);
    assert_eq!((asq.dw0, asq.dw1), (0x1000, 0x2));
    assert_eq!(prop_get(&ctrlr, offset::ACQ, true, b.now).dw0, 0);

    // Admin commands before enable are out of sequence.
    let (cqe, _) = identify(&ctrlr, 0x01, 0);
    assert_eq!(cqe.status, Status::COMMAND_SEQUENCE_ERROR.with_dnr());

    // A bad configuration (IOSQES 5) sets CFS, not RDY.
    prop_set(&ctrlr, offset::CC, 0x0045_0001, b.now);
    assert_eq!(prop_get(&ctrlr, offset::CSTS, false, b.now).dw0, 0x2);
    prop_set(&ctrlr, offset::CC, 0, b.now);
    assert_eq!(prop_get(&ctrlr, offset::CSTS, false, b.now).dw0, 0);

    // Enable.
    prop_set(&ctrlr, offset::CC, 0x0046_0001, b.now);
    assert_eq!(prop_get(&ctrlr, offset::CC, false, b.now).dw0, 0x0046_0001);
    assert_eq!(prop_get(&ctrlr, offset::CSTS, false, b.now).dw0, 0x1);
    let epoch = b.attach(&ctrlr, 1);
    assert!(ctrlr.prepare_io_sgl(&read_cmd(1, 0, 0, 4096)).is_ok());

    // Reset (EN 1 -> 0): I/O queues die, I/O is refused.
    prop_set(&ctrlr, offset::CC, 0x0046_0000, b.now);
    assert_eq!(prop_get(&ctrlr, offset::CSTS, false, b.now).dw0, 0);
    assert!(!ctrlr.is_io_queue_live(1, epoch));
    assert_eq!(
        ctrlr.prepare_io_sgl(&read_cmd(1, 0, 0, 4096)).err(),
        Some(Status::COMMAND_SEQUENCE_ERROR.with_dnr())
    );

    // Enable again, then a normal shutdown: SHST complete, I/O stops.
    prop_set(&ctrlr, offset::CC, 0x0046_0001, b.now);
    let again = b.attach(&ctrlr, 1);
    assert!(ctrlr.is_io_queue_live(1, again) && !ctrlr.is_io_queue_live(1, epoch));
    prop_set(&ctrlr, offset::CC, 0x0046_4001, b.now);
    assert_eq!(prop_get(&ctrlr, offset::CSTS, false, b.now).dw0 & 0xC, 0x8);
    assert!(!ctrlr.is_io_queue_live(1, again));
    assert!(ctrlr.prepare_io_sgl(&read_cmd(1, 0, 0, 4096)).is_err());
    // Clearing SHN clears SHST.
    prop_set(&ctrlr, offset::CC, 0x0046_0000, b.now);
    assert_eq!(prop_get(&ctrlr, offset::CSTS, false, b.now).dw0 & 0xC, 0);
}

#[test]
fn fabrics_misuse() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    let mut sqe = Sqe::new(FABRICS, 4);
    sqe.set_fctype(fctype::CONNECT);
    let (cqe, _) = run(&ctrlr, &sqe);
    assert_eq!(cqe.status, Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    sqe.set_fctype(fctype::PROPERTY_GET);
    let epoch = b.attach(&ctrlr, 1);
    assert_eq!(
        ctrlr.handle_io_fabrics(1, epoch, &sqe).status,
        Status::INVALID_QUEUE_TYPE.with_dnr()
    );
    sqe.set_fctype(0x33);
    assert_eq!(
        run(&ctrlr, &sqe).0.status,
        Status::INVALID_OPCODE.with_dnr()
    );
    sqe.set_fctype(fctype::DISCONNECT);
    assert_eq!(run(&ctrlr, &sqe).0.status, Status::SUCCESS);
    // Unknown admin opcode; Create I/O SQ does not exist on fabrics.
    for opc in [0xC5, admin::CREATE_IO_SQ] {
        let (cqe, _) = run(&ctrlr, &admin_cmd(opc, 0, 0, 0, 0));
        assert_eq!(cqe.status, Status::INVALID_OPCODE.with_dnr());
    }
    let (cqe, _) = run(&ctrlr, &admin_cmd(admin::ABORT, 0, 0x0005_0001, 0, 0));
    assert_eq!((cqe.status, cqe.dw0 & 1), (Status::SUCCESS, 1));
}
