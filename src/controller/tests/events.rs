//! Asynchronous events and keep-alive.

use super::*;

#[test]
fn aer_delivered_after_namespace_change() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    let woken = Arc::new(AtomicUsize::new(0));
    let w = Arc::clone(&woken);
    ctrlr.set_async_event_notifier(Arc::new(move || {
        w.fetch_add(1, Ordering::SeqCst);
    }));
    for cid in 0..4u16 {
        let mut sqe = admin_cmd(admin::ASYNC_EVENT_REQUEST, 0, 0, 0, 0);
        sqe.set_cid(100 + cid);
        assert_eq!(
            ctrlr.handle_admin_sgl(&sqe, &[], b.now),
            AdminOutcome::Deferred
        );
    }
    // A fifth is over the limit (AERL 3).
    let (cqe, _) = run(&ctrlr, &admin_cmd(admin::ASYNC_EVENT_REQUEST, 0, 0, 0, 0));
    assert_eq!(cqe.status, Status::ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED);
    assert_eq!(ctrlr.poll_async_event(), None);

    let sub = b.reg.subsystem(SUB_A).expect("exists");
    sub.add_namespace(ns(7, 8, false)).expect("nsid 7 free");
    let cqe = ctrlr.poll_async_event().expect("event");
    assert_eq!((cqe.cid, cqe.status), (100, Status::SUCCESS));
    // Notice, namespace attribute changed, log 0x04.
    assert_eq!(cqe.dw0, 0x0004_0002);
    assert_eq!(woken.load(Ordering::SeqCst), 1);
    // Masked until the log is read.
    sub.notify_namespaces_changed(&[Nsid(1)]);
    assert_eq!(ctrlr.poll_async_event(), None);
    let (_, page) = get_log(&ctrlr, lid::CHANGED_NS_LIST, 4096, 0, false);
    assert_eq!(&page[..12], &[1, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
    // Reading cleared the list and re-armed the event.
    let (_, page) = get_log(&ctrlr, lid::CHANGED_NS_LIST, 8, 0, false);
    assert_eq!(page, vec![0; 8]);
    sub.remove_namespace(Nsid(7)).expect("attached");
    assert_eq!(ctrlr.poll_async_event().map(|c| c.cid), Some(101));
    let (_, page) = identify(&ctrlr, 0x02, 0);
    assert_eq!(&page[..8], &[1, 0, 0, 0, 3, 0, 0, 0]);

    // With the notice disabled in Async Event Configuration, nothing is sent.
    get_log(&ctrlr, lid::CHANGED_NS_LIST, 8, 0, false);
    set_feature(&ctrlr, fid::ASYNC_EVENT_CONFIG, 0);
    sub.notify_namespaces_changed(&[Nsid(1)]);
    assert_eq!(ctrlr.poll_async_event(), None);
}

#[test]
fn event_waits_for_a_request() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    b.reg
        .subsystem(SUB_A)
        .expect("a")
        .notify_namespaces_changed(&[Nsid(3)]);
    let (cqe, _) = run(&ctrlr, &admin_cmd(admin::ASYNC_EVENT_REQUEST, 0, 0, 0, 0));
    assert_eq!((cqe.status, cqe.dw0), (Status::SUCCESS, 0x0004_0002));
}

#[test]
fn keep_alive_deadline_follows_activity() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    let kato = Duration::from_millis(5000);
    assert_eq!(ctrlr.keep_alive_deadline(), Some(b.now + kato));
    assert!(!ctrlr.is_expired(b.now + kato - Duration::from_millis(1)));
    assert!(ctrlr.is_expired(b.now + kato));
    let later = b.now + Duration::from_secs(3);
    let (cqe, _) =
        complete(ctrlr.handle_admin_sgl(&admin_cmd(admin::KEEP_ALIVE, 0, 0, 0, 0), &[], later));
    assert_eq!(cqe.status, Status::SUCCESS);
    assert_eq!(ctrlr.keep_alive_deadline(), Some(later + kato));
    // Traffic on an I/O queue counts too; time never goes backwards.
    ctrlr.handle_activity(later + Duration::from_secs(1));
    ctrlr.handle_activity(later);
    assert!(!ctrlr.is_expired(later + kato));
    // Set Features cannot turn it off; values round up to whole seconds (KAS 10).
    assert_eq!(
        set_feature(&ctrlr, fid::KEEP_ALIVE_TIMER, 0).status,
        Status::KEEP_ALIVE_INVALID
    );
    set_feature(&ctrlr, fid::KEEP_ALIVE_TIMER, 1500);
    assert_eq!(ctrlr.kato(), Some(Duration::from_secs(2)));
    // KATO 0 in Connect disables it for I/O controllers; discovery gets a default.
    let out = b.reg.handle_connect(
        &connect_sqe(0, 31, 0),
        &connect_data(SUB_B, HOST_1, 0xFFFF),
        &listener("4420"),
        b.now,
    );
    let ConnectOutcome::Admin { ctrlr: no_ka, .. } = out else {
        panic!("connect failed");
    };
    assert_eq!(no_ka.keep_alive_deadline(), None);
    assert!(!no_ka.is_expired(b.now + Duration::from_secs(3600)));
    let out = b.reg.handle_connect(
        &connect_sqe(0, 31, 0),
        &connect_data(DISCOVERY_NQN, HOST_1, 0xFFFF),
        &listener("4420"),
        b.now,
    );
    let ConnectOutcome::Admin { ctrlr: disc, .. } = out else {
        panic!("discovery connect failed");
    };
    assert_eq!(disc.kato(), Some(Duration::from_secs(120)));
}
