//! What each row of a batch becomes when the account may already hold its user: the plan of a
//! dry run and of the SKIP and UPDATE policies, decided once, here, for both backends. It is
//! pure: the store looks up what it needs (`lookup`), this decides, and `planned` has the
//! store write what the plan says.
//!
//! The ERROR policy of a real import needs no plan: it inserts and lets the unique indexes
//! refuse (see `conflicts`). A dry run writes no user, and SKIP and UPDATE must know a row's
//! user before writing anything, so these look up first, for every value of the batch:
//!
//! - the account's users that hold one of its emails or external ids (`Existing`);
//! - the values the import's earlier rows took in the file (`FileKey`): the rows it inserted
//!   are users, found above; the rows it skipped, updated, or (dry run) would have inserted
//!   are recorded as file keys, since they are not (all) in the users table.
//!
//! Then `decide` reads the batch row by row, as the reference model does: a row that does not
//! fail takes its email and external id for the rows after it, so a second row with either
//! is DUPLICATE_IN_FILE under every policy, and a failed row takes nothing.
//!
//! What a valid row becomes, in the order `judge` asks:
//!
//! - its email held by an earlier row of the file: DUPLICATE_IN_FILE;
//! - its email held by a user that an import still running creates or updates: the row fails,
//!   naming that import (the user may yet go, or get its old values back);
//! - its email held by another user: ALREADY_EXISTS under ERROR; under SKIP and UPDATE, that user
//!   is the row's, skipped or updated;
//! - its external id held by an earlier row: DUPLICATE_IN_FILE; by a user other than the row's
//!   own: ALREADY_EXISTS (or the running import's error), unless an earlier update of this import
//!   released it; a skipped row writes nothing, so its id cannot conflict;
//! - none of these: a new user, inserted (a dry run: counted as one).
//!
//! A failed row is judged the same way, for its row errors only. The tests below pin the cases
//! that are easy to get wrong: one address in two cases, an id an update gives up, a running
//! import, failed rows.

use foldhash::{HashMap, HashMapExt};

use super::BatchTarget;
use crate::domain::batch::UserRef;
use crate::domain::{Column, ConflictPolicy, ImportKey, RowError, UserBatch};

/// A user of the account that holds an email or external id of the batch.
///
/// Read by `lookup::existing_users`, with its imports' ids while they run
/// (`Existing::from`, then `Existing::noting`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Existing {
    /// Its email key, unique in the account.
    pub email: String,
    /// Its external id, unique in the account when it has one.
    pub external_id: Option<String>,
    /// The import that created it, and its row there.
    pub import_key: ImportKey,
    /// The row of that import's file: a holder of the same import is an earlier row of the file,
    /// named in DUPLICATE_IN_FILE.
    pub source_row: u64,
    /// That import's id while it still runs: it may yet fail and take the user away, so the
    /// row can be neither skipped nor used to update it.
    pub running_import: Option<String>,
    /// The UPDATE import that changed the user last: while it still runs, it may yet fail and
    /// put the old values back, over those of another update.
    pub updated_by: Option<ImportKey>,
    /// `updated_by`'s import id while that import still runs (`busy_with`).
    pub running_update: Option<String>,
    /// Where the user's row is (`lookup::Match::row_id`: SQLite's rowid, PostgreSQL's tuple
    /// id), by which its update finds the row again in the same transaction.
    pub row_id: Option<i64>,
    /// Its other values, to tell whether an update changes anything: empty unless the plan may
    /// write an update (`Lookups::user_values`).
    pub first_name: String,
    /// Its stored last name.
    pub last_name: String,
    /// Its stored role, by name, compared with the row's role as text.
    pub role: String,
    /// Its stored job title.
    pub job_title: String,
}

impl Existing {
    /// The import still running that holds the user for now, other than `mode`'s own: the one
    /// that creates it, or one that updates it.
    fn busy_with(&self, mode: Mode) -> Option<Busy<'_>> {
        if let Some(import_id) = &self.running_import {
            return Some(Busy::Creating(import_id));
        }
        self.running_update
            .as_deref()
            .filter(|_| self.updated_by != Some(mode.key) && !mode.dry_run)
            .map(Busy::Updating)
    }

    /// Whether `row`'s non-empty cells change any of the user's values: what its update
    /// writes (`Cells`) differs from what is stored.
    fn changed_by(&self, row: &UserRef<'_>) -> bool {
        let cells = Cells::of(row);
        let differs = |cell: Option<&str>, stored: &str| cell.is_some_and(|cell| cell != stored);
        differs(cells.first_name, &self.first_name)
            || differs(cells.last_name, &self.last_name)
            || differs(cells.role, &self.role)
            || differs(cells.job_title, &self.job_title)
            || cells
                .external_id
                .is_some_and(|id| self.external_id.as_deref() != Some(id))
    }
}

/// A running import that holds a user for now, by its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Busy<'a> {
    /// It creates the user: if it fails, the user goes.
    Creating(&'a str),
    /// It updates the user: if it fails, the user's old values come back.
    Updating(&'a str),
}

impl Busy<'_> {
    /// The row error for a value such an import holds.
    fn error(self, row: u64, column: Column, value: &str) -> RowError {
        match self {
            Busy::Creating(import_id) => RowError::being_imported(row, column, value, import_id),
            Busy::Updating(import_id) => RowError::being_changed(row, column, value, import_id),
        }
    }
}

/// A value an earlier row of the import took in its file, without being inserted as a user.
///
/// Rows the import skipped or updated, and every valid row of a dry run, are not (as theirs) in
/// the users table, yet their values count for the rows after them: they are kept in a table of
/// the import's own (`claims`) until the import ends (`ending::forget`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileKey {
    /// The email key the row took.
    pub email: String,
    /// The external id the row took, if it gave one.
    pub external_id: Option<String>,
    /// The row that took them, named in a later row's DUPLICATE_IN_FILE.
    pub source_row: u64,
    /// The external id an update of a dry run took away from the user (`email`): free for
    /// later rows, although the users table, which a dry run leaves alone, still has it.
    pub released_external_id: Option<String>,
}

/// What the store found before deciding a batch.
///
/// Only what touches the batch's values: whatever the account's size, a batch looks up at most a
/// few rows per row of its own.
#[derive(Debug, Default)]
pub(crate) struct Known {
    /// The account's users that hold one of the batch's emails or external ids, the import's own
    /// users among them (a user may appear twice, once per value it holds).
    pub users: Vec<Existing>,
    /// The import's file keys that hold one of those values, or released one of its external ids.
    pub file_keys: Vec<FileKey>,
}

/// How rows are decided when the unique indexes alone cannot decide them: a dry run writes no
/// user, and SKIP and UPDATE must know the user before writing. `None` for the plain import,
/// which inserts and lets the indexes refuse.
pub(crate) fn planned(target: &BatchTarget<'_>) -> Option<Mode> {
    (target.validate_only || target.on_conflict != ConflictPolicy::Error).then_some(Mode {
        key: target.key,
        policy: target.on_conflict,
        dry_run: target.validate_only,
    })
}

/// How the import treats the rows whose user exists.
///
/// Built by `planned` from the batch's target, the same for every batch of an import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mode {
    /// The import: its own users and file keys are earlier rows of the file, not other users.
    pub key: ImportKey,
    /// What becomes of a row whose user exists: ERROR, SKIP or UPDATE.
    pub policy: ConflictPolicy,
    /// A dry run: it sees no running import's users (two imports running side by side must
    /// not see each other's would-be users), and its own rows are all file keys.
    pub dry_run: bool,
}

/// What an update writes of a row: its non-empty cells. `None`, an empty cell (for the role, a
/// cell left empty, read as `member` for a new user), keeps the stored value. The one home of
/// that rule: the plan judges by it whether a row changes its user (`Existing::changed_by`),
/// and both backends write by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cells<'a> {
    pub first_name: Option<&'a str>,
    pub last_name: Option<&'a str>,
    pub role: Option<&'a str>,
    pub job_title: Option<&'a str>,
    pub external_id: Option<&'a str>,
}

impl<'a> Cells<'a> {
    /// The cells an update of `row` writes.
    pub(crate) fn of(row: &UserRef<'a>) -> Self {
        let given = |value: &'a str| (!value.is_empty()).then_some(value);
        Self {
            first_name: given(row.first_name),
            last_name: given(row.last_name),
            role: row.role_given.then(|| row.role.as_str()),
            job_title: given(row.job_title),
            external_id: row.external_id,
        }
    }
}

/// An existing user a row updates.
///
/// Only rows that change something are listed; the user is found again when the update is
/// written, by where its lookup found its row (`Existing::row_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Update {
    /// The row's user in the batch.
    pub index: usize,
    /// Where the user's row is, as the lookup found it (`Existing::row_id`).
    pub row_id: Option<i64>,
    /// The import that created the user and the one that changed it last, as the lookup found
    /// them: a user found again after another transaction changed it is the one this plan
    /// judged only while both are the same (`postgres::apply`).
    pub import_key: ImportKey,
    /// See `import_key`.
    pub updated_by: Option<ImportKey>,
}

/// A value a row takes in the file, to be stored as a file key.
///
/// One per valid row that is not inserted as a user (skipped, updated, or any row of a dry run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Claim<'a> {
    /// The row's email key.
    pub email: &'a str,
    /// The row's external id, if it gave one.
    pub external_id: Option<&'a str>,
    /// The row's spreadsheet number, for a later DUPLICATE_IN_FILE.
    pub row_number: u64,
    /// The external id the row's update took away from its user (UPDATE only): later rows may
    /// take it.
    pub released_external_id: Option<&'a str>,
}

/// What to do with a batch.
///
/// The counters are what the batch's outcome reports; the lists are what the store writes
/// (`Steps::apply`), in this order: `updates`, `inserts`, `claims`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan<'a> {
    /// Users to insert (indexes in the batch); none for a dry run.
    pub inserts: Vec<usize>,
    /// Users to update, in file order: those whose row changes something; none for a dry
    /// run. (A row that changes nothing still counts as updated.)
    pub updates: Vec<Update>,
    /// Valid rows whose user is new: inserted, or for a dry run counted as if it were. Less the
    /// inserts the unique indexes refuse after all, this is the batch's `imported`.
    pub would_insert: u64,
    /// Valid rows whose user exists and is left alone (SKIP).
    pub skipped: u64,
    /// Valid rows whose user exists and is updated (UPDATE), those that change nothing included.
    pub updated: u64,
    /// Valid rows that fail on a value held elsewhere.
    pub conflicts: u64,
    /// The batch indexes of those rows, in file order.
    pub conflicted: Vec<usize>,
    /// The values rows took without being inserted, in file order.
    pub claims: Vec<Claim<'a>>,
    /// An update takes an external id away from its user: the updates must then be applied
    /// in file order, since a later row may take that id.
    pub releases: bool,
    /// The conflict errors, in file order (a row's email before its external id).
    pub errors: Vec<RowError>,
}

/// Who holds a value, as one row of the file sees it.
///
/// An earlier row wins over a user: a value an earlier row of this import took is a duplicate in
/// the file, whoever else holds it.
enum Held<'a> {
    /// An earlier row of this import's file, by row number.
    InFile(u64),
    /// A user of the account.
    ByUser(&'a Existing),
}

/// The values the earlier rows hold, built from `Known` and then from the batch as it is read.
///
/// Hashed with foldhash, seeded per map: a file crafted to collide would have to guess the seed,
/// and the maps live for one batch of at most the batch's rows; SipHash's stronger defence was
/// 5% of a SKIP's samples (50 MiB).
///
/// Rows are judged in file order, and each valid row adds its values before the next is judged,
/// so that a lookup here answers "held before this row?" and not "held at all?".
struct Holders<'a> {
    /// Emails taken by rows of this import, with the first row that took each.
    file_email: HashMap<&'a str, u64>,
    /// External ids taken by rows of this import, likewise.
    file_id: HashMap<&'a str, u64>,
    /// External ids updates took away from their users, with the user's email and the row.
    released: HashMap<&'a str, (&'a str, u64)>,
    /// Other imports' users by email, as this import may see them.
    user_by_email: HashMap<&'a str, &'a Existing>,
    /// The same users by external id.
    user_by_id: HashMap<&'a str, &'a Existing>,
}

impl<'a> Holders<'a> {
    /// Sorts what the store found: the import's own users and file keys become earlier rows of
    /// the file, other users stay users (for a dry run, not those an import still running adds).
    ///
    /// Sized for the batch's `rows` at once: each valid row adds its values as it is decided.
    fn new(known: &'a Known, mode: Mode, rows: usize) -> Self {
        let mut holders = Self {
            file_email: HashMap::with_capacity(rows + known.file_keys.len()),
            file_id: HashMap::with_capacity(rows + known.file_keys.len()),
            released: HashMap::new(),
            user_by_email: HashMap::with_capacity(known.users.len()),
            user_by_id: HashMap::with_capacity(known.users.len()),
        };
        for user in &known.users {
            if user.import_key == mode.key {
                // Inserted by an earlier batch of this import.
                holders.file_email.insert(&user.email, user.source_row);
                if let Some(id) = &user.external_id {
                    holders.file_id.insert(id, user.source_row);
                }
            } else if !(mode.dry_run && user.running_import.is_some()) {
                // A dry run sees the account as it stands: not the users an import still
                // running is adding, and the users an update is changing as they are.
                holders.user_by_email.insert(&user.email, user);
                if let Some(id) = &user.external_id {
                    holders.user_by_id.insert(id, user);
                }
            }
        }
        for key in &known.file_keys {
            holders.file_email.insert(&key.email, key.source_row);
            if let Some(id) = &key.external_id {
                holders.file_id.insert(id, key.source_row);
            }
            if let Some(id) = &key.released_external_id {
                holders.released.insert(id, (&key.email, key.source_row));
            }
        }
        holders
    }

    /// Who holds `email` for a row at `row`.
    fn email(&self, email: &str, row: u64) -> Option<Held<'a>> {
        match self.file_email.get(email) {
            Some(&first) if first < row => Some(Held::InFile(first)),
            _ => self.user_by_email.get(email).map(|u| Held::ByUser(u)),
        }
    }

    /// Who holds `id` for a row at `row`.
    fn external_id(&self, id: &str, row: u64) -> Option<Held<'a>> {
        if let Some(&first) = self.file_id.get(id)
            && first < row
        {
            return Some(Held::InFile(first));
        }
        let user = self.user_by_id.get(id)?;
        let released = self
            .released
            .get(id)
            .is_some_and(|&(email, at)| at < row && email == user.email);
        (!released).then_some(Held::ByUser(user))
    }
}

/// What a row's values say, whether the row is valid or failed validation.
struct Verdict<'a> {
    errors: Vec<RowError>,
    /// The existing user the policy applies to: SKIP or UPDATE, no other error.
    user: Option<&'a Existing>,
}

/// Judges one row's email (normalised, and as written for the error) and external id against the
/// values held before it, as the module's doc lists. Every error the row earns is returned, its
/// email's before its external id's; `user` is set only when there is none.
fn judge<'a>(
    holders: &Holders<'a>,
    mode: Mode,
    row: u64,
    email: Option<(&str, &str)>,
    external_id: Option<&str>,
) -> Verdict<'a> {
    let mut errors = Vec::new();
    let mut user = None;
    if let Some((email, as_written)) = email {
        match holders.email(email, row) {
            Some(Held::InFile(first)) => errors.push(RowError::duplicate_in_file(
                row,
                Column::Email,
                as_written,
                first,
            )),
            Some(Held::ByUser(existing)) => match (existing.busy_with(mode), mode.policy) {
                (Some(busy), _) => errors.push(busy.error(row, Column::Email, as_written)),
                (None, ConflictPolicy::Error) => {
                    errors.push(RowError::already_exists(row, Column::Email, as_written))
                }
                (None, ConflictPolicy::Skip | ConflictPolicy::Update) => user = Some(existing),
            },
            None => {}
        }
    }
    if let Some(id) = external_id {
        match holders.external_id(id, row) {
            Some(Held::InFile(first)) => errors.push(RowError::duplicate_in_file(
                row,
                Column::ExternalId,
                id,
                first,
            )),
            Some(Held::ByUser(holder)) => {
                // A skipped row writes nothing; an update may keep its user's own id.
                let fine = user.is_some_and(|u: &Existing| {
                    mode.policy == ConflictPolicy::Skip || u.email == holder.email
                });
                if !fine {
                    errors.push(match holder.busy_with(mode) {
                        Some(busy) => busy.error(row, Column::ExternalId, id),
                        None => RowError::already_exists(row, Column::ExternalId, id),
                    });
                }
            }
            None => {}
        }
    }
    if !errors.is_empty() {
        user = None;
    }
    Verdict { errors, user }
}

/// Decides every row of `batch` from what the store found, as a row-by-row reading would.
///
/// Valid rows first, in file order, each taking its values once it does not fail; then the failed
/// rows, each against the values of the valid rows before it (a failed row takes nothing, so it
/// never makes a later row fail). The errors come out in file order.
pub(crate) fn decide<'a>(mode: Mode, batch: &'a UserBatch, known: &'a Known) -> Plan<'a> {
    let mut holders = Holders::new(known, mode, batch.len());
    let mut plan = Plan::default();
    for (index, user) in batch.users().enumerate() {
        let row = user.row_number;
        let verdict = judge(
            &holders,
            mode,
            row,
            Some((user.email, user.email_as_written)),
            user.external_id,
        );
        if !verdict.errors.is_empty() {
            plan.conflicts += 1;
            plan.conflicted.push(index);
            plan.errors.extend(verdict.errors);
            continue;
        }
        holders.file_email.insert(user.email, row);
        if let Some(id) = user.external_id {
            holders.file_id.insert(id, row);
        }
        let mut released = None;
        match (verdict.user, mode.policy) {
            (None, _) => {
                plan.would_insert += 1;
                if !mode.dry_run {
                    plan.inserts.push(index);
                    // Inserted: the users table holds its values from now on.
                    continue;
                }
            }
            (Some(_), ConflictPolicy::Skip | ConflictPolicy::Error) => plan.skipped += 1,
            (Some(existing), ConflictPolicy::Update) => {
                plan.updated += 1;
                if !mode.dry_run && existing.changed_by(&user) {
                    plan.updates.push(Update {
                        index,
                        row_id: existing.row_id,
                        import_key: existing.import_key,
                        updated_by: existing.updated_by,
                    });
                }
                released = existing
                    .external_id
                    .as_deref()
                    .filter(|old| user.external_id.is_some_and(|new| new != *old));
                if let Some(old) = released {
                    holders.released.insert(old, (&existing.email, row));
                    plan.releases = true;
                }
            }
        }
        plan.claims.push(Claim {
            email: user.email,
            external_id: user.external_id,
            row_number: row,
            released_external_id: released,
        });
    }
    // Failed rows take no value: judged after the valid ones, against the values of the rows
    // before each.
    for probe in batch.probes() {
        let verdict = judge(
            &holders,
            mode,
            probe.row_number,
            probe.email,
            probe.external_id,
        );
        plan.errors.extend(verdict.errors);
    }
    // Stable: a row's email error stays before its external id's.
    plan.errors.sort_by_key(|e| e.row_number);
    plan
}

mod lookups;

pub(crate) use lookups::{Lookups, ids_not_found, lookups, remember};

#[cfg(test)]
mod tests;
