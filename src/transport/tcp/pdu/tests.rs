//! Every PDU type emitted and parsed back, with and without digests and padding; junk and
//! every truncation of a valid PDU refused without a panic.

use proptest::prelude::*;

use super::*;
use crate::nvme::{Cqe, Sqe, Status};

const DIGEST_CHOICES: [Digests; 4] = [
    Digests::NONE,
    Digests {
        header: true,
        data: false,
    },
    Digests {
        header: false,
        data: true,
    },
    Digests {
        header: true,
        data: true,
    },
];

fn sqe() -> Sqe {
    let mut sqe = Sqe::new(0x02, 0x1234);
    sqe.set_nsid(1).set_cdw(10, 0xdead_beef).set_cdw(12, 7);
    sqe
}

/// One PDU of every type, the data ones with `data`.
fn samples(data: &[u8]) -> Vec<Pdu<'_>> {
    vec![
        Pdu::IcReq(IcReq {
            pfv: 0,
            hpda: 3,
            header_digest: true,
            data_digest: false,
            maxr2t: 9,
        }),
        Pdu::IcResp(IcResp {
            pfv: 0,
            cpda: 1,
            header_digest: false,
            data_digest: true,
            maxh2cdata: 131_072,
        }),
        Pdu::H2CTermReq(TermReq {
            fes: fes::PDU_SEQUENCE_ERROR,
            fei: 0,
            echo: &[],
        }),
        Pdu::C2HTermReq(TermReq {
            fes: fes::INVALID_HEADER_FIELD,
            fei: 16,
            echo: &[0x06, 0, 24, 24, 32, 0, 0, 0],
        }),
        Pdu::CapsuleCmd(CapsuleCmd {
            sqe: sqe(),
            data: &[],
        }),
        Pdu::CapsuleCmd(CapsuleCmd { sqe: sqe(), data }),
        Pdu::CapsuleResp(CapsuleResp {
            cqe: Cqe::new(0x42, Status::SUCCESS),
        }),
        Pdu::H2CData(DataPdu {
            cccid: 7,
            ttag: 3,
            datao: 4096,
            last: true,
            success: false,
            data,
        }),
        Pdu::C2HData(DataPdu {
            cccid: 9,
            ttag: 0,
            datao: 0,
            last: true,
            success: true,
            data,
        }),
        Pdu::R2t(R2t {
            cccid: 5,
            ttag: 6,
            r2to: 8192,
            r2tl: 4096,
        }),
    ]
}

fn parse(bytes: &[u8], digests: Digests) -> Result<(Pdu<'_>, usize), PduError> {
    let view = PduView::new_checked(bytes, digests)?;
    view.check_data_digest()?;
    Ok((Pdu::parse(&view)?, view.len()))
}

#[test]
fn every_type_round_trips_with_digests_and_padding() {
    let data: Vec<u8> = (0..=255).collect();
    for digests in DIGEST_CHOICES {
        for pda in [0, 1, 7, 31] {
            let framing = Framing { digests, pda };
            for pdu in samples(&data) {
                let mut out = vec![0xEE; 5];
                pdu.emit(&mut out, &framing);
                let bytes = &out[5..];
                let (back, used) = parse(bytes, digests)
                    .unwrap_or_else(|e| panic!("{pdu:?} with {framing:?}: {e}"));
                assert_eq!(back, pdu, "{framing:?}");
                assert_eq!(used, bytes.len(), "{pdu:?} takes the whole emission");
                let mut again = Vec::new();
                back.emit(&mut again, &framing);
                assert_eq!(again, bytes, "{pdu:?} re-emits byte for byte");
            }
        }
    }
}

#[test]
fn data_starts_at_the_receivers_alignment() {
    let framing = Framing {
        digests: Digests {
            header: true,
            data: true,
        },
        pda: 7,
    };
    let mut out = Vec::new();
    DataPdu {
        cccid: 1,
        ttag: 0,
        datao: 0,
        last: true,
        success: false,
        data: b"abcd",
    }
    .emit(&mut out, pdu_type::C2H_DATA, &framing);
    assert_eq!(out[3], 32, "PDO aligned to 32");
    assert_eq!(&out[24..28], &digest(&out[..24]));
    assert!(out[28..32].iter().all(|&b| b == 0), "padding is zero");
    assert_eq!(&out[32..36], b"abcd");
    assert_eq!(&out[36..], &digest(b"abcd"));
    assert_eq!(out[1], flags::HDGSTF | flags::DDGSTF | flags::LAST_PDU);
}

#[test]
fn header_before_data_says_whether_a_digest_follows() {
    let header = DataHeader {
        cccid: 1,
        ttag: 0,
        datao: 0,
        datal: 512,
        last: true,
        success: false,
    };
    for digests in DIGEST_CHOICES {
        let framing = Framing { digests, pda: 0 };
        let mut out = Vec::new();
        assert_eq!(
            header.emit(&mut out, pdu_type::C2H_DATA, &framing),
            digests.data
        );
        assert_eq!(out.len(), 24 + digests.header_len());
        let empty = DataHeader { datal: 0, ..header };
        assert!(!empty.emit(&mut Vec::new(), pdu_type::C2H_DATA, &framing));
    }
}

#[test]
fn term_req_echoes_at_most_128_bytes() {
    let mut out = Vec::new();
    TermReq {
        fes: 1,
        fei: 8,
        echo: &[1; 200],
    }
    .emit(&mut out, pdu_type::C2H_TERM_REQ);
    assert_eq!(out.len(), 24 + 128);
    let view = PduView::new_checked(&out, Digests::NONE).expect("view");
    let term = TermReq::parse_as(&view, pdu_type::C2H_TERM_REQ).expect("term");
    assert_eq!((term.fes, term.fei, term.echo.len()), (1, 8, 128));
}

#[test]
fn lying_lengths_are_errors() {
    let hd = Digests {
        header: true,
        data: true,
    };
    let framing = Framing {
        digests: hd,
        pda: 0,
    };
    let mut c2h = Vec::new();
    DataPdu {
        cccid: 1,
        ttag: 0,
        datao: 0,
        last: true,
        success: false,
        data: b"0123456789",
    }
    .emit(&mut c2h, pdu_type::C2H_DATA, &framing);
    // `c2h` with `bytes` at `at`, its header digest made right again.
    let with = |at: usize, bytes: &[u8]| {
        let mut pdu = c2h.clone();
        pdu[at..at + bytes.len()].copy_from_slice(bytes);
        let d = digest(&pdu[..24]);
        pdu[24..28].copy_from_slice(&d);
        pdu
    };
    let check = |pdu: &[u8]| {
        PduView::new_checked(pdu, hd)
            .and_then(|v| Pdu::parse(&v))
            .map(drop)
    };
    // PLEN shorter than the header.
    assert_eq!(
        check(&with(4, &20u32.to_le_bytes())),
        Err(PduError::ShorterThanHeader)
    );
    // PLEN longer than the bytes there are.
    assert_eq!(
        check(&with(4, &200u32.to_le_bytes())),
        Err(PduError::Truncated)
    );
    // PDO beyond PLEN, and inside the header.
    assert_eq!(check(&with(3, &[250])), Err(PduError::DataOffset));
    assert_eq!(check(&with(3, &[8])), Err(PduError::DataOffset));
    // DATAL beyond the PDU (header digest fixed up so DATAL is what is wrong).
    assert_eq!(
        check(&with(16, &100u32.to_le_bytes())),
        Err(PduError::DataLength)
    );
    // Header digest missing, wrong, or not negotiated.
    assert_eq!(
        check(&with(1, &[flags::DDGSTF])),
        Err(PduError::HeaderDigestFlag)
    );
    let mut bad_hdgst = c2h.clone();
    bad_hdgst[25] ^= 1;
    assert_eq!(check(&bad_hdgst), Err(PduError::HeaderDigest));
    assert_eq!(
        PduView::new_checked(&c2h, Digests::NONE).map(drop),
        Err(PduError::HeaderDigestFlag)
    );
    // Data digest flag dropped.
    assert_eq!(
        check(&with(1, &[flags::HDGSTF | flags::LAST_PDU])),
        Err(PduError::DataDigestFlag)
    );
    // A bad data digest is reported, not fatal to the view.
    let mut bad = c2h.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let view = PduView::new_checked(&bad, hd).expect("view");
    assert!(!view.data_digest_ok());
    assert_eq!(view.check_data_digest(), Err(PduError::DataDigest));
    // An R2T cut short, or with data.
    let mut r2t = Vec::new();
    R2t {
        cccid: 1,
        ttag: 2,
        r2to: 0,
        r2tl: 8,
    }
    .emit(&mut r2t, Digests::NONE);
    let mut short = r2t.clone();
    short[4] = 16;
    assert_eq!(
        PduView::new_checked(&short, Digests::NONE).map(drop),
        Err(PduError::ShorterThanHeader)
    );
    let mut fat = r2t.clone();
    fat[3] = 24;
    fat[4] = 28;
    fat.extend_from_slice(b"data");
    let view = PduView::new_checked(&fat, Digests::NONE).expect("view");
    assert_eq!(R2t::parse(&view), Err(PduError::UnexpectedData));
    // ICResp of the wrong length.
    let mut ic = Vec::new();
    IcResp {
        pfv: 0,
        cpda: 0,
        header_digest: false,
        data_digest: false,
        maxh2cdata: 4096,
    }
    .emit(&mut ic);
    ic[4] = 129;
    ic.push(0);
    assert_eq!(
        PduView::new_checked(&ic, Digests::NONE).map(drop),
        Err(PduError::IcLength)
    );
    assert_eq!(
        PduView::new_checked(&[0x08, 0, 24, 0, 24, 0, 0, 0], Digests::NONE).map(drop),
        Err(PduError::UnknownType(0x08))
    );
}

#[test]
fn every_truncation_of_a_valid_pdu_is_refused() {
    let data = [0x5A; 40];
    for digests in DIGEST_CHOICES {
        let framing = Framing { digests, pda: 1 };
        for pdu in samples(&data) {
            let mut bytes = Vec::new();
            pdu.emit(&mut bytes, &framing);
            for cut in 0..bytes.len() {
                assert_eq!(
                    PduView::new_checked(&bytes[..cut], digests).map(drop),
                    Err(PduError::Truncated),
                    "{pdu:?} cut at {cut}"
                );
            }
        }
    }
}

fn digests_strategy() -> impl Strategy<Value = Digests> {
    (any::<bool>(), any::<bool>()).prop_map(|(header, data)| Digests { header, data })
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300),
                                digests in digests_strategy()) {
        if let Ok(view) = PduView::new_checked(&bytes, digests) {
            let _ = view.data_digest_ok();
            if let Ok(pdu) = Pdu::parse(&view) {
                let mut out = Vec::new();
                pdu.emit(&mut out, &Framing { digests, pda: 0 });
            }
        }
    }

    #[test]
    fn random_common_headers_never_panic(kind in 0u8..10, pdu_flags in any::<u8>(),
                                         hlen in prop_oneof![Just(24u8), Just(72), Just(128), any::<u8>()],
                                         pdo in any::<u8>(), plen in 0u32..400,
                                         body in proptest::collection::vec(any::<u8>(), 0..400),
                                         digests in digests_strategy()) {
        let mut bytes = vec![kind, pdu_flags, hlen, pdo];
        bytes.extend_from_slice(&plen.to_le_bytes());
        bytes.extend_from_slice(&body);
        if let Ok(view) = PduView::new_checked(&bytes, digests) {
            prop_assert!(view.len() <= bytes.len());
            prop_assert!(view.data().len() <= view.len());
            let _ = view.data_digest_ok();
            let _ = Pdu::parse(&view);
        }
    }

    #[test]
    fn mutated_valid_pdus_never_panic(which in 0usize..10, at in 0usize..400, byte in any::<u8>(),
                                      digests in digests_strategy(), pda in 0u8..32) {
        let data = [0xA5; 64];
        let pdus = samples(&data);
        let mut bytes = Vec::new();
        pdus[which % pdus.len()].emit(&mut bytes, &Framing { digests, pda });
        let at = at % bytes.len();
        bytes[at] = byte;
        if let Ok(view) = PduView::new_checked(&bytes, digests) {
            let _ = view.data_digest_ok();
            let _ = Pdu::parse(&view);
        }
    }
}
