//! What a planned batch looks up before its rows are decided (`Lookups`), and what its plan
//! tells the import's filter afterwards (`remember`).

use super::{ConflictPolicy, Existing, Mode, Plan, UserBatch};
use crate::store::claims::{self, ClaimColumn};
use crate::store::seen::{Kind, SeenValues};

/// The values of a batch that `Known` must cover: every email and every external id of its
/// users and of its failed rows.
///
/// Emails, then external ids, each sorted and without repeats: the lookups then walk their
/// indexes in order, each on a page the one before left in the cache. A failed row adds only
/// the values it has that are valid (its normalised email, its external id).
fn values(batch: &UserBatch) -> (Vec<&str>, Vec<&str>) {
    let mut emails: Vec<&str> = batch.users().map(|u| u.email).collect();
    let mut ids: Vec<&str> = batch.users().filter_map(|u| u.external_id).collect();
    for probe in batch.probes() {
        emails.extend(probe.email.map(|(normalised, _)| normalised));
        ids.extend(probe.external_id);
    }
    for values in [&mut emails, &mut ids] {
        values.sort_unstable();
        values.dedup();
    }
    (emails, ids)
}

/// What a planned batch looks up (`Steps::known`), built by `lookups`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Lookups<'b> {
    /// The batch's emails, to find among the account's users (sorted, distinct); none when the
    /// account holds no user.
    pub user_emails: Vec<&'b str>,
    /// Its external ids likewise, of which a backend looks up only those that no user found by
    /// email holds (`ids_not_found`).
    pub user_ids: Vec<&'b str>,
    /// Its emails an earlier row of the import may have taken, to find among its file keys.
    pub claimed_emails: Vec<&'b str>,
    /// Its external ids an earlier row may have taken.
    pub claimed_ids: Vec<&'b str>,
    /// Its external ids an earlier update of the import may have released (UPDATE only, the
    /// one policy that releases any).
    pub released_ids: Vec<&'b str>,
    /// Whether the users found need their other values (`Existing::first_name` ...): only an
    /// UPDATE that writes compares them with its rows'; SKIP and dry runs read only the keys.
    pub user_values: bool,
    /// The generations of the file keys the earlier rows may have stored (`claims::generation`):
    /// 0 up to that of the batch's first row, each looked in for each value.
    pub generations: std::ops::RangeInclusive<i64>,
}

impl Default for Lookups<'_> {
    fn default() -> Self {
        Self {
            user_emails: Vec::new(),
            user_ids: Vec::new(),
            claimed_emails: Vec::new(),
            claimed_ids: Vec::new(),
            released_ids: Vec::new(),
            user_values: false,
            generations: 0..=0,
        }
    }
}

impl<'b> Lookups<'b> {
    /// The file key lookups to run: each column of the import's table with its values, the
    /// columns with none left out.
    pub(crate) fn of_file_keys(&self) -> impl Iterator<Item = (ClaimColumn, &[&'b str])> {
        [
            (ClaimColumn::Email, &self.claimed_emails),
            (ClaimColumn::ExternalId, &self.claimed_ids),
            (ClaimColumn::Released, &self.released_ids),
        ]
        .into_iter()
        .filter(|(_, values)| !values.is_empty())
        .map(|(column, values)| (column, values.as_slice()))
    }
}

/// The lookups a batch needs: its values (`values`), less what cannot be there. An account
/// with no user (`account_empty`) has none of them; a value the import's filter has not seen
/// (`seen`, see `SeenValues`) was taken by no earlier row; only UPDATE releases ids.
pub(crate) fn lookups<'b>(
    batch: &'b UserBatch,
    mode: Mode,
    account_empty: bool,
    seen: Option<&SeenValues>,
) -> Lookups<'b> {
    let (emails, ids) = values(batch);
    let may = |kind: Kind, values: &[&'b str]| -> Vec<&'b str> {
        match seen {
            Some(seen) => values
                .iter()
                .copied()
                .filter(|value| seen.may_hold(kind, value))
                .collect(),
            None => values.to_vec(),
        }
    };
    let released_ids = if mode.policy == ConflictPolicy::Update {
        may(Kind::Released, &ids)
    } else {
        Vec::new()
    };
    Lookups {
        claimed_emails: may(Kind::Email, &emails),
        claimed_ids: may(Kind::ExternalId, &ids),
        released_ids,
        user_emails: if account_empty { Vec::new() } else { emails },
        user_ids: if account_empty { Vec::new() } else { ids },
        user_values: mode.policy == ConflictPolicy::Update && !mode.dry_run,
        generations: 0..=claims::generation(first_row(batch)),
    }
}

/// The batch's first row in the file, valid or failed: every earlier row is before it.
fn first_row(batch: &UserBatch) -> u64 {
    let user = batch.users().next().map(|u| u.row_number);
    let probe = batch.probes().next().map(|p| p.row_number);
    user.into_iter().chain(probe).min().unwrap_or(0)
}

/// Notes in the import's filter the values a plan's rows take in its file (`Plan::claims`).
pub(crate) fn remember(seen: &SeenValues, plan: &Plan<'_>) {
    for claim in &plan.claims {
        seen.insert_claim(claim.email, claim.external_id, claim.released_external_id);
    }
}

/// Of the batch's external ids, those that the users found by email do not hold: only they need
/// a lookup. An external id is unique in the account, so the user found by email that holds one
/// is the only user a lookup of it could find. In a re-sync nearly every row's user holds the
/// row's own id: this halves the lookups of existing users.
pub(crate) fn ids_not_found<'v>(ids: &[&'v str], found: &[Existing]) -> Vec<&'v str> {
    let held: foldhash::HashSet<&str> = found
        .iter()
        .filter_map(|user| user.external_id.as_deref())
        .collect();
    ids.iter()
        .copied()
        .filter(|id| !held.contains(id))
        .collect()
}
