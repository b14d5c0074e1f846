//! Gives the shared library NetBSD's soname (`shlib_version` major 0).

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnvmm.so.0");
    println!("cargo:rerun-if-changed=build.rs");
}
