//! The self-checking page pattern (pure code).
//!
//! A 4 KiB page is 512 little-endian `u64` words:
//! word 0 = page index, word 1 = generation, word k (k >= 2) =
//! `splitmix64(seed(index, gen) + k * GOLDEN)`. A page therefore proves by
//! itself which page and which generation it holds, and any flipped, stale or
//! misplaced page is detected. Generations start at 1, so an all-zero page
//! never verifies.

/// Bytes in a page.
pub const PAGE_BYTES: usize = 4096;
/// `u64` words in a page.
pub const PAGE_WORDS: usize = PAGE_BYTES / 8;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The splitmix64 finaliser: a cheap, well-mixing 64-bit hash.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn seed(index: u64, gen: u64) -> u64 {
    mix(index ^ mix(gen ^ 0x5445_524E_4D45_4D00))
}

/// Expected value of word `k` (k >= 2) of page `index` at generation `gen`.
#[cfg(test)]
pub fn word(index: u64, gen: u64, k: usize) -> u64 {
    mix(seed(index, gen).wrapping_add((k as u64).wrapping_mul(GOLDEN)))
}

/// Write the pattern for (`index`, `gen`) into `page`.
pub fn fill(page: &mut [u64], index: u64, gen: u64) {
    debug_assert_eq!(page.len(), PAGE_WORDS);
    let s = seed(index, gen);
    page[0] = index;
    page[1] = gen;
    for (k, w) in page.iter_mut().enumerate().skip(2) {
        *w = mix(s.wrapping_add((k as u64).wrapping_mul(GOLDEN)));
    }
}

/// What a page that failed verification contained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Index stored in word 0.
    pub found_index: u64,
    /// Generation stored in word 1.
    pub found_gen: u64,
    /// Number of words that differ from the expected pattern.
    pub bad_words: usize,
    /// First differing word.
    pub first_bad_word: usize,
}

/// Check `page` against page `index` at generation `gen`.
pub fn verify(page: &[u64], index: u64, gen: u64) -> Result<(), Mismatch> {
    let s = seed(index, gen);
    let mut bad_words = 0;
    let mut first_bad_word = usize::MAX;
    let mut expect = |k: usize, v: u64| {
        if page[k] != v {
            bad_words += 1;
            first_bad_word = first_bad_word.min(k);
        }
    };
    expect(0, index);
    expect(1, gen);
    for k in 2..PAGE_WORDS {
        expect(k, mix(s.wrapping_add((k as u64).wrapping_mul(GOLDEN))));
    }
    if bad_words == 0 {
        Ok(())
    } else {
        Err(Mismatch {
            found_index: page[0],
            found_gen: page[1],
            bad_words,
            first_bad_word,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(index: u64, gen: u64) -> Vec<u64> {
        let mut p = vec![0u64; PAGE_WORDS];
        fill(&mut p, index, gen);
        p
    }

    #[test]
    fn filled_page_verifies() {
        let p = page(42, 3);
        assert_eq!(verify(&p, 42, 3), Ok(()));
        assert_eq!(p[5], word(42, 3, 5));
    }

    #[test]
    fn stale_generation_is_detected() {
        let p = page(42, 3);
        let m = verify(&p, 42, 4).unwrap_err();
        assert_eq!(m.found_gen, 3);
        assert!(m.bad_words > 500, "{m:?}");
    }

    #[test]
    fn misplaced_page_is_detected() {
        let p = page(7, 1);
        let m = verify(&p, 8, 1).unwrap_err();
        assert_eq!(m.found_index, 7);
        assert_eq!(m.first_bad_word, 0);
    }

    #[test]
    fn single_bit_flip_is_detected() {
        let mut p = page(1000, 9);
        p[300] ^= 1 << 17;
        let m = verify(&p, 1000, 9).unwrap_err();
        assert_eq!((m.bad_words, m.first_bad_word), (1, 300));
        assert_eq!((m.found_index, m.found_gen), (1000, 9));
    }

    #[test]
    fn zero_page_never_verifies() {
        let p = vec![0u64; PAGE_WORDS];
        assert!(verify(&p, 0, 1).is_err());
    }
}
