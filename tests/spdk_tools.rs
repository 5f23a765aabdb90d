//! SPDK's tools against the real binary: every answer is decoded the way SPDK v26.05 decodes
//! it. `spdk_top` decodes most objects strictly (`spdk_json_decode_object`: an unknown key or
//! a missing required one fails the whole screen), so each object here must carry exactly
//! SPDK's keys. The field lists are those of `app/spdk_top/spdk_top.c` and of the RPC code in
//! `lib/event`, `lib/nvmf` and `lib/bdev`; the poll loop is `spdk_top`'s: wait for init, read
//! the tick rate, then threads, pollers, cores and scheduler, again and again.

// Helpers outside #[test] functions panic on purpose: a broken answer fails the test.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{HOSTNQN, SUBNQN, TargetProcess, TargetSpec};
use nvmf_tgt::host::{HostQueue, QueueOptions};
use serde_json::{Value, json};

/// The keys of one object as an SPDK decoder sees them: required, then optional.
struct Decoder {
    what: &'static str,
    required: &'static [&'static str],
    optional: &'static [&'static str],
}

/// `spdk_top`'s `rpc_thread_info_decoders` (strict).
const THREAD_INFO: Decoder = Decoder {
    what: "thread_get_stats thread",
    required: &[
        "name",
        "id",
        "cpumask",
        "busy",
        "idle",
        "active_pollers_count",
        "timed_pollers_count",
        "paused_pollers_count",
    ],
    optional: &[],
};

/// `rpc_pollers_decoders` (strict).
const POLLER: Decoder = Decoder {
    what: "poller",
    required: &["name", "state", "id", "run_count", "busy_count"],
    optional: &["period_ticks"],
};

/// `rpc_core_info_decoders` (strict).
const CORE_INFO: Decoder = Decoder {
    what: "framework_get_reactors reactor",
    required: &[
        "lcore",
        "busy",
        "idle",
        "irq",
        "sys",
        "usr",
        "in_interrupt",
        "lw_threads",
        "tid",
        "numa_id",
    ],
    optional: &["core_freq"],
};

/// `rpc_core_thread_info_decoders` (strict).
const CORE_THREAD: Decoder = Decoder {
    what: "lw_thread",
    required: &["name", "id", "cpumask", "elapsed"],
    optional: &[],
};

/// What `spdk_bdev_dump_io_stat_json` writes, plus the name.
const BDEV_IOSTAT: Decoder = Decoder {
    what: "bdev_get_iostat bdev",
    required: &[
        "name",
        "bytes_read",
        "num_read_ops",
        "bytes_written",
        "num_write_ops",
        "bytes_unmapped",
        "num_unmap_ops",
        "bytes_copied",
        "num_copy_ops",
        "read_latency_ticks",
        "max_read_latency_ticks",
        "min_read_latency_ticks",
        "write_latency_ticks",
        "max_write_latency_ticks",
        "min_write_latency_ticks",
        "unmap_latency_ticks",
        "max_unmap_latency_ticks",
        "min_unmap_latency_ticks",
        "copy_latency_ticks",
        "max_copy_latency_ticks",
        "min_copy_latency_ticks",
    ],
    optional: &[
        "io_error",
        "queue_depth_polling_period",
        "queue_depth",
        "io_time",
        "weighted_io_time",
    ],
};

/// What `spdk_nvmf_poll_group_dump_stat` writes.
const POLL_GROUP: Decoder = Decoder {
    what: "nvmf_get_stats poll group",
    required: &[
        "name",
        "admin_qpairs",
        "io_qpairs",
        "current_admin_qpairs",
        "current_io_qpairs",
        "current_unassociated_qpairs",
        "pending_bdev_io",
        "completed_nvme_io",
        "transports",
    ],
    optional: &[],
};

/// `spdk_json_decode_object`: every key known, every required key present.
fn decode_strict(object: &Value, decoder: &Decoder) {
    let map = object
        .as_object()
        .unwrap_or_else(|| panic!("{} is not an object: {object}", decoder.what));
    for key in map.keys() {
        assert!(
            decoder.required.contains(&key.as_str()) || decoder.optional.contains(&key.as_str()),
            "{}: SPDK's decoder knows no key {key:?}: {object}",
            decoder.what
        );
    }
    for key in decoder.required {
        assert!(
            map.contains_key(*key),
            "{}: {key:?} missing: {object}",
            decoder.what
        );
    }
}

fn u64_of(object: &Value, key: &str) -> u64 {
    object[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a u64: {object}"))
}

fn call(target: &TargetProcess, method: &str) -> Value {
    call_with(target, method, Value::Null)
}

fn call_with(target: &TargetProcess, method: &str, params: Value) -> Value {
    nvmf_tgt::control::call(&target.control_socket(), method, params)
        .unwrap_or_else(|err| panic!("{method}: {err}"))
}

/// One round of `spdk_top`'s data thread: what it reads and what it checks.
struct Round {
    /// Per thread id: busy and idle ticks.
    threads: Vec<(u64, u64, u64)>,
    poller_names: Vec<String>,
}

fn spdk_top_round(target: &TargetProcess) -> Round {
    let stats = call(target, "thread_get_stats");
    let threads: Vec<(u64, u64, u64)> = stats["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .map(|t| {
            decode_strict(t, &THREAD_INFO);
            (u64_of(t, "id"), u64_of(t, "busy"), u64_of(t, "idle"))
        })
        .collect();

    let pollers = call(target, "thread_get_pollers");
    let mut poller_names = Vec::new();
    for thread in pollers["threads"].as_array().expect("threads") {
        // Relaxed: only name and id are looked for.
        assert!(
            thread["name"].is_string() && thread["id"].is_u64(),
            "{thread}"
        );
        for list in ["active_pollers", "timed_pollers", "paused_pollers"] {
            for poller in thread[list].as_array().unwrap_or_else(|| panic!("{list}")) {
                decode_strict(poller, &POLLER);
                poller_names.push(poller["name"].as_str().unwrap().to_owned());
            }
        }
    }

    let cores = call(target, "framework_get_reactors");
    for core in cores["reactors"].as_array().expect("reactors") {
        decode_strict(core, &CORE_INFO);
        for lw in core["lw_threads"].as_array().expect("lw_threads") {
            decode_strict(lw, &CORE_THREAD);
            // spdk_top places each thread on its core by id.
            assert!(
                threads.iter().any(|t| t.0 == u64_of(lw, "id")),
                "lw_thread {lw} is no thread of thread_get_stats"
            );
        }
    }

    let scheduler = call(target, "framework_get_scheduler");
    assert!(scheduler["scheduler_period"].is_u64(), "{scheduler}");
    Round {
        threads,
        poller_names,
    }
}

/// The admin queue and one I/O queue, enabled.
fn connect(target: &TargetProcess) -> (HostQueue, HostQueue) {
    let opts = QueueOptions::admin(SUBNQN, HOSTNQN);
    let mut admin = HostQueue::connect(target.addr(), &opts).expect("admin connect");
    admin.enable_controller().expect("enable");
    let io = HostQueue::connect(target.addr(), &opts.io(1, admin.cntlid(), 32)).expect("io");
    (admin, io)
}

#[test]
fn spdk_top_reads_an_idle_target_in_interrupt_mode_as_idle() {
    let target = TargetProcess::start(&TargetSpec::default());
    let (_admin, _io) = connect(&target);

    assert_eq!(call(&target, "framework_wait_init"), Value::Bool(true));
    let reactors = call(&target, "framework_get_reactors");
    assert_eq!(reactors["tick_rate"].as_u64(), Some(1_000_000_000));
    assert_eq!(reactors["reactors"][0]["in_interrupt"], Value::Bool(true));

    let first = spdk_top_round(&target);
    assert_eq!(first.threads.len(), 1, "one thread per reactor");
    for wanted in ["listener", "connection", "mailbox", "timer"] {
        assert!(
            first.poller_names.iter().any(|n| n.contains(wanted)),
            "no {wanted} among the pollers: {:?}",
            first.poller_names
        );
    }
    let mut last = first;
    let mut busy = 0;
    let mut total = 0;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(200));
        let round = spdk_top_round(&target);
        for (now, then) in round.threads.iter().zip(&last.threads) {
            assert_eq!(now.0, then.0, "thread ids stay the same");
            assert!(
                now.1 >= then.1 && now.2 >= then.2,
                "ticks never go back: {now:?} after {then:?}"
            );
            busy += now.1 - then.1;
            total += (now.1 - then.1) + (now.2 - then.2);
        }
        last = round;
    }
    // The reactor wakes only to answer; answering costs microseconds a round.
    assert!(total > 500_000_000, "a second of ticks passed: {total}");
    assert!(
        busy * 100 < total,
        "an idle interrupt-mode reactor is idle: {busy} busy of {total}"
    );
}

#[test]
fn io_shows_in_bdev_iostat_and_the_poll_groups() {
    let target = TargetProcess::start(&TargetSpec::default());
    let (_admin, mut io) = connect(&target);
    for lba in 0..10u8 {
        io.write(1, u64::from(lba) * 8, vec![lba; 4096], 512)
            .expect("write");
    }
    for lba in 0..7u8 {
        let data = io.read(1, u64::from(lba) * 8, 8, 512).expect("read");
        assert_eq!(data, vec![lba; 4096]);
    }

    let iostat = call(&target, "bdev_get_iostat");
    assert_eq!(iostat["tick_rate"].as_u64(), Some(1_000_000_000));
    assert!(iostat["ticks"].is_u64(), "{iostat}");
    let bdevs = iostat["bdevs"].as_array().expect("bdevs");
    assert_eq!(bdevs.len(), 1);
    let bdev = &bdevs[0];
    decode_strict(bdev, &BDEV_IOSTAT);
    assert_eq!(u64_of(bdev, "num_write_ops"), 10);
    assert_eq!(u64_of(bdev, "bytes_written"), 10 * 4096);
    assert_eq!(u64_of(bdev, "num_read_ops"), 7);
    assert_eq!(u64_of(bdev, "bytes_read"), 7 * 4096);
    assert!(u64_of(bdev, "max_read_latency_ticks") >= u64_of(bdev, "min_read_latency_ticks"));

    // The same namespace by name, in both of SPDK's forms; an unknown name is an error.
    let name = bdev["name"].as_str().unwrap().to_owned();
    assert_eq!(name, format!("{SUBNQN}/ns1"));
    let by_names = call_with(&target, "bdev_get_iostat", json!({"names": [name]}));
    assert_eq!(by_names["bdevs"].as_array().map(Vec::len), Some(1));
    let by_name = call_with(&target, "bdev_get_iostat", json!({"name": name}));
    assert_eq!(by_name["bdevs"][0]["num_write_ops"].as_u64(), Some(10));
    assert!(
        nvmf_tgt::control::call(
            &target.control_socket(),
            "bdev_get_iostat",
            json!({"name": "Malloc0"})
        )
        .is_err()
    );

    // Per channel: each reactor's own figures, the thread ids of thread_get_stats.
    let per = call_with(
        &target,
        "bdev_get_iostat",
        json!({"names": [name], "per_channel": true}),
    );
    assert_eq!(per["name"].as_str(), Some(name.as_str()), "{per}");
    let channels = per["channels"].as_array().expect("channels");
    assert_eq!(channels.len(), 1, "one reactor: {per}");
    assert_eq!(channels[0]["thread_id"].as_u64(), Some(1));
    assert_eq!(channels[0]["num_write_ops"].as_u64(), Some(10));
    // The figures only grow: a reset is refused, not ignored.
    assert!(
        nvmf_tgt::control::call(
            &target.control_socket(),
            "bdev_get_iostat",
            json!({"reset_mode": "all"})
        )
        .is_err()
    );

    // nvmf_get_subsystems names the namespace's bdev the same way.
    let subsystems = call(&target, "nvmf_get_subsystems");
    assert_eq!(
        subsystems[1]["namespaces"][0]["bdev_name"].as_str(),
        Some(name.as_str())
    );

    let stats = call(&target, "nvmf_get_stats");
    let groups = stats["poll_groups"].as_array().expect("poll_groups");
    assert_eq!(groups.len(), 1);
    let group = &groups[0];
    decode_strict(group, &POLL_GROUP);
    assert_eq!(u64_of(group, "current_admin_qpairs"), 1);
    assert_eq!(u64_of(group, "current_io_qpairs"), 1);
    // The 10 writes and 7 reads; admin commands are no namespace I/O.
    assert_eq!(u64_of(group, "completed_nvme_io"), 17);
    assert_eq!(group["transports"][0]["trtype"].as_str(), Some("TCP"));

    drop(io);
    // The closed queue counts in the totals and no longer in the current figures.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let group = call(&target, "nvmf_get_stats")["poll_groups"][0].clone();
        if u64_of(&group, "current_io_qpairs") == 0 {
            assert_eq!(u64_of(&group, "io_qpairs"), 1);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the I/O queue never closed: {group}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn version_methods_and_transports_answer_like_spdk() {
    let target = TargetProcess::start(&TargetSpec::default());
    let version = call(&target, "spdk_get_version");
    assert!(
        version["version"]
            .as_str()
            .unwrap()
            .starts_with("nvmf-tgt v")
    );
    for field in ["major", "minor", "patch"] {
        assert!(version["fields"][field].is_u64(), "{version}");
    }
    assert!(version["fields"]["suffix"].is_string());
    assert!(version["fields"]["commit"].is_string(), "{version}");

    let methods = call(&target, "rpc_get_methods");
    let methods: Vec<&str> = methods
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for method in [
        "spdk_get_version",
        "rpc_get_methods",
        "framework_wait_init",
        "framework_get_scheduler",
        "framework_get_reactors",
        "thread_get_stats",
        "thread_get_pollers",
        "nvmf_get_subsystems",
        "nvmf_get_transports",
        "nvmf_get_stats",
        "bdev_get_iostat",
        "nvmf_tgt_status",
    ] {
        assert!(methods.contains(&method), "rpc_get_methods lacks {method}");
        if !["nvmf_tgt_plan", "nvmf_tgt_reload"].contains(&method) {
            // Every method listed answers (none of these needs parameters).
            call(&target, method);
        }
    }

    let transports = call(&target, "nvmf_get_transports");
    let tcp = &transports[0];
    assert_eq!(tcp["trtype"].as_str(), Some("TCP"));
    for key in [
        "max_queue_depth",
        "max_io_qpairs_per_ctrlr",
        "in_capsule_data_size",
        "max_io_size",
        "max_aq_depth",
    ] {
        assert!(tcp[key].is_u64(), "{key}: {tcp}");
    }
    let only_tcp = call_with(&target, "nvmf_get_transports", json!({"trtype": "tcp"}));
    assert_eq!(only_tcp.as_array().map(Vec::len), Some(1));
    assert!(
        nvmf_tgt::control::call(
            &target.control_socket(),
            "nvmf_get_transports",
            json!({"trtype": "RDMA"})
        )
        .is_err(),
        "a transport not declared does not exist"
    );
    // A method that takes no parameters refuses some, as SPDK's do.
    assert!(
        nvmf_tgt::control::call(
            &target.control_socket(),
            "thread_get_stats",
            json!({"verbose": true})
        )
        .is_err()
    );
}
