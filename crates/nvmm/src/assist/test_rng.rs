//! A tiny deterministic PRNG (xorshift) for the assists' unit tests.
#![forbid(unsafe_code)]

/// Xorshift64 from a nonzero seed: the same sequence on every run.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// The next word.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
