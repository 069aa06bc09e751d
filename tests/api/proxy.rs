//! A TCP proxy the test controls, between a client and a server: it cuts a connection after
//! a given number of bytes from the client (anywhere: inside an HTTP/2 frame, a chunk, a row,
//! a character), and its target can be switched to another server.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The proxy; it stops when dropped.
pub struct Proxy {
    /// Where clients connect: `http://{addr}`.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// What becomes of a connection once its client sent a number of bytes.
#[derive(Debug, Clone, Copy)]
pub enum Cut {
    /// Both sockets are dropped.
    After(u64),
    /// No more bytes go to the server (the upload stalls there), until the server closes the
    /// connection (it was killed, say); then the client's side is closed too.
    HoldAfter(u64),
}

struct Shared {
    /// Where new connections go.
    target: Mutex<SocketAddr>,
    /// Each new connection takes the next one.
    cuts: Mutex<VecDeque<Cut>>,
    /// Where new connections go once a connection was cut.
    after_cut: Mutex<Option<SocketAddr>>,
    /// Connections cut so far.
    made: AtomicU64,
}

impl Proxy {
    /// A proxy to `target`, on a free port.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            target: Mutex::new(target),
            cuts: Mutex::new(VecDeque::new()),
            after_cut: Mutex::new(None),
            made: AtomicU64::new(0),
        });
        let accepting = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let cut = accepting.cuts.lock().unwrap().pop_front();
                let target = *accepting.target.lock().unwrap();
                tokio::spawn(relay(client, target, cut, accepting.clone()));
            }
        });
        Self { addr, shared, task }
    }

    /// `http://ADDR`, for a client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next connections are cut after these many bytes from their client, one each.
    pub fn cut_after(&self, cuts: &[u64]) {
        self.then(cuts.iter().map(|&n| Cut::After(n)));
    }

    /// The next connections meet these cuts, one each.
    pub fn then(&self, cuts: impl IntoIterator<Item = Cut>) {
        self.shared.cuts.lock().unwrap().extend(cuts);
    }

    /// Once a connection is cut, new connections go to `target`.
    pub fn switch_after_cut(&self, target: SocketAddr) {
        *self.shared.after_cut.lock().unwrap() = Some(target);
    }

    /// New connections go to `target` from now on.
    pub fn set_target(&self, target: SocketAddr) {
        *self.shared.target.lock().unwrap() = target;
    }

    /// Connections cut so far.
    pub fn cuts_made(&self) -> u64 {
        self.shared.made.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies both ways until either side closes, or until the client sent the cut's bytes: then
/// both sockets are dropped, mid-whatever (or, for a hold, once the server closes).
async fn relay(client: TcpStream, target: SocketAddr, cut: Option<Cut>, shared: Arc<Shared>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut down = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    });
    let limit = cut.map(|cut| match cut {
        Cut::After(n) | Cut::HoldAfter(n) => n,
    });
    let mut sent = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = client_read.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = &mut down => return,
        };
        let allowed = limit.map_or(n as u64, |limit| (limit - sent).min(n as u64)) as usize;
        if server_write.write_all(&buf[..allowed]).await.is_err() {
            break;
        }
        sent += allowed as u64;
        if limit == Some(sent) {
            shared.made.fetch_add(1, Ordering::SeqCst);
            if let Some(next) = *shared.after_cut.lock().unwrap() {
                *shared.target.lock().unwrap() = next;
            }
            if let Some(Cut::HoldAfter(_)) = cut {
                let _ = (&mut down).await;
                return;
            }
            break;
        }
    }
    down.abort();
    // Both halves of both sockets go here: the connection ends at once, both ways.
}
