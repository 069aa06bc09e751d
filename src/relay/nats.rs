//! The NATS side of the relay: the connection, the stream, and a batch of events published
//! with their acknowledgements awaited.
//!
//! Each event is one message on `bulk_import.events.{account}.{type}`, its payload the event
//! as JSON (the shape `bulk-import events --json` prints), with the header `Nats-Msg-Id` set to
//! its `event_id`: JetStream drops a message whose id it stored within the stream's duplicate
//! window, so a publish repeated after a lost acknowledgement, or by a replica that took over,
//! is stored once.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use async_nats::{ConnectOptions, HeaderMap};
use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::domain::UserEventKind;
use crate::import::feed::FeedEvent;

/// The stream the events go to: created, if missing, with `SUBJECTS`.
pub const STREAM: &str = "BULK_IMPORT_EVENTS";
/// Every subject the relay publishes on.
pub const SUBJECTS: &str = "bulk_import.events.>";
/// How long JetStream remembers a message id: publishes repeated within it are dropped.
/// JetStream's default; the relay repeats a publish within seconds.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a publish waits for its acknowledgement before it is taken for lost and repeated.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// What an account id keeps in a subject: letters, digits, `-` and `_`; every other byte is
/// `%XX`, so that `.`, `*`, `>` and spaces (which NATS reads as separators and wildcards) and
/// `%` itself cannot make two accounts share a subject.
const SUBJECT_TOKEN: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_');

/// `--events-nats-url` as NATS reads it (`nats://`, `tls://`, `ws://`, with `user:password@`
/// when the server wants it; a bare `host:port` is `nats://`): checked when the flags are
/// read, so that a mistake stops the server at start rather than the relay later.
pub fn check_url(url: &str) -> Result<String, String> {
    url.parse::<async_nats::ServerAddr>()
        .map(|_| url.to_owned())
        .map_err(|e| format!("{e} (for example nats://127.0.0.1:4222)"))
}

/// Options carrying the credentials of `url`, which the client does not take from the URL by
/// itself: `user:password@`, or a token as `token@`.
pub fn connect_options(url: &str) -> Result<ConnectOptions, String> {
    let address: async_nats::ServerAddr = url.parse().map_err(|e| format!("{e}"))?;
    Ok(match (address.username(), address.password()) {
        (Some(user), Some(password)) => {
            ConnectOptions::with_user_and_password(user.to_owned(), password.to_owned())
        }
        (Some(token), None) => ConnectOptions::with_token(token.to_owned()),
        _ => ConnectOptions::new(),
    })
}

/// The relay's connection to NATS and its JetStream context.
pub struct Publisher {
    jetstream: jetstream::Context,
    /// The stream's `max_age`: the feed's own retention, so that NATS keeps no longer.
    max_age: Option<Duration>,
}

/// What a batch's acknowledgements said.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Events JetStream stored now.
    pub stored: u64,
    /// Events it had already (by `Nats-Msg-Id`).
    pub duplicates: u64,
}

impl Published {
    fn count(&mut self, duplicate: bool) {
        if duplicate {
            self.duplicates += 1;
        } else {
            self.stored += 1;
        }
    }
}

/// A batch that was cut short: the events before `acknowledged` are published, the rest are
/// not (or not known to be).
#[derive(Debug)]
pub struct Broken {
    /// How many of the batch's first events were acknowledged.
    pub acknowledged: usize,
    /// What they said.
    pub published: Published,
    /// Why the rest were not, for the log.
    pub error: String,
    /// NATS will never take the event at `acknowledged`: larger than its `max_payload`.
    pub too_large: bool,
}

impl Publisher {
    /// A client of the NATS server at `url`; the connection is made, and made again whenever
    /// it drops, in the background, so that a NATS that is not there yet does not stop the
    /// server. `Err` only for a URL that can never work.
    pub async fn connect(url: &str, max_age: Option<Duration>) -> Result<Self, String> {
        let client = connect_options(url)?
            .name("bulk-import relay")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .event_callback(|event| async move {
                // A NATS that is away is tried again every few seconds: each failed try is
                // only worth a debug line; the relay warns of what it could not publish.
                match event {
                    async_nats::Event::Connected => tracing::info!("connected to NATS"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("disconnected from NATS; connecting again");
                    }
                    event => tracing::debug!(%event, "NATS connection"),
                }
            })
            .connect(url)
            .await
            .map_err(|e| format!("--events-nats-url {url}: {e}"))?;
        let mut jetstream = jetstream::new(client);
        jetstream.set_timeout(ACK_TIMEOUT);
        Ok(Self { jetstream, max_age })
    }

    /// Makes sure the stream exists, creating it when missing. A stream an operator made
    /// beforehand is left as it is, but must take `SUBJECTS`.
    pub async fn ensure_stream(&self) -> Result<Kept, String> {
        let config = stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![SUBJECTS.to_owned()],
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            // JetStream takes no duplicate window longer than the age it keeps messages.
            max_age: self
                .max_age
                .map_or(Duration::ZERO, |age| age.max(DUPLICATE_WINDOW)),
            description: Some(
                "bulk-import's user events (WatchUserEvents), published by its relay".to_owned(),
            ),
            ..Default::default()
        };
        let mut stream = self
            .jetstream
            .get_or_create_stream(config)
            .await
            .map_err(|e| format!("stream {STREAM}: {e}"))?;
        let info = stream
            .info()
            .await
            .map_err(|e| format!("stream {STREAM}: {e}"))?;
        let takes = info.config.subjects.iter().any(|s| takes_every_subject(s));
        if !takes {
            return Err(format!(
                "stream {STREAM} exists without the subjects {SUBJECTS} (it has {:?}): add them \
                 to it, or delete it for the relay to create it",
                info.config.subjects
            ));
        }
        Ok(Kept {
            messages: info.state.messages,
        })
    }

    /// Publishes `events` in order: `Err` with how many of the first were acknowledged.
    ///
    /// The first alone, acknowledged before anything else is sent; then the rest at once,
    /// each with `Nats-Expected-Last-Msg-Id` naming the event before it, so that JetStream
    /// stores one only right after its predecessor. Without that chain, a message lost with a
    /// connection that NATS closed could be published again after a later one that the client
    /// still held and delivered on reconnecting (seen in `relay::nats_killed_mid_stream_...`),
    /// and a consumer would read, say, a REMOVED before the INVITED it undoes. With it, a
    /// message whose predecessor is missing is refused, and so is every one after it; the
    /// relay publishes again from the first refused. The first goes without the header: after
    /// a restart NATS knows the last id only within its duplicate window, and nothing of the
    /// relay's is in flight then to overtake it.
    ///
    /// An event that `max_payload` takes only without that header (its 47 bytes) starts a
    /// chain of its own, once what went before is acknowledged: an event is refused only for
    /// what it is, never for where it fell in a batch.
    pub async fn publish(&self, events: &[FeedEvent]) -> Result<Published, Broken> {
        let mut published = Published::default();
        let mut done = 0;
        while done < events.len() {
            match self.publish_chain(&events[done..], &mut published).await {
                Ok(sent) => done += sent,
                Err((error, too_large)) => {
                    return Err(Broken {
                        acknowledged: usize::try_from(published.stored + published.duplicates)
                            .unwrap_or(usize::MAX),
                        published,
                        error,
                        too_large,
                    });
                }
            }
        }
        Ok(published)
    }

    /// Publishes the first of `events` alone, then as many of the rest as fit chained to it
    /// (see [`Publisher::publish`]), counting each acknowledgement into `published` as it
    /// comes: `Ok` with how many were published, fewer than all when the next one fits only
    /// at the head of a chain.
    async fn publish_chain(
        &self,
        events: &[FeedEvent],
        published: &mut Published,
    ) -> Result<usize, (String, bool)> {
        let Some((first, rest)) = events.split_first() else {
            return Ok(0);
        };
        let (ack, mut previous) = self.send(first, None).await?;
        published.count(ack.await.map_err(|e| (e.to_string(), false))?.duplicate);
        let mut pending = Vec::with_capacity(rest.len());
        let mut cut = None;
        for event in rest {
            match self.send(event, Some(&previous)).await {
                Ok((ack, id)) => {
                    pending.push(ack);
                    previous = id;
                }
                // Too large with the header: the head of the next chain, without it.
                Err((_, true)) => break,
                Err(error) => {
                    cut = Some(error);
                    break;
                }
            }
        }
        let sent = 1 + pending.len();
        for ack in pending {
            published.count(ack.await.map_err(|e| (e.to_string(), false))?.duplicate);
        }
        match cut {
            None => Ok(sent),
            Some(error) => Err(error),
        }
    }

    /// Sends one event, after the one whose id is `after` when given; its acknowledgement is
    /// awaited by the caller, with its id.
    async fn send(
        &self,
        event: &FeedEvent,
        after: Option<&str>,
    ) -> Result<(jetstream::context::PublishAckFuture, String), (String, bool)> {
        let message = crate::grpc::convert::user_event(event);
        let payload = serde_json::to_vec(&crate::json::user_event(&message))
            .map_err(|e| (format!("an event as JSON: {e}"), false))?;
        let mut headers = HeaderMap::new();
        headers.insert("Bulk-Import-Cursor", message.cursor.as_str());
        headers.insert("Content-Type", "application/json");
        // The headers first: `headers` replaces what `message_id` set.
        let mut publish = PublishMessage::build()
            .headers(headers)
            .message_id(message.event_id.as_str())
            .payload(Bytes::from(payload));
        if let Some(before) = after {
            publish = publish.expected_last_message_id(before);
        }
        let ack = self
            .jetstream
            .send_publish(subject(&event.event.account_id, event.event.kind), publish)
            .await
            .map_err(|e| {
                let too_large =
                    e.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded;
                (e.to_string(), too_large)
            })?;
        Ok((ack, message.event_id))
    }
}

/// What the stream holds, when the relay starts publishing to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    /// Its messages now: 0 for a stream made anew (or one that lost what it held).
    pub messages: u64,
}

/// Whether a stream's subject `pattern` takes every subject the relay publishes on: four
/// tokens, `bulk_import.events.{account}.{type}`, with any account and type.
fn takes_every_subject(pattern: &str) -> bool {
    let ours = ["bulk_import", "events", "", ""];
    let tokens: Vec<&str> = pattern.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        match *token {
            // Only as the last token, where NATS allows it.
            ">" => return i < ours.len() && i + 1 == tokens.len(),
            "*" if i < ours.len() => {}
            literal if i < ours.len() && !ours[i].is_empty() && literal == ours[i] => {}
            _ => return false,
        }
    }
    tokens.len() == ours.len()
}

/// `bulk_import.events.{account}.{type}`: the account percent-encoded (`SUBJECT_TOKEN`), the
/// type in lower case (`invited`, `invitation_resent`, `updated`, `removed`,
/// `invitation_accepted`).
pub fn subject(account_id: &str, kind: UserEventKind) -> String {
    let kind = match kind {
        UserEventKind::Invited => "invited",
        UserEventKind::InvitationResent => "invitation_resent",
        UserEventKind::Updated => "updated",
        UserEventKind::Removed => "removed",
        UserEventKind::InvitationAccepted => "invitation_accepted",
    };
    format!(
        "bulk_import.events.{}.{kind}",
        utf8_percent_encode(account_id, SUBJECT_TOKEN)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_takes_every_subject_only_when_its_pattern_covers_them_all() {
        for covers in [
            "bulk_import.events.>",
            "bulk_import.>",
            ">",
            "bulk_import.events.*.*",
            "*.events.*.*",
            "*.*.*.*",
            "bulk_import.*.>",
        ] {
            assert!(takes_every_subject(covers), "{covers}");
        }
        for misses in [
            "bulk_import.events",
            "bulk_import.events.*",
            "bulk_import.events.acme.>",
            "bulk_import.events.*.invited",
            "bulk_import.events.*.*.*",
            "other.>",
            "bulk_import.events.>.x",
        ] {
            assert!(!takes_every_subject(misses), "{misses}");
        }
    }

    #[test]
    fn accounts_keep_their_own_subjects() {
        assert_eq!(
            subject("acme-1_x", UserEventKind::Invited),
            "bulk_import.events.acme-1_x.invited"
        );
        assert_eq!(
            subject("a.b *>%", UserEventKind::Removed),
            "bulk_import.events.a%2Eb%20%2A%3E%25.removed"
        );
        assert_eq!(
            subject("é", UserEventKind::InvitationAccepted),
            "bulk_import.events.%C3%A9.invitation_accepted"
        );
        // Two accounts that differ only where one has '.' never meet.
        assert_ne!(
            subject("a.b", UserEventKind::Updated),
            subject("a%2Eb", UserEventKind::Updated)
        );
    }
}
