//! The dashboard at `GET /`: its page and files over plain HTTP (headers, base path, the
//! public routes), and the page itself in headless Chromium driven over WebDriver, against
//! the real binary on SQLite or (with `TEST_POSTGRES_URL`) PostgreSQL: a submitted job in the
//! list, its page and attempts, a retry from the page, pausing and limiting a queue, a bulk
//! retry after its count is confirmed, the token prompt, and the page under a path prefix.
//!
//! Without `chromium` and `chromium-driver` installed, the browser tests print that they
//! are skipped and pass. Each saves screenshots under `target/screenshots/`.

mod support;

#[path = "support/browser.rs"]
mod browser;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use browser::Browser;
use serde_json::{json, Value};
use support::*;

const TOKEN: &str = "full-access-token";
const READ_TOKEN: &str = "read-only-token";

/// A functions directory and a scratch directory beside it; removed on drop.
struct Functions {
    root: PathBuf,
}

impl Functions {
    /// `flaky` fails its first run (exit 3, a line on stderr) and succeeds after;
    /// `always-fails` always exits 1; `echo` returns its payload.
    fn new() -> Functions {
        let root = unique_temp_dir();
        fs::create_dir(root.join("functions")).unwrap();
        let marker = root.join("flaky-ran-once");
        let scripts = [
            (
                "flaky",
                format!(
                    "if [ -e '{0}' ]; then echo '{{\"second\":\"try\"}}'; exit 0; fi\n\
                     touch '{0}'\necho 'first try fails: the cache is cold' >&2\nexit 3",
                    marker.display()
                ),
            ),
            (
                "always-fails",
                "echo 'always fails' >&2\nexit 1".to_string(),
            ),
            ("echo", "cat".to_string()),
        ];
        for (name, body) in scripts {
            let path = root.join("functions").join(name);
            fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        Functions { root }
    }

    fn server(&self) -> ServerBuilder {
        let dir = self.root.join("functions");
        TestServer::builder().env("FUNCTIONS_DIR", dir.to_str().unwrap())
    }
}

impl Drop for Functions {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn url(server: &TestServer, path: &str) -> String {
    format!("http://{}{path}", server.addr)
}

/// Polls every 2 s instead of 5 (through the page's own control), so tests wait less.
fn refresh_often(browser: &Browser) {
    browser.click("#refresh-interval option[value=\"2\"]");
}

/// Submits simulated jobs and waits until each has ended; returns their ids.
fn run_simulated(server: &TestServer, queue: &str, fail: bool, count: usize) -> Vec<String> {
    let ids: Vec<String> = (0..count)
        .map(|_| {
            server.submit(json!({"queue": queue, "max_retries": 0,
                "payload": {"duration_ms": 5, "should_fail": fail, "result": {"rows": 42}}}))
        })
        .collect();
    let status = if fail { "failed" } else { "success" };
    for id in &ids {
        server.wait_for_status(id, status, secs(20));
    }
    ids
}

fn queue_of(server: &TestServer, name: &str, token: Option<&str>) -> Value {
    let bearer = token.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|value| ("Authorization", value.as_str()))
        .collect();
    listed_queue(server, name, &headers).unwrap_or_else(|| panic!("no queue {name}"))
}

/// The `src` and `href` of the page's script and style sheet.
fn asset_urls(html: &str) -> Vec<String> {
    ["<script src=\"", "<link rel=\"stylesheet\" href=\""]
        .iter()
        .map(|start| {
            let rest = &html[html
                .find(start)
                .unwrap_or_else(|| panic!("{start} in {html}"))
                + start.len()..];
            rest[..rest.find('"').unwrap()].to_string()
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Over plain HTTP
// ---------------------------------------------------------------------------

#[test]
fn the_page_and_its_files_are_served_with_safe_headers_and_unknown_files_are_404() {
    let server = TestServer::start();
    let page = server.get("/");
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(
        page.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("Cache-Control"), Some("no-cache"));
    assert_eq!(page.header("X-Content-Type-Options"), Some("nosniff"));
    let policy = page.header("Content-Security-Policy").unwrap();
    assert!(
        policy.starts_with("default-src 'none'; script-src 'self';"),
        "{policy}"
    );
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    let html = page.text();
    assert!(
        html.contains(r#"<meta name="base-path" content="">"#),
        "{html}"
    );
    assert!(!html.contains("<script>"), "inline script in {html}");

    let urls = asset_urls(&html);
    let types = ["text/javascript; charset=utf-8", "text/css; charset=utf-8"];
    for (url, content_type) in urls.iter().zip(types) {
        assert!(url.starts_with("/assets/app."), "{url}");
        let file = server.get(url);
        assert_eq!(file.status, 200, "{url}: {}", file.text());
        assert_eq!(file.header("Content-Type"), Some(content_type), "{url}");
        assert_eq!(file.header("X-Content-Type-Options"), Some("nosniff"));
        assert_eq!(
            file.header("Cache-Control"),
            Some("public, max-age=31536000, immutable"),
            "{url}"
        );
    }
    // The plain name is served too, but never cached unchecked.
    assert_eq!(
        server.get("/assets/app.js").header("Cache-Control"),
        Some("no-cache")
    );
    for unknown in ["/assets/nope.js", "/assets/app.000000000000.js"] {
        let response = server.get(unknown);
        assert_error(&response, 404, "not_found");
    }
}

#[test]
fn under_a_base_path_with_auth_on_the_page_is_public_and_links_the_prefix() {
    let server = TestServer::builder()
        .env("API_TOKEN", TOKEN)
        .env("DASHBOARD_BASE_PATH", "/admin/jobs/")
        .start();
    for path in ["/admin/jobs", "/admin/jobs/", "/"] {
        let page = server.get(path);
        assert_eq!(page.status, 200, "{path}: {}", page.text());
        let html = page.text();
        assert!(
            html.contains(r#"<meta name="base-path" content="/admin/jobs">"#),
            "{html}"
        );
        for url in asset_urls(&html) {
            assert!(url.starts_with("/admin/jobs/assets/app."), "{url}");
            assert_eq!(server.get(&url).status, 200, "{url}");
        }
    }
    // The data behind the page is not public.
    assert_error(&server.get("/admin/jobs/jobs"), 401, "unauthorized");
    assert_error(&server.get("/admin/jobs/queues"), 401, "unauthorized");
}

// ---------------------------------------------------------------------------
// In the browser
// ---------------------------------------------------------------------------

#[test]
fn a_submitted_job_appears_in_the_list_and_its_page_shows_its_attempts() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let functions = Functions::new();
    let server = functions.server().start();
    let simulated = run_simulated(&server, "default", false, 1).remove(0);
    browser.open(&url(&server, "/#/jobs"));
    refresh_often(&browser);
    let row = format!("tr[data-job-id=\"{simulated}\"]");
    browser.wait_for_text(&row, "success");

    // A job submitted while the page is open shows up at the next refresh.
    let id = server.submit(json!({"function": "echo", "payload": {"name": "Ada <b>"},
                                  "queue": "mail", "max_retries": 0}));
    server.wait_for_status(&id, "success", secs(20));
    let row = format!("tr[data-job-id=\"{id}\"]");
    browser.wait_for_text(&row, "success");
    assert!(browser.text(&row).unwrap().contains("mail"));
    browser.screenshot("jobs");

    browser.click(&format!("{row} a[href=\"#/jobs/{id}\"]"));
    browser.wait_for_text("#job-id-title", &id);
    browser.wait_for_text("#job-status", "success");
    // Payload and result are printed as JSON text, markup and all.
    let payload: Value = serde_json::from_str(&browser.text("#job-payload").unwrap()).unwrap();
    assert_eq!(payload, json!({"name": "Ada <b>"}));
    let result: Value = serde_json::from_str(&browser.text("#job-result").unwrap()).unwrap();
    assert_eq!(result, json!({"name": "Ada <b>"}));
    assert_eq!(
        browser.text("dd[data-field=\"queue\"]"),
        Some("mail".into())
    );
    assert_eq!(
        browser.text("dd[data-field=\"function\"]"),
        Some("echo".into())
    );
    assert_eq!(
        browser.text("dd[data-field=\"retries\"]"),
        Some("0 of 0".into())
    );
    let attempt = browser.wait_for_text("#attempts-table tr[data-attempt=\"1\"]", "success");
    let stored = &server.attempts(&id)[0];
    assert!(
        attempt.contains(&format!("{} ms", stored["duration_ms"])),
        "{attempt} vs {stored}"
    );
    assert_eq!(
        browser.text("#attempts-table tr[data-attempt=\"1\"] .exit-code"),
        Some("0".to_string())
    );
    assert_eq!(
        browser.script(
            "return document.querySelectorAll('#attempts-table tr.attempt-row').length",
            json!([])
        ),
        Ok(json!(1))
    );
    browser.screenshot("job");

    // Delete asks first, then goes back to the list.
    browser.click("#job-delete");
    browser.wait_for_text("#dialog-title", "Delete this job?");
    browser.click("#dialog-confirm");
    browser.wait_for_text("#notice", "The job is deleted.");
    browser.wait_for_element(&format!("tr[data-job-id=\"{simulated}\"]"));
    assert_error(&server.get(&format!("/jobs/{id}")), 404, "not_found");
    assert!(
        browser.text(&row).is_none(),
        "the deleted job is still listed"
    );
}

#[test]
fn a_failed_job_retried_from_its_page_runs_again_and_succeeds() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let functions = Functions::new();
    let server = functions.server().start();
    let id = server.submit(json!({"function": "flaky", "payload": {}, "max_retries": 0}));
    server.wait_for_status(&id, "failed", secs(20));

    browser.open(&url(&server, &format!("/#/jobs/{id}")));
    refresh_often(&browser);
    browser.wait_for_text("#job-status", "failed");
    let first = browser.wait_for_text("#attempts-table tr[data-attempt=\"1\"]", "failed");
    assert_eq!(
        browser.text("#attempts-table tr[data-attempt=\"1\"] .exit-code"),
        Some("3".to_string()),
        "{first}"
    );
    let stderr = browser
        .text("#attempts-table tr[data-attempt=\"1\"] .stderr pre")
        .unwrap();
    assert_eq!(stderr, "first try fails: the cache is cold\n");
    browser.screenshot("job-failed");

    browser.click("#job-retry");
    browser.wait_for_text("#job-status", "success");
    browser.wait_for_text("#attempts-table tr[data-attempt=\"2\"]", "success");
    let job = server.job(&id);
    assert_eq!(job["status"], "success");
    assert_eq!(job["result"], json!({"second": "try"}));
    assert_eq!(server.attempts(&id).len(), 2);
    let result: Value = serde_json::from_str(&browser.text("#job-result").unwrap()).unwrap();
    assert_eq!(result, json!({"second": "try"}));
}

#[test]
fn a_queue_is_paused_resumed_and_limited_from_the_queues_page() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let server = TestServer::start();
    run_simulated(&server, "emails", false, 2);
    browser.open(&url(&server, "/#/queues"));
    let row = "tr[data-queue=\"emails\"]";
    browser.wait_for_text(&format!("{row} .queue-state"), "active");
    assert_eq!(
        browser.text(&format!("{row} .count-success")),
        Some("2".into())
    );

    browser.click(&format!("{row} button.pause"));
    browser.wait_for_text(&format!("{row} .queue-state"), "paused");
    assert_eq!(queue_of(&server, "emails", None)["paused"], true);
    // A paused queue's new job waits.
    let waiting = server.submit(json!({"queue": "emails", "payload": {"duration_ms": 5}}));
    browser.wait_for_text(&format!("{row} .count-pending"), "1");
    browser.screenshot("queues");

    browser.click(&format!("{row} button.resume"));
    browser.wait_for_text(&format!("{row} .queue-state"), "active");
    assert_eq!(queue_of(&server, "emails", None)["paused"], false);
    server.wait_for_status(&waiting, "success", secs(20));

    browser.click(&format!("{row} button.edit-limit"));
    browser.type_into("#concurrency-input", "3");
    browser.click("#dialog-confirm");
    browser.wait_for_text(&format!("{row} .concurrency"), "3");
    assert_eq!(queue_of(&server, "emails", None)["concurrency"], 3);
    // An empty limit removes it.
    browser.click(&format!("{row} button.edit-limit"));
    browser.type_into("#concurrency-input", "");
    browser.click("#dialog-confirm");
    browser.wait_for_text(&format!("{row} .concurrency"), "no limit");
    assert_eq!(
        queue_of(&server, "emails", None)["concurrency"],
        Value::Null
    );
}

#[test]
fn a_bulk_retry_confirms_how_many_jobs_match_and_retries_exactly_those() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let functions = Functions::new();
    let server = functions.server().start();
    let failed = run_simulated(&server, "batch", true, 3);
    let succeeded = run_simulated(&server, "batch", false, 1);
    let elsewhere = run_simulated(&server, "other", true, 1);

    // The filter form writes the filter into the URL, so the view can be bookmarked.
    browser.open(&url(&server, "/#/jobs"));
    browser.click("#filter-status option[value=\"failed\"]");
    browser.wait_for(
        "the status filter in the URL",
        "return location.hash === '#/jobs?status=failed'",
        json!([]),
    );
    browser.type_into("#filter-queue", "batch");
    browser.click("#job-filters button[type=submit]");
    browser.wait_for(
        "the queue filter in the URL",
        "return location.hash === '#/jobs?status=failed&queue=batch'",
        json!([]),
    );
    // And the URL gives the filter back, as a bookmark would.
    browser.open(&url(&server, "/"));
    browser.open(&url(&server, "/#/jobs?status=failed&queue=batch"));
    browser.wait_for_element("#filter-queue");
    assert_eq!(
        browser.script(
            "return document.getElementById('filter-queue').value",
            json!([])
        ),
        Ok(json!("batch"))
    );
    browser.wait_for(
        "three failed jobs of batch listed",
        "return document.querySelectorAll('tr.job-row').length === 3",
        json!([]),
    );
    browser.click("#bulk-retry");
    let shown = browser.wait_for_element("#bulk-count");
    assert_eq!(shown, "This will retry 3 jobs.");
    assert_eq!(
        browser.text("#dialog-title"),
        Some("Retry 3 jobs?".to_string())
    );
    browser.screenshot("bulk-confirm");
    browser.click("#dialog-confirm");
    browser.wait_for_text("#notice", "Retried 3 jobs.");
    for id in &failed {
        let attempts = eventually(secs(20), "the retried job's second attempt ends", || {
            let attempts = server.attempts(id);
            (attempts.len() == 2 && attempts[1]["status"] == "failed").then_some(attempts)
        });
        assert_eq!(attempts.len(), 2);
    }
    for id in succeeded.iter().chain(&elsewhere) {
        assert_eq!(server.attempts(id).len(), 1, "{id} was not in the filter");
    }

    // With a function filter the page counts by reading the jobs (all of them, here).
    for _ in 0..2 {
        let id =
            server.submit(json!({"function": "always-fails", "payload": {}, "max_retries": 0}));
        server.wait_for_status(&id, "failed", secs(20));
    }
    browser.open(&url(&server, "/#/jobs?function=always-fails"));
    browser.wait_for(
        "two jobs of always-fails listed",
        "return document.querySelectorAll('tr.job-row').length === 2",
        json!([]),
    );
    browser.click("#bulk-delete");
    assert_eq!(
        browser.wait_for_element("#bulk-count"),
        "This will delete 2 jobs."
    );
    browser.click("#dialog-cancel");
    browser.wait_for(
        "the dialog to close",
        "return !document.getElementById('dialog').open",
        json!([]),
    );
    let (jobs, _) = server.list("/jobs?function=always-fails");
    assert_eq!(jobs.len(), 2, "a cancelled confirmation deletes nothing");
}

#[test]
fn with_auth_on_the_page_asks_for_a_token_refuses_a_wrong_one_and_a_read_token_cannot_act() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let server = TestServer::builder()
        .env("API_TOKEN", TOKEN)
        .env("API_READ_TOKEN", READ_TOKEN)
        .start();
    let bearer = format!("Bearer {TOKEN}");
    let body = json!({"payload": {"duration_ms": 5}}).to_string();
    let submitted = server.request(
        "POST",
        "/jobs",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        Some(body.as_bytes()),
    );
    assert_eq!(submitted.status, 201, "{}", submitted.text());

    browser.open(&url(&server, "/#/queues"));
    browser.wait_for_element("#token-input");
    browser.screenshot("token-prompt");

    browser.type_into("#token-input", "not-the-token");
    browser.click("#token-form button[type=submit]");
    browser.wait_for_text("#token-message", "The token was refused");
    browser.wait_for_element("#token-input");
    browser.screenshot("token-refused");

    browser.type_into("#token-input", READ_TOKEN);
    browser.click("#token-form button[type=submit]");
    let row = "tr[data-queue=\"default\"]";
    browser.wait_for_text(&format!("{row} .queue-state"), "active");
    assert_eq!(
        browser.script(
            "return sessionStorage.getItem('mini-lambda-token')",
            json!([])
        ),
        Ok(json!(READ_TOKEN))
    );
    browser.click(&format!("{row} button.pause"));
    browser.wait_for_text("#notice", "read-only token");
    assert_eq!(queue_of(&server, "default", Some(TOKEN))["paused"], false);

    browser.click("#sign-out");
    browser.type_into("#token-input", TOKEN);
    browser.click("#token-form button[type=submit]");
    browser.click(&format!("{row} button.pause"));
    browser.wait_for_text(&format!("{row} .queue-state"), "paused");
    assert_eq!(queue_of(&server, "default", Some(TOKEN))["paused"], true);
}

#[test]
fn the_dashboard_works_under_a_base_path() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let server = TestServer::builder()
        .env("DASHBOARD_BASE_PATH", "/admin/jobs")
        .start();
    let id = run_simulated(&server, "default", false, 1).remove(0);
    browser.open(&url(&server, "/admin/jobs#/jobs"));
    browser.wait_for_text(&format!("tr[data-job-id=\"{id}\"]"), "success");
    // The style sheet came through the prefix, and so did every request the page made.
    let background = browser.script(
        "return getComputedStyle(document.body).backgroundColor",
        json!([]),
    );
    assert_eq!(background, Ok(json!("rgb(246, 247, 249)")));
    let prefix = url(&server, "/admin/jobs/");
    let outside = browser
        .script(
            "return performance.getEntriesByType('resource').map(e => e.name)
               .filter(name => !name.startsWith(arguments[0]))",
            json!([prefix]),
        )
        .unwrap();
    assert_eq!(outside, json!([]), "requests outside {prefix}");

    // Pages of 50, newest first, by the `Link` cursor.
    let batch: Vec<Value> = (0..54)
        .map(|n| json!({"payload": {"duration_ms": 0, "n": n}, "queue": "paged"}))
        .collect();
    let response = server.post_json("/admin/jobs/jobs/batch", &json!({ "jobs": batch }));
    assert_eq!(response.status, 201, "{}", response.text());
    browser.open(&url(&server, "/admin/jobs#/jobs?queue=paged"));
    let rows = "return document.querySelectorAll('tr.job-row').length";
    browser.wait_for("a first page of 50", &format!("{rows} === 50"), json!([]));
    browser.click("#page-older");
    browser.wait_for("the last 4 jobs", &format!("{rows} === 4"), json!([]));
    assert!(browser.text("#page-older").is_none());
    browser.click("#page-newest");
    browser.wait_for("the first page again", &format!("{rows} === 50"), json!([]));

    // The id box opens a job.
    browser.type_into("#job-id", &id);
    browser.click("#job-jump button[type=submit]");
    browser.wait_for_text("#attempts-table tr[data-attempt=\"1\"]", "success");
    let location = browser.script("return location.pathname + location.hash", json!([]));
    assert_eq!(location, Ok(json!(format!("/admin/jobs#/jobs/{id}"))));
}

#[test]
fn the_overview_shows_the_servers_counts_chart_workers_and_waiting_and_the_functions() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let functions = Functions::new();
    let server = functions.server().start();
    run_simulated(&server, "default", false, 3);
    run_simulated(&server, "reports", true, 2);
    // Two jobs wait in a paused queue: its oldest pending age grows.
    assert_eq!(server.post_empty("/queues/backlog/pause").status, 200);
    for _ in 0..2 {
        server.submit(json!({"queue": "backlog", "payload": {"duration_ms": 5}}));
    }

    browser.open(&url(&server, "/"));
    browser.wait_for_text("#status-cards [data-status=\"success\"] .stat-value", "3");
    browser.wait_for_text("#status-cards [data-status=\"failed\"] .stat-value", "2");
    browser.wait_for_text("#status-cards [data-status=\"pending\"] .stat-value", "2");
    browser.wait_for_text("#overview-queues tr[data-queue=\"reports\"]", "reports");
    // From GET /stats, as the server counts them: no fallback, no error.
    browser.wait_for_text("#workers-busy", "0 / ");
    browser.wait_for_text("#finished-chart .legend", "succeeded 3");
    browser.wait_for_text("#finished-chart .legend", "failed 2");
    let bars = browser.script(
        "return document.querySelectorAll('#finished-chart svg g.bar').length",
        json!([]),
    );
    assert_eq!(bars, Ok(json!(60)));
    assert_eq!(browser.text("#stats-error"), Some(String::new()));
    let waited = browser.wait_for_text("#overview-queues tr[data-queue=\"backlog\"] .oldest", " s");
    assert!(!waited.contains('—'), "{waited}");
    browser.screenshot("overview");

    browser.click("#nav a[data-view=\"functions\"]");
    for name in ["always-fails", "echo", "flaky"] {
        browser.wait_for_text(&format!("tr[data-function=\"{name}\"]"), name);
    }
    browser.screenshot("functions");
}
