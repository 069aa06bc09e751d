//! A large plain batch written in two parts at once, on two connections: one PostgreSQL
//! process inserting rows and maintaining the unique indexes is what limits a single upload
//! (with one writer the two cores were about 55% busy, with two about 90%). The split keeps
//! what a row-by-row reading decides: of two rows with one value, the first in the file is
//! the one kept.
//!
//! Two parts at most (`plain::PlainWrites` asks for two only when a second writer is free),
//! although `split` takes any number.

use crate::domain::UserBatch;

/// Which of `parts` parts of a batch a user is written in: chosen by email, so that the rows
/// of one address are always in the same part, written in file order, and the first is kept.
fn part_of(email: &str, parts: usize) -> usize {
    // FNV-1a: cheap, and spreads addresses evenly enough to balance the parts.
    let hash = email.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    (hash >> 8) as usize % parts
}

/// The users of a batch (their indexes), split into `parts` parts written at once. One part
/// when an external id is in two parts: the parts commit in no particular order, and of two
/// rows with one external id the first in the file must be the one kept.
pub(super) fn split(batch: &UserBatch, parts: usize) -> Vec<Vec<usize>> {
    let all = || vec![(0..batch.len()).collect()];
    if parts <= 1 {
        return all();
    }
    let mut split = vec![Vec::with_capacity(batch.len() / parts + 1024); parts];
    let mut part_of_id: foldhash::HashMap<&str, usize> =
        foldhash::HashMapExt::with_capacity(batch.len());
    for (index, user) in batch.users().enumerate() {
        let part = part_of(user.email, parts);
        if let Some(id) = user.external_id
            && *part_of_id.entry(id).or_insert(part) != part
        {
            return all();
        }
        split[part].push(index);
    }
    split
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Email, NewUser, Role};

    fn batch(rows: &[(&str, Option<&str>)]) -> UserBatch {
        let mut batch = UserBatch::with_capacity(rows.len());
        for (i, (email, external_id)) in rows.iter().enumerate() {
            let user = NewUser {
                email: Email::parse(email).unwrap(),
                first_name: "",
                last_name: "",
                role: Role::Member,
                role_given: false,
                job_title: "",
                external_id: *external_id,
            };
            batch.push_user(i as u64 + 2, &user);
        }
        batch
    }

    #[test]
    fn a_batch_splits_by_address_in_file_order() {
        let emails: Vec<String> = (0..1000).map(|i| format!("u{i}@example.com")).collect();
        let mut rows: Vec<(&str, Option<&str>)> =
            emails.iter().map(|e| (e.as_str(), None)).collect();
        rows.push(("U7@example.com", None));
        let batch = batch(&rows);
        let parts = split(&batch, 2);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].len() + parts[1].len(), 1001);
        // Balanced enough to keep both writers busy.
        assert!(parts[0].len().abs_diff(parts[1].len()) < 100, "{parts:?}");
        for part in &parts {
            assert!(part.windows(2).all(|w| w[0] < w[1]), "file order");
        }
        // Both rows of one address are in one part.
        let part_of_row = |i| parts.iter().position(|p| p.contains(&i)).unwrap();
        assert_eq!(part_of_row(7), part_of_row(1000));
        assert_eq!(split(&batch, 1), vec![(0..1001).collect::<Vec<_>>()]);
    }

    #[test]
    fn an_external_id_in_two_parts_keeps_the_batch_whole() {
        let emails: Vec<String> = (0..100).map(|i| format!("u{i}@example.com")).collect();
        let mut rows: Vec<(&str, Option<&str>)> =
            emails.iter().map(|e| (e.as_str(), Some("E-1"))).collect();
        assert_eq!(split(&batch(&rows), 2).len(), 1);
        rows.iter_mut().enumerate().for_each(|(i, row)| {
            row.1 = (i % 2 == 0).then_some("E-2");
        });
        // One external id on rows of both parts.
        assert_eq!(split(&batch(&rows), 2).len(), 1);
        rows.iter_mut().for_each(|row| row.1 = None);
        assert_eq!(split(&batch(&rows), 2).len(), 2);
    }
}
