//! A small W3C WebDriver client for the dashboard's browser tests: one ChromeDriver per test
//! binary (started on a free port when the first browser is asked for, killed when the
//! binary exits), and one headless Chromium session per [`Browser`] with a fresh profile.
//! Sessions take turns (one browser open at a time): the machines these run on are small.
//!
//! Everything goes over the WebDriver HTTP API with the suite's own HTTP client; DOM state
//! is read with `execute/sync` and polled against a deadline, never waited for by sleeping.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{try_request, unique_temp_dir};

/// What a browser test prints, and passes, when the browser is not installed.
pub const SKIPPED: &str =
    "skipped: chromium-driver not installed (apt-get install chromium chromium-driver)";

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// How long the page may take to reach a state the test waits for.
pub const DOM_TIMEOUT: Duration = Duration::from_secs(20);

/// The W3C name of an element reference in a WebDriver answer.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The ChromeDriver process of this test binary: its address, or why there is none.
fn driver() -> &'static Result<SocketAddr, String> {
    static DRIVER: OnceLock<Result<SocketAddr, String>> = OnceLock::new();
    DRIVER.get_or_init(start_driver)
}

/// The driver's pid, for the exit hook.
static DRIVER_PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn kill_driver() {
    let pid = DRIVER_PID.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) on a pid this process spawned; no memory is touched.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

fn start_driver() -> Result<SocketAddr, String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|err| format!("no free port for chromedriver: {err}"))?
        .port();
    let child: Child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|err| format!("cannot start {CHROMEDRIVER}: {err}"))?;
    DRIVER_PID.store(child.id() as i32, Ordering::SeqCst);
    // SAFETY: registers a plain function without captures, run once at exit.
    unsafe {
        libc::atexit(kill_driver);
    }
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(status) = call(addr, "GET", "/status", None) {
            if status["ready"] == true {
                return Ok(addr);
            }
        }
        if Instant::now() > deadline {
            return Err("chromedriver did not become ready within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One WebDriver command: its `value`, or the error it answered.
fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let bytes = body.map(|body| body.to_string().into_bytes());
    let headers = [("Content-Type", "application/json; charset=utf-8")];
    let response = try_request(addr, method, path, &headers, bytes.as_deref())
        .map_err(|err| format!("{method} {path}: {err}"))?;
    let answer: Value = serde_json::from_slice(&response.body)
        .map_err(|err| format!("{method} {path}: not JSON ({err}): {}", response.text()))?;
    let value = answer["value"].clone();
    if response.status == 200 {
        Ok(value)
    } else {
        Err(format!(
            "{method} {path}: {} {}: {}",
            response.status, value["error"], value["message"]
        ))
    }
}

/// Browsers take turns; a test that panicked still hands its turn on.
fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One headless Chromium session. Dropping it closes the browser and removes its profile.
pub struct Browser {
    driver: SocketAddr,
    session: String,
    profile: PathBuf,
    _turn: MutexGuard<'static, ()>,
}

impl Browser {
    /// A fresh browser, or `None` (after printing [`SKIPPED`]) when ChromeDriver or Chromium
    /// is not installed.
    pub fn start() -> Option<Browser> {
        if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
            eprintln!("{SKIPPED}");
            return None;
        }
        let driver = match driver() {
            Ok(addr) => *addr,
            Err(why) => panic!("chromedriver is installed but unusable: {why}"),
        };
        let turn = turn();
        let profile = unique_temp_dir();
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,900".into(),
            // Numbers and dates the tests read are formatted for this locale.
            "--lang=en-US".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let session = call(driver, "POST", "/session", Some(&capabilities))
            .unwrap_or_else(|err| panic!("cannot open a Chromium session: {err}"));
        let session = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {session}"))
            .to_string();
        Some(Browser {
            driver,
            session,
            profile,
            _turn: turn,
        })
    }

    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        call(
            self.driver,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        )
    }

    pub fn open(&self, url: &str) {
        self.command("POST", "/url", Some(&json!({ "url": url })))
            .unwrap_or_else(|err| panic!("cannot open {url}: {err}"));
    }

    /// Runs `script` (a function body; `arguments[0]`… are `args`) in the page.
    pub fn script(&self, script: &str, args: Value) -> Result<Value, String> {
        self.command(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": args})),
        )
    }

    /// Polls `script` until it returns something other than `null` or `false`, and returns
    /// that. At the deadline: a screenshot `failed-<what>` and a panic naming `what`.
    pub fn wait_for(&self, what: &str, script: &str, args: Value) -> Value {
        let deadline = Instant::now() + DOM_TIMEOUT;
        loop {
            let last = self.script(script, args.clone());
            if let Ok(value) = &last {
                if !value.is_null() && *value != Value::Bool(false) {
                    return value.clone();
                }
            }
            if Instant::now() > deadline {
                let name: String = what
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .collect();
                self.screenshot(&format!("failed-{name}"));
                panic!("timed out after {DOM_TIMEOUT:?} waiting for {what}; last answer {last:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the element `css` exists and its text contains `text`; returns its text.
    pub fn wait_for_text(&self, css: &str, text: &str) -> String {
        let found = self.wait_for(
            &format!("{css} to contain {text:?}"),
            "const el = document.querySelector(arguments[0]);
             return el && el.textContent.includes(arguments[1]) ? el.textContent : null;",
            json!([css, text]),
        );
        found.as_str().unwrap_or_default().to_string()
    }

    /// Waits until the element `css` exists (and is shown); returns its text.
    pub fn wait_for_element(&self, css: &str) -> String {
        let found = self.wait_for(
            &format!("{css} to be shown"),
            "const el = document.querySelector(arguments[0]);
             return el && el.getClientRects().length > 0 ? el.textContent : null;",
            json!([css]),
        );
        found.as_str().unwrap_or_default().to_string()
    }

    /// The text of the element `css` now, if there is one.
    pub fn text(&self, css: &str) -> Option<String> {
        self.script(
            "const el = document.querySelector(arguments[0]); return el ? el.textContent : null;",
            json!([css]),
        )
        .ok()
        .and_then(|value| value.as_str().map(str::to_string))
    }

    /// The element `css`'s WebDriver reference.
    fn find(&self, css: &str) -> Result<String, String> {
        let found = self.command(
            "POST",
            "/element",
            Some(&json!({"using": "css selector", "value": css})),
        )?;
        found[ELEMENT_KEY]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no element reference in {found}"))
    }

    /// Clicks the element `css` as a user would, once it exists and can be clicked (a
    /// refresh may replace it between the find and the click: then it tries again).
    pub fn click(&self, css: &str) {
        self.retry(&format!("click {css}"), || {
            let element = self.find(css)?;
            self.command(
                "POST",
                &format!("/element/{element}/click"),
                Some(&json!({})),
            )
        });
    }

    /// Replaces the text of the input `css` with `text`, typed key by key.
    pub fn type_into(&self, css: &str, text: &str) {
        self.retry(&format!("type into {css}"), || {
            let element = self.find(css)?;
            self.command(
                "POST",
                &format!("/element/{element}/clear"),
                Some(&json!({})),
            )?;
            self.command(
                "POST",
                &format!("/element/{element}/value"),
                Some(&json!({ "text": text })),
            )
        });
    }

    fn retry(&self, what: &str, mut step: impl FnMut() -> Result<Value, String>) {
        let deadline = Instant::now() + DOM_TIMEOUT;
        loop {
            match step() {
                Ok(_) => return,
                Err(err) if Instant::now() > deadline => {
                    self.screenshot("failed-action");
                    panic!("could not {what} within {DOM_TIMEOUT:?}: {err}");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Saves the page as `target/screenshots/<name>.png` and returns the path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("create the screenshot directory");
        let path = dir.join(format!("{name}.png"));
        match self.command("GET", "/screenshot", None) {
            Ok(Value::String(encoded)) => {
                let png = decode_base64(&encoded).expect("the screenshot is base64");
                std::fs::write(&path, png).expect("write the screenshot");
            }
            other => eprintln!("no screenshot {name}: {other:?}"),
        }
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = call(
            self.driver,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// `$CARGO_TARGET_DIR/screenshots`, or `target/screenshots` in the repository.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("screenshots")
}

/// Standard base64 (with padding) to bytes; `None` on anything else.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |byte: u8| -> Option<u32> {
        match byte {
            b'A'..=b'Z' => Some(u32::from(byte - b'A')),
            b'a'..=b'z' => Some(u32::from(byte - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(byte - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    };
    let bytes: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|&b| b != b'=').collect();
        let mut bits = 0u32;
        for &byte in &data {
            bits = (bits << 6) | value(byte)?;
        }
        bits <<= 6 * (4 - data.len() as u32);
        let produced = data.len().saturating_sub(1);
        out.extend_from_slice(&bits.to_be_bytes()[1..=produced]);
    }
    Some(out)
}

#[test]
fn base64_decodes_with_and_without_padding() {
    assert_eq!(decode_base64("aGk=").unwrap(), b"hi");
    assert_eq!(decode_base64("aGVsbG8h").unwrap(), b"hello!");
    assert_eq!(decode_base64("YQ==").unwrap(), b"a");
    assert!(decode_base64("a*==").is_none());
}
