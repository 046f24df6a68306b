//! The reset page in a real browser: Debian's chromium, driven over WebDriver by its own
//! chromedriver (both installed by scripts/test-deps). A person clicks the link in the mail
//! the SMTP server received, shown by a webmail on another site (`e2e::webmail`), in every
//! way webmail opens links: in the same tab, in a new tab without opener or referrer,
//! through a redirector, after a mail scanner fetched it, and typed. Each ends on the form,
//! then a changed password (the stored hash verifies) and the password-changed mail. Also:
//! the code typed on the page without a link, another site's forms that must do nothing, an
//! expired link, the page with JavaScript off, an accessibility check with axe-core, and no
//! request to any other origin.
//!
//! Screenshots of each page go to target/screenshots/, and to docs/screenshots/ when
//! UPDATE_SCREENSHOTS=1 is set (the README shows those).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::free_port;
use e2e::system::System;
use e2e::webmail::{Webmail, escape};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);
const PASSWORD: &str = "correct horse battery staple";

/// chromedriver on a free port, stopped with the test.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Self {
        let port = free_port();
        // A process group of its own, so that the browsers it starts go with it.
        let child = Command::new("chromedriver")
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; scripts/test-deps installs it)");
        // Killed and waited for on drop, whether it comes up or not.
        let driver = Self { child, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return driver;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("chromedriver did not come up");
    }

    /// A headless chromium session; `javascript: false` turns scripts off for every page. A
    /// window narrower than a desktop one can be is a phone's screen, emulated.
    async fn browser(&self, javascript: bool, width: u32) -> Client {
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-gpu".to_owned(),
            "--hide-scrollbars".to_owned(),
            "--force-device-scale-factor=1".to_owned(),
            format!("--window-size={width},900"),
            "--lang=en-US".to_owned(),
        ];
        if !javascript {
            // The page's scripts only: the driver's own still run in a world of their own.
            args.push("--blink-settings=scriptEnabled=false".to_owned());
        }
        let mut capabilities = json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": args,
            }
        });
        if !javascript {
            // Without scripts the driver never hears that a page submitted by a click has
            // loaded; the steps below wait for what they expect instead.
            capabilities["pageLoadStrategy"] = json!("none");
        }
        if width < 500 {
            capabilities["goog:chromeOptions"]["mobileEmulation"] = json!({
                "deviceMetrics": { "width": width, "height": 640, "pixelRatio": 1.0 }
            });
        }
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("an object literal")
        };
        // The WebDriver is plain http, but the builder sets up TLS all the same; the workspace
        // has two rustls providers, so name one.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        ClientBuilder::rustls()
            .expect("TLS roots")
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn screenshots() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut dirs = vec![root.join("target/screenshots")];
    if std::env::var_os("UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
        dirs.push(root.join("docs/screenshots"));
    }
    dirs
}

/// Saves a screenshot; returns its width in pixels.
async fn screenshot(browser: &Client, name: &str) -> u32 {
    let png = browser.screenshot().await.expect("screenshot");
    for dir in screenshots() {
        std::fs::create_dir_all(&dir).expect("screenshot folder");
        std::fs::write(dir.join(format!("{name}.png")), &png).expect("screenshot written");
    }
    // A PNG's width is the big-endian u32 at bytes 16..20 (in its IHDR chunk).
    u32::from_be_bytes([png[16], png[17], png[18], png[19]])
}

/// The text of the first element matching `css`, once it is `expected`: after a click the
/// old page may still be there, or half gone, for a moment.
async fn wait_for_text(browser: &Client, css: &str, expected: &str) {
    let mut seen = String::new();
    for _ in 0..100 {
        if let Ok(element) = browser.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
        {
            if text == expected {
                return;
            }
            seen = text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} never read {expected:?}; last {seen:?}");
}

async fn fill(browser: &Client, id: &str, value: &str) {
    browser
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
        .send_keys(value)
        .await
        .expect("typed");
}

async fn submit(browser: &Client) {
    browser
        .find(Locator::Css("button[type=submit]"))
        .await
        .expect("the submit button")
        .click()
        .await
        .expect("clicked");
}

/// Serious or critical axe-core findings on the current page.
async fn accessibility_violations(browser: &Client) -> Vec<String> {
    let axe =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/node_modules/axe-core/axe.min.js");
    let source = std::fs::read_to_string(&axe)
        .unwrap_or_else(|e| panic!("{} ({e}): scripts/test-deps installs it", axe.display()));
    browser
        .execute(&format!("{source}\nreturn typeof axe;"), vec![])
        .await
        .expect("axe-core loads");
    let found = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, { resultTypes: ['violations'] })
               .then(r => done(r.violations
                 .filter(v => v.impact === 'serious' || v.impact === 'critical')
                 .map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', '))))
               .catch(e => done(['axe failed: ' + e]));",
            vec![],
        )
        .await
        .expect("axe runs");
    serde_json::from_value(found).expect("a list")
}

/// Every resource the page loaded, by URL (with JavaScript on).
async fn resources(browser: &Client) -> Vec<String> {
    let found = browser
        .execute(
            "return performance.getEntries().map(e => e.name).filter(n => n.includes('://'));",
            vec![],
        )
        .await
        .expect("performance entries");
    serde_json::from_value(found).expect("a list")
}

/// How the person gets from the mail to the page.
#[derive(Debug, Clone, Copy)]
enum Open {
    /// A click on the link, in the webmail's own tab.
    SameTab,
    /// A click on a `target=_blank rel="noopener noreferrer"` link: a new tab.
    NewTab,
    /// A click on a link wrapped by a redirector (302), as link-checking mail filters do.
    Redirector,
    /// A mail scanner fetched the link twice without cookies, then the person clicked it.
    AfterScanner,
    /// Copied into the address bar.
    Typed,
}

/// Opens the mail's link as `how`, in `browser` showing the webmail; leaves the browser on
/// the tab the link opened in.
async fn open_link(browser: &Client, webmail: &Webmail, name: &str, link: &str, how: Open) {
    let inbox = webmail.add_mail(name, link);
    browser.goto(&inbox).await.expect("the webmail opens");
    let click = |id: &'static str| async move {
        browser
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("#{id}: {e}"))
            .click()
            .await
            .expect("clicked");
    };
    let before = browser.windows().await.expect("windows");
    match how {
        Open::SameTab => click("same-tab").await,
        Open::AfterScanner => {
            for _ in 0..2 {
                let scanned = e2e::send_raw(
                    link_addr(link),
                    &e2e::request("GET", &link_path(link), &[], ""),
                )
                .await;
                assert_eq!(scanned.status, 200, "the scanner's GET");
            }
            click("same-tab").await;
        }
        Open::NewTab | Open::Redirector => {
            click(if matches!(how, Open::NewTab) {
                "new-tab"
            } else {
                "wrapped"
            })
            .await;
            let mut opened = None;
            for _ in 0..100 {
                let now = browser.windows().await.expect("windows");
                opened = now.into_iter().find(|w| !before.contains(w));
                if opened.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let tab = opened.expect("the click opened a tab");
            browser.switch_to_window(tab).await.expect("to the new tab");
        }
        Open::Typed => browser.goto(link).await.expect("the link opens"),
    }
}

fn link_addr(link: &str) -> std::net::SocketAddr {
    let url = url::Url::parse(link).expect("link");
    format!(
        "{}:{}",
        url.host_str().expect("host"),
        url.port().expect("port")
    )
    .parse()
    .expect("an address")
}

fn link_path(link: &str) -> String {
    let url = url::Url::parse(link).expect("link");
    format!("{}?{}", url.path(), url.query().unwrap_or_default())
}

#[tokio::test]
async fn a_link_clicked_in_webmail_on_another_site_works_every_way_it_is_opened() {
    let system = System::start_with_page().await;
    let webmail = Webmail::start().await;
    let driver = Driver::start();
    let origin = format!("http://{}", system.api.addr);
    let ways = [
        Open::SameTab,
        Open::NewTab,
        Open::Redirector,
        Open::AfterScanner,
        Open::Typed,
    ];
    for (n, how) in ways.into_iter().enumerate() {
        let id = format!("person{n}");
        system.db.account(&id).add().await;
        assert_eq!(system.api.forgot_id(&id).await.status, 200);
        let mails = system.sink.wait_for(2 * n + 1, WAIT).await;
        let link = mails[2 * n].link();
        assert!(link.starts_with(&origin), "{link}");
        let token = mails[2 * n].token();

        let browser = driver.browser(true, 1024).await;
        open_link(&browser, &webmail, &id, &link, how).await;
        wait_for_text(&browser, "h1", "Choose a new password").await;
        if n == 0 {
            first_form_checks(&browser, &origin).await;
        }
        fill(&browser, "password", PASSWORD).await;
        fill(&browser, "confirm", PASSWORD).await;
        submit(&browser).await;
        wait_for_text(&browser, "h1", "Your password was changed").await;
        if n == 0 {
            screenshot(&browser, "success").await;
        }
        assert!(
            system.db.password_verifies(&id, PASSWORD).await,
            "{how:?}: the password changed"
        );
        let mails = system.sink.wait_for(2 * n + 2, WAIT).await;
        assert_eq!(mails.len(), 2 * n + 2, "{how:?}: the password-changed mail");
        assert_eq!(mails[2 * n + 1].to, format!("{id}@example.com"));
        assert!(
            webmail.seen().iter().all(|head| !head.contains(&token)),
            "{how:?}: the token reached the webmail: {:?}",
            webmail.seen()
        );
        if n == 0 {
            // Used: the same link now offers a new one.
            open_link(&browser, &webmail, &id, &link, how).await;
            wait_for_text(&browser, "h1", "This link no longer works").await;
            assert_eq!(
                accessibility_violations(&browser).await,
                Vec::<String>::new()
            );
            screenshot(&browser, "invalid").await;
        }
        browser.close().await.expect("session closed");
    }
    system.stop().await;
}

/// On the first form: accessible, nothing loaded from elsewhere, and a mismatch said by the
/// field.
async fn first_form_checks(browser: &Client, origin: &str) {
    assert_eq!(
        accessibility_violations(browser).await,
        Vec::<String>::new()
    );
    let loaded = resources(browser).await;
    assert!(
        loaded.iter().all(|url| url.starts_with(origin)),
        "requests to other origins: {loaded:?}"
    );
    screenshot(browser, "en-form").await;
    fill(browser, "password", PASSWORD).await;
    fill(browser, "confirm", "something else entirely").await;
    submit(browser).await;
    wait_for_text(
        browser,
        "#confirm-error",
        "The two passwords are not the same.",
    )
    .await;
    assert_eq!(
        accessibility_violations(browser).await,
        Vec::<String>::new()
    );
    screenshot(browser, "error").await;
}

#[tokio::test]
async fn the_code_typed_on_another_device_leads_to_the_form() {
    let system = System::start_with_page().await;
    system.db.account("ada").add().await;
    assert_eq!(system.api.forgot_id("ada").await.status, 200);
    let mail = system.sink.wait_for(1, WAIT).await.remove(0);
    let code = mail.code();

    let driver = Driver::start();
    let browser = driver.browser(true, 1024).await;
    browser
        .goto(&format!("http://{}/reset-password", system.api.addr))
        .await
        .expect("the page opens");
    wait_for_text(&browser, "h1", "Enter the code from the email").await;
    assert_eq!(
        accessibility_violations(&browser).await,
        Vec::<String>::new()
    );
    screenshot(&browser, "code").await;
    fill(&browser, "id", "ada@example.com").await;
    // As a person types it off a phone: lower case, a space for the hyphen.
    fill(&browser, "code", &code.to_lowercase().replace('-', " ")).await;
    submit(&browser).await;
    wait_for_text(&browser, "h1", "Choose a new password").await;
    fill(&browser, "password", PASSWORD).await;
    fill(&browser, "confirm", PASSWORD).await;
    submit(&browser).await;
    wait_for_text(&browser, "h1", "Your password was changed").await;
    assert!(system.db.password_verifies("ada", PASSWORD).await);
    assert_eq!(system.sink.wait_for(2, WAIT).await.len(), 2);

    // The code is used, and its link with it.
    browser.goto(&mail.link()).await.expect("the link opens");
    wait_for_text(&browser, "h1", "This link no longer works").await;
    browser.close().await.expect("session closed");
    system.stop().await;
}

/// Forms on another site, sent by its visitors' browsers: a new link for someone else's
/// account, and a new password with a made-up token. Neither does anything.
#[tokio::test]
async fn another_sites_forms_change_nothing() {
    let system = System::start_with_page().await;
    system.db.account("ada").add().await;
    let webmail = Webmail::start().await;
    let api = format!("http://{}", system.api.addr);
    let page = webmail.add_page(
        "forms",
        &format!(
            "<!doctype html><html lang=\"en\"><title>Prize</title>\
             <form id=\"mail\" method=\"post\" action=\"{}\">\
             <input type=\"hidden\" name=\"id\" value=\"ada\">\
             <button id=\"mail-button\">Win</button></form>\
             <form id=\"password\" method=\"post\" action=\"{}\">\
             <input type=\"hidden\" name=\"token\" value=\"{}\">\
             <input type=\"hidden\" name=\"password\" value=\"{PASSWORD}\">\
             <input type=\"hidden\" name=\"confirm\" value=\"{PASSWORD}\">\
             <button id=\"password-button\">Win more</button></form>",
            escape(&format!("{api}/reset-password/new-link")),
            escape(&format!("{api}/reset-password")),
            "A".repeat(43),
        ),
    );
    let driver = Driver::start();
    let browser = driver.browser(true, 1024).await;
    for button in ["mail-button", "password-button"] {
        browser.goto(&page).await.expect("the page opens");
        browser
            .find(Locator::Id(button))
            .await
            .expect(button)
            .click()
            .await
            .expect("clicked");
        wait_for_text(&browser, "h1", "Please try again").await;
        wait_for_text(
            &browser,
            "p[role=alert]",
            "This form was sent from another site. Open the reset page itself and try again.",
        )
        .await;
    }
    browser.close().await.expect("session closed");
    assert!(
        system.api.events().await.is_empty(),
        "no mail was asked for"
    );
    assert!(!system.db.password_verifies("ada", PASSWORD).await);
    system.stop().await;
}

#[tokio::test]
async fn the_page_works_with_javascript_off_in_german_and_fits_320_px() {
    tokio::time::timeout(Duration::from_secs(90), javascript_off())
        .await
        .expect("the walk through the page finishes within 90 s");
}

async fn javascript_off() {
    let system = System::start_with_page().await;
    system.db.account("hans").locale("de").add().await;
    assert_eq!(system.api.forgot_id("hans").await.status, 200);
    let link = system.sink.wait_for(1, WAIT).await[0].link();
    let webmail = Webmail::start().await;

    let driver = Driver::start();
    // A phone's 320 px: the form fits (a screenshot that wide), then the walk at desktop size.
    // Opened as typed: with scripts off, chromedriver does not return from a click that
    // navigates to another site (the clicks are walked with scripts on, above; no cookie or
    // script of the page is involved in how a link is opened).
    let phone = driver.browser(false, 320).await;
    open_link(&phone, &webmail, "hans", &link, Open::Typed).await;
    wait_for_text(&phone, "h1", "Neues Passwort wählen").await;
    assert_eq!(screenshot(&phone, "de-form-narrow").await, 320);
    phone.close().await.expect("session closed");
    let browser = driver.browser(false, 1024).await;
    open_link(&browser, &webmail, "hans", &link, Open::Typed).await;
    wait_for_text(&browser, "h1", "Neues Passwort wählen").await;
    screenshot(&browser, "de-form").await;
    fill(&browser, "password", PASSWORD).await;
    fill(&browser, "confirm", PASSWORD).await;
    submit(&browser).await;
    wait_for_text(&browser, "h1", "Ihr Passwort wurde geändert").await;
    assert!(system.db.password_verifies("hans", PASSWORD).await);
    browser.close().await.expect("session closed");
    system.stop().await;
}

#[tokio::test]
async fn an_expired_link_shows_the_dead_link_page_and_mails_a_new_one() {
    let system = System::start_with_page().await;
    system.db.account("ada").add().await;
    assert_eq!(system.api.forgot_id("ada").await.status, 200);
    let link = system.sink.wait_for(1, WAIT).await[0].link();
    sqlx::query("UPDATE reset_tokens SET expires_at = now() - interval '1 second'")
        .execute(&system.db.pool)
        .await
        .expect("expire the token");
    let webmail = Webmail::start().await;

    let driver = Driver::start();
    let browser = driver.browser(true, 1024).await;
    open_link(&browser, &webmail, "ada", &link, Open::Redirector).await;
    wait_for_text(&browser, "h1", "This link no longer works").await;
    fill(&browser, "id", "ada@example.com").await;
    submit(&browser).await;
    wait_for_text(&browser, "h1", "Check your email").await;
    assert_eq!(
        accessibility_violations(&browser).await,
        Vec::<String>::new()
    );
    browser.close().await.expect("session closed");
    // The cooldown holds the second mail back, as it would any request; the request was made.
    let published = system.api.events().await;
    assert_eq!(published.len(), 2);
    assert_eq!(published[1].0.client.api_key_label, "page");
    system.stop().await;
}

/// "I did not ask for this" clicked in webmail on another site, through a link-wrapping
/// redirector into a new tab: the page offers the button and changes nothing until it is
/// pressed; pressed, the report is taken and the reset link in the same mail is dead.
#[tokio::test]
async fn the_report_link_clicked_in_webmail_reports_and_kills_the_mailed_link() {
    let system = System::start_with_page().await;
    let webmail = Webmail::start().await;
    let driver = Driver::start();
    system.db.account("ada").add().await;
    assert_eq!(system.api.forgot_id("ada").await.status, 200);
    let mail = system.sink.wait_for(1, WAIT).await.remove(0);
    let report = mail.report_link();
    let origin = format!("http://{}", system.api.addr);
    assert!(
        report.starts_with(&format!("{origin}/reset-password/report?r=")),
        "{report}"
    );

    let browser = driver.browser(true, 1024).await;
    open_link(&browser, &webmail, "ada", &report, Open::Redirector).await;
    wait_for_text(&browser, "h1", "Did you not ask to reset your password?").await;
    assert_eq!(
        accessibility_violations(&browser).await,
        Vec::<String>::new()
    );
    screenshot(&browser, "report").await;
    let opened = e2e::send_raw(
        link_addr(&mail.link()),
        &e2e::request("GET", &link_path(&mail.link()), &[], ""),
    )
    .await;
    assert!(
        opened.body.contains(r#"name="password""#),
        "opening the report page changed nothing"
    );
    submit(&browser).await;
    wait_for_text(&browser, "h1", "Thank you for telling us").await;
    screenshot(&browser, "reported").await;

    open_link(&browser, &webmail, "ada", &mail.link(), Open::NewTab).await;
    wait_for_text(&browser, "h1", "This link no longer works").await;
    browser.close().await.expect("session closed");
    system.stop().await;
}
