//! The client against a scripted server on a socketpair: good replies parse, and every kind
//! of junk a target could send (short replies, lying sizes, the wrong message, errors, random
//! bytes) is an error, never a panic or a hang.

use std::io::{Read as _, Write as _};
use std::os::fd::AsFd;
use std::thread::JoinHandle;

use super::*;
use crate::perf::workload::Rng;
use crate::transport::vfio_user::protocol::{emit_message, emit_reply};

const TIMEOUT: Duration = Duration::from_secs(5);

/// A server thread that reads one request and answers with what `answer` writes (it may
/// close the socket, or write nothing and hold it open until the client gives up).
fn scripted(
    answer: impl FnOnce(&mut UnixStream, Header, Vec<u8>) + Send + 'static,
) -> (Client, JoinHandle<()>) {
    let (ours, mut theirs) = UnixStream::pair().expect("socketpair");
    let server = std::thread::spawn(move || {
        let mut head = [0u8; HEADER_LEN];
        if theirs.read_exact(&mut head).is_err() {
            return;
        }
        let header = Header::parse(&head).expect("the client sends good headers");
        let mut body = vec![0; header.body_len()];
        theirs.read_exact(&mut body).expect("request body");
        answer(&mut theirs, header, body);
    });
    let client = Client::from_stream(ours, TIMEOUT).expect("client");
    (client, server)
}

/// A reply to `request` with `body`.
fn reply(request: &Header, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    emit_reply(&mut out, request, body).expect("emit");
    out
}

fn region_read_of(client: &mut Client, len: usize) -> Result<Vec<u8>, ClientError> {
    let mut data = vec![0; len];
    client.region_read(0, 0x1c, &mut data).map(|()| data)
}

#[test]
fn version_and_region_read_round_trip() {
    let (mut client, server) = scripted(|s, request, body| {
        let theirs = Version::parse(&body).expect("client VERSION");
        assert_eq!((theirs.major, theirs.minor), (0, 0));
        assert_eq!(theirs.capabilities.max_msg_fds, MAX_FDS);
        let ours = Version {
            major: 0,
            minor: 0,
            capabilities: Capabilities {
                max_msg_fds: 3,
                ..Capabilities::default()
            },
        };
        s.write_all(&reply(&request, |out| ours.emit(out)))
            .expect("write");
        // Then a region read of 4 bytes at 0x1c of region 0.
        let mut head = [0u8; HEADER_LEN];
        s.read_exact(&mut head).expect("read");
        let request = Header::parse(&head).expect("header");
        let mut body = vec![0; request.body_len()];
        s.read_exact(&mut body).expect("body");
        let access = RegionAccess::parse(&body).expect("access");
        assert_eq!((access.region, access.offset, access.count), (0, 0x1c, 4));
        let data = RegionData {
            offset: 0x1c,
            region: 0,
            data: &[1, 2, 3, 4],
        };
        s.write_all(&reply(&request, |out| data.emit(out)))
            .expect("write");
    });
    let caps = client.negotiate().expect("negotiate");
    assert_eq!(caps.max_msg_fds, 3);
    assert_eq!(region_read_of(&mut client, 4).expect("read"), [1, 2, 3, 4]);
    server.join().expect("server");
}

#[test]
fn a_region_info_reply_brings_its_fd() {
    let (mut client, server) = scripted(|s, request, _| {
        let info = RegionInfoReply {
            argsz: 64,
            flags: 0x7,
            index: 0,
            size: 0x4000,
            offset: 0x2000,
            sparse_mmap: Some(vec![(0x1000, 0x1000)]),
        };
        let bytes = reply(&request, |out| info.emit(out));
        let fd = crate::sys::mmap::memfd(0x4000).expect("memfd");
        send_all(s, &bytes, &[fd.as_fd()]).expect("send with fd");
    });
    let region = client.region_info(0).expect("region info");
    assert_eq!(region.info.sparse_mmap, Some(vec![(0x1000, 0x1000)]));
    assert_eq!(region.info.offset, 0x2000);
    assert!(region.fd.is_some(), "the fd came with the reply");
    server.join().expect("server");
}

/// Runs a region read against a server that answers with `bytes` then closes, and returns
/// the error.
fn junk_answer(bytes: Vec<u8>) -> ClientError {
    let (mut client, server) = scripted(move |s, _, _| {
        let _ = s.write_all(&bytes);
    });
    let err = region_read_of(&mut client, 4).expect_err("junk is an error");
    server.join().expect("server");
    err
}

fn header_bytes(msg_id: u16, command: Command, size: u32, flags: u32, error: u32) -> Vec<u8> {
    let mut out = Vec::new();
    Header {
        msg_id,
        command,
        msg_size: size,
        flags,
        error,
    }
    .emit(&mut out);
    out
}

#[test]
fn short_and_lying_replies_are_errors() {
    // Half a header, then the socket closes.
    let err = junk_answer(vec![0, 0, 9]);
    assert!(matches!(err, ClientError::Closed), "{err}");

    // A size below the header.
    let err = junk_answer(header_bytes(
        0,
        Command::RegionRead,
        8,
        flags::TYPE_REPLY,
        0,
    ));
    assert!(matches!(err, ClientError::Malformed { .. }), "{err}");

    // A size far above anything asked for: refused at the header, nothing waited for.
    let err = junk_answer(header_bytes(
        0,
        Command::RegionRead,
        1 << 30,
        flags::TYPE_REPLY,
        0,
    ));
    assert!(
        matches!(
            err,
            ClientError::Malformed {
                source: ProtocolError::TooLarge { .. },
                ..
            }
        ),
        "{err}"
    );

    // A size that promises a body which never comes.
    let err = junk_answer(header_bytes(
        0,
        Command::RegionRead,
        100,
        flags::TYPE_REPLY,
        0,
    ));
    assert!(matches!(err, ClientError::Closed), "{err}");

    // A body shorter than a region access.
    let mut bytes = header_bytes(0, Command::RegionRead, 20, flags::TYPE_REPLY, 0);
    bytes.extend([0; 4]);
    let err = junk_answer(bytes);
    assert!(matches!(err, ClientError::Malformed { .. }), "{err}");

    // A count that does not match the data.
    let mut bytes = Vec::new();
    emit_message(
        &mut bytes,
        0,
        Command::RegionRead,
        flags::TYPE_REPLY,
        0,
        |out| {
            RegionAccess {
                offset: 0x1c,
                region: 0,
                count: 400,
            }
            .emit(out);
            out.extend([0; 4]);
        },
    )
    .expect("emit");
    let err = junk_answer(bytes);
    assert!(
        matches!(
            err,
            ClientError::Malformed {
                source: ProtocolError::CountMismatch { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn the_wrong_reply_is_an_error() {
    let request = Header {
        msg_id: 0,
        command: Command::RegionRead,
        msg_size: 0,
        flags: 0,
        error: 0,
    };
    let data = |offset: u64, region: u32, data: &'static [u8]| {
        move |out: &mut Vec<u8>| {
            RegionData {
                offset,
                region,
                data,
            }
            .emit(out);
        }
    };
    // Fewer bytes than asked, another offset, another region.
    for body in [
        reply(&request, data(0x1c, 0, &[1, 2])),
        reply(&request, data(0x20, 0, &[1, 2, 3, 4])),
        reply(&request, data(0x1c, 7, &[1, 2, 3, 4])),
    ] {
        let err = junk_answer(body);
        assert!(matches!(err, ClientError::BadReply { .. }), "{err}");
    }
    // Another message ID, another command, a command instead of a reply.
    for (id, command, kind) in [
        (5, Command::RegionRead, flags::TYPE_REPLY),
        (0, Command::RegionWrite, flags::TYPE_REPLY),
        (0, Command::RegionRead, flags::TYPE_COMMAND),
    ] {
        let mut bytes = Vec::new();
        emit_message(
            &mut bytes,
            id,
            command,
            kind,
            0,
            data(0x1c, 0, &[1, 2, 3, 4]),
        )
        .expect("emit");
        let err = junk_answer(bytes);
        assert!(matches!(err, ClientError::BadReply { .. }), "{err}");
    }
    // An error reply carries its errno.
    let err = junk_answer(header_bytes(
        0,
        Command::RegionRead,
        16,
        flags::TYPE_REPLY | flags::ERROR,
        22,
    ));
    assert!(
        matches!(err, ClientError::Refused { errno: 22, .. }),
        "{err}"
    );
}

#[test]
fn a_bad_version_or_region_info_is_an_error() {
    let (mut client, server) = scripted(|s, request, _| {
        let _ = s.write_all(&reply(&request, |out| out.extend(b"\0\0\0\0[1,2]\0")));
    });
    let err = client.negotiate().expect_err("JSON that is not an object");
    assert!(matches!(err, ClientError::Malformed { .. }), "{err}");
    server.join().expect("server");

    let (mut client, server) = scripted(|s, request, _| {
        let theirs = Version {
            major: 1,
            minor: 0,
            capabilities: Capabilities::default(),
        };
        let _ = s.write_all(&reply(&request, |out| theirs.emit(out)));
    });
    let err = client.negotiate().expect_err("major 1");
    assert!(matches!(err, ClientError::BadReply { .. }), "{err}");
    server.join().expect("server");

    // A capability chain pointing past the body.
    let (mut client, server) = scripted(|s, request, _| {
        let bytes = reply(&request, |out| {
            let info = RegionInfoReply {
                argsz: 32,
                flags: 0x3,
                index: 0,
                size: 0x4000,
                offset: 0,
                sparse_mmap: None,
            };
            let start = out.len();
            info.emit(out);
            // CAPS with cap_offset 200 in a 32-byte body.
            out[start + 4] |= 0x8;
            out[start + 12] = 200;
        });
        let _ = s.write_all(&bytes);
    });
    let err = client.region_info(0).expect_err("broken chain");
    assert!(matches!(err, ClientError::Malformed { .. }), "{err}");
    server.join().expect("server");
}

#[test]
fn a_silent_target_is_a_timeout() {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let mut client = Client::from_stream(ours, Duration::from_millis(100)).expect("client");
    let start = std::time::Instant::now();
    let err = region_read_of(&mut client, 4).expect_err("nobody answers");
    assert!(
        matches!(
            err,
            ClientError::Timeout {
                command: Command::RegionRead,
                ..
            }
        ),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(3));
    drop(theirs);
}

#[test]
fn random_replies_never_panic() {
    let mut rng = Rng::new(0x5eed);
    for round in 0..200u64 {
        let len = usize::try_from(rng.below(64)).unwrap_or(0);
        let mut bytes: Vec<u8> = (0..len)
            .map(|_| u8::try_from(rng.below(256)).unwrap_or(0))
            .collect();
        // Every other round a plausible header first, so the body checks are reached too.
        if round % 2 == 0 {
            let size = u32::try_from(HEADER_LEN + len).unwrap_or(u32::MAX);
            let mut head = header_bytes(0, Command::RegionRead, size, flags::TYPE_REPLY, 0);
            head.append(&mut bytes);
            bytes = head;
        }
        let result = std::panic::catch_unwind(|| junk_answer(bytes.clone()));
        assert!(result.is_ok(), "panicked on {bytes:?}");
    }
}

#[test]
fn posted_writes_are_region_writes_with_no_reply() {
    let mut out = Vec::new();
    post_region_write(&mut out, 7, 0, 0x1008, 5);
    post_region_write(&mut out, 8, 0, 0x100c, 6);
    let (header, len) = protocol::frame(&out, MAX_REPLY)
        .expect("frame")
        .expect("whole");
    assert_eq!(header.command, Command::RegionWrite);
    assert!(header.no_reply());
    assert_eq!(header.msg_id, 7);
    let write = RegionData::parse(&out[HEADER_LEN..len]).expect("body");
    assert_eq!((write.region, write.offset), (0, 0x1008));
    assert_eq!(write.data, 5u32.to_le_bytes());
    assert_eq!(out.len(), 2 * len, "two messages back to back");
}
