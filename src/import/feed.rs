//! The user event feed (`WatchUserEvents`): the stored events after a cursor, then the new ones
//! as they commit, fed by a task through a small bounded channel, which stops when the
//! follower goes away.
//!
//! A SEND import's commit is one stored row (`FeedRow::InvitedAtCommit`) read here as one
//! INVITED event per user it created, in file order; a cursor can stand within those
//! (`Cursor::row`), so that a follower that leaves half way goes on from the next user.
//!
//! Memory stays flat however many events are replayed: `PAGE` rows (or users) are read at a
//! time, and a follower that does not read leaves the task waiting on the channel (its
//! `CHANNEL` slots full), reading nothing more. Once caught up the task asks again every
//! `POLL`: the events of a commit on any replica reach every follower within that. A follower
//! holds one of `--max-watchers` places (and of its account's) while it follows.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{ImportError, Importer};
use crate::domain::{AccountId, Caller, InvitationState, UserEventKind};
use crate::store::{FeedRow, LeaseStep, RelayLease, Store, StoredEvent, StoredUser};

/// Rows, or users of a commit, read from the store at a time.
const PAGE: u32 = 500;
/// Events queued for a follower: the bound on what a slow follower costs.
const CHANNEL: usize = 64;
/// How often a follower that has caught up asks for new events.
const POLL: Duration = Duration::from_millis(200);

/// Where a follower stands: after the feed's row `seq`, or, within a commit's invitations,
/// after the user of file row `row`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The row of the feed.
    pub seq: i64,
    /// Within a commit's invitations, the file row of the last user told.
    pub row: Option<i64>,
}

/// A cursor as a follower gives it back: the feed it is of, and the place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    /// The feed's name (`FeedState::feed`): each database's own.
    pub feed: String,
    /// The place.
    pub cursor: Cursor,
}

/// An event as a follower gets it, with the cursor that stands just after it.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEvent {
    /// The feed's name, for the cursor and the event's id.
    pub feed: Arc<str>,
    /// Give it back to go on after this event.
    pub cursor: Cursor,
    /// The event.
    pub event: StoredEvent,
}

/// The follower's end of the channel, and who it may see.
struct Follower {
    tx: mpsc::Sender<Result<FeedEvent, ImportError>>,
    caller: Caller,
    /// The account followed; `None` for every account `caller` may act in.
    account: Option<AccountId>,
    /// The feed's name.
    feed: Arc<str>,
}

impl Follower {
    /// Sends `event` if the follower may see it; `false` once the follower has gone.
    async fn send(&self, event: FeedEvent) -> bool {
        let allowed = self.account.is_some()
            || AccountId::parse(&event.event.account_id)
                .is_ok_and(|account| self.caller.may_act_in(&account));
        !allowed || self.tx.send(Ok(event)).await.is_ok()
    }
}

impl Importer {
    /// The feed after `after` (the default cursor for every event kept): `account`'s events,
    /// or with none, those of every account `caller` may act in.
    ///
    /// `FailedPrecondition` for a cursor from before the feed's horizon: the events after it
    /// were removed (`--event-retention`), and going on would skip them silently.
    pub async fn user_events(
        &self,
        caller: Caller,
        account: Option<AccountId>,
        after: Option<After>,
    ) -> Result<ReceiverStream<Result<FeedEvent, ImportError>>, ImportError> {
        let store = self.store()?;
        let state = store.feed_state().await?;
        let start_again = "list the users (ListUsers) to know where they stand, then follow \
                           again without a cursor";
        let after = match after {
            None => Cursor::default(),
            Some(After { feed, .. }) if feed != state.feed => {
                return Err(ImportError::FailedPrecondition(format!(
                    "this cursor is of another feed (another database, or one restored from a \
                     backup): {start_again}"
                )));
            }
            Some(After { cursor, .. }) if cursor.seq > state.last => {
                return Err(ImportError::FailedPrecondition(format!(
                    "this cursor is ahead of the feed, which has no such event (a database \
                     restored from an older backup?): {start_again}"
                )));
            }
            Some(After { cursor, .. })
                if cursor.seq < state.horizon
                    || (cursor.row.is_some() && cursor.seq <= state.horizon) =>
            {
                return Err(ImportError::FailedPrecondition(format!(
                    "the feed no longer keeps the events after this cursor (they are kept for \
                     --event-retention): {start_again}"
                )));
            }
            Some(After { cursor, .. }) => cursor,
        };
        // A follower holds a watcher's place, as a `WatchImport` stream does, until it ends.
        let place = self
            .inner
            .watchers
            .admit_key(account.as_ref().map_or("*", AccountId::as_str))?;
        Ok(spawn_follower(
            store, state.feed, caller, account, after, place,
        ))
    }

    /// A step of the relay's lease (`relay`): `Some` while this replica holds it.
    pub async fn relay_lease(
        &self,
        step: LeaseStep<'_>,
    ) -> Result<Option<RelayLease>, ImportError> {
        Ok(self.store()?.relay_lease(step).await?)
    }

    /// When the oldest event after `at` was written (`None` when there is none): how far
    /// behind a relay that stands at `at` is, whether it has read that event or not.
    pub async fn relay_waiting_since(
        &self,
        at: Cursor,
    ) -> Result<Option<std::time::SystemTime>, ImportError> {
        // Within a commit's invitations, that commit's row is still partly ahead.
        let after = if at.row.is_some() { at.seq - 1 } else { at.seq };
        let rows = self.store()?.user_events(None, after, 1).await?;
        Ok(rows.first().map(|row| match row {
            FeedRow::Event(event) => event.event_time,
            FeedRow::InvitedAtCommit { event_time, .. } => *event_time,
        }))
    }

    /// The whole feed, every account's, from `at` on, for the relay (`relay`), which holds no
    /// watcher's place. A place the feed no longer keeps (the relay was away for longer than
    /// `--event-retention`), or one ahead of it (a database restored from a backup), is
    /// logged and replaced by the oldest event kept: published again rather than skipped.
    pub async fn relay_feed(
        &self,
        at: Cursor,
    ) -> Result<ReceiverStream<Result<FeedEvent, ImportError>>, ImportError> {
        let store = self.store()?;
        let state = store.feed_state().await?;
        let kept = at.seq > state.horizon || (at.seq == state.horizon && at.row.is_none());
        let at = if kept && at.seq <= state.last {
            at
        } else {
            tracing::error!(
                relayed_up_to = at.seq,
                horizon = state.horizon,
                last = state.last,
                "the relay's place is not in the feed (events removed before they were relayed, \
                 or a database restored from a backup): relaying from the oldest event kept"
            );
            Cursor {
                seq: state.horizon,
                row: None,
            }
        };
        Ok(spawn_follower(
            store,
            state.feed,
            Caller::open(),
            None,
            at,
            (),
        ))
    }
}

/// The task that feeds a follower from `after` on, holding `place` until it ends.
fn spawn_follower<P: Send + 'static>(
    store: Arc<dyn Store>,
    feed: String,
    caller: Caller,
    account: Option<AccountId>,
    after: Cursor,
    place: P,
) -> ReceiverStream<Result<FeedEvent, ImportError>> {
    let feed: Arc<str> = Arc::from(feed);
    let (tx, rx) = mpsc::channel(CHANNEL);
    tokio::spawn(async move {
        let _place = place;
        let follower = Follower {
            tx,
            caller,
            account,
            feed,
        };
        if let Err(e) = follow(&store, &follower, after).await {
            let _ = follower.tx.send(Err(e)).await;
        }
    });
    ReceiverStream::new(rx)
}

/// The follower's task: from `at` on, until the follower goes (`Ok`) or the store fails.
async fn follow(
    store: &Arc<dyn Store>,
    follower: &Follower,
    mut at: Cursor,
) -> Result<(), ImportError> {
    let account = follower.account.as_ref();
    // A follower that left within a commit's invitations goes on from the next user.
    if let Some(row) = at.row {
        let rows = store.user_events(account, at.seq - 1, 1).await?;
        if let Some(FeedRow::InvitedAtCommit { seq, .. }) = rows.first()
            && *seq == at.seq
            && !invited(store, follower, &rows[0], row).await?
        {
            return Ok(());
        }
    }
    loop {
        let page = store.user_events(account, at.seq, PAGE).await?;
        let caught_up = page.len() < PAGE as usize;
        for row in &page {
            let gone = match row {
                FeedRow::Event(event) => {
                    at.seq = event.seq;
                    let cursor = Cursor {
                        seq: event.seq,
                        row: None,
                    };
                    !follower
                        .send(FeedEvent {
                            feed: follower.feed.clone(),
                            cursor,
                            event: event.clone(),
                        })
                        .await
                }
                FeedRow::InvitedAtCommit { seq, .. } => {
                    at.seq = *seq;
                    !invited(store, follower, row, 0).await?
                }
            };
            if gone {
                return Ok(());
            }
        }
        if caught_up {
            tokio::select! {
                _ = follower.tx.closed() => return Ok(()),
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

/// The INVITED events of a commit's row, from file row `after_row` on; `false` once the
/// follower has gone.
async fn invited(
    store: &Arc<dyn Store>,
    follower: &Follower,
    row: &FeedRow,
    mut after_row: i64,
) -> Result<bool, ImportError> {
    let FeedRow::InvitedAtCommit {
        seq,
        import_key,
        account_id,
        import_id,
        event_time,
    } = row
    else {
        return Ok(true);
    };
    loop {
        let users = store
            .invited_at_commit(*import_key, after_row, PAGE)
            .await?;
        let last = users.len() < PAGE as usize;
        for (file_row, user) in users {
            after_row = file_row;
            let event = StoredEvent {
                seq: *seq,
                account_id: account_id.clone(),
                import_id: import_id.clone(),
                kind: UserEventKind::Invited,
                // As the commit left it: invited, once, then.
                user: StoredUser {
                    email: user.email,
                    first_name: user.first_name,
                    last_name: user.last_name,
                    role: user.role,
                    job_title: user.job_title,
                    external_id: user.external_id,
                    import_id: import_id.clone(),
                    create_time: user.create_time,
                    update_time: user.update_time,
                    invitation_state: InvitationState::Sent,
                    invite_time: Some(*event_time),
                    invitations_sent: 1,
                },
                event_time: *event_time,
            };
            let cursor = Cursor {
                seq: *seq,
                row: Some(file_row),
            };
            let feed = follower.feed.clone();
            if !follower
                .send(FeedEvent {
                    feed,
                    cursor,
                    event,
                })
                .await
            {
                return Ok(false);
            }
        }
        if last {
            return Ok(true);
        }
    }
}
