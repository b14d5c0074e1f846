//! Everything the stub's thread waits for arrives on one channel: bytes
//! from the debugger (a reader thread forwards them) and the VCPUs' events.
//! The inbox sorts them, so that reading a packet never loses a VCPU event
//! and waiting for a stop never loses a byte (Ctrl-C).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};

use gdbstub::conn::{Connection, ConnectionExt};

use crate::stream::Stream;
use crate::vcpus::{Msg, VcpuEvent};

/// The stub thread's end of the channel.
pub(crate) struct Inbox {
    rx: Receiver<Msg>,
    bytes: VecDeque<u8>,
    events: VecDeque<(usize, VcpuEvent)>,
    closed: bool,
}

/// What [`Inbox::next`] found first.
pub(crate) enum Next {
    Byte(u8),
    Event(usize, VcpuEvent),
    Closed,
}

impl Inbox {
    pub(crate) fn new(rx: Receiver<Msg>) -> Inbox {
        Inbox { rx, bytes: VecDeque::new(), events: VecDeque::new(), closed: false }
    }

    fn sort(&mut self, m: Msg) {
        match m {
            Msg::Byte(b) => self.bytes.push_back(b),
            Msg::Closed => self.closed = true,
            Msg::Vcpu(i, e) => self.events.push_back((i, e)),
        }
    }

    /// Blocks for one more message; false when every sender is gone.
    fn wait(&mut self) -> bool {
        match self.rx.recv() {
            Ok(m) => {
                self.sort(m);
                true
            }
            Err(_) => {
                self.closed = true;
                false
            }
        }
    }

    /// Takes what is there without blocking.
    fn drain(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(m) => self.sort(m),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.closed = true;
                    return;
                }
            }
        }
    }

    /// The next byte from the debugger; `None` once it is gone.
    pub(crate) fn byte(&mut self) -> Option<u8> {
        loop {
            if let Some(b) = self.bytes.pop_front() {
                return Some(b);
            }
            if self.closed || !self.wait() {
                return None;
            }
        }
    }

    /// The next byte without consuming it or blocking.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        self.drain();
        self.bytes.front().copied()
    }

    /// The next VCPU event (bytes meanwhile are kept); `None` when no VCPU
    /// thread is left.
    pub(crate) fn event(&mut self) -> Option<(usize, VcpuEvent)> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
            if !self.wait() {
                return None;
            }
        }
    }

    /// Whichever comes first: a byte, a VCPU event, or the end of the
    /// connection.
    pub(crate) fn next(&mut self) -> Next {
        loop {
            if let Some(b) = self.bytes.pop_front() {
                return Next::Byte(b);
            }
            if let Some((i, e)) = self.events.pop_front() {
                return Next::Event(i, e);
            }
            if self.closed || !self.wait() {
                return Next::Closed;
            }
        }
    }
}

/// Forwards the debugger's bytes into the channel until the connection
/// ends.
pub(crate) fn read_connection(mut stream: Stream, tx: Sender<Msg>) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = tx.send(Msg::Closed);
                return;
            }
            Ok(n) => {
                for &b in &buf[..n] {
                    if tx.send(Msg::Byte(b)).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// gdbstub's connection: reads come from the inbox, writes go to the
/// socket, one packet per flush.
pub(crate) struct Conn<'i> {
    pub(crate) inbox: &'i std::cell::RefCell<Inbox>,
    pub(crate) out: Stream,
    pub(crate) buf: Vec<u8>,
}

impl Connection for Conn<'_> {
    type Error = io::Error;

    fn write(&mut self, byte: u8) -> io::Result<()> {
        self.buf.push(byte);
        Ok(())
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        self.out.flush()
    }
}

impl ConnectionExt for Conn<'_> {
    fn read(&mut self) -> io::Result<u8> {
        self.inbox.borrow_mut().byte().ok_or_else(|| io::Error::from(io::ErrorKind::ConnectionReset))
    }

    fn peek(&mut self) -> io::Result<Option<u8>> {
        Ok(self.inbox.borrow_mut().peek())
    }
}
