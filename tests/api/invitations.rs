//! Invitations: a SEND import invites the users it creates when it commits, a HOLD import
//! holds them until `SendInvitations`; resends count; `AcceptInvitation` marks them; a revert
//! keeps the users who accepted. On both backends alike.

use bulk_import::proto::{self, InvitationPolicy, InvitationState};
use tonic::Code;

use crate::helpers::*;

const FILE: &str = "email,first_name,last_name,role,job_title,external_id\n\
                    ada@example.com,Ada,,,,\n\
                    grace@example.com,Grace,,,,\n\
                    not-an-address,Bad,,,,\n";

/// The account's users (by email), with only those in `state` when given.
async fn users(app: &TestApp, state: Option<InvitationState>) -> Vec<proto::User> {
    let mut client = app.client.clone();
    client
        .list_users(proto::ListUsersRequest {
            account_id: ACCOUNT.into(),
            page_size: 1000,
            invitation_state: state.map_or(0, |s| s as i32),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .users
}

async fn send(
    app: &TestApp,
    import_id: &str,
    emails: &[&str],
    resend: bool,
) -> Result<i64, tonic::Status> {
    let mut client = app.client.clone();
    Ok(client
        .send_invitations(proto::SendInvitationsRequest {
            account_id: ACCOUNT.into(),
            import_id: import_id.into(),
            emails: emails.iter().map(|e| e.to_string()).collect(),
            resend,
        })
        .await?
        .into_inner()
        .users_invited)
}

async fn accept(app: &TestApp, email: &str) -> Result<proto::User, tonic::Status> {
    let mut client = app.client.clone();
    Ok(client
        .accept_invitation(proto::AcceptInvitationRequest {
            account_id: ACCOUNT.into(),
            email: email.into(),
        })
        .await?
        .into_inner()
        .user
        .unwrap())
}

fn states(users: &[proto::User]) -> Vec<(String, i32, i32)> {
    users
        .iter()
        .map(|u| (u.email.clone(), u.invitation_state, u.invitations_sent))
        .collect()
}

backend_tests! {
    async fn a_send_import_invites_the_users_it_creates_when_it_commits(backend) {
        let app = spawn_app(backend).await;
        let import = app.upload(ACCOUNT, "sent", FILE.as_bytes(), 16).await.unwrap();
        assert_eq!(import.invitations, InvitationPolicy::Send as i32);
        assert_eq!((import.rows_imported, import.users_invited), (2, 2));
        let sent = InvitationState::Sent as i32;
        let all = users(&app, None).await;
        assert_eq!(
            states(&all),
            [("ada@example.com".into(), sent, 1), ("grace@example.com".into(), sent, 1)]
        );
        // Invited by the commit: at its time.
        assert!(all.iter().all(|u| u.invite_time == import.complete_time));
        // Nothing HELD to send: no one is invited twice.
        assert_eq!(send(&app, "sent", &[], false).await.unwrap(), 0);

        // A dry run, SKIPped rows and an UPDATE invite no one; a failed import neither.
        let dry = app
            .upload_with(ACCOUNT, "dry", FILE.as_bytes(), 16, |m| m.validate_only = true)
            .await
            .unwrap();
        assert_eq!(dry.users_invited, 0);
        let more = "email,first_name,last_name,role,job_title,external_id\n\
                    ada@example.com,Ada,Lovelace,,,\n\
                    alan@example.com,Alan,,,,\n";
        let skip = app
            .upload_with(ACCOUNT, "skip", more.as_bytes(), 16, |m| {
                m.on_conflict = proto::ConflictPolicy::Skip as i32
            })
            .await
            .unwrap();
        assert_eq!((skip.rows_skipped, skip.users_invited), (1, 1), "alan only");
        let update = app
            .upload_with(ACCOUNT, "update", more.as_bytes(), 16, |m| {
                m.on_conflict = proto::ConflictPolicy::Update as i32
            })
            .await
            .unwrap();
        assert_eq!((update.rows_updated, update.users_invited), (2, 0));
        let all = users(&app, None).await;
        assert!(all.iter().all(|u| u.invitations_sent == 1), "{all:?}");
    }

    async fn a_hold_import_holds_its_users_until_they_are_sent_once(backend) {
        let app = spawn_app(backend).await;
        let import = app
            .upload_with(ACCOUNT, "held", FILE.as_bytes(), 16, |m| {
                m.invitations = InvitationPolicy::Hold as i32
            })
            .await
            .unwrap();
        assert_eq!(import.invitations, InvitationPolicy::Hold as i32);
        assert_eq!((import.rows_imported, import.users_invited), (2, 0));
        let held = users(&app, Some(InvitationState::Held)).await;
        assert_eq!(held.len(), 2);
        assert!(held.iter().all(|u| u.invite_time.is_none() && u.invitations_sent == 0));
        assert!(users(&app, Some(InvitationState::Sent)).await.is_empty());

        // An UPDATE of a held user leaves it held.
        let update = "email,first_name,last_name,role,job_title,external_id\n\
                      ada@example.com,Ada,Lovelace,,,\n";
        app.upload_with(ACCOUNT, "update", update.as_bytes(), 16, |m| {
            m.on_conflict = proto::ConflictPolicy::Update as i32
        })
        .await
        .unwrap();
        assert_eq!(users(&app, Some(InvitationState::Held)).await.len(), 2);

        // Accepting a held invitation is refused.
        let refused = accept(&app, "ada@example.com").await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains("HELD"), "{}", refused.message());

        // By address first (however spelled), then the rest by import; then nothing more.
        assert_eq!(send(&app, "", &["ADA@Example.com"], false).await.unwrap(), 1);
        assert_eq!(send(&app, "held", &[], false).await.unwrap(), 1);
        assert_eq!(send(&app, "held", &[], false).await.unwrap(), 0);
        let import = app.get(ACCOUNT, "held").await.unwrap();
        assert_eq!(import.users_invited, 2);
        let sent = users(&app, Some(InvitationState::Sent)).await;
        assert_eq!(sent.len(), 2);
        assert!(sent.iter().all(|u| u.invite_time.is_some() && u.invitations_sent == 1));

        // A resend counts for the user, not the import.
        assert_eq!(send(&app, "held", &[], true).await.unwrap(), 2);
        assert!(users(&app, None).await.iter().all(|u| u.invitations_sent == 2));
        assert_eq!(app.get(ACCOUNT, "held").await.unwrap().users_invited, 2);
    }

    async fn send_invitations_needs_an_import_or_addresses(backend) {
        let app = spawn_app(backend).await;
        let refused = send(&app, "", &[], false).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().contains("import_id"), "{}", refused.message());
        let refused = send(&app, "", &["not-an-address"], false).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().contains("emails[0]"), "{}", refused.message());
        let missing = send(&app, "nope", &[], false).await.unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);
        // An address nobody has invites no one.
        assert_eq!(send(&app, "", &["nobody@example.com"], false).await.unwrap(), 0);
        let missing = accept(&app, "nobody@example.com").await.unwrap_err();
        assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    }

    async fn a_revert_keeps_the_users_who_accepted(backend) {
        let app = spawn_app(backend).await;
        app.upload(ACCOUNT, "sent", FILE.as_bytes(), 16).await.unwrap();
        let accepted = accept(&app, "grace@example.com").await.unwrap();
        assert_eq!(accepted.invitation_state, InvitationState::Accepted as i32);
        assert_eq!(accepted.invitations_sent, 1);
        assert!(accepted.invite_time.is_some());
        // Twice is fine.
        accept(&app, "Grace@example.com").await.unwrap();

        let mut client = app.client.clone();
        let reverted = client
            .revert_import(proto::RevertImportRequest {
                account_id: ACCOUNT.into(),
                import_id: "sent".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reverted.users_removed, 1);
        assert!(
            reverted.message.contains("1 kept because they accepted their invitation"),
            "{}",
            reverted.message
        );
        let left = users(&app, None).await;
        assert_eq!(
            states(&left),
            [("grace@example.com".into(), InvitationState::Accepted as i32, 1)]
        );
    }

    /// Users accepting their invitations while an UPDATE import renames them: each row the
    /// import counts as updated was, and told the feed once; no acceptance is lost under it.
    /// (On PostgreSQL an update finds its user again where its lookup saw the row; a user an
    /// acceptance changed in between is looked up again, not passed over and counted.)
    async fn acceptances_meanwhile_lose_no_update_and_count_none_twice(backend) {
        const USERS: usize = 3_000;
        let app = spawn_app(backend).await;
        let emails: Vec<String> = (0..USERS).map(|i| format!("u{i}@x.io")).collect();
        let file = |name: &str| -> String {
            let rows: String = emails.iter().map(|e| format!("{e},{name},,,,\n")).collect();
            format!("{HEADER}{rows}")
        };
        let base = app.upload(ACCOUNT, "base", file("Old").as_bytes(), 1 << 16).await.unwrap();
        assert_eq!(base.rows_imported, USERS as i64);
        let mut events = crate::feed::follow(&app, ACCOUNT, "").await;
        // Small chunks: many batches, each with its own lookups, while the acceptances go in
        // file order from the first user on.
        let acceptances = async {
            for email in &emails {
                let user = accept(&app, email).await.unwrap();
                assert_eq!(user.invitation_state, InvitationState::Accepted as i32);
            }
        };
        let renamed = file("New");
        let update = app.upload_with(ACCOUNT, "rename", renamed.as_bytes(), 512, |m| {
            m.on_conflict = proto::ConflictPolicy::Update as i32
        });
        let ((), update) = tokio::time::timeout(
            std::time::Duration::from_secs(120),
            async { tokio::join!(acceptances, update) },
        )
        .await
        .expect("the import and the acceptances end");
        let update = update.unwrap();
        assert_eq!(update.status, proto::ImportStatus::CompletedSuccess as i32);
        assert_eq!((update.rows_updated, update.rows_failed), (USERS as i64, 0));
        let (all, _) = crate::features::list_users(&app, ACCOUNT, "", 1000).await;
        assert_eq!(all.len(), USERS);
        for user in &all {
            assert_eq!(user.first_name, "New", "{user:?}");
            assert_eq!(user.invitation_state, InvitationState::Accepted as i32, "{user:?}");
        }
        // INVITED by the first import, UPDATED by the second, ACCEPTED: each user once each.
        let told = crate::feed::next(&mut events, 3 * USERS).await;
        let mut kinds = std::collections::HashMap::<(i32, &str), usize>::new();
        for event in &told {
            *kinds.entry((event.r#type, event.user.as_ref().unwrap().email.as_str())).or_default() += 1;
        }
        assert_eq!(kinds.len(), 3 * USERS, "an event twice, or one missing");
    }
}
