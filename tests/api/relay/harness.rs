//! The test harness of the relay's tests: a NATS server of a test's own, what its stream holds,
//! and the feed and metrics to compare it with.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bulk_import::proto::{self, UserEventType};

use crate::metrics::http_get;

/// A NATS server with JetStream, of this test only.
pub struct Nats {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// More of nats-server's configuration (`max_payload: 1000`, an `authorization` block).
    extra: String,
}

impl Nats {
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// A NATS with `extra` in its configuration file.
    pub fn start_with(extra: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut nats = Self {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
            extra: extra.to_owned(),
        };
        nats.start_again();
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: NATS goes away without a word.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on its port and store, and waits until it takes connections.
    pub fn start_again(&mut self) {
        let config = self.dir.path().join("nats.conf");
        let store = self.dir.path().join("store");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{}\njetstream {{ store_dir: {:?} }}\n{}\n",
                self.port, store, self.extra
            ),
        )
        .unwrap();
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (.ci/run installs it)");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nats-server never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A message of the stream.
#[derive(Debug, Clone)]
pub struct Relayed {
    pub id: String,
    pub subject: String,
    pub event: serde_json::Value,
}

/// Every message of `BULK_IMPORT_EVENTS`, in order, once it holds `count` of them (within
/// `within`); fails when it holds more.
pub async fn stream_messages(url: &str, count: u64, within: Duration) -> Vec<Relayed> {
    let options = bulk_import::relay::connect_options(url).unwrap();
    let client = options.connect(url).await.unwrap();
    let jetstream = jetstream::new(client);
    let started = Instant::now();
    let (stream, first, last) = loop {
        let held = match jetstream.get_stream(bulk_import::relay::STREAM).await {
            Ok(mut stream) => {
                let state = stream.info().await.unwrap().state.clone();
                (state.messages >= count).then_some((stream, state))
            }
            Err(_) => None,
        };
        if let Some((stream, state)) = held {
            assert_eq!(state.messages, count, "more messages than events");
            break (stream, state.first_sequence, state.last_sequence);
        }
        assert!(
            started.elapsed() < within,
            "the stream did not get {count} messages within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut messages = Vec::new();
    for sequence in first..=last {
        let message = stream.get_raw_message(sequence).await.unwrap();
        messages.push(Relayed {
            id: message
                .headers
                .get("Nats-Msg-Id")
                .expect("a Nats-Msg-Id")
                .to_string(),
            subject: message.subject.to_string(),
            event: serde_json::from_slice(&message.payload).unwrap(),
        });
    }
    messages
}

/// The feed from its start, `count` events (each within 10 s).
pub async fn feed(
    client: &mut proto::import_service_client::ImportServiceClient<tonic::transport::Channel>,
    count: usize,
) -> Vec<proto::UserEvent> {
    let mut stream = client
        .watch_user_events(proto::WatchUserEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    crate::feed::next(&mut stream, count).await
}

/// The stream holds exactly the feed's events, in its order, each once, on its subject.
pub fn same_events(relayed: &[Relayed], events: &[proto::UserEvent]) {
    assert_eq!(relayed.len(), events.len());
    let ids: HashSet<&str> = relayed.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids.len(), relayed.len(), "an event twice in the stream");
    for (message, event) in relayed.iter().zip(events) {
        let kind = UserEventType::try_from(event.r#type).unwrap();
        assert_eq!(message.id, event.event_id);
        assert_eq!(message.event["event_id"], event.event_id.as_str());
        assert_eq!(message.event["cursor"], event.cursor.as_str());
        assert_eq!(message.event["type"], kind.as_str_name());
        assert_eq!(
            message.event["user"]["email"],
            event.user.as_ref().unwrap().email.as_str()
        );
        let kind = match kind {
            UserEventType::Invited => bulk_import::domain::UserEventKind::Invited,
            UserEventType::InvitationResent => bulk_import::domain::UserEventKind::InvitationResent,
            UserEventType::Updated => bulk_import::domain::UserEventKind::Updated,
            UserEventType::Removed => bulk_import::domain::UserEventKind::Removed,
            UserEventType::InvitationAccepted => {
                bulk_import::domain::UserEventKind::InvitationAccepted
            }
            UserEventType::Unspecified => panic!("an event without a type"),
        };
        assert_eq!(
            message.subject,
            bulk_import::relay::subject(&event.account_id, kind)
        );
    }
}

/// A series of a `/metrics` page, 0 when absent.
pub async fn series(addr: SocketAddr, name: &str) -> f64 {
    let (status, text) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    text.lines()
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            (series == name).then(|| value.parse().unwrap())
        })
        .unwrap_or(0.0)
}
