//! `bulk-import events [--follow] [--after CURSOR] [--json]`: the account's user event feed.
//!
//! Without `--follow` it prints the events kept (after `--after`) and ends once it has caught
//! up: when no event has come for `CAUGHT_UP`, which the server's feed, which sends what it
//! has at once and asks the store again every 200 ms, never leaves between two stored events.
//! With `--follow` it goes on until interrupted. A person gets a line per event (its cursor
//! first, to give to `--after`); a script gets one JSON document per line (`--json`).

use std::time::Duration;

use futures::StreamExt;

use super::connect::client;
use super::{CliResult, Outcome, json};
use crate::config::EventsArgs;
use crate::proto;

/// How long without an event means caught up, without `--follow`.
const CAUGHT_UP: Duration = Duration::from_secs(1);

/// Prints the feed's events; see the module.
pub async fn events(args: EventsArgs) -> CliResult {
    let mut client = client(&args.target).await?;
    let mut events = client
        .watch_user_events(proto::WatchUserEventsRequest {
            account_id: args.target.account.clone(),
            after_cursor: args.after.clone().unwrap_or_default(),
        })
        .await?
        .into_inner();
    loop {
        let next = if args.follow {
            events.next().await
        } else {
            match tokio::time::timeout(CAUGHT_UP, events.next()).await {
                Ok(next) => next,
                Err(_) => break,
            }
        };
        let Some(event) = next else { break };
        let event = event?;
        let kind = proto::UserEventType::try_from(event.r#type)
            .map_or("USER_EVENT_TYPE_UNSPECIFIED", |t| t.as_str_name());
        let email = event.user.as_ref().map_or("", |u| u.email.as_str());
        if args.target.json {
            json::print(&json::user_event(&event));
        } else {
            println!(
                "{} {} {} {}",
                event.cursor,
                kind.trim_start_matches("USER_EVENT_TYPE_"),
                email,
                event.import_id
            );
        }
    }
    Ok(Outcome::Done)
}
