//! Shared by the integration tests: runs the real `nvmf-tgt` binary on a config written to a
//! temporary directory, on a free loopback port, and stops it with SIGTERM.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::Read as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const SUBNQN: &str = "nqn.2026-11.io.nvmf-tgt:test";
pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:5b1d1e8e-7d0a-4c2e-9a39-3f0a6a7e0001";

/// A free TCP port on 127.0.0.1 (bound then released; good enough on a test machine).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

pub struct TargetProcess {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// Where the declaration puts the control socket (`dir/ctl.sock` unless told otherwise).
    pub control_socket: PathBuf,
}

/// How to start the target beyond its declaration.
#[derive(Default)]
pub struct Launch<'a> {
    /// Extra `run` arguments.
    pub args: &'a [&'a str],
    pub envs: &'a [(&'a str, &'a Path)],
    /// Start it under this umask (through `sh`), e.g. "000".
    pub umask: Option<&'a str>,
    /// The control socket the declaration names, when not `dir/ctl.sock`.
    pub control_socket: Option<PathBuf>,
    /// A command that runs or traces the target, which comes as its last arguments
    /// (`prlimit --nofile=64:64`, `strace -o FILE`).
    pub wrapper: &'a [&'a OsStr],
}

/// What to put in the generated config.
pub struct TargetSpec {
    pub interrupt_mode: bool,
    pub extra_subsystem_keys: String,
    pub namespaces: String,
    pub tcp_options: String,
}

impl Default for TargetSpec {
    fn default() -> Self {
        Self {
            interrupt_mode: true,
            extra_subsystem_keys: "allow_any_host = true\n".into(),
            namespaces: "[[subsystem.namespace]]\nnsid = 1\nram = { size = \"16MiB\" }\n".into(),
            tcp_options: String::new(),
        }
    }
}

impl TargetProcess {
    pub fn start(spec: &TargetSpec) -> Self {
        Self::start_wrapped(spec, &[])
    }

    /// Runs the target as the last arguments of `wrapper`, a command that runs or traces it
    /// (`prlimit --nofile=64:64`, `strace -o FILE`). An empty wrapper runs it directly.
    pub fn start_wrapped(spec: &TargetSpec, wrapper: &[&OsStr]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = format!(
            "[target]\ninterrupt_mode = {}\ncore_mask = \"0x1\"\ncontrol_socket = \"{}\"\n\n\
             [transport.tcp]\n{}\n\n\
             [[subsystem]]\nnqn = \"{SUBNQN}\"\n{}\n\
             [[subsystem.listener]]\ntransport = \"tcp\"\naddress = \"127.0.0.1\"\nport = {port}\n\n{}",
            spec.interrupt_mode,
            dir.path().join("ctl.sock").display(),
            spec.tcp_options,
            spec.extra_subsystem_keys,
            spec.namespaces,
        );
        let config_path = dir.path().join("target.toml");
        std::fs::write(&config_path, config).expect("write config");
        Self::launch(
            dir,
            port,
            &config_path,
            &Launch {
                wrapper,
                ..Launch::default()
            },
        )
    }

    pub fn start_with_config(dir: tempfile::TempDir, port: u16, config: &str) -> Self {
        let config_path = dir.path().join("target.toml");
        std::fs::write(&config_path, config).expect("write config");
        Self::start_with_config_path(dir, port, &config_path)
    }

    /// Runs the target on a declaration already written at `config_path`.
    pub fn start_with_config_path(dir: tempfile::TempDir, port: u16, config_path: &Path) -> Self {
        Self::start_with_args(dir, port, config_path, &[])
    }

    /// Runs the target with extra `run` arguments.
    pub fn start_with_args(
        dir: tempfile::TempDir,
        port: u16,
        config_path: &Path,
        args: &[&str],
    ) -> Self {
        Self::start_with_env(dir, port, config_path, args, &[])
    }

    /// Runs the target with extra `run` arguments and environment variables.
    pub fn start_with_env(
        dir: tempfile::TempDir,
        port: u16,
        config_path: &Path,
        args: &[&str],
        envs: &[(&str, &Path)],
    ) -> Self {
        Self::launch(
            dir,
            port,
            config_path,
            &Launch {
                args,
                envs,
                ..Launch::default()
            },
        )
    }

    /// Runs the target as `launch` says and waits until it listens.
    pub fn launch(dir: tempfile::TempDir, port: u16, config_path: &Path, launch: &Launch) -> Self {
        let config_path = config_path.to_owned();
        let log_path = dir.path().join("target.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        // The wrapper (if any) runs the binary; a umask is set by a shell that execs them.
        let binary = OsStr::new(env!("CARGO_BIN_EXE_nvmf-tgt"));
        let mut program: Vec<&OsStr> = launch.wrapper.to_vec();
        program.push(binary);
        let mut command = match launch.umask {
            Some(umask) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
                    .args(&program);
                sh
            }
            None => {
                let mut direct = Command::new(program[0]);
                direct.args(&program[1..]);
                direct
            }
        };
        let child = command
            .args(["run", "-c"])
            .arg(&config_path)
            .args(launch.args)
            .envs(launch.envs.iter().map(|(k, v)| (*k, *v)))
            .env(
                "RUST_LOG",
                std::env::var("TEST_TARGET_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn nvmf-tgt");
        let control_socket = launch
            .control_socket
            .clone()
            .unwrap_or_else(|| dir.path().join("ctl.sock"));
        let mut target = Self {
            child: Some(child),
            dir,
            port,
            config_path,
            log_path,
            control_socket,
        };
        target.wait_listening();
        target
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn control_socket(&self) -> PathBuf {
        self.control_socket.clone()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("nvmf-tgt exited early with {status}:\n{}", self.log());
            }
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(100)).is_ok()
                && self.control_socket().exists()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nvmf-tgt did not start listening:\n{}", self.log());
    }

    /// Sends SIGTERM and waits for the exit status (at most 10 s).
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_by_signalling(self.pid())
    }

    /// Sends SIGTERM to `pid` (the target itself when a wrapper such as strace runs it) and
    /// waits for the spawned process to exit (at most 10 s).
    pub fn stop_by_signalling(&mut self, pid: u32) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(pid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "nvmf-tgt did not exit within 10 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// utime + stime of the target process, from /proc.
    pub fn cpu_time(&self) -> Duration {
        process_cpu_time(self.pid())
    }
}

impl Drop for TargetProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

pub fn process_cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let after_comm = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) are the 12th and 13th after the comm field.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    let hz = 100; // USER_HZ is 100 on every Linux this project runs on.
    Duration::from_millis(ticks * 1000 / hz)
}

/// Reads whatever the peer sends until it closes the connection (or 5 s pass).
pub fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// The log with its ANSI colour codes removed, so fields read `name=value`.
pub fn without_colours(log: &str) -> String {
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI sequences end with a letter (`m` for colours).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

pub fn write_file(dir: &Path, name: &str, len: u64) -> PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).expect("create backing file");
    file.set_len(len).expect("size backing file");
    path
}

/// A bare-bones NVMe/TCP host for tests: ICReq, then the admin Connect, nothing else.
pub mod raw_host {
    use std::io::{Read as _, Write as _};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    use nvmf_tgt::nvme::connect::{ConnectCmd, ConnectData};
    use nvmf_tgt::nvme::opcode::{FABRICS, fctype};
    use nvmf_tgt::nvme::{Cqe, Sgl, Sqe};
    use nvmf_tgt::transport::tcp::pdu::{
        CapsuleCmd, CapsuleResp, Digests, Framing, IcReq, IcResp, PduView,
    };

    pub fn icreq(stream: &mut TcpStream) {
        let mut pdu = Vec::new();
        IcReq {
            pfv: 0,
            hpda: 0,
            header_digest: false,
            data_digest: false,
            maxr2t: 0,
        }
        .emit(&mut pdu);
        stream.write_all(&pdu).expect("send ICReq");
        let mut resp = [0u8; 128];
        stream.read_exact(&mut resp).expect("ICResp");
        PduView::new_checked(&resp, Digests::NONE)
            .and_then(|view| IcResp::parse(&view))
            .expect("ICResp");
    }

    /// Connects an admin queue and returns the stream and the Connect completion.
    pub fn connect_admin(
        addr: SocketAddr,
        subnqn: &str,
        hostnqn: &str,
        kato_ms: u32,
    ) -> (TcpStream, Cqe) {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        icreq(&mut stream);
        let mut sqe = Sqe::new(FABRICS, 1);
        sqe.set_fctype(fctype::CONNECT)
            .set_sgl(Sgl::in_capsule(1024));
        ConnectCmd {
            recfmt: 0,
            qid: 0,
            sqsize: 31,
            cattr: 0,
            kato: kato_ms,
        }
        .emit(&mut sqe);
        let mut data = vec![0u8; 1024];
        ConnectData {
            hostid: [7; 16],
            cntlid: 0xFFFF,
            subnqn: subnqn.into(),
            hostnqn: hostnqn.into(),
        }
        .emit(&mut data);
        let mut pdu = Vec::new();
        CapsuleCmd { sqe, data: &data }.emit(&mut pdu, &Framing::default());
        stream.write_all(&pdu).expect("send Connect");
        let mut resp = [0u8; 24];
        stream.read_exact(&mut resp).expect("CapsuleResp");
        let resp = PduView::new_checked(&resp, Digests::NONE)
            .and_then(|view| CapsuleResp::parse(&view))
            .expect("CapsuleResp");
        (stream, resp.cqe)
    }
}
