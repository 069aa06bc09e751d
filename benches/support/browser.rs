//! A headless Chromium (through chromedriver) or Firefox (through geckodriver), driven by
//! fantoccini on the web console: for the console's browser tests (`tests/api/console/`) and
//! the benchmark's browser upload.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

/// How long any one wait of a browser test lasts at most.
pub const WAIT: Duration = Duration::from_secs(30);

/// Browsers run one at a time: each takes most of a core while it starts, and the machine has
/// two.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Which browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Debian's Chromium, through chromedriver.
    Chromium,
    /// Debian's Firefox ESR, through geckodriver.
    Firefox,
}

/// A headless browser, with a fresh profile, on the console at `base`.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    /// `http://127.0.0.1:port` of the console.
    pub base: String,
    /// chromedriver, killed when the browser is dropped.
    driver: Child,
    /// Chromium's profile: no cookie from another test.
    _profile: tempfile::TempDir,
    /// Holds `ONE_BROWSER` while the browser lives.
    _turn: tokio::sync::MutexGuard<'static, ()>,
    /// Names the screenshots.
    label: String,
}

impl Browser {
    /// Starts chromedriver and Chromium on the console at `addr`; screenshots are named after
    /// `label`.
    pub async fn open(addr: SocketAddr, label: &str) -> Self {
        Self::open_in(Engine::Chromium, addr, label).await
    }

    /// [`open`](Self::open), in the browser `engine`.
    pub async fn open_in(engine: Engine, addr: SocketAddr, label: &str) -> Self {
        let turn = ONE_BROWSER.lock().await;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let profile = tempfile::tempdir().unwrap();
        let (driver, capability, options) = match engine {
            Engine::Chromium => {
                let mut options = serde_json::json!({
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run",
                        "--disable-quic", "--window-size=1280,900",
                        format!("--user-data-dir={}", profile.path().display()),
                    ],
                });
                if std::path::Path::new("/usr/bin/chromium").exists() {
                    options["binary"] = "/usr/bin/chromium".into();
                }
                let mut driver = Command::new("chromedriver");
                driver.arg(format!("--port={port}"));
                (driver, "goog:chromeOptions", options)
            }
            Engine::Firefox => {
                let mut options = serde_json::json!({
                    "args": ["-headless", "-width=1280", "-height=900"],
                    // No update checks, telemetry or other traffic this machine would refuse.
                    "prefs": {
                        "app.update.enabled": false,
                        "datareporting.policy.dataSubmissionEnabled": false,
                        "network.captive-portal-service.enabled": false,
                        "browser.shell.checkDefaultBrowser": false,
                    },
                });
                if std::path::Path::new("/usr/bin/firefox-esr").exists() {
                    options["binary"] = "/usr/bin/firefox-esr".into();
                }
                let mut driver = Command::new("geckodriver");
                driver.args(["--host", "127.0.0.1", "--port", &port.to_string()]);
                (driver, "moz:firefoxOptions", options)
            }
        };
        // In a process group of its own, with the browser it starts, so that a test that
        // fails (and never ends its session) still takes both down (`Drop`).
        let mut driver = driver;
        let driver = driver
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{engine:?}'s WebDriver runs (.ci/run installs it): {e}"));
        let deadline = Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "{engine:?}'s WebDriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(capability.into(), options);
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("{engine:?} starts under its WebDriver: {e}"));
        Self {
            client,
            base: format!("http://{addr}"),
            driver,
            _profile: profile,
            _turn: turn,
            label: label.to_owned(),
        }
    }

    /// Opens `path` of the console.
    pub async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap();
    }

    /// The path (and query) the browser is at.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.unwrap();
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// The element `css` finds, once it is there.
    pub async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    /// Every element `css` finds now.
    pub async fn all(&self, css: &str) -> Vec<Element> {
        self.client.find_all(Locator::Css(css)).await.unwrap()
    }

    /// The text of the element `css` finds.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    /// Waits until the element `css` finds shows `expected`, and returns its text then.
    pub async fn wait_text(&self, css: &str, expected: &str) -> String {
        self.wait_text_for(css, expected, WAIT).await
    }

    /// [`wait_text`](Self::wait_text), for at most `wait`.
    pub async fn wait_text_for(&self, css: &str, expected: &str, wait: Duration) -> String {
        let deadline = Instant::now() + wait;
        loop {
            let text = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if text.contains(expected) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never showed {expected:?}; it shows {text:?} at {}",
                self.path().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The rows of a table's body, each as its cells' texts.
    pub async fn table(&self, css: &str) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        for row in self.all(&format!("{css} tbody tr")).await {
            let mut cells = Vec::new();
            for cell in row.find_all(Locator::Css("td")).await.unwrap() {
                cells.push(cell.text().await.unwrap());
            }
            rows.push(cells);
        }
        rows
    }

    /// The controls of the page that no label names (by name or id): none, on every page.
    pub async fn unlabelled(&self) -> Vec<String> {
        let script = "return Array.from(document.querySelectorAll(\
                      'input:not([type=hidden]), select, textarea, button'))\
                      .filter(e => e.tagName === 'BUTTON' ? !e.textContent.trim() : e.labels.length === 0)\
                      .map(e => e.name || e.id || e.tagName);";
        let value = self.client.execute(script, vec![]).await.unwrap();
        serde_json::from_value(value).unwrap()
    }

    /// What the browser gets at `href` (relative to the page), fetched by the page itself with
    /// its cookie, as a download would.
    pub async fn fetch(&self, href: &str) -> String {
        let script = "const done = arguments[arguments.length - 1]; \
                      fetch(arguments[0], {credentials: 'same-origin'}) \
                        .then(r => r.text()).then(done, e => done('fetch failed: ' + e));";
        let value = self
            .client
            .execute_async(script, vec![href.into()])
            .await
            .unwrap();
        value.as_str().expect("text").to_owned()
    }

    /// Saves a screenshot of the screen as `<label>-<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = screenshots();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{}-{name}.png", self.label)), png).unwrap();
    }

    /// Ends the WebDriver session, then chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
        // `Drop` stops chromedriver.
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A failed test still stops chromedriver and its Chromium: the whole process group.
        // SAFETY: kill(2) with a negative pid signals the group chromedriver leads; it touches
        // no memory of this process.
        unsafe {
            libc::kill(-(self.driver.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

/// Uploads `file` into `account` through the console's New Import form, as a person would,
/// and waits (at most `wait`) for the import to complete: the time from Save to the completed
/// import's page, and the rows it imported.
pub async fn upload_in_browser(
    addr: SocketAddr,
    account: &str,
    file: &std::path::Path,
    wait: Duration,
) -> (Duration, i64) {
    let browser = Browser::open(addr, "upload").await;
    browser
        .goto(&format!("/accounts/{account}/new-import"))
        .await;
    let input = browser.find("#file").await;
    input.send_keys(file.to_str().unwrap()).await.unwrap();
    let start = Instant::now();
    browser.find("#save").await.click().await.unwrap();
    browser
        .wait_text_for("[data-status]", "Completed", wait)
        .await;
    let took = start.elapsed();
    let imported = browser.text("[data-counter=rows_imported]").await;
    browser.close().await;
    (took, imported.parse().expect("a count"))
}

/// Where screenshots go.
pub fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
}
