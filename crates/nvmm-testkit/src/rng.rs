//! The one deterministic PRNG of the tests, benchmarks and fuzz oracles.

/// Xorshift64 from a nonzero seed: the same sequence on every run, so a
/// failing case reproduces.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// The next random byte.
    pub fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn xorshift64_sequence() {
        // Marsaglia's xorshift64 (13, 7, 17) from seed 1.
        let mut r = Rng(1);
        assert_eq!(r.next(), 1082269761);
        assert_eq!(r.next(), 1152992998833853505);
    }
}
