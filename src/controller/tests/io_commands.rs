//! I/O command validation: plans, errors, Dataset Management.

use super::*;

#[test]
fn io_plans() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    let plan = ctrlr
        .prepare_io_sgl(&read_cmd(1, 10, 1, 8192))
        .expect("valid");
    assert_eq!(plan.ns.nsid(), Nsid(1));
    assert_eq!(
        plan.op,
        IoOp::Read {
            offset: 40960,
            len: 8192
        }
    );
    assert_eq!(plan.data_len, 8192);
    let plan = ctrlr
        .prepare_io_sgl(&write_cmd(1, 0, 0, 4096, true))
        .expect("valid");
    assert_eq!(
        plan.op,
        IoOp::Write {
            offset: 0,
            len: 4096,
            fua: true
        }
    );
    let plan = ctrlr
        .prepare_io_sgl(&write_cmd(1, 0, 0, 4096, false))
        .expect("valid");
    assert_eq!(
        plan.op,
        IoOp::Write {
            offset: 0,
            len: 4096,
            fua: false
        }
    );
    let plan = ctrlr
        .prepare_io_sgl(&io_cmd(io::COMPARE, 1, 2, 0, 4096))
        .expect("valid");
    assert_eq!(
        plan.op,
        IoOp::Compare {
            offset: 8192,
            len: 4096
        }
    );
    let plan = ctrlr
        .prepare_io_sgl(&io_cmd(io::FLUSH, 1, 0, 0, 0))
        .expect("valid");
    assert_eq!((plan.op, plan.data_len), (IoOp::Flush, 0));
    // Write Zeroes moves no data and is not bound by MDTS.
    let plan = ctrlr
        .prepare_io_sgl(&io_cmd(io::WRITE_ZEROES, 1, 0, 0xFFFF, 0))
        .expect("valid");
    assert_eq!(
        (plan.op, plan.data_len),
        (
            IoOp::WriteZeroes {
                offset: 0,
                len: 65536 * 4096,
                fua: false
            },
            0
        )
    );
    // The last block is in range.
    assert!(ctrlr.prepare_io_sgl(&read_cmd(1, 65535, 0, 4096)).is_ok());
}

#[test]
fn io_validation_errors() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    let err = |sqe: Sqe| ctrlr.prepare_io_sgl(&sqe).err();
    let dnr = Status::with_dnr;
    assert_eq!(
        err(read_cmd(2, 0, 0, 4096)),
        Some(dnr(Status::INVALID_NAMESPACE))
    );
    assert_eq!(
        err(read_cmd(0, 0, 0, 4096)),
        Some(dnr(Status::INVALID_NAMESPACE))
    );
    assert_eq!(
        err(read_cmd(1, 65535, 1, 8192)),
        Some(dnr(Status::LBA_OUT_OF_RANGE))
    );
    assert_eq!(
        err(read_cmd(1, u64::MAX, 0, 4096)),
        Some(dnr(Status::LBA_OUT_OF_RANGE))
    );
    // 33 blocks of 4 KiB exceed MDTS (128 KiB).
    assert_eq!(
        err(read_cmd(1, 0, 32, 135_168)),
        Some(dnr(Status::INVALID_FIELD))
    );
    assert!(ctrlr.prepare_io_sgl(&read_cmd(1, 0, 31, 131_072)).is_ok());
    // The SGL carries less than NLB blocks.
    assert_eq!(
        err(read_cmd(1, 0, 1, 4096)),
        Some(dnr(Status::DATA_SGL_LENGTH_INVALID))
    );
    // Read-only namespace: reads fine, writes refused.
    assert!(ctrlr.prepare_io_sgl(&read_cmd(3, 0, 0, 4096)).is_ok());
    let wp = Status::new(0, 0x20).with_dnr();
    assert_eq!(err(write_cmd(3, 0, 0, 4096, false)), Some(wp));
    assert_eq!(err(io_cmd(io::WRITE_ZEROES, 3, 0, 0, 0)), Some(wp));
    assert_eq!(err(io_cmd(io::DATASET_MANAGEMENT, 3, 0, 0, 16)), Some(wp));
    // Unsupported opcodes and fused commands.
    assert_eq!(
        err(io_cmd(io::WRITE_UNCORRECTABLE, 1, 0, 0, 0)),
        Some(dnr(Status::INVALID_OPCODE))
    );
    assert_eq!(
        err(io_cmd(0x99, 1, 0, 0, 0)),
        Some(dnr(Status::INVALID_OPCODE))
    );
    let mut fused = read_cmd(1, 0, 0, 4096);
    fused.set_flags(0x01);
    assert_eq!(err(fused), Some(dnr(Status::INVALID_FIELD)));
}

#[test]
fn dataset_management_ranges() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    // NR = 2 (0-based 1), AD set.
    let mut sqe = io_cmd(io::DATASET_MANAGEMENT, 1, 0, 0, 32);
    sqe.set_cdw(10, 1).set_cdw(11, 1 << 2);
    let plan = ctrlr.prepare_io_sgl(&sqe).expect("valid");
    assert_eq!(
        (plan.op.clone(), plan.data_len),
        (IoOp::Deallocate(Vec::new()), 32)
    );
    let mut data = vec![0u8; 32];
    data[4..8].copy_from_slice(&8u32.to_le_bytes());
    data[8..16].copy_from_slice(&16u64.to_le_bytes());
    data[20..24].copy_from_slice(&1u32.to_le_bytes());
    data[24..32].copy_from_slice(&65535u64.to_le_bytes());
    assert_eq!(
        dsm_ranges(&plan.ns, &data),
        Ok(vec![(16 * 4096, 8 * 4096), (65535 * 4096, 4096)])
    );
    data[20..24].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(
        dsm_ranges(&plan.ns, &data),
        Err(Status::LBA_OUT_OF_RANGE.with_dnr())
    );
    assert_eq!(
        dsm_ranges(&plan.ns, &data[..15]),
        Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr())
    );
    // Without AD: nothing to do but receive the data.
    sqe.set_cdw(11, 0);
    assert_eq!(ctrlr.prepare_io_sgl(&sqe).map(|p| p.op), Ok(IoOp::None));
    // SGL shorter than 16 * NR.
    sqe.set_sgl(Sgl::transport(16));
    assert_eq!(
        ctrlr.prepare_io_sgl(&sqe).err(),
        Some(Status::DATA_SGL_LENGTH_INVALID.with_dnr())
    );
}
