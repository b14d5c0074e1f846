//! A GDB and LLDB remote stub for nvmm guests, on the `gdbstub` crate.
//!
//! Any VMM built on nvmm offers its guests to an unmodified `gdb` or
//! `lldb`: every VCPU is a thread (named with its index, mode and CPL),
//! every register is there (general-purpose, segments with FS/GS bases, x87
//! as 80-bit values, SSE, the AVX upper halves, CR0–4, CR8, EFER,
//! KERNEL_GS_BASE), memory is read and written through the VCPU's page
//! tables at any alignment (or physically, `monitor phys on`), and
//! breakpoints and single steps come from the library's guest debugging
//! ([`nvmm::GuestDebug`]), which the guest's own interrupt masking, IDT or
//! debug registers cannot swallow:
//! - `Z0` software breakpoints are the machine's, keyed by guest physical
//!   address (two mappings of a page share one);
//! - `Z1` execute breakpoints and `Z2`/`Z4` write and access watchpoints
//!   use the debug registers on every VCPU (`Z3`, read-only, does not exist
//!   on x86: refused, and gdb falls back);
//! - all-stop: any stop stops every VCPU; an event another VCPU hit
//!   meanwhile is reported at the next resume, none is lost; Ctrl-C works;
//! - `monitor gva2gpa ADDR`, `monitor regs`, `monitor phys on|off`.
//!
//! The VMM keeps its exit handling: the stub runs each VCPU on a thread of
//! its own and hands every exit that is not the debugger's to
//! [`VcpuExits::handle`].
//!
//! ```no_run
//! use nvmm::{Exit, Nvmm, Prot, Vcpu};
//! use nvmm_gdb::{Listener, Next, VcpuExits};
//!
//! struct Console;
//! impl VcpuExits for Console {
//!     fn handle(&self, _index: usize, vcpu: &mut Vcpu) -> nvmm::Result<Next> {
//!         Ok(match vcpu.last_exit() {
//!             Exit::Io(io) => {
//!                 print!("{}", String::from_utf8_lossy(io.data()));
//!                 Next::Run
//!             }
//!             Exit::Halted => Next::Exited(0),
//!             _ => Next::Run,
//!         })
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let nvmm = Nvmm::open()?;
//! let machine = nvmm.create_machine()?;
//! machine.map_anonymous(0, 1 << 20, Prot::ALL)?;
//! let vcpu = machine.create_vcpu(0)?;
//! let listener = Listener::bind(&":1234".parse()?)?;
//! // gdb -ex 'target remote :1234'
//! let session = nvmm_gdb::debug(&machine, vec![vcpu], &Console, listener.accept()?)?;
//! println!("session ended: {:?}", session.end);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod arch;
mod inbox;
mod memory;
mod monitor;
mod regs;
mod stream;
mod target;
mod vcpus;

use std::cell::RefCell;
use std::sync::mpsc;

use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::{DisconnectReason, GdbStub};
use nvmm::{Machine, Vcpu};

pub use arch::{NvmmX86_64, RegNum, Regs};
pub use gdbstub::common::Signal;
pub use stream::{Address, Listener, Stream};

use inbox::{Conn, Inbox};
use target::{StopReason, VmTarget};
use vcpus::{Cmd, Slot};

/// What the stub does after the VMM handled an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Run the VCPU on.
    Run,
    /// The guest is done (it halted for good, say): every VCPU stops and the
    /// debugger is told the program exited with this code.
    Exited(u8),
    /// Stop every VCPU and report this signal on this VCPU's thread (a
    /// guest fault, `SIGSEGV` say); the debugger may resume it.
    Signal(Signal),
}

/// The VMM's handling of the exits that are not the debugger's. Called on
/// the VCPU's own thread after `run` returned an exit other than
/// [`nvmm::Exit::Debug`], [`nvmm::Exit::Stopped`] or [`nvmm::Exit::None`];
/// [`Vcpu::last_exit`] shows it.
pub trait VcpuExits: Sync {
    /// Handles the last exit of VCPU `index`.
    fn handle(&self, index: usize, vcpu: &mut Vcpu) -> nvmm::Result<Next>;
}

/// How a debugging session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The debugger detached: the guest may run on without it.
    Detached,
    /// The debugger killed the guest.
    Killed,
    /// The guest exited ([`Next::Exited`]).
    Exited(u8),
    /// The connection ended without a detach.
    Disconnected,
}

/// A finished session: how it ended and the VCPUs, in their original
/// order, with debugging off and every software breakpoint removed.
#[derive(Debug)]
pub struct Session {
    /// How it ended.
    pub end: End,
    /// The VCPUs.
    pub vcpus: Vec<Vcpu>,
}

/// Errors of the stub.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An address that is neither `HOST:PORT`, `:PORT` nor `unix:PATH`.
    #[error("invalid debugger address {address:?}: use HOST:PORT, :PORT or unix:PATH")]
    BadAddress {
        /// What was given.
        address: String,
    },
    /// Binding the listening socket failed.
    #[error("cannot listen on {address}: {source} (is the port or path already in use?)")]
    Listen {
        /// The address.
        address: String,
        /// The system error.
        source: std::io::Error,
    },
    /// Accepting the debugger failed.
    #[error("accepting the debugger's connection failed: {source}")]
    Accept {
        /// The system error.
        source: std::io::Error,
    },
    /// The machine has no VCPU to debug.
    #[error("no VCPU to debug: create at least one")]
    NoVcpus,
    /// A VCPU failed (its run, or its debug settings).
    #[error("VCPU failed during the debugging session: {0}")]
    Vcpu(#[from] nvmm::Error),
    /// The connection or the protocol failed.
    #[error("debugger connection failed: {what}")]
    Protocol {
        /// What went wrong.
        what: String,
    },
    /// The VMM's exit handler panicked on a VCPU thread.
    #[error("the VMM's exit handler panicked; the session was ended")]
    HandlerPanicked,
    /// A VCPU thread could not be started.
    #[error("cannot start a VCPU thread: {0}")]
    Thread(std::io::Error),
}

/// Debugs `vcpus` of `machine` over `stream` until the debugger detaches
/// or kills the guest, the guest exits, or the connection ends. The VCPUs
/// stay stopped until the debugger resumes them (the debugger sees the
/// guest before its first instruction when it was never run).
pub fn debug(machine: &Machine, vcpus: Vec<Vcpu>, exits: &dyn VcpuExits, stream: Stream) -> Result<Session, Error> {
    if vcpus.is_empty() {
        return Err(Error::NoVcpus);
    }
    let slots: Vec<Slot> = vcpus.into_iter().map(Slot::new).collect();
    let (tx, rx) = mpsc::channel();
    let reader = stream.try_clone().map_err(|e| Error::Protocol { what: e.to_string() })?;
    let writer = stream.try_clone().map_err(|e| Error::Protocol { what: e.to_string() })?;
    let inbox = RefCell::new(Inbox::new(rx));
    let end = std::thread::scope(|scope| -> Result<End, Error> {
        let mut cmds = Vec::new();
        for (i, slot) in slots.iter().enumerate() {
            let (ctx, crx) = mpsc::channel();
            let events = tx.clone();
            std::thread::Builder::new()
                .name(format!("vcpu{i}-gdb"))
                .spawn_scoped(scope, move || vcpus::vcpu_thread(i, slot, exits, crx, events))
                .map_err(Error::Thread)?;
            cmds.push(ctx);
        }
        let reader_tx = tx.clone();
        std::thread::Builder::new()
            .name("gdb-reader".into())
            .spawn_scoped(scope, move || inbox::read_connection(reader, reader_tx))
            .map_err(Error::Thread)?;
        drop(tx);
        let mut target = VmTarget::new(machine, &slots, cmds, &inbox);
        let conn = Conn { inbox: &inbox, out: writer, buf: Vec::new() };
        let result = GdbStub::new(conn).run_blocking::<EventLoop<'_>>(&mut target);
        // Whatever happened, no VCPU may still be running.
        let _ = target.stop_all(None);
        target.clear_debugging();
        for c in &target.cmds {
            let _ = c.send(Cmd::Quit);
        }
        stream.shutdown();
        if let Some(e) = target.failure.take() {
            return Err(Error::Vcpu(e));
        }
        if target.panicked {
            return Err(Error::HandlerPanicked);
        }
        match result {
            Ok(DisconnectReason::Disconnect) => Ok(End::Detached),
            Ok(DisconnectReason::Kill) => Ok(End::Killed),
            Ok(DisconnectReason::TargetExited(code)) => Ok(End::Exited(code)),
            Ok(DisconnectReason::TargetTerminated(_)) => Ok(End::Killed),
            Err(e) if e.is_connection_error() => Ok(End::Disconnected),
            Err(e) => Err(Error::Protocol { what: format!("{e:?}") }),
        }
    })?;
    let vcpus = slots.into_iter().map(|s| s.vcpu.into_inner().unwrap_or_else(|e| e.into_inner())).collect();
    Ok(Session { end, vcpus })
}

/// Binds `address`, waits for one debugger and debugs the machine (see
/// [`debug`]). `ready` is called with the bound address before waiting
/// (the port chosen, for port 0).
pub fn serve(
    machine: &Machine,
    vcpus: Vec<Vcpu>,
    exits: &dyn VcpuExits,
    address: &Address,
    ready: impl FnOnce(&Address),
) -> Result<Session, Error> {
    let listener = Listener::bind(address)?;
    ready(&listener.local_address()?);
    let stream = listener.accept()?;
    debug(machine, vcpus, exits, stream)
}

/// gdbstub's blocking event loop over the inbox.
struct EventLoop<'a>(std::marker::PhantomData<&'a ()>);

impl<'a> BlockingEventLoop for EventLoop<'a> {
    type Target = VmTarget<'a>;
    type Connection = Conn<'a>;
    type StopReason = StopReason;

    fn wait_for_stop_reason(
        target: &mut VmTarget<'a>,
        _conn: &mut Conn<'a>,
    ) -> Result<Event<StopReason>, WaitForStopReasonError<(), std::io::Error>> {
        if let Some(r) = target.take_delivery() {
            return Ok(Event::TargetStopped(r));
        }
        let next = target.inbox.borrow_mut().next();
        match next {
            inbox::Next::Byte(b) => Ok(Event::IncomingData(b)),
            inbox::Next::Closed => Err(WaitForStopReasonError::Connection(std::io::ErrorKind::ConnectionReset.into())),
            inbox::Next::Event(i, e) => {
                target.running[i] = false;
                let r = target.stop_all(Some((i, e))).unwrap_or_else(|| interrupted(target));
                Ok(Event::TargetStopped(r))
            }
        }
    }

    fn on_interrupt(target: &mut VmTarget<'a>) -> Result<Option<StopReason>, ()> {
        let r = target.stop_all(None);
        Ok(Some(r.unwrap_or_else(|| interrupted(target))))
    }
}

/// The stop reported when every VCPU stopped on request (Ctrl-C).
fn interrupted(target: &VmTarget<'_>) -> StopReason {
    let tid = std::num::NonZeroUsize::MIN.saturating_add(target.selected);
    gdbstub::stub::MultiThreadStopReason::SignalWithThread { tid, signal: Signal::SIGINT }
}
