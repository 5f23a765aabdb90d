//! Identify: controller, namespaces, lists and descriptors.

use super::*;

#[test]
fn identify_controller_matches_nvmet_where_it_applies() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    let (cqe, page) = identify(&ctrlr, 0x01, 0);
    assert_eq!(cqe.status, Status::SUCCESS);
    assert_eq!(page.len(), 4096);
    let id = IdentifyController::parse(&page).expect("4096 bytes");
    let fx = fixture("nvmet-id-ctrl.json");
    let num = |k: &str| fx[k].as_u64().unwrap_or_else(|| panic!("{k} in fixture"));
    assert_eq!(u64::from(id.vid), num("vid"));
    assert_eq!(u64::from(id.ssvid), num("ssvid"));
    assert_eq!(id.sn, fx["sn"].as_str().expect("sn"));
    assert_eq!(u64::from(id.rab), num("rab"));
    assert_eq!(u64::from(id.ver), num("ver"));
    assert_eq!(u64::from(id.ctratt), num("ctratt"));
    assert_eq!(u64::from(id.cntrltype), num("cntrltype"));
    assert_eq!(u64::from(id.acl), num("acl"));
    assert_eq!(u64::from(id.aerl), num("aerl"));
    assert_eq!(u64::from(id.frmw), num("frmw"));
    assert_eq!(u64::from(id.lpa), num("lpa"));
    assert_eq!(u64::from(id.elpe), num("elpe"));
    assert_eq!(u64::from(id.npss), num("npss"));
    assert_eq!(u64::from(id.kas), num("kas"));
    assert_eq!(u64::from(id.sqes), num("sqes"));
    assert_eq!(u64::from(id.cqes), num("cqes"));
    assert_eq!(u64::from(id.nn), num("nn"));
    assert_eq!(u64::from(id.mnan), num("mnan"));
    assert_eq!(u64::from(id.fuses), num("fuses"));
    // nvmet: DSM + Write Zeroes; this target adds Compare.
    assert_eq!(u64::from(id.oncs) & num("oncs"), num("oncs"));
    assert_eq!(u64::from(id.oncs) & 1, 1);
    // OAES: nvmet also reports ANA changes; the namespace attribute notice must match.
    assert_eq!(u64::from(id.oaes) & 0x100, num("oaes") & 0x100);
    // SGLS: nvmet sets supported + offset; this target adds transport data blocks.
    assert_eq!(u64::from(id.sgls) & num("sgls"), num("sgls"));
    // in_capsule_data_size 16384, as nvmet's inline_data_size here.
    assert_eq!(u64::from(id.ioccsz), num("ioccsz"));
    assert_eq!(u64::from(id.iorcsz), num("iorcsz"));
    assert_eq!(u64::from(id.icdoff), num("icdoff"));
    assert_eq!(u64::from(id.fcatt), num("fcatt"));
    assert_eq!(u64::from(id.msdbd), num("msdbd"));
    assert_eq!(u64::from(id.vwc) & 1, num("vwc"));
    let psd = &fx["psds"][0];
    assert_eq!(
        Some(u64::from(id.psd0.max_power)),
        psd["max_power"].as_u64()
    );
    assert_eq!(
        Some(u64::from(id.psd0.entry_lat)),
        psd["entry_lat"].as_u64()
    );
    // Values from this target's configuration.
    assert_eq!(id.subnqn, SUB_A);
    assert_eq!(id.cntlid, ctrlr.cntlid().0);
    assert_eq!(id.mn, "nvmf-tgt");
    assert_eq!(id.mdts, 5, "128 KiB = 2^5 pages of 4 KiB");
    assert_eq!(id.maxcmd, 128);
    // Truncated to the SGL length.
    let (_, short) = run(&ctrlr, &admin_cmd(admin::IDENTIFY, 0, 1, 0, 100));
    assert_eq!(short.len(), 100);
}

#[test]
fn identify_namespace_and_lists() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    let (cqe, page) = identify(&ctrlr, 0x00, 1);
    assert_eq!(cqe.status, Status::SUCCESS);
    let id = IdentifyNamespace::parse(&page).expect("page");
    let fx = fixture("nvmet-id-ns.json");
    assert_eq!(Some(id.nsze), fx["nsze"].as_u64());
    assert_eq!(Some(id.ncap), fx["ncap"].as_u64());
    assert_eq!(Some(id.nuse), fx["nuse"].as_u64());
    assert_eq!(Some(u64::from(id.nlbaf)), fx["nlbaf"].as_u64());
    assert_eq!(Some(u64::from(id.flbas)), fx["flbas"].as_u64());
    assert_eq!(Some(u64::from(id.nmic)), fx["nmic"].as_u64());
    assert_eq!(
        Some(u64::from(id.lbaf0_lbads)),
        fx["lbafs"][0]["ds"].as_u64()
    );
    assert_eq!(id.nsattr, 0);
    // Unlike nvmet's all-zero IDs, these are never zero.
    assert!(id.nguid.iter().any(|&b| b != 0));
    assert!(id.eui64.iter().any(|&b| b != 0));
    let ns1 = b
        .reg
        .subsystem(SUB_A)
        .and_then(|s| s.namespace(Nsid(1)))
        .expect("ns 1");
    assert_eq!(id.nguid, ns1.nguid());

    // Read-only namespace is write protected.
    let (_, page) = identify(&ctrlr, 0x00, 3);
    assert_eq!(IdentifyNamespace::parse(&page).map(|i| i.nsattr), Some(1));
    // Inactive NSID: zeroed page; NSID 0 and broadcast: invalid.
    let (cqe, page) = identify(&ctrlr, 0x00, 2);
    assert_eq!(cqe.status, Status::SUCCESS);
    assert!(page.iter().all(|&b| b == 0));
    for nsid in [0, 0xFFFF_FFFF, 5000] {
        assert_eq!(
            identify(&ctrlr, 0x00, nsid).0.status,
            Status::INVALID_NAMESPACE.with_dnr()
        );
    }

    // Active list: above the given NSID, ascending.
    let (_, page) = identify(&ctrlr, 0x02, 0);
    assert_eq!(&page[..12], &[1, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]);
    let (_, page) = identify(&ctrlr, 0x02, 1);
    assert_eq!(&page[..8], &[3, 0, 0, 0, 0, 0, 0, 0]);

    // Descriptors: EUI-64, NGUID, UUID, CSI, matching the namespace.
    let (_, page) = identify(&ctrlr, 0x03, 1);
    let descs = NsDescriptor::parse_list(&page);
    assert_eq!(descs, ns1.descriptors().to_vec());
    assert_eq!(descs[2], NsDescriptor::Uuid(ns1.uuid()));
    assert_eq!(
        identify(&ctrlr, 0x03, 2).0.status,
        Status::INVALID_NAMESPACE.with_dnr()
    );

    // Other CNS values.
    assert_eq!(identify(&ctrlr, 0x05, 1).0.status, Status::SUCCESS);
    assert_eq!(identify(&ctrlr, 0x06, 0).0.status, Status::SUCCESS);
    let (_, page) = identify(&ctrlr, 0x08, 3);
    assert_eq!((page[1], page[8], page[14]), (1, 1, 1));
    let (_, page) = identify(&ctrlr, 0x1C, 0);
    assert_eq!(page[0], 1);
    assert_eq!(
        identify(&ctrlr, 0x10, 0).0.status,
        Status::INVALID_FIELD.with_dnr()
    );
    // CSI other than NVM.
    let (cqe, _) = run(&ctrlr, &admin_cmd(admin::IDENTIFY, 1, 0x05, 2 << 24, 4096));
    assert_eq!(cqe.status, Status::INVALID_FIELD.with_dnr());
}

#[test]
fn configured_ids_are_used_and_derived_ones_differ_per_subsystem() {
    let mut spec = ns(1, 8, false);
    spec.nguid = Some([9; 16]);
    spec.uuid = Some([7; 16]);
    let ns_a = Namespace::new(spec, SUB_A).expect("valid");
    assert_eq!(ns_a.nguid(), [9; 16]);
    assert_eq!(ns_a.uuid(), [7; 16]);
    let b = Bench::new();
    let a1 = b
        .reg
        .subsystem(SUB_A)
        .and_then(|s| s.namespace(Nsid(1)))
        .expect("a/1");
    let b1 = b
        .reg
        .subsystem(SUB_B)
        .and_then(|s| s.namespace(Nsid(1)))
        .expect("b/1");
    assert_ne!(a1.nguid(), b1.nguid());
    assert_ne!(a1.uuid(), b1.uuid());
    assert_ne!(a1.eui64(), b1.eui64());
    // Stable across registries (restarts).
    let again = registry()
        .subsystem(SUB_A)
        .and_then(|s| s.namespace(Nsid(1)))
        .expect("a/1");
    assert_eq!(again.uuid(), a1.uuid());
}
