//! The remote protocol at the byte level, where a scripted gdb cannot go:
//! Ctrl-C stops a guest that never exits, and every packet of a session
//! gets an answer within a bound.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use nvmm_gdb::{Address, End};

/// Sends `body` as a packet (`$body#checksum`).
fn send(s: &mut TcpStream, body: &str) {
    let sum = body.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    s.write_all(format!("${body}#{sum:02x}").as_bytes()).unwrap();
}

/// Reads up to the end of the next packet; returns its body (acks
/// skipped). Bounded by the socket's read timeout.
fn receive(s: &mut TcpStream) -> String {
    let mut packet = Vec::new();
    let mut byte = [0u8];
    let mut hashes = None;
    loop {
        s.read_exact(&mut byte).expect("an answer within the bound");
        match (byte[0], hashes) {
            (b'+', None) if packet.is_empty() => continue,
            (b'#', None) => hashes = Some(0),
            (_, Some(1)) => break,
            (_, Some(n)) => hashes = Some(n + 1),
            (b, None) => packet.push(b),
        }
    }
    s.write_all(b"+").unwrap();
    expand(packet.strip_prefix(b"$").unwrap_or(&packet))
}

/// Undoes the protocol's run-length encoding: `X*n` is X repeated
/// `n - 29` more times.
fn expand(body: &[u8]) -> String {
    let mut out: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'*' && i + 1 < body.len() {
            let last = *out.last().expect("a run follows a character");
            out.extend(std::iter::repeat_n(last, usize::from(body[i + 1] - 29)));
            i += 2;
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A guest spinning in `jmp $` on two VCPUs: `c`, then Ctrl-C (0x03),
/// stops it with SIGINT; the VCPUs are where the loop is.
#[test]
fn ctrl_c_stops_a_spinning_guest() {
    nvmm_testkit::kvm_or_skip!();
    let (machine, vcpus) = long_mode(&[0xeb, 0xfe], 2);
    let (replies, session) = with_stub(&machine, vcpus, "127.0.0.1:0".parse().unwrap(), |a| {
        let Address::Tcp(t) = a else { unreachable!("a TCP address") };
        let mut s = TcpStream::connect(t).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut replies = Vec::new();
        send(&mut s, "?");
        replies.push(receive(&mut s));
        send(&mut s, "vCont;c");
        // The guest runs; nothing comes back until it is interrupted.
        s.write_all(&[0x03]).unwrap();
        replies.push(receive(&mut s));
        send(&mut s, "qfThreadInfo");
        replies.push(receive(&mut s));
        send(&mut s, "p10");
        replies.push(receive(&mut s));
        send(&mut s, "k");
        replies
    });
    assert!(replies[0].starts_with("T05"), "initial stop: {replies:?}");
    assert!(replies[1].starts_with("T02"), "Ctrl-C is SIGINT: {replies:?}");
    assert_eq!(replies[2], "m01,02", "{replies:?}");
    // RIP (register 16) on the loop.
    assert_eq!(replies[3], "0010000000000000", "{replies:?}");
    assert_eq!(session.end, End::Killed);
}

/// The VMM's handler panics on an exit: the debugger is told the program
/// was terminated, and the session ends with an error instead of hanging.
#[test]
fn a_panicking_handler_ends_the_session() {
    nvmm_testkit::kvm_or_skip!();
    struct Panics;
    impl nvmm_gdb::VcpuExits for Panics {
        fn handle(&self, _index: usize, _vcpu: &mut nvmm::Vcpu) -> nvmm::Result<nvmm_gdb::Next> {
            panic!("a VMM bug");
        }
    }
    let (machine, vcpus) = long_mode(&[0xe6, 0x10, 0xf4], 1);
    let listener = nvmm_gdb::Listener::bind(&"127.0.0.1:0".parse().unwrap()).unwrap();
    let Address::Tcp(addr) = listener.local_address().unwrap() else { unreachable!("TCP") };
    std::thread::scope(|s| {
        let machine = &machine;
        let listener = &listener;
        let stub = s.spawn(move || nvmm_gdb::debug(machine, vcpus, &Panics, listener.accept().unwrap()));
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        send(&mut c, "vCont;c");
        assert_eq!(receive(&mut c), "X06", "terminated by SIGABRT");
        let r = stub.join().unwrap();
        assert!(matches!(r, Err(nvmm_gdb::Error::HandlerPanicked)), "{r:?}");
    });
}
