//! The discovery log: what a host may see, generations, change notices, wildcards.

use super::*;

fn discovery_entries(page: &[u8]) -> (DiscoveryLogHeader, Vec<DiscoveryLogEntry>) {
    let header = DiscoveryLogHeader::parse(page).expect("header");
    let entries = page[1024..]
        .chunks_exact(1024)
        .filter_map(DiscoveryLogEntry::parse)
        .collect();
    (header, entries)
}

#[test]
fn discovery_log_lists_what_the_host_may_see() {
    let b = Bench::new();
    let d1 = b.ready(DISCOVERY_NQN, HOST_1);
    assert!(d1.is_discovery());
    let (_, page) = get_log(&d1, lid::DISCOVERY, 1024 * 5, 0, false);
    let (header, entries) = discovery_entries(&page);
    assert_eq!(header.numrec, 4);
    assert_eq!(entries.len(), 4);
    let e0 = &entries[0];
    assert_eq!((e0.subtype, e0.subnqn.as_str()), (3, DISCOVERY_NQN));
    assert_eq!((e0.trtype, e0.adrfam, e0.cntlid), (3, 1, 0xFFFF));
    assert_eq!(
        (e0.traddr.as_str(), e0.trsvcid.as_str()),
        ("127.0.0.1", "4420")
    );
    let listed: Vec<(&str, &str, u16)> = entries[1..]
        .iter()
        .map(|e| (e.subnqn.as_str(), e.trsvcid.as_str(), e.portid))
        .collect();
    assert_eq!(
        listed,
        vec![(SUB_A, "4420", 1), (SUB_B, "4420", 1), (SUB_B, "4421", 2)]
    );
    assert!(entries.iter().all(|e| e.asqsz == 32 && e.treq & 0x3 == 0x2));

    // HOST_2 may not see SUB_A.
    let d2 = b.ready(DISCOVERY_NQN, HOST_2);
    let (_, page) = get_log(&d2, lid::DISCOVERY, 1024 * 5, 0, false);
    let (header, entries) = discovery_entries(&page);
    assert_eq!(header.numrec, 3);
    assert!(entries.iter().all(|e| e.subnqn != SUB_A));

    // Reading in pieces: the header alone, then one entry at an offset.
    let (_, head) = get_log(&d1, lid::DISCOVERY, 16, 0, true);
    assert_eq!(head.len(), 16);
    let (_, second) = get_log(&d1, lid::DISCOVERY, 1024, 2048, true);
    assert_eq!(
        DiscoveryLogEntry::parse(&second).map(|e| e.subnqn),
        Some(SUB_A.to_owned())
    );

    // Discovery controllers: only their own identify and log pages.
    let (_, page) = identify(&d1, 0x01, 0);
    let id = IdentifyController::parse(&page).expect("page");
    assert_eq!((id.cntrltype, id.subnqn.as_str()), (2, DISCOVERY_NQN));
    assert_eq!(id.oaes, 1 << 31);
    assert_eq!(
        identify(&d1, 0x00, 1).0.status,
        Status::INVALID_FIELD.with_dnr()
    );
    assert_eq!(
        get_log(&d1, lid::SMART, 512, 0, false).0.status,
        Status::INVALID_FIELD.with_dnr()
    );
    assert_eq!(
        run(&d1, &admin_cmd(admin::ABORT, 0, 0, 0, 0)).0.status,
        Status::INVALID_OPCODE.with_dnr()
    );
    // No I/O queues on a discovery controller.
    let cqe = refused(b.reg.handle_connect(
        &connect_sqe(1, 31, 0),
        &connect_data(DISCOVERY_NQN, HOST_1, d1.cntlid().0),
        &listener("4420"),
        b.now,
    ));
    assert_eq!(cqe.status, Status::CONNECT_INVALID_PARAMETERS.with_dnr());
}

#[test]
fn discovery_generation_and_change_notice() {
    let b = Bench::new();
    let d = b.ready(DISCOVERY_NQN, HOST_2);
    let (_, page) = get_log(&d, lid::DISCOVERY, 1024, 0, false);
    let gen1 = DiscoveryLogHeader::parse(&page).expect("header").genctr;
    let aer = admin_cmd(admin::ASYNC_EVENT_REQUEST, 0, 0, 0, 0);
    assert_eq!(d.handle_admin_sgl(&aer, &[], b.now), AdminOutcome::Deferred);

    // A new subsystem any host may see: generation bumps, the notice fires.
    b.reg
        .add_subsystem(SubsystemSpec {
            nqn: "nqn.2024-01.io.test:c".into(),
            serial: "c".into(),
            model: "m".into(),
            allow_any_host: true,
            hosts: vec![],
            max_namespaces: 1,
            namespaces: vec![],
            listeners: vec![listener("4422")],
        })
        .expect("new nqn");
    let cqe = d.poll_async_event().expect("discovery change");
    // Notice, discovery log changed (0xF0), log 0x70.
    assert_eq!(cqe.dw0, 0x0070_F002);
    let (_, page) = get_log(&d, lid::DISCOVERY, 1024 * 5, 0, false);
    let (header, entries) = discovery_entries(&page);
    assert!(header.genctr > gen1);
    assert_eq!(header.numrec, 4);
    assert_eq!(entries[3].trsvcid, "4422");

    // Removing a subsystem tears its controllers down.
    let c = b.ready(SUB_B, HOST_2);
    assert!(b.reg.remove_subsystem(SUB_B).is_some());
    assert!(!c.is_live());
    assert!(b.reg.subsystem(SUB_B).is_none());
}

#[test]
fn discovery_substitutes_wildcard_listener_addresses() {
    let any = ListenerAddr::Tcp("0.0.0.0:4420".parse().expect("socket address"));
    let reg = Registry::new(
        vec![SubsystemSpec {
            nqn: SUB_A.into(),
            serial: "s".into(),
            model: "m".into(),
            allow_any_host: true,
            hosts: vec![],
            max_namespaces: 1,
            namespaces: vec![],
            listeners: vec![any.clone()],
        }],
        limits(),
    )
    .expect("valid");
    let now = Instant::now();
    let out = reg.handle_connect(
        &connect_sqe(0, 31, 0),
        &connect_data(DISCOVERY_NQN, HOST_1, 0xFFFF),
        &any,
        now,
    );
    let ConnectOutcome::Admin { ctrlr, .. } = out else {
        panic!("discovery connect failed");
    };
    prop_set(&ctrlr, offset::CC, 0x0046_0001, now);
    let (_, page) = get_log(&ctrlr, lid::DISCOVERY, 3072, 0, false);
    assert_eq!(discovery_entries(&page).1[1].traddr, "0.0.0.0");
    ctrlr.set_local_address("192.0.2.7");
    let (_, page) = get_log(&ctrlr, lid::DISCOVERY, 3072, 0, false);
    let (_, entries) = discovery_entries(&page);
    assert!(entries.iter().all(|e| e.traddr == "192.0.2.7"));
    // An address of the other family is not substituted.
    ctrlr.set_local_address("::1");
    let (_, page) = get_log(&ctrlr, lid::DISCOVERY, 3072, 0, false);
    assert_eq!(discovery_entries(&page).1[1].traddr, "0.0.0.0");
}
