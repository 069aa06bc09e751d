//! A reference model of an import: the file read row by row, holding the users it imports and
//! updates. The service writes in batches, in parts at once, with its unique indexes deciding;
//! whatever it does, its row errors must be exactly this model's, and so must the users it
//! leaves. Shared by the property test (`tests/api/row_by_row.rs`) and the fuzz target
//! (`fuzz/fuzz_targets/import_model.rs`); `tests/api/backends.rs` writes its files with `csv`.
//!
//! The files have the rows that matter for uniqueness: addresses from a small pool in any case,
//! external ids from a small pool or none, and rows that fail validation (a missing or bad
//! address, an unknown role) next to valid ones; and first names from a small pool, one of them
//! empty, so that a row of an existing user often changes it, and an UPDATE keeps the stored
//! name for an empty cell.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

/// One row of a generated file without its first name, which is "Name" in a file of these
/// (see `FileRow`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub email: Email,
    /// Index into `ROLES`.
    pub role: usize,
    /// An external id from the pool, or none.
    pub external_id: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Email {
    /// Address number `n` of the pool, with the letters whose bit is set in `case` upper-cased.
    /// Odd numbers have a Greek local part, `σσ{n}`, whose sigmas are each written `Σ`, `σ`
    /// or `ς` as `case` says: one mailbox however its sigmas are cased (full case folding).
    Pool {
        n: u8,
        case: u8,
    },
    Missing,
    Invalid,
}

/// One row of a generated file with its first name, one of `FIRST_NAMES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedRow {
    pub row: Row,
    pub first_name: &'static str,
}

/// A row of a file the model reads: its cells, and its first name.
///
/// `Row` (always "Name") stays for the files of `tests/api/backends.rs`, which builds its rows
/// itself; the row-by-row test and the fuzz target give each row a name with `NamedRow`.
pub trait FileRow {
    fn cells(&self) -> &Row;
    fn first_name(&self) -> &str;
}

impl FileRow for Row {
    fn cells(&self) -> &Row {
        self
    }

    fn first_name(&self) -> &str {
        "Name"
    }
}

impl FileRow for NamedRow {
    fn cells(&self) -> &Row {
        &self.row
    }

    fn first_name(&self) -> &str {
        self.first_name
    }
}

/// The roles a row may have: the last one is not a role.
pub const ROLES: [&str; 4] = ["", "admin", "Viewer", "boss"];

/// The first names a row may have. All valid: an empty first name is stored empty for a new
/// user, and keeps the stored name under UPDATE.
pub const FIRST_NAMES: [&str; 3] = ["Ann", "Bob", ""];

/// What a row whose user exists becomes (the service's `ConflictPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Error,
    Skip,
    Update,
}

/// What an import of a file gives: its counters and every row error as
/// `(row, column, code, the row a DUPLICATE_IN_FILE names)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub rows_processed: i64,
    pub rows_imported: i64,
    pub rows_failed: i64,
    pub rows_skipped: i64,
    pub rows_updated: i64,
    pub errors: Vec<(i64, String, String, Option<i64>)>,
}

impl Row {
    fn email_text(&self) -> String {
        match &self.email {
            Email::Pool { n, case } if n % 2 == 1 => {
                let sigma = |i: usize| match (case >> i & 1, case >> (i + 4) & 1) {
                    (1, _) => 'Σ',
                    (0, 1) => 'ς',
                    _ => 'σ',
                };
                let domain = if case >> 2 & 1 == 1 {
                    "EXAMPLE.GR"
                } else {
                    "example.gr"
                };
                format!("{}{}{n}@{domain}", sigma(0), sigma(1))
            }
            Email::Pool { n, case } => {
                let base = format!("user{n}@example.com");
                base.chars()
                    .enumerate()
                    .map(|(i, c)| {
                        if case >> (i % 8) & 1 == 1 {
                            c.to_ascii_uppercase()
                        } else {
                            c
                        }
                    })
                    .collect()
            }
            Email::Missing => String::new(),
            Email::Invalid => "not-an-address".to_owned(),
        }
    }

    /// The mailbox, as the service stores it: case folded, which for this pool is ASCII lower
    /// case and every sigma written σ. None for a row without a valid address.
    pub fn email_key(&self) -> Option<String> {
        match self.email {
            Email::Pool { .. } => Some(self.email_text().to_lowercase().replace(['Σ', 'ς'], "σ")),
            Email::Missing | Email::Invalid => None,
        }
    }

    fn external_id_text(&self) -> String {
        self.external_id
            .map(|n| format!("E{n}"))
            .unwrap_or_default()
    }
}

/// The file: a header, then the rows.
pub fn csv<R: FileRow>(rows: &[R]) -> Vec<u8> {
    let mut file = String::from("email,first_name,role,external_id\n");
    for r in rows {
        let row = r.cells();
        file.push_str(&format!(
            "{},{},{},{}\n",
            row.email_text(),
            r.first_name(),
            ROLES[row.role],
            row.external_id_text()
        ));
    }
    file.into_bytes()
}

/// What the model keeps of a user: the values the files vary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub first_name: String,
    pub external_id: Option<String>,
}

/// The users of an account, by email key (the address as the service stores it).
#[derive(Debug, Default, Clone)]
pub struct Account {
    users: HashMap<String, User>,
}

impl Account {
    /// The user (by address) that holds external id `x`.
    fn holder_of(&self, x: &str) -> Option<&str> {
        self.users
            .iter()
            .find(|(_, user)| user.external_id.as_deref() == Some(x))
            .map(|(email, _)| email.as_str())
    }

    /// Every user, by email key.
    pub fn users(&self) -> BTreeMap<String, User> {
        self.users
            .iter()
            .map(|(email, user)| (email.clone(), user.clone()))
            .collect()
    }
}

/// Whether every cell of the row is empty: a blank row, which the service skips.
pub fn is_blank<R: FileRow>(r: &R) -> bool {
    let row = r.cells();
    row.email == Email::Missing
        && r.first_name().is_empty()
        && ROLES[row.role].is_empty()
        && row.external_id.is_none()
}

/// Imports `rows` into `account` row by row under the ERROR policy.
pub fn import<R: FileRow>(account: &Account, rows: &[R]) -> (Outcome, Account) {
    import_with(account, rows, Policy::Error)
}

/// Imports `rows` into `account` row by row, as the service must; returns the outcome and the
/// account afterwards (a dry run gives the same outcome and leaves the account as it was).
///
/// A row that does not fail (imported, skipped or updated) takes its address and external id
/// for the rows after it: a second row with either is DUPLICATE_IN_FILE under every policy.
/// A row whose address is a user's is ALREADY_EXISTS under ERROR, skipped under SKIP, and
/// updates that user under UPDATE, where an external id held by another user is ALREADY_EXISTS.
///
/// A row whose every cell is empty (no address, first name, role or external id) is a blank
/// row of the sheet: skipped, not even processed, though it keeps its row number.
///
/// What the rows write: a new user has the row's first name and external id; a skipped row
/// leaves its user alone; an update sets the row's non-empty cells (its first name unless
/// empty, its external id if it has one) and keeps the user's other values. An update counts
/// as one whether or not it changes anything.
pub fn import_with<R: FileRow>(
    account: &Account,
    rows: &[R],
    policy: Policy,
) -> (Outcome, Account) {
    let mut account = account.clone();
    let mut file_emails: HashMap<String, i64> = HashMap::new();
    let mut file_ids: HashMap<String, i64> = HashMap::new();
    let mut outcome = Outcome {
        rows_processed: 0,
        rows_imported: 0,
        rows_failed: 0,
        rows_skipped: 0,
        rows_updated: 0,
        errors: Vec::new(),
    };
    for (i, r) in rows.iter().enumerate() {
        let (row, first_name) = (r.cells(), r.first_name());
        let n = i as i64 + 2;
        if is_blank(r) {
            continue;
        }
        outcome.rows_processed += 1;
        let mut errors = Vec::new();
        let email = match &row.email {
            Email::Missing => {
                errors.push((n, "email".to_owned(), "REQUIRED".to_owned(), None));
                None
            }
            Email::Invalid => {
                errors.push((n, "email".to_owned(), "INVALID_EMAIL".to_owned(), None));
                None
            }
            Email::Pool { .. } => row.email_key(),
        };
        if row.role == ROLES.len() - 1 {
            errors.push((n, "role".to_owned(), "INVALID_ROLE".to_owned(), None));
        }
        let external_id = row.external_id.map(|_| row.external_id_text());
        let duplicate = |column: &str, first: i64| {
            (
                n,
                column.to_owned(),
                "DUPLICATE_IN_FILE".to_owned(),
                Some(first),
            )
        };
        let exists = |column: &str| (n, column.to_owned(), "ALREADY_EXISTS".to_owned(), None);
        // The existing user the policy applies to.
        let mut target: Option<String> = None;
        if let Some(e) = &email {
            if let Some(&first) = file_emails.get(e) {
                errors.push(duplicate("email", first));
            } else if account.users.contains_key(e) {
                match policy {
                    Policy::Error => errors.push(exists("email")),
                    Policy::Skip | Policy::Update => target = Some(e.clone()),
                }
            }
        }
        if let Some(x) = &external_id {
            if let Some(&first) = file_ids.get(x) {
                errors.push(duplicate("external_id", first));
            } else if let Some(holder) = account.holder_of(x) {
                let fine = target
                    .as_deref()
                    .is_some_and(|t| policy == Policy::Skip || t == holder);
                if !fine {
                    errors.push(exists("external_id"));
                }
            }
        }
        if !errors.is_empty() {
            outcome.rows_failed += 1;
            outcome.errors.extend(errors);
            continue;
        }
        let e = email.expect("valid");
        file_emails.insert(e.clone(), n);
        if let Some(x) = &external_id {
            file_ids.insert(x.clone(), n);
        }
        match (target, policy) {
            (None, _) => {
                outcome.rows_imported += 1;
                let user = User {
                    first_name: first_name.to_owned(),
                    external_id,
                };
                account.users.insert(e, user);
            }
            (Some(_), Policy::Skip | Policy::Error) => outcome.rows_skipped += 1,
            (Some(t), Policy::Update) => {
                outcome.rows_updated += 1;
                let user = account.users.get_mut(&t).expect("the row's user");
                if !first_name.is_empty() {
                    user.first_name = first_name.to_owned();
                }
                if external_id.is_some() {
                    user.external_id = external_id;
                }
            }
        }
    }
    (outcome, account)
}

/// The row a DUPLICATE_IN_FILE message names ("already appears in row 4 of this file").
pub fn named_row(message: &str) -> Option<i64> {
    let at = message.find("in row ")? + "in row ".len();
    message[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A case from arbitrary bytes, for the fuzzer: the first byte picks the batch size, then
/// each pair of bytes is a row.
pub fn rows_from_bytes(data: &[u8]) -> (usize, Vec<NamedRow>) {
    let batch_rows = data.first().map_or(1, |b| usize::from(b % 8) + 1);
    let rows = data
        .get(1..)
        .unwrap_or_default()
        .chunks_exact(2)
        .take(200)
        .map(|pair| {
            let (a, b) = (pair[0], pair[1]);
            let email = match a % 16 {
                0 => Email::Missing,
                1 => Email::Invalid,
                n => Email::Pool { n: n % 6, case: b },
            };
            NamedRow {
                row: Row {
                    email,
                    role: usize::from(a >> 4) % ROLES.len(),
                    external_id: (b % 3 != 0).then_some(b % 5),
                },
                first_name: FIRST_NAMES[usize::from(a >> 6) % FIRST_NAMES.len()],
            }
        })
        .collect();
    (batch_rows, rows)
}
