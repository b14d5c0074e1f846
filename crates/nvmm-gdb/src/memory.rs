//! Memory packets: guest virtual memory through a VCPU's page tables, or
//! guest physical memory, at any alignment and length; reads stop at the
//! first byte that cannot be read and show the program's bytes under
//! software breakpoints.

use nvmm::{Machine, Vcpu};

const PAGE: u64 = 4096;

/// Splits `[start, start + len)` at page boundaries: (address, offset in
/// the buffer, length).
fn pages(start: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let at = start.wrapping_add(done as u64);
        let n = ((PAGE - at % PAGE) as usize).min(len - done);
        let piece = (at, done, n);
        done += n;
        Some(piece)
    })
}

/// Reads guest physical memory; returns the bytes read.
pub(crate) fn read_physical(machine: &Machine, start: u64, data: &mut [u8]) -> usize {
    let mut done = 0;
    for (gpa, off, n) in pages(start, data.len()) {
        let chunk = &mut data[off..off + n];
        if machine.read_gpa(gpa, chunk).is_err() {
            break;
        }
        machine.hide_sw_breakpoints(gpa, chunk);
        done += n;
    }
    done
}

/// Writes guest physical memory (whatever the mapping's protection);
/// returns the bytes written.
pub(crate) fn write_physical(machine: &Machine, start: u64, data: &[u8]) -> usize {
    let mut done = 0;
    for (gpa, off, n) in pages(start, data.len()) {
        if machine.write_gpa(gpa, &data[off..off + n]).is_err() {
            break;
        }
        done += n;
    }
    done
}

/// Reads guest virtual memory through `vcpu`'s page tables; returns the
/// bytes read.
pub(crate) fn read_virtual(machine: &Machine, vcpu: &mut Vcpu, start: u64, data: &mut [u8]) -> usize {
    let done = vcpu.read_virtual(start, data).map_or(0, |t| t.done);
    for (gva, off, n) in pages(start, done) {
        if let Ok((gpa, _)) = vcpu.gva_to_gpa(gva) {
            machine.hide_sw_breakpoints(gpa, &mut data[off..off + n]);
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::pages;

    #[test]
    fn pieces_cover_the_range_at_page_boundaries() {
        let p: Vec<_> = pages(0xff8, 0x1010).collect();
        assert_eq!(p, vec![(0xff8, 0, 8), (0x1000, 8, 0x1000), (0x2000, 0x1008, 8)]);
        assert_eq!(pages(0x1000, 0).count(), 0);
        assert_eq!(pages(u64::MAX - 1, 4).collect::<Vec<_>>(), vec![(u64::MAX - 1, 0, 2), (0, 2, 2)]);
    }
}
