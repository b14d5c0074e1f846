//! A guest, a stub on a thread, and a scripted debugger against it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::mpsc;

use nvmm::x86::modes;
use nvmm::{Exit, Gpr, Machine, Nvmm, Prot, StateMask, Vcpu};
use nvmm_gdb::{Address, End, Next, Session, VcpuExits};

/// Where guest code is loaded.
pub const CODE: u64 = 0x1000;
/// GDT.
pub const GDT: u64 = 0x800;
/// Identity page tables (1 GiB).
pub const PML4: u64 = 0x10000;
/// RAM size.
pub const RAM: u64 = 4 << 20;
/// Stack top.
pub const STACK: u64 = 0x8000;

/// The port whose OUT ends the guest: the program exits with AL.
pub const EXIT_PORT: u16 = 0x10;

/// Exits of the test guests: OUT to [`EXIT_PORT`] ends the guest with AL,
/// HLT ends it with 0, anything else is a failure (reported as SIGSEGV
/// to the debugger).
pub struct TestExits;

impl VcpuExits for TestExits {
    fn handle(&self, _index: usize, vcpu: &mut Vcpu) -> nvmm::Result<Next> {
        Ok(match vcpu.last_exit() {
            Exit::Io(io) if io.port() == EXIT_PORT => Next::Exited(io.data().first().copied().unwrap_or(0)),
            Exit::Halted => Next::Exited(0),
            _ => Next::Signal(nvmm_gdb::Signal::SIGSEGV),
        })
    }
}

/// A long-mode machine with `nvcpus` VCPUs, each at CODE (each with its
/// own stack), `code` loaded.
pub fn long_mode(code: &[u8], nvcpus: u32) -> (Machine, Vec<Vcpu>) {
    let machine = Nvmm::open().expect("open nvmm").create_machine().expect("machine");
    machine.map_anonymous(0, RAM, Prot::ALL).expect("RAM");
    machine.write_gpa(CODE, code).unwrap();
    machine.write_gpa(GDT, &modes::gdt_bytes()).unwrap();
    machine.write_gpa(PML4, &modes::identity_page_tables(PML4, 1 << 30)).unwrap();
    let vcpus = (0..nvcpus)
        .map(|i| {
            let mut v = machine.create_vcpu(i).unwrap();
            v.update(StateMask::ALL, |s| {
                modes::long_mode(s, GDT, PML4);
                s.gprs[Gpr::Rip] = CODE;
                s.gprs[Gpr::Rsp] = STACK - 0x1000 * u64::from(i);
            })
            .unwrap();
            v
        })
        .collect();
    (machine, vcpus)
}

/// A unique Unix socket path for this test.
pub fn socket_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("nvmm-gdb-{}-{name}.sock", std::process::id()))
}

/// Serves `vcpus` on `address` on a thread, runs `client(bound address)`
/// once the stub listens, and returns the client's output and the
/// session.
pub fn with_stub<T: Send>(
    machine: &Machine,
    vcpus: Vec<Vcpu>,
    address: Address,
    client: impl FnOnce(&Address) -> T + Send,
) -> (T, Session) {
    with_stub_exits(machine, vcpus, address, &TestExits, client)
}

/// [`with_stub`] with the VMM's exit handling `exits`.
pub fn with_stub_exits<T: Send>(
    machine: &Machine,
    vcpus: Vec<Vcpu>,
    address: Address,
    exits: &dyn VcpuExits,
    client: impl FnOnce(&Address) -> T + Send,
) -> (T, Session) {
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        let stub = s.spawn(move || nvmm_gdb::serve(machine, vcpus, exits, &address, |a| tx.send(a.clone()).unwrap()));
        let bound = rx.recv().expect("the stub listens");
        let out = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| client(&bound))) {
            Ok(out) => out,
            Err(panic) => {
                // The client failed, maybe before connecting (a debugger
                // that cannot run): a connection that closes at once ends
                // the stub's wait for one, so that the test fails instead
                // of hanging.
                hang_up(&bound);
                let _ = stub.join();
                std::panic::resume_unwind(panic);
            }
        };
        let session = stub.join().expect("stub thread").expect("session");
        (out, session)
    })
}

/// Connects to the stub at `address` and closes the connection.
fn hang_up(address: &Address) {
    match address {
        Address::Tcp(a) => drop(std::net::TcpStream::connect(a)),
        Address::Unix(p) => drop(std::os::unix::net::UnixStream::connect(p)),
    }
}

/// The `target remote` argument for `address`.
pub fn remote(address: &Address) -> String {
    match address {
        Address::Tcp(a) => format!("{}:{}", a.ip(), a.port()),
        Address::Unix(p) => p.display().to_string(),
    }
}

/// Runs gdb in batch mode with `commands` after connecting (bounded, see
/// `nvmm_testkit::debuggers::gdb`); its stdout and stderr.
pub fn gdb(address: &Address, commands: &[&str]) -> String {
    let mut all = vec![format!("target remote {}", remote(address))];
    all.extend(commands.iter().map(|c| c.to_string()));
    nvmm_testkit::debuggers::gdb(&[], &all)
}

/// Whether the session ended as `end`.
pub fn ended(s: &Session, end: End) -> bool {
    s.end == end
}

/// Exits of guests whose VCPUs each end with an OUT to [`EXIT_PORT`]
/// followed by `jmp $`: the guest is done when all `n` did their OUT
/// (with the last one's AL as its exit code).
pub struct AllOut {
    pub n: usize,
    pub count: std::sync::atomic::AtomicUsize,
}

impl VcpuExits for AllOut {
    fn handle(&self, _index: usize, vcpu: &mut Vcpu) -> nvmm::Result<Next> {
        Ok(match vcpu.last_exit() {
            Exit::Io(io) if io.port() == EXIT_PORT => {
                let done = self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                let al = io.data().first().copied().unwrap_or(0);
                if done == self.n { Next::Exited(al) } else { Next::Run }
            }
            _ => Next::Signal(nvmm_gdb::Signal::SIGSEGV),
        })
    }
}

/// The paged guest of the session tests: low 2 MiB identity-mapped
/// (code, stack, tables), GVA 0x4000_0000 → GPA 0x30_1000 and GVA
/// 0x4000_1000 → GPA 0x20_5000 (adjacent virtual pages on non-adjacent,
/// descending physical pages), GVA 0x4000_2000 → GPA 0x30_2000 read-only.
pub mod paged {
    use super::*;
    use nvmm::x86::PagingMode;
    use nvmm::x86::bits::pte;
    use nvmm::x86::paging::PageTables;

    /// The tables' location.
    pub const TABLES: u64 = 0x10_0000;
    /// First of the two adjacent virtual pages.
    pub const SPLIT: u64 = 0x4000_0000;
    /// Their physical pages.
    pub const SPLIT_GPAS: [u64; 2] = [0x30_1000, 0x20_5000];
    /// The read-only virtual page and its physical page.
    pub const RO: u64 = 0x4000_2000;
    pub const RO_GPA: u64 = 0x30_2000;

    /// Maps the tables into `machine` and returns CR3.
    pub fn tables(machine: &Machine) -> u64 {
        let mut t = PageTables::new(PagingMode::Level4, TABLES);
        t.map(0, 0, 2 << 20, pte::RW).unwrap();
        t.map(SPLIT, SPLIT_GPAS[0], 0x1000, pte::RW).unwrap();
        t.map(SPLIT + 0x1000, SPLIT_GPAS[1], 0x1000, pte::RW).unwrap();
        t.map(RO, RO_GPA, 0x1000, 0).unwrap();
        for (gpa, page) in t.pages() {
            machine.write_gpa(gpa, page).unwrap();
        }
        t.cr3()
    }

    /// A machine running `code` at CODE on `nvcpus` VCPUs with these
    /// tables.
    pub fn machine(code: &[u8], nvcpus: u32) -> (Machine, Vec<Vcpu>) {
        let (machine, mut vcpus) = long_mode(code, nvcpus);
        let cr3 = tables(&machine);
        for v in &mut vcpus {
            v.update(StateMask::CRS, |s| s.crs[nvmm::Cr::Cr3] = cr3).unwrap();
        }
        (machine, vcpus)
    }
}
