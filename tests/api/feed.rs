//! The user event feed (`WatchUserEvents`): every committed change to a user, once, in order,
//! from a follower that may leave and come back with its last cursor; nothing for changes
//! that did not commit (dry runs, HELD users until they are sent). On both backends alike.

use std::time::Duration;

use bulk_import::proto::{self, InvitationPolicy, UserEventType};
use futures::StreamExt;

use crate::helpers::*;

const FILE: &str = "email,first_name,last_name,role,job_title,external_id\n\
                    ada@example.com,Ada,,,,\n\
                    grace@example.com,Grace,,,,\n\
                    not-an-address,Bad,,,,\n";

/// The account's feed after the cursor `after` (from its start when empty).
pub(crate) async fn follow(
    app: &TestApp,
    account: &str,
    after: &str,
) -> tonic::Streaming<proto::UserEvent> {
    let mut client = app.client.clone();
    client
        .watch_user_events(proto::WatchUserEventsRequest {
            account_id: account.into(),
            after_cursor: after.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The next `n` events, each within 10 s.
pub(crate) async fn next(
    stream: &mut tonic::Streaming<proto::UserEvent>,
    n: usize,
) -> Vec<proto::UserEvent> {
    let mut events = Vec::new();
    for _ in 0..n {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event in time")
            .expect("the feed goes on")
            .unwrap();
        events.push(event);
    }
    events
}

/// No event within a short while.
async fn nothing_more(stream: &mut tonic::Streaming<proto::UserEvent>) {
    let more = tokio::time::timeout(Duration::from_millis(600), stream.next()).await;
    assert!(more.is_err(), "an event no change made: {more:?}");
}

fn told(events: &[proto::UserEvent]) -> Vec<(UserEventType, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                UserEventType::try_from(e.r#type).unwrap(),
                e.user.as_ref().unwrap().email.clone(),
                e.import_id.clone(),
            )
        })
        .collect()
}

fn told_as(kind: UserEventType, email: &str, import: &str) -> (UserEventType, String, String) {
    (kind, email.to_owned(), import.to_owned())
}

backend_tests! {
    async fn every_committed_change_is_told_once_in_order(backend) {
        let app = spawn_app(backend).await;
        let mut feed = follow(&app, ACCOUNT, "").await;
        use UserEventType::*;

        // A SEND import: INVITED for each user it created, after its commit.
        app.upload(ACCOUNT, "sent", FILE.as_bytes(), 16).await.unwrap();
        let first = next(&mut feed, 2).await;
        assert_eq!(
            told(&first),
            [told_as(Invited, "ada@example.com", "sent"), told_as(Invited, "grace@example.com", "sent")]
        );
        assert!(first.iter().all(|e| e.account_id == ACCOUNT && e.event_time.is_some()));

        // A dry run and a HOLD import tell nothing yet.
        app.upload_with(ACCOUNT, "dry", FILE.as_bytes(), 16, |m| m.validate_only = true)
            .await
            .unwrap();
        let held = "email,first_name,last_name,role,job_title,external_id\n\
                    alan@example.com,Alan,,,,\nedsger@example.com,Edsger,,,,\n";
        app.upload_with(ACCOUNT, "held", held.as_bytes(), 16, |m| {
            m.invitations = InvitationPolicy::Hold as i32
        })
        .await
        .unwrap();
        nothing_more(&mut feed).await;

        // Sent later, then one again.
        let mut client = app.client.clone();
        client
            .send_invitations(proto::SendInvitationsRequest {
                account_id: ACCOUNT.into(),
                import_id: "held".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        client
            .send_invitations(proto::SendInvitationsRequest {
                account_id: ACCOUNT.into(),
                emails: vec!["alan@example.com".into()],
                resend: true,
                ..Default::default()
            })
            .await
            .unwrap();
        // An UPDATE import that changes Ada, an acceptance, then a revert of the held import
        // (a revert of the first would keep Ada, updated since, and Grace, who accepted).
        let update = "email,first_name,last_name,role,job_title,external_id\n\
                      ada@example.com,Ada,Lovelace,,,\n";
        app.upload_with(ACCOUNT, "update", update.as_bytes(), 16, |m| {
            m.on_conflict = proto::ConflictPolicy::Update as i32
        })
        .await
        .unwrap();
        // Accepted twice: one change, told once.
        for _ in 0..2 {
            client
                .accept_invitation(proto::AcceptInvitationRequest {
                    account_id: ACCOUNT.into(),
                    email: "grace@example.com".into(),
                })
                .await
                .unwrap();
        }
        client
            .revert_import(proto::RevertImportRequest {
                account_id: ACCOUNT.into(),
                import_id: "held".into(),
            })
            .await
            .unwrap();
        let rest = next(&mut feed, 7).await;
        assert_eq!(
            told(&rest),
            [
                told_as(Invited, "alan@example.com", "held"),
                told_as(Invited, "edsger@example.com", "held"),
                told_as(InvitationResent, "alan@example.com", "held"),
                told_as(Updated, "ada@example.com", "update"),
                told_as(InvitationAccepted, "grace@example.com", "sent"),
                told_as(Removed, "alan@example.com", "held"),
                told_as(Removed, "edsger@example.com", "held"),
            ]
        );
        nothing_more(&mut feed).await;
        // The user as each change left it.
        assert_eq!(rest[2].user.as_ref().unwrap().invitations_sent, 2);
        assert_eq!(rest[3].user.as_ref().unwrap().last_name, "Lovelace");

        // Cursors and ids: in order, each once.
        let all: Vec<_> = first.iter().chain(&rest).collect();
        let ids: std::collections::HashSet<_> = all.iter().map(|e| &e.event_id).collect();
        assert_eq!(ids.len(), all.len());

        // A follower that comes back with a cursor goes on just after it.
        let mut again = follow(&app, ACCOUNT, &all[3].cursor).await;
        let resumed = next(&mut again, all.len() - 4).await;
        assert_eq!(
            resumed.iter().map(|e| &e.event_id).collect::<Vec<_>>(),
            all[4..].iter().map(|e| &e.event_id).collect::<Vec<_>>()
        );
        nothing_more(&mut again).await;

        // Within a commit's invitations too: from Ada's, the next is Grace's.
        let mut mid = follow(&app, ACCOUNT, &all[0].cursor).await;
        assert_eq!(next(&mut mid, 1).await[0].event_id, all[1].event_id);

        // Another account's feed is its own; an empty account follows every account (the
        // server runs open).
        let mut other = follow(&app, "other-account", "").await;
        nothing_more(&mut other).await;
        let mut everyone = follow(&app, "", "").await;
        assert_eq!(next(&mut everyone, all.len()).await.len(), all.len());
    }

    async fn a_replay_tells_the_invitations_of_users_removed_since(backend) {
        let app = spawn_app(backend).await;
        app.upload(ACCOUNT, "sent", FILE.as_bytes(), 16).await.unwrap();
        let mut client = app.client.clone();
        client
            .revert_import(proto::RevertImportRequest {
                account_id: ACCOUNT.into(),
                import_id: "sent".into(),
            })
            .await
            .unwrap();
        let mut feed = follow(&app, ACCOUNT, "").await;
        let events = next(&mut feed, 4).await;
        use UserEventType::*;
        assert_eq!(
            told(&events),
            [
                told_as(Invited, "ada@example.com", "sent"),
                told_as(Invited, "grace@example.com", "sent"),
                told_as(Removed, "ada@example.com", "sent"),
                told_as(Removed, "grace@example.com", "sent"),
            ]
        );
        nothing_more(&mut feed).await;
        // The invitation as the commit left it.
        let invited = events[0].user.as_ref().unwrap();
        assert_eq!(invited.invitation_state, proto::InvitationState::Sent as i32);
        assert_eq!(invited.invitations_sent, 1);
    }

    async fn events_past_their_retention_go_and_older_cursors_are_refused(backend) {
        let database = TestDatabase::new(backend).await;
        let mut maker = spawn_on(&database.url, |args| {
            args.event_retention = bulk_import::config::duration::KeepFor(None)
        })
        .await;
        maker.upload(ACCOUNT, "old", FILE.as_bytes(), 16).await.unwrap();
        let mut feed = follow(&maker, ACCOUNT, "").await;
        let first = next(&mut feed, 2).await;
        drop(feed);
        maker.stop().await;

        let app = spawn_on(&database.url, |args| {
            args.event_retention =
                bulk_import::config::duration::KeepFor(Some(Duration::from_millis(1)));
            args.retention_interval = Duration::from_millis(50);
        })
        .await;
        let start = std::time::Instant::now();
        let refused = loop {
            let mut client = app.client.clone();
            let answer = client
                .watch_user_events(proto::WatchUserEventsRequest {
                    account_id: ACCOUNT.into(),
                    after_cursor: first[0].cursor.clone(),
                })
                .await;
            if let Err(status) = answer {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the old events were never removed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains("--event-retention"), "{}", refused.message());
        // From the start: what is kept, which is nothing now.
        let mut fresh = follow(&app, ACCOUNT, "").await;
        nothing_more(&mut fresh).await;
    }

    async fn held_users_enter_the_feed_with_their_invitation(backend) {
        let app = spawn_app(backend).await;
        app.upload_with(ACCOUNT, "held", FILE.as_bytes(), 16, |m| {
            m.invitations = InvitationPolicy::Hold as i32
        })
        .await
        .unwrap();
        // Updated, then removed, while HELD: a follower never heard of them, so nothing.
        let update = "email,first_name,last_name,role,job_title,external_id\n\
                      ada@example.com,Ada,Lovelace,,,\n";
        app.upload_with(ACCOUNT, "update", update.as_bytes(), 16, |m| {
            m.on_conflict = proto::ConflictPolicy::Update as i32
        })
        .await
        .unwrap();
        let mut feed = follow(&app, ACCOUNT, "").await;
        nothing_more(&mut feed).await;
        let mut client = app.client.clone();
        client
            .send_invitations(proto::SendInvitationsRequest {
                account_id: ACCOUNT.into(),
                emails: vec!["ada@example.com".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        let invited = next(&mut feed, 1).await;
        assert_eq!(
            told(&invited),
            [told_as(UserEventType::Invited, "ada@example.com", "held")]
        );
        // With its values as they are by then.
        assert_eq!(invited[0].user.as_ref().unwrap().last_name, "Lovelace");
        client
            .revert_import(proto::RevertImportRequest {
                account_id: ACCOUNT.into(),
                import_id: "held".into(),
            })
            .await
            .unwrap();
        // Grace, still HELD, goes without a word (Ada, updated since, is kept).
        let users = app.users_of(ACCOUNT, "held").await;
        assert_eq!(users, 1);
        nothing_more(&mut feed).await;
    }

    async fn cursors_of_another_feed_or_from_ahead_are_refused(backend) {
        let app = spawn_app(backend).await;
        app.upload(ACCOUNT, "sent", FILE.as_bytes(), 16).await.unwrap();
        let mut feed = follow(&app, ACCOUNT, "").await;
        let events = next(&mut feed, 2).await;
        let cursor = &events[1].cursor;
        let (name, rest) = cursor.strip_prefix("1.").unwrap().split_once('.').unwrap();
        let mut client = app.client.clone();
        for (bad, why) in [
            (format!("1.{name}.999999"), "ahead of the feed"),
            (format!("1.other{name}.{rest}"), "another feed"),
        ] {
            let refused = client
                .watch_user_events(proto::WatchUserEventsRequest {
                    account_id: ACCOUNT.into(),
                    after_cursor: bad.clone(),
                })
                .await
                .unwrap_err();
            assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{bad}: {refused:?}");
            assert!(refused.message().contains(why), "{bad}: {}", refused.message());
        }
        for malformed in ["1.", "1.x", "1.x.+3", "1.x.03", "1.x.1.1.1", "2.x.1"] {
            let refused = client
                .watch_user_events(proto::WatchUserEventsRequest {
                    account_id: ACCOUNT.into(),
                    after_cursor: malformed.into(),
                })
                .await
                .unwrap_err();
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{malformed}");
        }
        // Its own last cursor is fine, and nothing comes after it yet.
        let mut after = follow(&app, ACCOUNT, cursor).await;
        nothing_more(&mut after).await;
    }

    async fn a_bad_cursor_is_invalid_argument(backend) {
        let app = spawn_app(backend).await;
        let mut client = app.client.clone();
        let refused = client
            .watch_user_events(proto::WatchUserEventsRequest {
                account_id: ACCOUNT.into(),
                after_cursor: "yesterday".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains("after_cursor"), "{}", refused.message());
    }
}

/// Two replicas commit imports at the same moments while a follower reads, leaving at odd
/// points and coming back with its last cursor: it sees every event exactly once, in the order
/// of their cursors, with none missing of those the database holds in the end (a later `seq`
/// never commits before an earlier one is visible).
///
/// To make the race certain, a trigger holds each of replica `a`'s event-writing transactions
/// for 200 ms after its events drew their `seq`: without the feed's turn, `b`'s later events
/// committed meanwhile and a follower that read them went past `a`'s for good (this test
/// failed so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "TEST_DATABASE_URL is not set (.ci/run sets it)"
)]
async fn a_follower_misses_nothing_while_two_replicas_commit_at_once() {
    const IMPORTS: usize = 8;
    const USERS: usize = 6;
    let database = TestDatabase::new(Backend::Postgres).await;
    let (a, b) = tokio::join!(
        spawn_on(&database.url, |_| {}),
        spawn_on(&database.url, |_| {})
    );
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    for statement in [
        "CREATE FUNCTION slow_events() RETURNS trigger AS $$ BEGIN \
         IF EXISTS (SELECT 1 FROM new_rows WHERE import_id LIKE 'a-%') THEN \
         PERFORM pg_sleep(0.2); END IF; RETURN NULL; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER slow_events AFTER INSERT ON user_events \
         REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION slow_events()",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let expected = 2 * IMPORTS * USERS;

    let follower = {
        let client = a.client.clone();
        tokio::spawn(async move {
            let mut seen: Vec<proto::UserEvent> = Vec::new();
            let mut leave_after = 3usize;
            while seen.len() < expected {
                let mut client = client.clone();
                let after = seen.last().map(|e| e.cursor.clone()).unwrap_or_default();
                let mut stream = client
                    .watch_user_events(proto::WatchUserEventsRequest {
                        account_id: ACCOUNT.into(),
                        after_cursor: after,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                // Leave after a varying number of events, as a follower that restarts does.
                leave_after = (leave_after * 7 + 5) % 11 + 1;
                for _ in 0..leave_after {
                    match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
                        Ok(Some(Ok(event))) => seen.push(event),
                        other => panic!("the feed stopped: {other:?}"),
                    }
                    if seen.len() == expected {
                        break;
                    }
                }
            }
            seen
        })
    };

    let upload = |app: &TestApp, replica: &'static str| {
        let app = app.client.clone();
        async move {
            let mut uploads = Vec::new();
            for i in 0..IMPORTS {
                let mut file =
                    String::from("email,first_name,last_name,role,job_title,external_id\n");
                for u in 0..USERS {
                    file.push_str(&format!("{replica}-{i}-{u}@example.com,U,,,,\n"));
                }
                let messages = upload_messages(
                    ACCOUNT,
                    &format!("{replica}-{i}"),
                    "users.csv",
                    file.as_bytes(),
                    64,
                    finish(),
                );
                let mut client = app.clone();
                uploads.push(tokio::spawn(async move {
                    client
                        .upload_import(tokio_stream::iter(messages))
                        .await
                        .unwrap()
                }));
            }
            for upload in uploads {
                upload.await.unwrap();
            }
        }
    };
    tokio::join!(upload(&a, "a"), upload(&b, "b"));
    let seen = tokio::time::timeout(Duration::from_secs(60), follower)
        .await
        .expect("the follower saw every event")
        .unwrap();

    let stored: Vec<i64> = sqlx::query_scalar("SELECT seq FROM user_events ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    // Each import's commit is one stored row, told as an event per user: `1.SEQ.ROW`.
    let places: Vec<(i64, i64)> = seen
        .iter()
        .map(|e| {
            let mut parts = e.cursor.strip_prefix("1.").unwrap().split('.').skip(1);
            let seq = parts.next().unwrap().parse().unwrap();
            let row = parts.next().map_or(0, |row| row.parse().unwrap());
            (seq, row)
        })
        .collect();
    assert!(
        places.windows(2).all(|pair| pair[0] < pair[1]),
        "in the order of their cursors, each once: {places:?}"
    );
    let mut seqs: Vec<i64> = places.iter().map(|(seq, _)| *seq).collect();
    seqs.dedup();
    assert_eq!(seqs, stored, "every stored commit, none missing");
    let ids: std::collections::HashSet<_> = seen.iter().map(|e| &e.event_id).collect();
    assert_eq!(ids.len(), expected);
    assert!(
        seen.iter()
            .all(|e| e.r#type == UserEventType::Invited as i32)
    );
}
