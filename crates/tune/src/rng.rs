//! Deterministic randomness: a counter-based generator, so that every random draw
//! (initialisation, shuffling, dropout) is a pure function of the seed and what it is
//! for. Nothing depends on the order threads run in, and resuming needs no saved state.

/// SplitMix64's finaliser: a good 64-bit mix.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stream of random numbers identified by `(seed, purpose, index...)`.
#[derive(Clone, Debug)]
pub struct Stream {
    key: u64,
    counter: u64,
}

impl Stream {
    /// The stream for `seed` and a list of identifying numbers (purpose, step, layer...).
    pub fn new(seed: u64, ids: &[u64]) -> Self {
        let key = ids.iter().fold(mix(seed), |k, &id| mix(k ^ id));
        Stream { key, counter: 0 }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.counter += 1;
        mix(self.key ^ mix(self.counter))
    }

    /// Uniform in [0, 1) with 24 random bits (exact in f32).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `0..n` (n > 0), without modulo bias worth worrying about for n < 2^32.
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }
}

/// What each stream is for (mixed into its key).
pub mod purpose {
    pub const INIT: u64 = 1;
    pub const SHUFFLE: u64 = 2;
    pub const DROPOUT: u64 = 3;
    pub const SPLIT: u64 = 4;
}

/// `0..n` shuffled (Fisher–Yates) by `stream`.
pub fn permutation(n: usize, stream: &mut Stream) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = stream.below(i + 1);
        v.swap(i, j);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(Stream::new(7, &[1, 2]), |s, _| Some(s.next_u64()))
            .collect();
        let b: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(Stream::new(7, &[1, 2]), |s, _| Some(s.next_u64()))
            .collect();
        let c: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(Stream::new(7, &[1, 3]), |s, _| Some(s.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn uniform_floats_cover_the_unit_interval() {
        let mut s = Stream::new(1, &[]);
        let v: Vec<f32> = (0..10_000).map(|_| s.next_f32()).collect();
        assert!(v.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = permutation(100, &mut Stream::new(3, &[purpose::SHUFFLE]));
        p.sort();
        assert_eq!(p, (0..100).collect::<Vec<_>>());
    }
}
