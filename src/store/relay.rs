//! The lease of the feed's relay (`relay`), as both stores write it: which replica relays,
//! and where it stands, in one row (`user_events_relay`).
//!
//! Why a lease with an epoch rather than a lock of a connection: a lease taken in the
//! database's clock is the same thing on SQLite and PostgreSQL, written once here; a replica
//! that stalls loses it when it runs out, without a connection having to break; and the
//! epoch fences a replica that lost it: its place is stored only while the epoch is still
//! the one it took, so a late write of a replica that stalled changes nothing. The relay
//! itself stops publishing before its lease runs out by its own clock (`relay::Lease`), so
//! that two replicas do not publish at once.

use std::sync::LazyLock;

use super::StoreError;
use super::steps::{Dialect, Param, Steps};
use super::types::{LeaseStep, RelayLease};

/// The statements, built once per dialect: each compares with the database's clock, in
/// microseconds.
struct Statements {
    /// $1 holder, $2 the lease in microseconds, $3 1 when the database has one server:
    /// taken only when the last one ran out or was given up, or at once by the one server (its last holder
    /// was this server's predecessor on the file, killed without giving it up).
    take: String,
    /// $1 epoch, $2 seq, $3 row + 1 (0 for none), $4 the lease: kept, and the place moved.
    keep: String,
    /// $1 epoch: given up at once, for another replica to take.
    let_go: String,
}

impl Statements {
    fn of(dialect: Dialect) -> &'static Statements {
        static SQLITE: LazyLock<Statements> = LazyLock::new(|| Statements::new(Dialect::Sqlite));
        static POSTGRES: LazyLock<Statements> =
            LazyLock::new(|| Statements::new(Dialect::Postgres));
        dialect.pick(&SQLITE, &POSTGRES)
    }

    fn new(dialect: Dialect) -> Self {
        let now = dialect.now_micros();
        Statements {
            take: format!(
                "UPDATE user_events_relay SET holder = $1, epoch = epoch + 1, \
                 lease_until = {now} + $2 \
                 WHERE id = 1 AND (lease_until < {now} OR holder = '' OR $3 = 1)"
            ),
            keep: format!(
                "UPDATE user_events_relay SET at_seq = $2, \
                 at_row = CASE WHEN $3 > 0 THEN $3 - 1 ELSE NULL END, lease_until = {now} + $4 \
                 WHERE id = 1 AND epoch = $1"
            ),
            // No holder: any replica may take it at once. Its time is left as it was: the feed
            // keeps what a relay that ran lately has yet to publish (`events`), and one given
            // up for a restart has run until then.
            let_go: "UPDATE user_events_relay SET holder = '' WHERE id = 1 AND epoch = $1"
                .to_owned(),
        }
    }
}

const EPOCH: &str = "SELECT epoch FROM user_events_relay WHERE id = 1";
const SEQ: &str = "SELECT at_seq FROM user_events_relay WHERE id = 1";
/// The row plus one: `count` answers unsigned, and 0 stands for none.
const ROW: &str = "SELECT coalesce(at_row + 1, 0) FROM user_events_relay WHERE id = 1";

/// One step of the lease: `Some` when the replica holds it after the step (`Take`: with the
/// place the last holder stored; `Keep`: as given).
///
/// `exclusive`: this server is the only one on the database (SQLite), so a lease still
/// running was left by a server that no longer runs.
pub(crate) async fn step<S: Steps + ?Sized>(
    steps: &mut S,
    step: &LeaseStep<'_>,
    exclusive: bool,
) -> Result<Option<RelayLease>, StoreError> {
    let statements = Statements::of(steps.dialect());
    let micros = |d: std::time::Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
    match *step {
        LeaseStep::Take { holder, lease } => {
            let taken = steps
                .execute(
                    &statements.take,
                    &[
                        Param::Text(holder),
                        Param::Int(micros(lease)),
                        Param::Int(i64::from(exclusive)),
                    ],
                )
                .await?;
            if taken == 0 {
                return Ok(None);
            }
            let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            let epoch = signed(steps.count(EPOCH, &[]).await?);
            let seq = signed(steps.count(SEQ, &[]).await?);
            let row = signed(steps.count(ROW, &[]).await?);
            Ok(Some(RelayLease {
                epoch,
                seq,
                row: (row > 0).then(|| row - 1),
            }))
        }
        LeaseStep::Keep { held, lease } => {
            let row = held.row.map_or(0, |r| r + 1);
            let kept = steps
                .execute(
                    &statements.keep,
                    &[
                        Param::Int(held.epoch),
                        Param::Int(held.seq),
                        Param::Int(row),
                        Param::Int(micros(lease)),
                    ],
                )
                .await?;
            Ok((kept > 0).then_some(held))
        }
        LeaseStep::LetGo { epoch } => {
            steps
                .execute(&statements.let_go, &[Param::Int(epoch)])
                .await?;
            Ok(None)
        }
    }
}
