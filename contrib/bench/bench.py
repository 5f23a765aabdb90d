#!/usr/bin/env python3
"""Helper of contrib/bench/run.sh: small probes and the report.

    bench.py free-port                  a free TCP port on 127.0.0.1
    bench.py reactors STATUS.json       "busy_ns idle_ns connections", summed over reactors
    bench.py report RAW.jsonl OUT_BASE  writes OUT_BASE.md and OUT_BASE.json, prints the .md
    bench.py compare RAW.jsonl OUT_BASE the same for compare.sh: two builds side by side
    bench.py vfio-report RAW.jsonl OUT_BASE  the same for vfio-user.sh
    bench.py rdma-guest-report RAW.jsonl OUT_BASE  the same for rdma-guest.sh
    bench.py file-report RAW.jsonl OUT_BASE  the same for file.sh
    bench.py spdk-file-report RAW.jsonl OUT_BASE  the same for spdk-file.sh
    bench.py load WHEN                  one "load" record: the machine's CPU over a second

RAW.jsonl has one object per measurement, written by run.sh:
  {"kind": "run", "mode", "case", "repeat", "clk_tck", "target_ticks",
   "machine_busy_ticks", "steal_ticks" (all CPUs, over the run),
   "reactor_busy_ns", "reactor_idle_ns", "perf": <nvmf-perf --json report>}
  {"kind": "idle", "mode", "namespace", "seconds", "clk_tck", "target_ticks",
   "reactor_busy_ns", "reactor_idle_ns", "connections", "idle_host": <nvmf-perf --idle --json>}
  {"kind": "load", "when", "loadavg": [1, 5, 15 min], "busy_percent", "steal_percent",
   "top": ["%CPU COMMAND", ...], "date", "git_commit", "git_dirty"}
    (vfio-user.sh: what else ran, sampled over a second; the first dates the run)
rdma-guest.sh's runs come from fio in the guest (rdma-guest-run.sh writes "perf" in nvmf-perf's
shape, with "wakeups"); its idle records have "wakeups" and no idle host; a "guest" record
says what the guest was.
Settings come from the environment (BENCH_SECONDS, BENCH_REPEATS, BENCH_IDLE_SECONDS,
BENCH_IDLE_HOSTS) as run.sh exported them.
"""

import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys

# The cases in the order run.sh runs them, with what the table shows.
CASES = [
    ("randread-4k-qd1", "4K randread QD1"),
    ("randread-4k-qd32", "4K randread QD32"),
    ("randread-4k-qd128", "4K randread QD128"),
    ("randwrite-4k-qd32", "4K randwrite QD32"),
    ("read-128k-qd8", "128K seq read QD8"),
    ("randread-4k-qd32-2conn", "4K randread QD32 x 2 conns"),
    ("randread-4k-qd1-epoll-client", "4K randread QD1, client sleeps in epoll"),
    ("randread-4k-qd32-epoll-client", "4K randread QD32, client sleeps in epoll"),
]
MODES = ["interrupt", "poll"]
NAMESPACES = ["null", "ram", "file"]
DEFAULTS = {"BENCH_SECONDS": 10, "BENCH_REPEATS": 3, "BENCH_IDLE_SECONDS": 30}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])


def reactors(path):
    with open(path) as f:
        status = json.load(f)
    rs = status.get("reactors", [])
    busy = sum(r.get("busy_ns", 0) for r in rs)
    idle = sum(r.get("idle_ns", 0) for r in rs)
    conns = sum(r.get("connections", 0) for r in rs)
    print(busy, idle, conns)


def spread(values):
    """Median, min and max of the non-None values, or None when there are none."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def busy_percent(r):
    busy, idle = r.get("reactor_busy_ns"), r.get("reactor_idle_ns")
    if busy is None or idle is None or busy + idle <= 0:
        return None
    return 100.0 * busy / (busy + idle)


def summarize_run(records):
    def field(f):
        return spread([f(r) for r in records])

    def cpu_us_per_io(r):
        ios = r["perf"]["ios"]
        if ios <= 0:
            return None
        return r["target_ticks"] / r["clk_tck"] * 1e6 / ios

    def target_cpu_percent(r):
        secs = r["perf"]["elapsed_s"]
        return 100.0 * r["target_ticks"] / r["clk_tck"] / secs if secs > 0 else None

    def other_cpu_percent(r):
        """CPU the machine spent on neither the target nor nvmf-perf during the run, in %
        of one core (other processes, the kernel's own work; None for older records)."""
        busy, secs = r.get("machine_busy_ticks"), r["perf"]["elapsed_s"]
        if busy is None or secs <= 0:
            return None
        perf_ticks = r["perf"]["cpu_percent"] / 100.0 * secs * r["clk_tck"]
        other = busy - r["target_ticks"] - perf_ticks
        return max(0.0, 100.0 * other / r["clk_tck"] / secs)

    def steal_percent(r):
        steal, secs = r.get("steal_ticks"), r["perf"]["elapsed_s"]
        if steal is None or secs <= 0:
            return None
        return 100.0 * steal / r["clk_tck"] / secs

    return {
        "iops": field(lambda r: r["perf"]["iops"]),
        "mib_s": field(lambda r: r["perf"]["mib_s"]),
        "lat_avg_us": field(lambda r: r["perf"]["latency_us"]["avg"]),
        "lat_p50_us": field(lambda r: r["perf"]["latency_us"]["p50"]),
        "lat_p99_us": field(lambda r: r["perf"]["latency_us"]["p99"]),
        "target_cpu_us_per_io": field(cpu_us_per_io),
        "target_cpu_percent": field(target_cpu_percent),
        "reactor_busy_percent": field(busy_percent),
        "perf_cpu_percent": field(lambda r: r["perf"]["cpu_percent"]),
        "other_cpu_percent": field(other_cpu_percent),
        "steal_percent": field(steal_percent),
        "io_size": records[0]["perf"]["io_size"],
        "queue_depth": records[0]["perf"]["queue_depth"],
        "connections": records[0]["perf"]["connections"],
        "pattern": records[0]["perf"]["pattern"],
    }


def summarize_idle(r):
    return {
        "seconds": r["seconds"],
        "target_cpu_percent": 100.0 * r["target_ticks"] / r["clk_tck"] / r["seconds"],
        "cpu_resolution_percent": 100.0 / r["clk_tck"] / r["seconds"],
        "reactor_busy_percent": busy_percent(r),
        "connections": r["connections"],
        "idle_host_cpu_percent": r["idle_host"]["cpu_percent"],
        "keep_alives": r["idle_host"]["keep_alives"],
    }


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git(*args):
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def machine(defaults=None, smoke_below=None):
    """The machine and the settings; a run is a smoke run when a setting is below
    `smoke_below` (the defaults unless given)."""
    defaults = DEFAULTS if defaults is None else defaults
    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    settings = {k: int(os.environ.get(k, v)) for k, v in defaults.items()}
    if defaults is DEFAULTS:
        settings["BENCH_IDLE_HOSTS"] = int(os.environ.get("BENCH_IDLE_HOSTS", 16))
    smoke_below = defaults if smoke_below is None else smoke_below
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "git_commit": commit,
        "git_dirty": dirty,
        "settings": settings,
        "smoke": any(settings[k] < v for k, v in smoke_below.items()),
        "placement": "target taskset -c 0 with core_mask 0x1; nvmf-perf --core 1",
    }


def date_by_run(meta, records):
    """Dates a report by its run (the load sample taken before it), not by the report."""
    before = next((r for r in records if r["kind"] == "load" and "date" in r), None)
    if before is not None:
        for key in ("date", "git_commit", "git_dirty"):
            meta[key] = before[key]


def read_notes():
    """The markdown file BENCH_NOTES names, appended to a report; None when unset."""
    path = os.environ.get("BENCH_NOTES")
    if not path:
        return None
    with open(path) as f:
        return f.read()


def report_head(m, title, extra_rows):
    """A report's title (marked as a smoke run when its durations are short) and its table of
    the machine: date, host, CPU, cores, kernel, commit and placement, then `extra_rows`."""
    if m["smoke"]:
        title += " (SMOKE RUN: short durations, figures not meaningful)"
    commit = (m["git_commit"] or "unknown")[:12] + (" (dirty)" if m["git_dirty"] else "")
    out = [f"# {title}\n", "| | |\n|---|---|"]
    for k, v in [
        ("date", m["date"]),
        ("host", m["hostname"]),
        ("CPU", m["cpu_model"]),
        ("cores", m["cores"]),
        ("kernel", m["kernel"]),
        ("commit", commit),
        ("placement", m["placement"]),
        *extra_rows,
    ]:
        out.append(f"| {k} | {v} |")
    out.append("")
    return out


def fmt(x, digits):
    return "-" if x is None else f"{x:,.{digits}f}"


def cell(s, digits=0):
    """`median (min..max)`, or the single value when there was one repeat."""
    if s is None:
        return "-"
    if s["n"] == 1:
        return fmt(s["median"], digits)
    return f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}..{fmt(s['max'], digits)})"


def write_result(out_base, result, to_markdown):
    """Writes a report's figures to OUT_BASE.json and its tables to OUT_BASE.md (and stdout)."""
    with open(out_base + ".json", "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    md = to_markdown(result)
    with open(out_base + ".md", "w") as f:
        f.write(md)
    sys.stdout.write(md)


def load_and_notes(out, result, title):
    """Appends a report's closing sections: the machine's load around the run (the samples
    `load` took) under `title`, then the notes file, if any."""
    if result["load"]:
        out.append(f"## {title}\n")
        out.append(
            "| when | load average (1, 5, 15 min) | busy CPU % over 1 s | steal % "
            "| busiest processes in that second (%CPU command) |"
        )
        out.append("|---|---|---|---|---|")
        for r in result["load"]:
            out.append(
                f"| {r['when']} | {' '.join(r['loadavg'])} | {fmt(r.get('busy_percent'), 0)} "
                f"| {fmt(r.get('steal_percent'), 0)} | {'; '.join(r['top'])} |"
            )
        out.append("")
    if result["notes"]:
        out.append("## Notes\n")
        out.append(result["notes"].rstrip() + "\n")


def ratio(a, b):
    if a is None or b is None or b["median"] == 0:
        return None
    return a["median"] / b["median"]


def report(raw_path, out_base):
    records = []
    with open(raw_path) as f:
        for line in f:
            if line.strip():
                records.append(json.loads(line))
    meta = machine()
    runs = {}
    for mode in MODES:
        for case, _ in CASES:
            rs = [
                r
                for r in records
                if r["kind"] == "run" and r["mode"] == mode and r["case"] == case
            ]
            if rs:
                runs.setdefault(mode, {})[case] = summarize_run(rs)
    idle = {}
    for r in records:
        if r["kind"] == "idle":
            idle.setdefault(r["mode"], {})[r["namespace"]] = summarize_idle(r)

    def get(mode, case, key):
        return runs.get(mode, {}).get(case, {}).get(key)

    ratios = {
        "qd32_iops_interrupt_over_poll": ratio(
            get("interrupt", "randread-4k-qd32", "iops"),
            get("poll", "randread-4k-qd32", "iops"),
        ),
        "qd1_avg_latency_interrupt_over_poll": ratio(
            get("interrupt", "randread-4k-qd1", "lat_avg_us"),
            get("poll", "randread-4k-qd1", "lat_avg_us"),
        ),
    }
    result = {"machine": meta, "runs": runs, "idle": idle, "ratios": ratios}
    write_result(out_base, result, markdown)


def markdown(result):
    m = result["machine"]
    s = m["settings"]
    out = report_head(
        m,
        "nvmf-tgt benchmark",
        [
            (
                "client",
                "nvmf-perf " + (os.environ.get("BENCH_PERF_ARGS") or "(sleeps in epoll)")
                + " except the *epoll-client rows",
            ),
            (
                "durations",
                f"{s['BENCH_SECONDS']} s per run, {s['BENCH_REPEATS']} repeats; "
                f"idle {s['BENCH_IDLE_SECONDS']} s with {s['BENCH_IDLE_HOSTS']} hosts",
            ),
        ],
    )
    out.append(
        "Loopback NVMe/TCP, null namespace of 1 GiB, `max_queue_depth = 256`. Cells are the median over the repeats, "
        "with (min..max). Target CPU is utime+stime of the target process from "
        "/proc/PID/stat over the whole nvmf-perf run (connect included) divided by the "
        "I/Os completed. Reactor busy is the target's own busy/(busy+idle) from "
        "`nvmf-tgt status` (passes that found no work count as idle, so a poll-mode reactor "
        "spinning on nothing shows 0% busy at 100% CPU). Perf CPU is nvmf-perf's own CPU in % of a core: near 100 "
        "means the initiator, not the target, is the limit.\n"
    )
    for mode, cases in result["runs"].items():
        out.append(f"## {mode} mode\n")
        out.append(
            "| workload | IOPS | MiB/s | avg us | p50 us | p99 us "
            "| target CPU us/IO | reactor busy % | perf CPU % |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|")
        for case, label in CASES:
            r = cases.get(case)
            if r is None:
                continue
            out.append(
                f"| {label} | {cell(r['iops'])} | {cell(r['mib_s'], 1)} "
                f"| {cell(r['lat_avg_us'], 1)} | {cell(r['lat_p50_us'], 1)} "
                f"| {cell(r['lat_p99_us'], 1)} | {cell(r['target_cpu_us_per_io'], 2)} "
                f"| {cell(r['reactor_busy_percent'], 1)} | {cell(r['perf_cpu_percent'], 1)} |"
            )
        out.append("")
    out.append("QD32 x 2 conns is `--connections 2 -q 32`: two I/O queues of one controller, "
               "32 outstanding on each.\n")
    if result["idle"]:
        out.append(f"## Idle: {s['BENCH_IDLE_HOSTS']} connected hosts, keep-alives only\n")
        out.append(
            "| mode | namespace | target CPU % of a core | reactor busy % "
            "| connections | idle host CPU % |"
        )
        out.append("|---|---|---|---|---|---|")
        for mode, by_ns in result["idle"].items():
            for ns in NAMESPACES:
                r = by_ns.get(ns)
                if r is None:
                    continue
                out.append(
                    f"| {mode} | {ns} | {fmt(r['target_cpu_percent'], 2)} "
                    f"(resolution {fmt(r['cpu_resolution_percent'], 2)}) "
                    f"| {fmt(r['reactor_busy_percent'], 2)} | {r['connections']} "
                    f"| {fmt(r['idle_host_cpu_percent'], 2)} |"
                )
        out.append("")
    rt = result["ratios"]
    out.append("## Interrupt / poll\n")
    out.append("| figure | interrupt / poll |\n|---|---|")
    out.append(f"| 4K randread QD32 IOPS | {fmt(rt['qd32_iops_interrupt_over_poll'], 3)} |")
    out.append(
        f"| 4K randread QD1 average latency | "
        f"{fmt(rt['qd1_avg_latency_interrupt_over_poll'], 3)} |"
    )
    out.append("")
    return "\n".join(out)


# What compare.sh runs, in its order.
COMPARE_CASES = [
    ("randread-4k-qd1", "4K randread QD1"),
    ("randread-4k-qd32", "4K randread QD32"),
    ("randwrite-4k-qd32", "4K randwrite QD32"),
]
BUILDS = ["baseline", "candidate"]


def paired_ratio(records, mode, case, metric):
    """Median over the repeats of candidate/baseline, each repeat paired with itself: the
    builds of one repeat ran back to back, so a slow spell of the machine cancels out."""
    by_rep = {}
    for r in records:
        if r["kind"] == "run" and r["mode"] == mode and r["case"] == case:
            by_rep.setdefault(r["repeat"], {})[r.get("build")] = metric(r)
    ratios = [
        v["candidate"] / v["baseline"]
        for v in by_rep.values()
        if v.get("baseline") and v.get("candidate") is not None
    ]
    return spread(ratios)


def compare(raw_path, out_base):
    records = []
    with open(raw_path) as f:
        for line in f:
            if line.strip():
                records.append(json.loads(line))
    meta = machine()
    meta["baseline"] = os.environ.get("BENCH_BASELINE_DESC")
    meta["candidate"] = os.environ.get("BENCH_CANDIDATE_DESC")
    runs, ratios = {}, {}
    for mode in MODES:
        for case, _ in COMPARE_CASES:
            for build in BUILDS:
                rs = [
                    r
                    for r in records
                    if r["kind"] == "run"
                    and r["mode"] == mode
                    and r["case"] == case
                    and r.get("build") == build
                ]
                if rs:
                    runs.setdefault(mode, {}).setdefault(case, {})[build] = summarize_run(rs)
            ratios.setdefault(mode, {})[case] = {
                "iops": paired_ratio(records, mode, case, lambda r: r["perf"]["iops"]),
                "lat_avg_us": paired_ratio(
                    records, mode, case, lambda r: r["perf"]["latency_us"]["avg"]
                ),
            }
    result = {"machine": meta, "runs": runs, "ratios": ratios}
    write_result(out_base, result, compare_markdown)


def compare_markdown(result):
    m = result["machine"]
    s = m["settings"]
    out = ["# nvmf-tgt: two builds compared\n", "| | |\n|---|---|"]
    for k, v in [
        ("date", m["date"]),
        ("host", m["hostname"]),
        ("CPU", m["cpu_model"]),
        ("kernel", m["kernel"]),
        ("baseline", m["baseline"]),
        ("candidate", m["candidate"]),
        ("placement", m["placement"]),
        ("client", "the candidate's nvmf-perf " + (os.environ.get("BENCH_PERF_ARGS") or "")),
        ("durations", f"{s['BENCH_SECONDS']} s per run, {s['BENCH_REPEATS']} repeats"),
    ]:
        out.append(f"| {k} | {v} |")
    out.append("")
    out.append(
        "Loopback NVMe/TCP, null namespace of 1 GiB. Each repeat runs both builds back to "
        "back (which goes first alternates). Cells are medians over the repeats with "
        "(min..max); the ratio is the median of the per-repeat candidate / baseline ratios.\n"
    )
    for mode, cases in result["runs"].items():
        out.append(f"## {mode} mode\n")
        out.append(
            "| workload | baseline IOPS | candidate IOPS | IOPS ratio | baseline avg us "
            "| candidate avg us | latency ratio | target CPU us/IO (baseline / candidate) |"
        )
        out.append("|---|---|---|---|---|---|---|---|")
        for case, label in COMPARE_CASES:
            by_build = cases.get(case, {})
            b, c = by_build.get("baseline"), by_build.get("candidate")
            if b is None or c is None:
                continue
            rt = result["ratios"][mode][case]
            out.append(
                f"| {label} | {cell(b['iops'])} | {cell(c['iops'])} | {cell(rt['iops'], 3)} "
                f"| {cell(b['lat_avg_us'], 1)} | {cell(c['lat_avg_us'], 1)} "
                f"| {cell(rt['lat_avg_us'], 3)} "
                f"| {cell(b['target_cpu_us_per_io'], 2)} / {cell(c['target_cpu_us_per_io'], 2)} |"
            )
        out.append("")
    return "\n".join(out)


# What vfio-user.sh runs, in its order: nvmf-perf's default doorbells (shadow doorbells when
# the target offers them, as Linux), then none (-noshadow).
VFIO_SHADOW = [("", ""), ("-noshadow", ", no shadow doorbells")]
VFIO_CASES = [
    (f"randread-4k-{qd}-{client}{suffix}", f"4K randread {label}{shadow}")
    for suffix, shadow in VFIO_SHADOW
    for qd, client, label in [
        ("qd1", "irq", "QD1, client woken by MSI-X eventfd"),
        ("qd1", "busy-poll", "QD1, client spins on polled CQs"),
        ("qd32", "irq", "QD32, client woken by MSI-X eventfd"),
        ("qd32", "busy-poll", "QD32, client spins on polled CQs"),
    ]
]
VFIO_CLIENTS = [("irq", "client woken by MSI-X eventfd"), ("busy-poll", "client spins")]


def doorbell_label(perf):
    """How a run's doorbells went: `trapped` or `mapped`, `+shadow` with shadow doorbells."""
    how = perf.get("doorbells") or "-"
    return how + "+shadow" if perf.get("shadow_doorbells") else how


def doorbell_writes_per_io(r):
    writes, ios = r["perf"].get("doorbell_writes"), r["perf"]["ios"]
    if writes is None or ios <= 0:
        return None
    return writes / ios


def vfio_report(raw_path, out_base):
    records = []
    with open(raw_path) as f:
        for line in f:
            if line.strip():
                records.append(json.loads(line))
    meta = machine(
        defaults={"BENCH_SECONDS": 10, "BENCH_REPEATS": 3},
        smoke_below={"BENCH_SECONDS": 5, "BENCH_REPEATS": 3},
    )
    meta["placement"] = (
        "target taskset -c 0 with core_mask 0x1; nvmf-perf --vfio-user --core 1"
    )
    date_by_run(meta, records)
    modes = []
    for r in records:
        if r["kind"] == "run" and r["mode"] not in modes:
            modes.append(r["mode"])
    runs = {}
    for mode in modes:
        for case, _ in VFIO_CASES:
            rs = [
                r
                for r in records
                if r["kind"] == "run" and r["mode"] == mode and r["case"] == case
            ]
            if rs:
                summary = summarize_run(rs)
                summary["doorbells"] = sorted({doorbell_label(r["perf"]) for r in rs})
                summary["doorbell_writes_per_io"] = spread(
                    [doorbell_writes_per_io(r) for r in rs]
                )
                runs.setdefault(mode, {})[case] = summary

    def get(mode, case, key):
        return runs.get(mode, {}).get(case, {}).get(key)

    # Each mode against poll mode, per client and doorbell choice: poll mode with the same
    # doorbells, and poll mode's best QD32 IOPS with either.
    ratios = {}
    for mode in modes:
        if mode == "poll":
            continue
        for client, _ in VFIO_CLIENTS:
            for suffix, _ in VFIO_SHADOW:
                qd32 = f"randread-4k-qd32-{client}{suffix}"
                qd1 = f"randread-4k-qd1-{client}{suffix}"
                poll_best = max(
                    (
                        get("poll", f"randread-4k-qd32-{client}{s}", "iops")
                        for s, _ in VFIO_SHADOW
                    ),
                    key=lambda x: -1 if x is None else x["median"],
                )
                ratios.setdefault(mode, {})[client + suffix] = {
                    "qd32_iops_over_poll": ratio(
                        get(mode, qd32, "iops"), get("poll", qd32, "iops")
                    ),
                    "qd32_iops_over_poll_best": ratio(get(mode, qd32, "iops"), poll_best),
                    "qd1_avg_latency_over_poll": ratio(
                        get(mode, qd1, "lat_avg_us"), get("poll", qd1, "lat_avg_us")
                    ),
                    "qd32_target_cpu_us_per_io": {
                        m: get(m, qd32, "target_cpu_us_per_io") for m in (mode, "poll")
                    },
                    "qd32_doorbells": {
                        m: runs.get(m, {}).get(qd32, {}).get("doorbells") for m in (mode, "poll")
                    },
                }
    loads = [r for r in records if r["kind"] == "load"]
    notes = read_notes()
    result = {
        "machine": meta,
        "runs": runs,
        "ratios": ratios,
        "load": loads,
        "notes": notes,
    }
    write_result(out_base, result, vfio_markdown)


def vfio_markdown(result):
    m = result["machine"]
    s = m["settings"]
    out = report_head(
        m,
        "nvmf-tgt vfio-user benchmark",
        [
            ("durations", f"{s['BENCH_SECONDS']} s per run, {s['BENCH_REPEATS']} repeats"),
        ],
    )
    out.append(
        "No VM: nvmf-perf is the VMM, with a guest NVMe driver's queues in a memfd shared by "
        "DMA_MAP, MSI-X vectors as eventfds, one CQ head and one SQ tail doorbell write per "
        "batch (posted REGION_WRITE messages when trapped, stores when mapped), or with shadow "
        "doorbells (`+shadow`, nvmf-perf's default as Linux's: Doorbell Buffer Config, each "
        "update a store into the shadow buffer and a doorbell write only when the target's "
        "EventIdx asks; the writes per I/O column counts what still reached the target). Null "
        "namespace of 1 GiB, one I/O queue. Interrupt mode is `interrupt_mode = true` with "
        "`disable_mappable_bar0 = true` (and the default `busy_poll_us = 50`; "
        "interrupt-nopoll has `busy_poll_us = 0`); poll mode is `interrupt_mode = false` with "
        "`disable_mappable_bar0 = false`. Cells are the median over the repeats with "
        "(min..max). Target CPU is utime+stime of the target process from /proc/PID/stat "
        "over the whole nvmf-perf run (bring-up included) divided by the I/Os completed; "
        "reactor busy is the target's own busy/(busy+idle) from `nvmf-tgt status`; perf CPU "
        "is nvmf-perf's own CPU in % of a core; other CPU is what the machine's CPUs spent "
        "on anything else during the run (other processes, interrupts), in % of one core, and "
        "steal what the hypervisor took from this VM: both near 0 for a clean figure.\n"
    )
    for mode, cases in result["runs"].items():
        out.append(f"## {mode} mode\n")
        out.append(
            "| workload | IOPS | MiB/s | avg us | p50 us | p99 us | target CPU us/IO "
            "| target CPU % | reactor busy % | perf CPU % | other CPU % | steal % | doorbells "
            "| doorbell writes / I/O |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for case, label in VFIO_CASES:
            r = cases.get(case)
            if r is None:
                continue
            out.append(
                f"| {label} | {cell(r['iops'])} | {cell(r['mib_s'], 1)} "
                f"| {cell(r['lat_avg_us'], 1)} | {cell(r['lat_p50_us'], 1)} "
                f"| {cell(r['lat_p99_us'], 1)} | {cell(r['target_cpu_us_per_io'], 2)} "
                f"| {cell(r['target_cpu_percent'], 1)} "
                f"| {cell(r['reactor_busy_percent'], 1)} | {cell(r['perf_cpu_percent'], 1)} "
                f"| {cell(r['other_cpu_percent'], 1)} | {cell(r['steal_percent'], 1)} "
                f"| {', '.join(r['doorbells'])} | {cell(r.get('doorbell_writes_per_io'), 3)} |"
            )
        out.append("")
    out.append("## Against poll mode\n")
    out.append(
        "| mode | client | doorbells (vs poll's) | QD32 IOPS / poll's, same client options "
        "| QD32 IOPS / poll's best (goal for interrupt: >= 0.9) "
        "| QD1 avg latency / poll's | QD32 target CPU us/IO | poll's |"
    )
    out.append("|---|---|---|---|---|---|---|---|")
    for mode, by_client in result["ratios"].items():
        for suffix, _ in VFIO_SHADOW:
            for client, label in VFIO_CLIENTS:
                rt = by_client.get(client + suffix)
                if rt is None or rt["qd32_iops_over_poll"] is None:
                    continue
                cpu = rt["qd32_target_cpu_us_per_io"]
                bells = rt.get("qd32_doorbells") or {}
                shadow = " vs ".join(
                    ", ".join(bells.get(m) or ["-"]) for m in (mode, "poll")
                )
                out.append(
                    f"| {mode} | {label} | {shadow} | {fmt(rt['qd32_iops_over_poll'], 3)} "
                    f"| {fmt(rt.get('qd32_iops_over_poll_best'), 3)} "
                    f"| {fmt(rt['qd1_avg_latency_over_poll'], 3)} "
                    f"| {cell(cpu.get(mode), 2)} | {cell(cpu.get('poll'), 2)} |"
                )
    out.append("")
    load_and_notes(out, result, "Machine load")
    return "\n".join(out)


# What rdma-guest.sh runs, in its order.
RDMA_GUEST_CASES = [
    ("randread-4k-qd1", "4K randread QD1"),
    ("randread-4k-qd32", "4K randread QD32"),
]


def read_records(raw_path):
    with open(raw_path) as f:
        return [json.loads(line) for line in f if line.strip()]


def rdma_guest_report(raw_path, out_base):
    records = read_records(raw_path)
    meta = machine(
        defaults={"BENCH_SECONDS": 10, "BENCH_REPEATS": 3},
        smoke_below={"BENCH_SECONDS": 5, "BENCH_REPEATS": 3},
    )
    meta["placement"] = (
        "in the guest: target core_mask 0x1 (guest CPU 0); fio taskset -c 1 (guest CPU 1)"
    )
    date_by_run(meta, records)
    guest = next((r for r in records if r["kind"] == "guest"), {})
    modes = []
    for r in records:
        if r["kind"] in ("run", "idle") and r["mode"] not in modes:
            modes.append(r["mode"])
    runs, idle = {}, {}
    for mode in modes:
        for case, _ in RDMA_GUEST_CASES:
            rs = [
                r
                for r in records
                if r["kind"] == "run" and r["mode"] == mode and r["case"] == case
            ]
            if rs:
                runs.setdefault(mode, {})[case] = summarize_run(rs)
        rs = [r for r in records if r["kind"] == "idle" and r["mode"] == mode]
        if rs:
            idle[mode] = {
                "seconds": spread([r["seconds"] for r in rs]),
                "target_cpu_percent": spread(
                    [100.0 * r["target_ticks"] / r["clk_tck"] / r["seconds"] for r in rs]
                ),
                "cpu_resolution_percent": 100.0 / rs[0]["clk_tck"] / rs[0]["seconds"],
                "wakeups_per_s": spread([r["wakeups"] / r["seconds"] for r in rs]),
                "reactor_busy_percent": spread([busy_percent(r) for r in rs]),
                "connections": rs[0]["connections"],
            }

    def get(mode, case, key):
        return runs.get(mode, {}).get(case, {}).get(key)

    ratios = {
        "qd32_iops_interrupt_over_poll": ratio(
            get("interrupt", "randread-4k-qd32", "iops"), get("poll", "randread-4k-qd32", "iops")
        ),
        "qd1_avg_latency_interrupt_over_poll": ratio(
            get("interrupt", "randread-4k-qd1", "lat_avg_us"),
            get("poll", "randread-4k-qd1", "lat_avg_us"),
        ),
        "qd32_target_cpu_us_per_io_interrupt_over_poll": ratio(
            get("interrupt", "randread-4k-qd32", "target_cpu_us_per_io"),
            get("poll", "randread-4k-qd32", "target_cpu_us_per_io"),
        ),
    }
    notes = read_notes()
    result = {
        "machine": meta,
        "guest": guest,
        "runs": runs,
        "idle": idle,
        "ratios": ratios,
        "load": [r for r in records if r["kind"] == "load"],
        "notes": notes,
    }
    write_result(out_base, result, rdma_guest_markdown)


def rdma_guest_markdown(result):
    m, g = result["machine"], result["guest"]
    s = m["settings"]
    title = "nvmf-tgt NVMe/RDMA benchmark in a qemu TCG guest"
    if m["smoke"]:
        title += " (SMOKE RUN: short durations, figures not meaningful)"
    out = [f"# {title}\n"]
    out.append(
        "**The guest's CPUs are emulated by qemu TCG (no KVM), soft-RoCE (rdma_rxe) is the "
        "RDMA device and the target, the Linux host and the NIC share two emulated CPUs: the "
        "absolute figures (IOPS, latency, CPU per I/O) are meaningless, and say nothing about "
        "real RDMA hardware. Only the ratios between the modes of this one run mean anything, "
        "and those too are coloured by TCG.**\n"
    )
    out.append("| | |\n|---|---|")
    commit = (m["git_commit"] or "unknown")[:12] + (" (dirty)" if m["git_dirty"] else "")
    for k, v in [
        ("date", m["date"]),
        ("host", f"{m['hostname']}: {m['cpu_model']}, {m['cores']} cores, kernel {m['kernel']}"),
        (
            "guest",
            f"qemu TCG, {g.get('cpus', '?')} CPUs, {g.get('memory_kib', 0) // 1024} MiB, "
            f"kernel {g.get('kernel', '?')}, {g.get('fio', 'fio')}",
        ),
        ("commit", commit),
        ("placement", m["placement"]),
        ("durations", f"{s['BENCH_SECONDS']} s per fio run, {s['BENCH_REPEATS']} rounds"),
    ]:
        out.append(f"| {k} | {v} |")
    out.append("")
    out.append(
        "nvmf-tgt serves NVMe/RDMA on rxe0 (soft-RoCE on the guest's eth0, 10.0.2.15) with a "
        "null namespace of 1 GiB; the guest's own nvme-rdma host connects (`nvme connect -t "
        "rdma`, one I/O queue per guest CPU) and fio (libaio, direct, one job) reads the "
        "namespace's block device. Each round runs the target in interrupt mode "
        "(`interrupt_mode = true`, default `busy_poll_us = 50`) and then in poll mode "
        "(`interrupt_mode = false`), a fresh target and connection each. Cells are the median "
        "over the rounds with (min..max). Target CPU is utime+stime of the target process "
        "(/proc/PID/stat in the guest) over the fio run (fio's start-up included) divided by "
        "the I/Os fio completed; target CPU % is the same over the run's length; reactor busy "
        "is the target's own busy/(busy+idle) from `nvmf-tgt status`; fio CPU is fio's "
        "usr+sys. Latency is fio's: avg is submission to completion, p50/p99 are completion "
        "latency percentiles.\n"
    )
    for mode, cases in result["runs"].items():
        out.append(f"## {mode} mode\n")
        out.append(
            "| workload | IOPS | MiB/s | avg us | p50 us | p99 us | target CPU us/IO "
            "| target CPU % | reactor busy % | fio CPU % |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for case, label in RDMA_GUEST_CASES:
            r = cases.get(case)
            if r is None:
                continue
            out.append(
                f"| {label} | {cell(r['iops'])} | {cell(r['mib_s'], 1)} "
                f"| {cell(r['lat_avg_us'], 1)} | {cell(r['lat_p50_us'], 1)} "
                f"| {cell(r['lat_p99_us'], 1)} | {cell(r['target_cpu_us_per_io'], 1)} "
                f"| {cell(r['target_cpu_percent'], 1)} "
                f"| {cell(r['reactor_busy_percent'], 1)} | {cell(r['perf_cpu_percent'], 1)} |"
            )
        out.append("")
    if result["idle"]:
        out.append("## Idle: one connected host, keep-alives only (`--keep-alive-tmo=5`)\n")
        out.append(
            "| mode | window s | target CPU % of a core | wake-ups / s | reactor busy % "
            "| connections |"
        )
        out.append("|---|---|---|---|---|---|")
        for mode, r in result["idle"].items():
            out.append(
                f"| {mode} | {cell(r['seconds'], 0)} | {cell(r['target_cpu_percent'], 2)} "
                f"(resolution {r['cpu_resolution_percent']:.2f}) "
                f"| {cell(r['wakeups_per_s'], 1)} | {cell(r['reactor_busy_percent'], 2)} "
                f"| {r['connections']} |"
            )
        out.append("")
    rt = result["ratios"]
    out.append("## Interrupt / poll\n")
    out.append("| figure | interrupt / poll |")
    out.append("|---|---|")
    out.append(
        f"| 4K randread QD32 IOPS (goal >= 0.9) | {fmt(rt['qd32_iops_interrupt_over_poll'], 3)} |"
    )
    out.append(
        f"| 4K randread QD1 avg latency | {fmt(rt['qd1_avg_latency_interrupt_over_poll'], 3)} |"
    )
    out.append(
        "| 4K randread QD32 target CPU us/IO "
        f"| {fmt(rt['qd32_target_cpu_us_per_io_interrupt_over_poll'], 3)} |"
    )
    out.append("")
    load_and_notes(out, result, "Machine load (the host running qemu)")
    return "\n".join(out)

# file.sh's storages and workloads, in the order the report shows them.
FILE_STORAGES = [
    ("tmpfs", "1 GiB of random data on tmpfs (/dev/shm), buffered"),
    ("sparse", "a sparse 1 GiB file on tmpfs (truncate, never written: reads hit holes)"),
    ("disk", "1 GiB of random data on the disk (ext4 under /var/tmp), direct = true"),
]
FILE_ENGINES = ["uring", "threads"]
FILE_CASES = [
    ("randread-4k-qd1", "4K randread QD1"),
    ("randread-4k-qd32", "4K randread QD32"),
    ("randread-4k-qd128", "4K randread QD128"),
    ("randwrite-4k-qd32", "4K randwrite QD32"),
]
# Issue 14's reference: SPDK's nvmf_tgt with an AIO bdev on a 1 GiB tmpfs file, target on
# core 0 and spdk_nvme_perf on core 1, 4K randread, on this machine kind (IOPS): the issue's
# figures, not measured in the run (spdk-file.sh measures SPDK side by side).
SPDK_AIO_TMPFS = {
    ("poll", "randread-4k-qd1"): 113288,
    ("poll", "randread-4k-qd32"): 473778,
    ("interrupt", "randread-4k-qd1"): 63672,
    ("interrupt", "randread-4k-qd32"): 405445,
}


def file_report(raw_path, out_base):
    records = read_records(raw_path)
    meta = machine(
        defaults={"BENCH_SECONDS": 10, "BENCH_REPEATS": 3, "BENCH_IDLE_SECONDS": 30},
        smoke_below={"BENCH_SECONDS": 5, "BENCH_REPEATS": 3, "BENCH_IDLE_SECONDS": 10},
    )
    date_by_run(meta, records)
    runs = {}
    for r in records:
        if r["kind"] != "run":
            continue
        storage, engine, case = r["case"].split("/", 2)
        runs.setdefault(storage, {}).setdefault(engine, {}).setdefault(r["mode"], {}).setdefault(
            case, []
        ).append(r)
    for storage in runs.values():
        for engine in storage.values():
            for mode, cases in engine.items():
                for case in cases:
                    cases[case] = summarize_run(cases[case])

    def get(storage, engine, mode, case):
        return runs.get(storage, {}).get(engine, {}).get(mode, {}).get(case, {}).get("iops")

    ratios = []
    for storage, _ in FILE_STORAGES:
        for mode in MODES:
            for case, _ in FILE_CASES:
                uring = get(storage, "uring", mode, case)
                if uring is None:
                    continue
                ref = SPDK_AIO_TMPFS.get((mode, case)) if storage != "disk" else None
                ratios.append(
                    {
                        "storage": storage,
                        "mode": mode,
                        "case": case,
                        "uring_over_threads": ratio(uring, get(storage, "threads", mode, case)),
                        "spdk_aio_iops": ref,
                        "uring_over_spdk_aio": uring["median"] / ref if ref else None,
                        "interrupt_over_poll": ratio(
                            get(storage, "uring", "interrupt", case),
                            get(storage, "uring", "poll", case),
                        )
                        if mode == "interrupt"
                        else None,
                    }
                )
    idle = {}
    for r in records:
        if r["kind"] == "idle":
            idle.setdefault(r["mode"], {})[r["namespace"]] = summarize_idle(r)
    notes = read_notes()
    result = {
        "machine": meta,
        "runs": runs,
        "ratios": ratios,
        "idle": idle,
        "load": [r for r in records if r["kind"] == "load"],
        "notes": notes,
    }
    write_result(out_base, result, file_markdown)


def file_markdown(result):
    m = result["machine"]
    s = m["settings"]
    out = report_head(
        m,
        "nvmf-tgt file namespaces",
        [
            ("client", "nvmf-perf " + (os.environ.get("BENCH_PERF_ARGS") or "(sleeps in epoll)")),
            (
                "durations",
                f"{s['BENCH_SECONDS']} s per run, {s['BENCH_REPEATS']} repeats going round every "
                f"storage, engine and mode; idle {s['BENCH_IDLE_SECONDS']} s with "
                f"{os.environ.get('BENCH_IDLE_HOSTS', 16)} hosts",
            ),
        ],
    )
    out.append(
        "Loopback NVMe/TCP, one `file` namespace, `max_queue_depth = 256`. Cells are the median "
        "over the repeats with (min..max). Target CPU is the target process's utime+stime "
        "over the run divided by the I/Os. Storages:\n"
    )
    for storage, desc in FILE_STORAGES:
        if storage in result["runs"]:
            out.append(f"- **{storage}**: {desc}")
    out.append("")
    out.append("## Ratios\n")
    out.append(
        "`uring / threads` compares the engines in the same run; `vs SPDK AIO` divides the "
        "uring engine's median by issue 14's SPDK AIO bdev figure for a tmpfs file (not "
        "measured in this run, and measured with spdk_nvme_perf as the client, not "
        "nvmf-perf; contrib/bench/spdk-file.sh runs both targets side by side with it).\n"
    )
    out.append("| storage | mode | workload | uring IOPS | uring / threads | SPDK AIO IOPS | vs SPDK AIO | interrupt / poll |")
    out.append("|---|---|---|---|---|---|---|---|")
    labels = dict(FILE_CASES)
    for r in result["ratios"]:
        uring = result["runs"][r["storage"]]["uring"][r["mode"]][r["case"]]["iops"]
        out.append(
            f"| {r['storage']} | {r['mode']} | {labels.get(r['case'], r['case'])} "
            f"| {cell(uring)} | {fmt(r['uring_over_threads'], 2)} "
            f"| {fmt(r['spdk_aio_iops'], 0)} | {fmt(r['uring_over_spdk_aio'], 2)} "
            f"| {fmt(r['interrupt_over_poll'], 2)} |"
        )
    out.append("")
    for storage, desc in FILE_STORAGES:
        engines = result["runs"].get(storage)
        if not engines:
            continue
        out.append(f"## {storage}: {desc}\n")
        out.append("| engine | mode | workload | IOPS | avg us | p99 us | target CPU us/IO | perf CPU % |")
        out.append("|---|---|---|---|---|---|---|---|")
        for engine in FILE_ENGINES:
            for mode in MODES:
                cases = engines.get(engine, {}).get(mode, {})
                for case, label in FILE_CASES:
                    c = cases.get(case)
                    if c is None:
                        continue
                    out.append(
                        f"| {engine} | {mode} | {label} | {cell(c['iops'])} "
                        f"| {cell(c['lat_avg_us'], 1)} | {cell(c['lat_p99_us'], 1)} "
                        f"| {cell(c['target_cpu_us_per_io'], 2)} | {cell(c['perf_cpu_percent'])} |"
                    )
        out.append("")
    if result["idle"]:
        out.append("## Idle\n")
        out.append(
            "Target CPU while the hosts are connected and only send keep-alives, in % of one "
            "core (utime+stime over the idle time; one clock tick is the resolution).\n"
        )
        out.append("| mode | namespace | connections | target CPU % | resolution % | reactor busy % |")
        out.append("|---|---|---|---|---|---|")
        for mode, nss in result["idle"].items():
            for ns, r in nss.items():
                out.append(
                    f"| {mode} | {ns} | {r['connections']} | {fmt(r['target_cpu_percent'], 3)} "
                    f"| {fmt(r['cpu_resolution_percent'], 3)} | {fmt(r['reactor_busy_percent'], 3)} |"
                )
        out.append("")
    load_and_notes(out, result, "Machine load")
    return "\n".join(out)


def spdk_file_report(raw_path, out_base):
    records = read_records(raw_path)
    meta = machine(
        defaults={"BENCH_SECONDS": 5, "BENCH_REPEATS": 3},
        smoke_below={"BENCH_SECONDS": 5, "BENCH_REPEATS": 3},
    )
    meta["placement"] = "targets taskset -c 0 (SPDK -m 0x1); spdk_nvme_perf -c 0x2"
    date_by_run(meta, records)
    runs = [r for r in records if r["kind"] == "run"]
    rows = []
    for storage, desc in FILE_STORAGES:
        for mode in MODES:
            for qd in sorted({r["queue_depth"] for r in runs}):
                cell_runs = {
                    t: [
                        r
                        for r in runs
                        if r["target"] == t
                        and r["storage"] == storage
                        and r["mode"] == mode
                        and r["queue_depth"] == qd
                    ]
                    for t in ("spdk", "nvmf-tgt")
                }
                if not all(cell_runs.values()):
                    continue

                def fig(t, f):
                    return spread([f(r) for r in cell_runs[t]])

                def cpu_us_per_io(r):
                    ios = r["iops"] * r["seconds"]
                    return r["target_ticks"] / r["clk_tck"] * 1e6 / ios if ios > 0 else None

                # Repeat n of one target against repeat n of the other: they ran minutes
                # apart at most, so a slow spell of the machine mostly falls on both.
                paired = {r["repeat"]: r["iops"] for r in cell_runs["spdk"]}
                ratios = [
                    r["iops"] / paired[r["repeat"]]
                    for r in cell_runs["nvmf-tgt"]
                    if paired.get(r["repeat"])
                ]
                rows.append(
                    {
                        "storage": storage,
                        "mode": mode,
                        "queue_depth": qd,
                        "spdk_iops": fig("spdk", lambda r: r["iops"]),
                        "nvmf_tgt_iops": fig("nvmf-tgt", lambda r: r["iops"]),
                        "spdk_lat_avg_us": fig("spdk", lambda r: r["lat_avg_us"]),
                        "nvmf_tgt_lat_avg_us": fig("nvmf-tgt", lambda r: r["lat_avg_us"]),
                        "spdk_cpu_us_per_io": fig("spdk", cpu_us_per_io),
                        "nvmf_tgt_cpu_us_per_io": fig("nvmf-tgt", cpu_us_per_io),
                        "nvmf_tgt_over_spdk": spread(ratios),
                    }
                )
    result = {
        "machine": meta,
        "rows": rows,
        "load": [r for r in records if r["kind"] == "load"],
        "notes": read_notes(),
    }
    write_result(out_base, result, spdk_file_markdown)


def spdk_file_markdown(result):
    m = result["machine"]
    s = m["settings"]
    out = report_head(
        m,
        "nvmf-tgt and SPDK: file namespaces, same client",
        [
            ("durations", f"{s['BENCH_SECONDS']} s per run, {s['BENCH_REPEATS']} repeats"),
        ],
    )
    out.append(
        "4K randread over loopback NVMe/TCP with SPDK's `spdk_nvme_perf` as the client for both "
        "targets: nvmf-tgt with a `file` namespace (engine `uring`), SPDK's `nvmf_tgt` with an "
        "AIO bdev (`bdev_aio_create`, 512-byte blocks) on the same 1 GiB tmpfs file; "
        "`max_queue_depth` 256 on both; SPDK's interrupt mode is `--interrupt-mode`. Cells "
        "are medians over the repeats with (min..max); the ratio is the median of repeat-by-"
        "repeat ratios. Target CPU is the target process's utime+stime per I/O.\n"
    )
    out.append(
        "| file | mode | QD | SPDK AIO IOPS | nvmf-tgt IOPS | nvmf-tgt / SPDK "
        "| avg us SPDK / nvmf-tgt | target CPU us/IO SPDK / nvmf-tgt |"
    )
    out.append("|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        out.append(
            f"| {r['storage']} | {r['mode']} | {r['queue_depth']} | {cell(r['spdk_iops'])} "
            f"| {cell(r['nvmf_tgt_iops'])} | {cell(r['nvmf_tgt_over_spdk'], 2)} "
            f"| {fmt(r['spdk_lat_avg_us']['median'], 1)} / {fmt(r['nvmf_tgt_lat_avg_us']['median'], 1)} "
            f"| {fmt(r['spdk_cpu_us_per_io']['median'], 2)} / {fmt(r['nvmf_tgt_cpu_us_per_io']['median'], 2)} |"
        )
    out.append("")
    load_and_notes(out, result, "Machine load")
    return "\n".join(out)


def load_sample(when, seconds=1.0):
    """One line of JSON: the machine's busy CPU over `seconds` (in % of one core, steal apart)
    and the processes that used most of it, this one excluded."""
    import time

    def cpu_line():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[0] + v[1] + v[2] + v[5] + v[6], v[7]

    def per_process():
        out = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            out[pid] = (name, int(fields[11]) + int(fields[12]))
        return out

    tck = os.sysconf("SC_CLK_TCK")
    (b0, s0), p0 = cpu_line(), per_process()
    time.sleep(seconds)
    (b1, s1), p1 = cpu_line(), per_process()
    procs = []
    for pid, (name, ticks) in p1.items():
        if pid in p0 and ticks > p0[pid][1]:
            procs.append((100.0 * (ticks - p0[pid][1]) / tck / seconds, name))
    procs.sort(reverse=True)
    with open("/proc/loadavg") as f:
        loadavg = f.read().split()[:3]
    print(
        json.dumps(
            {
                "kind": "load",
                "when": when,
                "loadavg": loadavg,
                "busy_percent": 100.0 * (b1 - b0) / tck / seconds,
                "steal_percent": 100.0 * (s1 - s0) / tck / seconds,
                "top": [f"{p:.0f} {n}" for p, n in procs[:5]],
                "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "git_commit": git("rev-parse", "HEAD"),
                "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            }
        )
    )


def main(argv):
    if len(argv) == 2 and argv[1] == "free-port":
        free_port()
    elif len(argv) == 3 and argv[1] == "reactors":
        reactors(argv[2])
    elif len(argv) == 4 and argv[1] == "report":
        report(argv[2], argv[3])
    elif len(argv) == 4 and argv[1] == "compare":
        compare(argv[2], argv[3])
    elif len(argv) == 3 and argv[1] == "load":
        load_sample(argv[2])
    elif len(argv) == 4 and argv[1] == "vfio-report":
        vfio_report(argv[2], argv[3])
    elif len(argv) == 4 and argv[1] == "rdma-guest-report":
        rdma_guest_report(argv[2], argv[3])
    elif len(argv) == 4 and argv[1] == "file-report":
        file_report(argv[2], argv[3])
    elif len(argv) == 4 and argv[1] == "spdk-file-report":
        spdk_file_report(argv[2], argv[3])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
