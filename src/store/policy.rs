//! What each row of a batch becomes when the account may already hold its user: the plan of a
//! dry run and of the SKIP and UPDATE policies, decided once, here, for both backends.
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

use std::collections::HashMap;

use crate::domain::batch::UserRef;
use crate::domain::{Column, ConflictPolicy, ImportKey, RowError, UserBatch};

/// A user of the account that holds an email or external id of the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Existing {
    pub email: String,
    pub external_id: Option<String>,
    /// The import that created it, and its row there.
    pub import_key: ImportKey,
    pub source_row: u64,
    /// That import's id while it still runs: it may yet fail and take the user away, so the
    /// row can be neither skipped nor used to update it.
    pub running_import: Option<String>,
    /// The UPDATE import that changed the user last, and its id while it still runs: it may
    /// yet fail and put the old values back, over those of another update.
    pub updated_by: Option<ImportKey>,
    pub running_update: Option<String>,
    /// Its other values, to tell whether an update changes anything.
    pub first_name: String,
    pub last_name: String,
    pub role: String,
    pub job_title: String,
}

impl Existing {
    /// The import still running that holds the user for now, other than `key`: the one that
    /// creates it, or one that updates it.
    fn busy_with(&self, mode: Mode) -> Option<&str> {
        let updating = self
            .running_update
            .as_deref()
            .filter(|_| self.updated_by != Some(mode.key) && !mode.dry_run);
        self.running_import.as_deref().or(updating)
    }

    /// Whether `row`'s non-empty cells change any of the user's values.
    fn changed_by(&self, row: &UserRef<'_>) -> bool {
        let differs = |cell: &str, stored: &str| !cell.is_empty() && cell != stored;
        differs(row.first_name, &self.first_name)
            || differs(row.last_name, &self.last_name)
            || (row.role_given && row.role.as_str() != self.role)
            || differs(row.job_title, &self.job_title)
            || row
                .external_id
                .is_some_and(|id| self.external_id.as_deref() != Some(id))
    }
}

/// The columns of an `Existing` lookup, in its order.
pub(crate) type ExistingRow = (
    String,
    Option<String>,
    i64,
    i64,
    Option<String>,
    Option<i64>,
    Option<String>,
    String,
    String,
    String,
    String,
);

impl From<ExistingRow> for Existing {
    fn from(row: ExistingRow) -> Self {
        let (email, external_id, import_key, source_row, running_import, updated_by) =
            (row.0, row.1, row.2, row.3, row.4, row.5);
        Self {
            email,
            external_id,
            import_key,
            source_row: source_row as u64,
            running_import,
            updated_by,
            running_update: row.6,
            first_name: row.7,
            last_name: row.8,
            role: row.9,
            job_title: row.10,
        }
    }
}

/// The columns an `Existing` lookup selects, from `users u` joined to its creator `imports i`.
pub(crate) const EXISTING_COLUMNS: &str = "u.email, u.external_id, u.import_key, u.source_row, \
    CASE WHEN i.status = 'PROCESSING' THEN i.import_id END, u.updated_by, \
    (SELECT w.import_id FROM imports w \
     WHERE w.import_key = u.updated_by AND w.status = 'PROCESSING'), \
    u.first_name, u.last_name, u.role, u.job_title";

/// The start of a lookup of the account's users, up to the account's placeholder, which each
/// store writes its own way, as it does the condition on the values.
pub(crate) fn existing_lookup() -> String {
    format!(
        "SELECT {EXISTING_COLUMNS} FROM users u JOIN imports i ON i.import_key = u.import_key \
         WHERE u.account_id = "
    )
}

/// Logs the external ids that an undone UPDATE import could not give back: another import
/// took them while it ran (see the stores' `undo_import`).
pub(crate) fn lost_external_ids(import_key: ImportKey, lost: u64) {
    if lost > 0 {
        tracing::warn!(
            import_key,
            users = lost,
            "an undone update could not give these users back their external id: another \
             import has taken it since; they are restored without one"
        );
    }
}

/// A value an earlier row of the import took in its file, without being inserted as a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileKey {
    pub email: String,
    pub external_id: Option<String>,
    pub source_row: u64,
    /// The external id an update of a dry run took away from the user (`email`): free for
    /// later rows, although the users table, which a dry run leaves alone, still has it.
    pub released_external_id: Option<String>,
}

/// The columns of a file key lookup, in `FileKey` order.
pub(crate) type FileKeyRow = (String, Option<String>, i64, Option<String>);

impl From<FileKeyRow> for FileKey {
    fn from((email, external_id, source_row, released_external_id): FileKeyRow) -> Self {
        Self {
            email,
            external_id,
            source_row: source_row as u64,
            released_external_id,
        }
    }
}

/// What the store found before deciding a batch.
#[derive(Debug, Default)]
pub(crate) struct Known {
    pub users: Vec<Existing>,
    pub file_keys: Vec<FileKey>,
}

/// The values of a batch that `Known` must cover: every email and every external id of its
/// users and of its failed rows.
pub(crate) fn values(batch: &UserBatch) -> (Vec<&str>, Vec<&str>) {
    let mut emails: Vec<&str> = batch.users().map(|u| u.email).collect();
    let mut ids: Vec<&str> = batch.users().filter_map(|u| u.external_id).collect();
    for probe in batch.probes() {
        emails.extend(probe.email.map(|(normalised, _)| normalised));
        ids.extend(probe.external_id);
    }
    (emails, ids)
}

/// How the import treats the rows whose user exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mode {
    pub key: ImportKey,
    pub policy: ConflictPolicy,
    /// A dry run: it sees no running import's users (two imports running side by side must
    /// not see each other's would-be users), and its own rows are all file keys.
    pub dry_run: bool,
}

/// An existing user a row updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Update {
    /// The row's user in the batch.
    pub index: usize,
}

/// A value a row takes in the file, to be stored as a file key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Claim<'a> {
    pub email: &'a str,
    pub external_id: Option<&'a str>,
    pub row_number: u64,
    pub released_external_id: Option<&'a str>,
}

/// What to do with a batch.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan<'a> {
    /// Users to insert (indexes in the batch); none for a dry run.
    pub inserts: Vec<usize>,
    /// Users to update, in file order: those whose row changes something; none for a dry
    /// run. (A row that changes nothing still counts as updated.)
    pub updates: Vec<Update>,
    /// Valid rows whose user would be inserted (a dry run) or was found (every row).
    pub would_insert: u64,
    pub skipped: u64,
    pub updated: u64,
    /// Valid rows that fail on a value held elsewhere.
    pub conflicts: u64,
    /// The batch indexes of those rows, in file order.
    pub conflicted: Vec<usize>,
    pub claims: Vec<Claim<'a>>,
    /// An update takes an external id away from its user: the updates must then be applied
    /// in file order, since a later row may take that id.
    pub releases: bool,
    /// The conflict errors, in file order (a row's email before its external id).
    pub errors: Vec<RowError>,
}

/// Who holds a value, as one row of the file sees it.
enum Held<'a> {
    /// An earlier row of this import's file, by row number.
    InFile(u64),
    /// A user of the account.
    ByUser(&'a Existing),
}

/// The values the earlier rows hold, built from `Known` and then from the batch as it is read.
struct Holders<'a> {
    file_email: HashMap<&'a str, u64>,
    file_id: HashMap<&'a str, u64>,
    /// External ids updates took away from their users, with the user's email and the row.
    released: HashMap<&'a str, (&'a str, u64)>,
    user_by_email: HashMap<&'a str, &'a Existing>,
    user_by_id: HashMap<&'a str, &'a Existing>,
}

impl<'a> Holders<'a> {
    fn new(known: &'a Known, mode: Mode) -> Self {
        let mut holders = Self {
            file_email: HashMap::new(),
            file_id: HashMap::new(),
            released: HashMap::new(),
            user_by_email: HashMap::new(),
            user_by_id: HashMap::new(),
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
                (Some(import_id), _) => errors.push(RowError::being_imported(
                    row,
                    Column::Email,
                    as_written,
                    import_id,
                )),
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
                        Some(import_id) => {
                            RowError::being_imported(row, Column::ExternalId, id, import_id)
                        }
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
pub(crate) fn decide<'a>(mode: Mode, batch: &'a UserBatch, known: &'a Known) -> Plan<'a> {
    let mut holders = Holders::new(known, mode);
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
                    plan.updates.push(Update { index });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Email, ErrorCode, FailedRow, NewUser, Role};

    const KEY: ImportKey = 9;

    fn batch(rows: &[(u64, &str, Option<&str>)]) -> UserBatch {
        let mut batch = UserBatch::with_capacity(rows.len());
        for &(row, email, external_id) in rows {
            let user = NewUser {
                email: Email::parse(email).unwrap(),
                first_name: "",
                last_name: "",
                role: Role::Member,
                role_given: false,
                job_title: "",
                external_id,
            };
            batch.push_user(row, &user);
        }
        batch
    }

    fn existing(email: &str, external_id: Option<&str>, import_key: ImportKey) -> Existing {
        Existing {
            email: email.to_owned(),
            external_id: external_id.map(str::to_owned),
            import_key,
            source_row: 2,
            running_import: None,
            updated_by: None,
            running_update: None,
            first_name: String::new(),
            last_name: String::new(),
            role: "member".to_owned(),
            job_title: String::new(),
        }
    }

    fn mode(policy: ConflictPolicy, dry_run: bool) -> Mode {
        Mode {
            key: KEY,
            policy,
            dry_run,
        }
    }

    fn codes(plan: &Plan<'_>) -> Vec<(u64, Column, ErrorCode)> {
        plan.errors
            .iter()
            .map(|e| (e.row_number, e.column.unwrap(), e.code))
            .collect()
    }

    #[test]
    fn skip_leaves_existing_users_and_counts_them() {
        let batch = batch(&[
            (2, "a@x.io", None),
            (3, "b@x.io", None),
            (4, "A@x.io", None),
        ]);
        let known = Known {
            users: vec![existing("a@x.io", Some("E1"), 1)],
            file_keys: vec![],
        };
        let plan = decide(mode(ConflictPolicy::Skip, false), &batch, &known);
        assert_eq!(plan.skipped, 1);
        assert_eq!(plan.inserts, vec![1]);
        assert_eq!(plan.conflicts, 1);
        // The second row of one address is a duplicate under every policy.
        assert_eq!(
            codes(&plan),
            vec![(4, Column::Email, ErrorCode::DuplicateInFile)]
        );
        assert_eq!(plan.claims.len(), 1);
        assert_eq!(plan.claims[0].row_number, 2);
    }

    #[test]
    fn update_refuses_an_external_id_of_another_user() {
        let batch = batch(&[
            (2, "a@x.io", Some("E1")),
            (3, "b@x.io", Some("E1")),
            (4, "c@x.io", Some("E3")),
        ]);
        let known = Known {
            users: vec![
                existing("a@x.io", Some("E1"), 1),
                existing("b@x.io", Some("E2"), 1),
                existing("c@x.io", None, 1),
            ],
            file_keys: vec![],
        };
        let plan = decide(mode(ConflictPolicy::Update, false), &batch, &known);
        assert_eq!(plan.updated, 2);
        // Row 2 gives a@x.io the id it has: counted, but nothing to write.
        assert_eq!(plan.updates, vec![Update { index: 2 }]);
        assert_eq!(
            codes(&plan),
            vec![(3, Column::ExternalId, ErrorCode::DuplicateInFile)]
        );
    }

    #[test]
    fn an_external_id_an_update_gives_up_is_free_for_later_rows() {
        let batch = batch(&[(2, "a@x.io", Some("E9")), (3, "new@x.io", Some("E1"))]);
        let known = Known {
            users: vec![existing("a@x.io", Some("E1"), 1)],
            file_keys: vec![],
        };
        for dry_run in [false, true] {
            let plan = decide(mode(ConflictPolicy::Update, dry_run), &batch, &known);
            assert_eq!(codes(&plan), vec![], "dry run {dry_run}");
            assert_eq!((plan.updated, plan.would_insert), (1, 1));
            assert_eq!(plan.claims[0].released_external_id, Some("E1"));
        }
        // Under ERROR, the same file fails twice.
        let plan = decide(mode(ConflictPolicy::Error, true), &batch, &known);
        assert_eq!(
            codes(&plan),
            vec![
                (2, Column::Email, ErrorCode::AlreadyExists),
                (3, Column::ExternalId, ErrorCode::AlreadyExists),
            ]
        );
    }

    #[test]
    fn a_dry_run_ignores_running_imports_and_reads_its_own_file_keys() {
        let batch = batch(&[(7, "a@x.io", None), (8, "b@x.io", None)]);
        let mut running = existing("a@x.io", None, 3);
        running.running_import = Some("other".into());
        let known = Known {
            users: vec![running],
            file_keys: vec![FileKey {
                email: "b@x.io".into(),
                external_id: None,
                source_row: 5,
                released_external_id: None,
            }],
        };
        let plan = decide(mode(ConflictPolicy::Error, true), &batch, &known);
        assert!(plan.inserts.is_empty());
        assert_eq!(plan.would_insert, 1);
        assert_eq!(
            codes(&plan),
            vec![(8, Column::Email, ErrorCode::DuplicateInFile)]
        );
        assert!(plan.errors[0].message.contains("row 5"));
        // A real import is told about the running one.
        let plan = decide(mode(ConflictPolicy::Skip, false), &batch, &known);
        assert_eq!(
            codes(&plan),
            vec![
                (7, Column::Email, ErrorCode::AlreadyExists),
                (8, Column::Email, ErrorCode::DuplicateInFile),
            ]
        );
        assert!(plan.errors[0].message.contains("still running"));
    }

    #[test]
    fn failed_rows_see_only_the_rows_before_them() {
        let mut batch = batch(&[(2, "a@x.io", Some("E1")), (5, "b@x.io", None)]);
        let failed = |row, email| FailedRow {
            errors: vec![RowError::invalid_role(row, "boss")],
            email: Some(Email::parse(email).unwrap()),
            external_id: None,
            cells: None,
        };
        batch.push_failed_row(failed(3, "B@x.io"));
        batch.push_failed_row(failed(6, "B@x.io"));
        let known = Known::default();
        let plan = decide(mode(ConflictPolicy::Update, false), &batch, &known);
        assert_eq!(
            codes(&plan),
            vec![(6, Column::Email, ErrorCode::DuplicateInFile)]
        );
        assert_eq!(plan.inserts, vec![0, 1]);
        assert!(plan.claims.is_empty());
    }
}
