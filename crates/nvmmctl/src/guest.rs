//! The built-in guests, as bytes with their assembly beside them.

/// Where the demo guest is loaded and starts (real mode, CS = 0).
pub const DEMO_GPA: u64 = 0x7c00;

/// The demo guest's code (real mode, assembled at 0x7c00). It prints a
/// greeting through port 0xE9 with `rep outsb`, reads the device's ID
/// register at 0xD0000 through MMIO, writes ID + 1 to the scratch register,
/// reads it back, reports the result and halts.
const DEMO_CODE: [u8; 0x3a] = [
    0xfc, //                               7c00  cld
    0xbe, 0x3a, 0x7c, //                   7c01  mov si,0x7c3a          ; msg
    0xb9, 0x20, 0x00, //                   7c04  mov cx,0x20            ; its length
    0xba, 0xe9, 0x00, //                   7c07  mov dx,0xe9            ; console port
    0xf3, 0x6e, //                         7c0a  rep outs dx,BYTE PTR ds:[si]
    0xb8, 0x00, 0xd0, //                   7c0c  mov ax,0xd000
    0x8e, 0xc0, //                         7c0f  mov es,ax              ; device at 0xd0000
    0x26, 0x66, 0xa1, 0x00, 0x00, //       7c11  mov eax,es:0x0         ; ID register
    0x66, 0x40, //                         7c16  inc eax
    0x26, 0x66, 0xa3, 0x04, 0x00, //       7c18  mov es:0x4,eax         ; scratch register
    0x26, 0x66, 0x8b, 0x1e, 0x04, 0x00, // 7c1d  mov ebx,DWORD PTR es:0x4
    0x66, 0x39, 0xc3, //                   7c23  cmp ebx,eax
    0x75, 0x09, //                         7c26  jne 7c31 <fail>
    0xbe, 0x5a, 0x7c, //                   7c28  mov si,0x7c5a          ; ok
    0xb9, 0x24, 0x00, //                   7c2b  mov cx,0x24
    0xf3, 0x6e, //                         7c2e  rep outs dx,BYTE PTR ds:[si]
    0xf4, //                               7c30  hlt
    0xbe, 0x7e, 0x7c, //                   7c31  fail: mov si,0x7c7e    ; bad
    0xb9, 0x24, 0x00, //                   7c34  mov cx,0x24
    0xf3, 0x6e, //                         7c37  rep outs dx,BYTE PTR ds:[si]
    0xf4, //                               7c39  hlt
];
const DEMO_MSG: &[u8] = b"Hello from the nvmm demo guest!\n"; // at 0x7c3a
const DEMO_OK: &[u8] = b"guest: device register check passed\n"; // at 0x7c5a
const DEMO_BAD: &[u8] = b"guest: device register check FAILED\n"; // at 0x7c7e
const _: () = assert!(DEMO_MSG.len() == 0x20 && DEMO_OK.len() == 0x24 && DEMO_BAD.len() == 0x24);

/// The demo guest image.
pub fn demo_image() -> Vec<u8> {
    [&DEMO_CODE[..], DEMO_MSG, DEMO_OK, DEMO_BAD].concat()
}

/// The calculator guest of NVMM's announcement: `add %ax,%bx ; hlt` in real
/// mode (two 16-bit numbers in AX and BX, the sum in BX).
pub const CALC_CODE: [u8; 3] = [
    0x01, 0xc3, // add bx,ax
    0xf4, //       hlt
];

/// The stub that reports exception `vector` on the fault port:
/// `mov al,vector ; out 0xf0,al ; hlt` (same bytes in 32- and 64-bit code).
pub fn fault_stub(vector: u8) -> [u8; 5] {
    [0xb0, vector, 0xe6, 0xf0, 0xf4]
}

/// Size of one fault stub.
pub const FAULT_STUB_SIZE: u64 = 5;

/// Names of the exceptions, for fault reports.
pub fn exception_name(vector: u8) -> &'static str {
    match vector {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 error",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD error",
        20 => "#VE virtualization",
        21 => "#CP control protection",
        _ => "reserved exception",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_layout_matches_its_addresses() {
        let img = demo_image();
        assert_eq!(&img[0x3a..0x3a + 5], b"Hello");
        assert_eq!(&img[0x5a..0x5a + 6], b"guest:");
        assert_eq!(&img[0x7e..0x7e + 6], b"guest:");
        assert_eq!(img.len(), 0xa2);
    }
}
