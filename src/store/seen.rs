//! Which values a planned import's rows may have taken in its file so far, in memory: a Bloom
//! filter beside its file keys table (`claims`), so that most of a batch's values skip the
//! lookup of an earlier row that took them.
//!
//! A dry run or a re-sync takes a value for nearly every row, and nearly every lookup of one
//! finds nothing (a file rarely repeats a user): those lookups were a sixth of a dry run's time.
//! The filter answers "no earlier row took it" for certain, and "maybe" otherwise, for which the
//! table is asked as before. So it can only save lookups, never change a row's outcome: a value
//! it wrongly calls "maybe" is looked up, and a value it set in a batch that was rolled back
//! only costs a lookup.
//!
//! It is only right if it saw every value the table holds: an upload that resumes an import
//! with rows already stored (on this server or another) first notes every value of the table
//! (`Store::remember_file_keys`, one read of it), before its first batch.
//!
//! Its size is fixed, so memory stays flat whatever the file: 4 MiB and 3 bits per value, under
//! 6% false "maybe" at the 5.2 million values (emails and external ids) of a 199 MiB file.
//!
//! Hashed with foldhash (seeded per filter): the standard library's SipHash, which resists
//! flooding a hash table but buys nothing here (a value that collides costs a lookup), was 10%
//! of a dry run's samples (50 MiB).

use std::hash::BuildHasher;

use foldhash::quality::RandomState;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Bits of the filter: 2^25, 4 MiB.
const BITS: u64 = 1 << 25;
/// Bits set per value.
const HASHES: u64 = 3;

/// What a value is to the filter: the same text as an email and as an external id are two
/// values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// An email key a row took.
    Email,
    /// An external id a row took.
    ExternalId,
    /// An external id an update took away from its user.
    Released,
}

/// The filter of one upload.
///
/// Shared by reference with the batches' writes (`BatchTarget::seen`); atomic bits, so that a
/// write may set them through `&self`.
pub struct SeenValues {
    bits: Box<[AtomicU64]>,
    hasher: RandomState,
    /// Whether a row released an external id: until one does, released ids need no lookup.
    released_any: AtomicBool,
}

impl Default for SeenValues {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SeenValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeenValues").finish_non_exhaustive()
    }
}

impl SeenValues {
    /// An empty filter: no value taken yet.
    pub fn new() -> Self {
        Self {
            bits: (0..BITS / 64).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::default(),
            released_any: AtomicBool::new(false),
        }
    }

    /// The bit positions of `value` as `kind` (double hashing of one 64-bit hash).
    fn positions(&self, kind: Kind, value: &str) -> impl Iterator<Item = u64> {
        let hash = self.hasher.hash_one((kind, value));
        let (first, step) = (hash & 0xffff_ffff, (hash >> 32) | 1);
        (0..HASHES).map(move |i| first.wrapping_add(i.wrapping_mul(step)) % BITS)
    }

    /// Notes that a row took `value` as `kind`.
    pub(crate) fn insert(&self, kind: Kind, value: &str) {
        if kind == Kind::Released {
            self.released_any.store(true, Ordering::Relaxed);
        }
        for bit in self.positions(kind, value) {
            self.bits[(bit / 64) as usize].fetch_or(1 << (bit % 64), Ordering::Relaxed);
        }
    }

    /// Notes the values one row took: its email, its external id, and the id its update
    /// released, if any (`plan::Claim`, or a stored `plan::FileKey`).
    pub(crate) fn insert_claim(
        &self,
        email: &str,
        external_id: Option<&str>,
        released: Option<&str>,
    ) {
        self.insert(Kind::Email, email);
        if let Some(id) = external_id {
            self.insert(Kind::ExternalId, id);
        }
        if let Some(id) = released {
            self.insert(Kind::Released, id);
        }
    }

    /// `false` when no row took `value` as `kind`, for certain; `true` when one may have.
    pub(crate) fn may_hold(&self, kind: Kind, value: &str) -> bool {
        if kind == Kind::Released && !self.released_any.load(Ordering::Relaxed) {
            return false;
        }
        self.positions(kind, value).all(|bit| {
            self.bits[(bit / 64) as usize].load(Ordering::Relaxed) & (1 << (bit % 64)) != 0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_taken_is_always_held_and_few_others_are() {
        let seen = SeenValues::new();
        for n in 0..100_000 {
            seen.insert(Kind::Email, &format!("user{n}@example.com"));
        }
        for n in 0..100_000 {
            assert!(seen.may_hold(Kind::Email, &format!("user{n}@example.com")));
        }
        let wrong = (100_000..200_000)
            .filter(|n| seen.may_hold(Kind::Email, &format!("user{n}@example.com")))
            .count();
        assert!(wrong < 100, "{wrong} false positives in 100,000");
        // The same text as another kind is another value.
        assert!(!seen.may_hold(Kind::ExternalId, "user1@example.com"));
    }

    #[test]
    fn released_ids_need_no_lookup_until_one_is_released() {
        let seen = SeenValues::new();
        seen.insert(Kind::ExternalId, "E1");
        assert!(!seen.may_hold(Kind::Released, "E1"));
        seen.insert(Kind::Released, "E2");
        assert!(seen.may_hold(Kind::Released, "E2"));
    }
}
