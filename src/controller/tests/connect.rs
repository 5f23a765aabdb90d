//! Connect: admin and I/O queues, controller IDs, who may connect, limits per transport.

use super::*;

#[test]
fn admin_then_io_connect() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    assert_eq!(ctrlr.hostid(), [0x42; 16]);
    assert_eq!(ctrlr.kato(), Some(Duration::from_millis(5000)));
    let mut sqe = connect_sqe(2, 127, 0);
    sqe.bytes_mut()[46] = CATTR_DISABLE_SQ_FLOW_CONTROL;
    let out = b.reg.handle_connect(
        &sqe,
        &connect_data(SUB_A, HOST_1, ctrlr.cntlid().0),
        &listener("4420"),
        b.now,
    );
    let epoch = match out {
        ConnectOutcome::Io {
            ctrlr: c,
            qid,
            epoch,
            sqsize,
            cqe,
        } => {
            assert!(Arc::ptr_eq(&c, &ctrlr));
            assert_eq!((qid, sqsize), (2, 127));
            assert_eq!(cqe.status, Status::SUCCESS);
            epoch
        }
        other => panic!("io connect failed: {other:?}"),
    };
    assert!(ctrlr.is_io_queue_live(2, epoch));
    assert!(ctrlr.sq_flow_control_disabled(2));
    assert!(!ctrlr.sq_flow_control_disabled(0));
    // The same qid twice is refused.
    let cqe = refused(b.connect_io(&ctrlr, 2, 127));
    assert_eq!(cqe.status, Status::INVALID_QUEUE_IDENTIFIER.with_dnr());
    // Disconnect on the I/O queue frees it.
    let mut disc = Sqe::new(FABRICS, 3);
    disc.set_fctype(fctype::DISCONNECT);
    assert_eq!(
        ctrlr.handle_io_fabrics(2, epoch, &disc).status,
        Status::SUCCESS
    );
    assert!(!ctrlr.is_io_queue_live(2, epoch));
    let again = b.attach(&ctrlr, 2);
    assert_ne!(again, epoch, "a reconnected qid is a new attachment");
    assert!(ctrlr.is_io_queue_live(2, again));
    assert!(
        !ctrlr.is_io_queue_live(2, epoch),
        "the old attachment stays dead"
    );
    // A late Disconnect or close of the old attachment leaves the new one alone.
    ctrlr.handle_io_fabrics(2, epoch, &disc);
    ctrlr.handle_queue_gone(2, epoch);
    assert!(ctrlr.is_io_queue_live(2, again));
}

#[test]
fn cntlids_are_unique_and_reused_late() {
    let b = Bench::new();
    let c1 = b.connect_admin(SUB_A, HOST_1);
    let c2 = b.connect_admin(SUB_A, HOST_1);
    assert_ne!(c1.cntlid(), c2.cntlid());
    assert!((1..=0xFFEF).contains(&c1.cntlid().0));
    let sub = b.reg.subsystem(SUB_A).expect("exists");
    assert_eq!(sub.controllers().len(), 2);
    c1.handle_queue_gone(0, QueueEpoch::ADMIN);
    assert!(!c1.is_live());
    assert_eq!(sub.controllers().len(), 1);
    let c3 = b.connect_admin(SUB_A, HOST_1);
    assert_ne!(c3.cntlid(), c1.cntlid(), "a freed ID is not reused at once");
    // A torn-down controller accepts no I/O queue.
    let cqe = refused(b.connect_io(&c1, 1, 31));
    assert_eq!(cqe.status, Status::CONNECT_INVALID_PARAMETERS.with_dnr());
}

#[test]
fn wrong_host_and_wrong_listener_are_refused() {
    let b = Bench::new();
    let out = b.reg.handle_connect(
        &connect_sqe(0, 31, 0),
        &connect_data(SUB_A, HOST_2, 0xFFFF),
        &listener("4420"),
        b.now,
    );
    assert_eq!(refused(out).status, Status::CONNECT_INVALID_HOST.with_dnr());
    // SUB_A does not listen on 4421.
    let out = b.reg.handle_connect(
        &connect_sqe(0, 31, 0),
        &connect_data(SUB_A, HOST_1, 0xFFFF),
        &listener("4421"),
        b.now,
    );
    assert_eq!(refused(out).status, Status::CONNECT_INVALID_HOST.with_dnr());
    // Any host may use SUB_B and the discovery subsystem, on any listener.
    b.connect_admin_on(SUB_B, HOST_2, "4421");
    b.connect_admin_on(DISCOVERY_NQN, HOST_2, "9999");
}

#[test]
fn unknown_nqn_and_bad_data_name_the_field() {
    let b = Bench::new();
    let out = b.reg.handle_connect(
        &connect_sqe(0, 31, 0),
        &connect_data("nqn.2024-01.io.test:nope", HOST_1, 0xFFFF),
        &listener("4420"),
        b.now,
    );
    let cqe = refused(out);
    assert_eq!(cqe.status, Status::CONNECT_INVALID_PARAMETERS.with_dnr());
    // IATTR 1 (data), IPO 256 (SUBNQN).
    assert_eq!(cqe.dw0, 0x0100_0001);

    let mut data = connect_data(SUB_A, HOST_1, 0xFFFF);
    data[512..768].fill(b'h');
    let cqe =
        refused(
            b.reg
                .handle_connect(&connect_sqe(0, 31, 0), &data, &listener("4420"), b.now),
        );
    assert_eq!(cqe.dw0, 0x0200_0001);

    let mut sqe = connect_sqe(0, 31, 0);
    sqe.bytes_mut()[40] = 1;
    let cqe = refused(b.reg.handle_connect(
        &sqe,
        &connect_data(SUB_A, HOST_1, 0xFFFF),
        &listener("4420"),
        b.now,
    ));
    assert_eq!(cqe.status, Status::CONNECT_INCOMPATIBLE_FORMAT.with_dnr());
}

#[test]
fn io_connect_checks_cntlid_host_and_limits() {
    let b = Bench::new();
    let ctrlr = b.connect_admin(SUB_A, HOST_1);
    // Before CC.EN = 1: SPDK names QID as the invalid parameter.
    let cqe = refused(b.connect_io(&ctrlr, 1, 31));
    assert_eq!(cqe.status, Status::CONNECT_INVALID_PARAMETERS.with_dnr());
    assert_eq!(cqe.dw0, 0x002A_0000);
    prop_set(&ctrlr, offset::CC, 0x0046_0001, b.now);

    let bad_cntlid = b.reg.handle_connect(
        &connect_sqe(1, 31, 0),
        &connect_data(SUB_A, HOST_1, ctrlr.cntlid().0 + 100),
        &listener("4420"),
        b.now,
    );
    let cqe = refused(bad_cntlid);
    assert_eq!(cqe.status, Status::CONNECT_INVALID_PARAMETERS.with_dnr());
    assert_eq!(cqe.dw0, 0x0010_0001);

    // Another allowed host cannot hijack the controller.
    let other = Bench {
        reg: Registry::new(
            vec![SubsystemSpec {
                nqn: SUB_A.into(),
                serial: "s".into(),
                model: "m".into(),
                allow_any_host: true,
                hosts: vec![],
                max_namespaces: 1,
                namespaces: vec![],
                listeners: vec![listener("4420")],
            }],
            limits(),
        )
        .expect("valid"),
        now: b.now,
    };
    let c = other.ready(SUB_A, HOST_1);
    let cqe = refused(other.reg.handle_connect(
        &connect_sqe(1, 31, 0),
        &connect_data(SUB_A, HOST_2, c.cntlid().0),
        &listener("4420"),
        b.now,
    ));
    assert_eq!(cqe.dw0, 0x0200_0001);

    // qid above max_io_qpairs_per_ctrlr (4).
    let cqe = refused(b.connect_io(&ctrlr, 5, 31));
    assert_eq!(cqe.status, Status::INVALID_QUEUE_IDENTIFIER.with_dnr());
    // sqsize 0 and sqsize >= max_queue_depth: IATTR 0, IPO 0x2C.
    for sqsize in [0, 128] {
        let cqe = refused(b.connect_io(&ctrlr, 1, sqsize));
        assert_eq!(cqe.status, Status::CONNECT_INVALID_PARAMETERS.with_dnr());
        assert_eq!(cqe.dw0, 0x002C_0000);
    }
    assert!(matches!(
        b.connect_io(&ctrlr, 4, 127),
        ConnectOutcome::Io { .. }
    ));
    // Only the dynamic model: an admin Connect must ask for controller 0xFFFF.
    let cqe = refused(b.reg.handle_connect(
        &connect_sqe(0, 31, 0),
        &connect_data(SUB_A, HOST_1, 1),
        &listener("4420"),
        b.now,
    ));
    assert_eq!(cqe.dw0, 0x0010_0001);
    // Admin sqsize must stay below max_aq_depth (32).
    let cqe = refused(b.reg.handle_connect(
        &connect_sqe(0, 32, 0),
        &connect_data(SUB_A, HOST_1, 0xFFFF),
        &listener("4420"),
        b.now,
    ));
    assert_eq!(cqe.dw0, 0x002C_0000);
}

#[test]
fn registry_rejects_bad_declarations() {
    let spec = |nqn: &str| SubsystemSpec {
        nqn: nqn.into(),
        serial: "s".into(),
        model: "m".into(),
        allow_any_host: true,
        hosts: vec![],
        max_namespaces: 4,
        namespaces: vec![],
        listeners: vec![],
    };
    assert!(matches!(
        Registry::new(vec![spec(SUB_A), spec(SUB_A)], limits()),
        Err(RegistryError::DuplicateSubsystem(_))
    ));
    assert!(matches!(
        Registry::new(vec![spec(DISCOVERY_NQN)], limits()),
        Err(RegistryError::ReservedNqn(_))
    ));
    let mut s = spec(SUB_A);
    s.namespaces = vec![ns(1, 1, false), ns(1, 1, false)];
    assert!(matches!(
        Registry::new(vec![s], limits()),
        Err(RegistryError::BadNamespace { .. })
    ));
    let mut s = spec(SUB_A);
    s.namespaces = vec![ns(5, 1, false)];
    assert!(Registry::new(vec![s], limits()).is_err());
}

#[test]
fn queue_gone_and_teardown() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    let first = b.attach(&ctrlr, 1);
    ctrlr.handle_queue_gone(1, first);
    assert!(!ctrlr.is_io_queue_live(1, first));
    let second = b.attach(&ctrlr, 1);
    let aer = admin_cmd(admin::ASYNC_EVENT_REQUEST, 0, 0, 0, 0);
    assert_eq!(
        ctrlr.handle_admin_sgl(&aer, &[], b.now),
        AdminOutcome::Deferred
    );
    ctrlr.handle_queue_gone(0, QueueEpoch::ADMIN);
    assert!(!ctrlr.is_live() && !ctrlr.is_enabled() && !ctrlr.is_io_queue_live(1, second));
    assert!(ctrlr.prepare_io_sgl(&read_cmd(1, 0, 0, 4096)).is_err());
    // Events no longer reach a removed controller.
    b.reg
        .subsystem(SUB_A)
        .expect("a")
        .notify_namespaces_changed(&[Nsid(1)]);
    assert_eq!(ctrlr.poll_async_event(), None);
    assert!(b.reg.subsystem(SUB_A).expect("a").controllers().is_empty());
}

#[test]
fn fabrics_controllers_create_no_queues_with_admin_commands() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    for opcode in [
        admin::CREATE_IO_CQ,
        admin::CREATE_IO_SQ,
        admin::DELETE_IO_SQ,
        admin::DELETE_IO_CQ,
        admin::DOORBELL_BUFFER_CONFIG,
    ] {
        let (cqe, _) = run(&ctrlr, &admin_cmd(opcode, 0, 1 | (63 << 16), 1, 0));
        assert_eq!(cqe.status, Status::INVALID_OPCODE.with_dnr(), "{opcode:#x}");
    }
    assert_eq!(ctrlr.identify_controller().oacs, 0, "no shadow doorbells");
}

#[test]
fn each_transport_has_its_own_limits_and_keeps_its_queues() {
    let tcp = listener("4420");
    let rdma = ListenerAddr::Rdma("127.0.0.1:4420".parse().expect("socket"));
    let small = TransportLimits {
        max_queue_depth: 16,
        ..limits()
    };
    let reg = Registry::new(
        vec![SubsystemSpec {
            nqn: SUB_A.into(),
            serial: "s".into(),
            model: "m".into(),
            allow_any_host: true,
            hosts: vec![],
            max_namespaces: 1,
            namespaces: vec![],
            listeners: vec![tcp.clone(), rdma.clone()],
        }],
        LimitsByTransport {
            tcp: limits(),
            rdma: small,
            vfio_user: limits(),
        },
    )
    .expect("registry");
    let now = Instant::now();
    let connect = |qid: u16, sqsize: u16, cntlid: u16, via: &ListenerAddr| {
        reg.handle_connect(
            &connect_sqe(qid, sqsize, 0),
            &connect_data(SUB_A, HOST_1, cntlid),
            via,
            now,
        )
    };
    let ConnectOutcome::Admin { ctrlr, .. } = connect(0, 31, 0xFFFF, &rdma) else {
        panic!("rdma admin connect");
    };
    assert_eq!(ctrlr.limits.max_queue_depth, 16, "RDMA's limits");
    // RDMA's SGLs: keyed data blocks and in-capsule data, no transport data blocks (Linux's
    // nvme-rdma refuses a controller without keyed SGLs); TCP's the other way round.
    let rdma_sgls = ctrlr.identify_controller().sgls;
    assert_eq!(
        rdma_sgls & crate::nvme::identify::sgls::KEYED,
        crate::nvme::identify::sgls::KEYED
    );
    assert_eq!(
        rdma_sgls & crate::nvme::identify::sgls::TRANSPORT_DATA_BLOCK,
        0
    );
    let ConnectOutcome::Admin { ctrlr: on_tcp, .. } = connect(0, 31, 0xFFFF, &tcp) else {
        panic!("tcp admin connect");
    };
    let tcp_sgls = on_tcp.identify_controller().sgls;
    assert_eq!(tcp_sgls & crate::nvme::identify::sgls::KEYED, 0);
    assert_ne!(
        tcp_sgls & crate::nvme::identify::sgls::TRANSPORT_DATA_BLOCK,
        0
    );
    // CAP.MQES follows the transport.
    assert_eq!(ctrlr.cap() & 0xFFFF, 15);
    prop_set(&ctrlr, offset::CC, 0x0046_0001, now);
    let cqe = refused(connect(1, 31, ctrlr.cntlid().0, &rdma));
    assert_eq!(
        cqe.status,
        Status::CONNECT_INVALID_PARAMETERS.with_dnr(),
        "sqsize past RDMA's depth"
    );
    // Its I/O queues come the way its admin queue did.
    let cqe = refused(connect(1, 15, ctrlr.cntlid().0, &tcp));
    assert_eq!(cqe.status, Status::CONNECT_INVALID_PARAMETERS.with_dnr());
    assert!(matches!(
        connect(1, 15, ctrlr.cntlid().0, &rdma),
        ConnectOutcome::Io { .. }
    ));
}

#[test]
fn shared_types_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Registry>();
    send_sync::<Subsystem>();
    send_sync::<Controller>();
    send_sync::<Namespace>();
    send_sync::<IoPlan>();
}
