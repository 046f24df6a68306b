//! The hosted reset page over plain HTTP, as a browser without JavaScript uses it: the link
//! from the mail, the code from the mail, the form, its errors, the confirmation, a dead link
//! and a new one, and the posts another site must not be able to make.
//! (`browser.rs` does the same in a real browser, clicked from another site.)

use std::net::SocketAddr;
use std::time::Duration;

use e2e::system::System;
use e2e::{RawResponse, TestApi, request, send_raw};

const WAIT: Duration = Duration::from_secs(20);
const FORM: &str = "application/x-www-form-urlencoded";
const PASSPHRASE: &str = "a+new+and+long+passphrase";

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, String)]) -> RawResponse {
    send_raw(addr, &request("GET", path, headers, "")).await
}

async fn post_form(addr: SocketAddr, path: &str, body: &str) -> RawResponse {
    post_form_with(addr, path, &[], body).await
}

async fn post_form_with(
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> RawResponse {
    let mut headers = vec![("Content-Type", FORM.to_owned())];
    headers.extend(extra.iter().map(|(n, v)| (*n, (*v).to_owned())));
    send_raw(addr, &request("POST", path, &headers, body)).await
}

/// Opens the mailed link: the form, carrying the token in a hidden field, and no cookie.
async fn open_link(addr: SocketAddr, token: &str) -> RawResponse {
    let opened = get(addr, &format!("/reset-password?token={token}"), &[]).await;
    assert_eq!(opened.status, 200, "{opened:?}");
    assert_page_headers(&opened);
    assert!(
        opened.header("set-cookie").is_none(),
        "no cookie: {opened:?}"
    );
    assert!(
        opened.body.contains(&format!(
            r#"<input type="hidden" name="token" value="{token}">"#
        )),
        "{}",
        opened.body
    );
    opened
}

fn assert_page_headers(page: &RawResponse) {
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let csp = page.header("content-security-policy").expect("CSP");
    assert!(
        csp.starts_with("default-src 'none'; style-src 'sha256-"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("form-action 'self'"));
    assert!(!page.body.contains("<script"), "no script on the page");
    assert!(!page.body.contains("http"), "the page links nowhere");
}

#[tokio::test]
async fn the_mailed_link_opens_a_form_that_changes_the_password() {
    let system = System::start().await;
    system.db.account("ada").add().await;
    assert_eq!(system.api.forgot_id("ada").await.status, 200);
    let token = system.sink.wait_for(1, WAIT).await[0].token();
    let addr = system.api.addr;

    // Opened twice (a mail scanner, then the person): nothing is used up.
    open_link(addr, &token).await;
    let form = open_link(addr, &token).await;
    assert!(form.body.contains(r#"autocomplete="new-password""#));
    assert!(form.body.contains(r#"<label for="password">"#));

    let with = |rest: &str| format!("token={token}&{rest}");
    let differ = post_form(
        addr,
        "/reset-password",
        &with(&format!("password={PASSPHRASE}&confirm=another+one")),
    )
    .await;
    assert_eq!(differ.status, 400);
    assert!(differ.body.contains("The two passwords are not the same."));
    assert!(differ.body.contains(r#"role="alert""#));
    assert!(differ.body.contains(&token), "the form keeps its token");
    let weak = post_form(
        addr,
        "/reset-password",
        &with("password=password1&confirm=password1"),
    )
    .await;
    assert_eq!(weak.status, 400);
    assert!(weak.body.contains("too easy to guess"), "{}", weak.body);
    // A form without its second field, or no form at all, is refused as such and uses nothing.
    let half = post_form(addr, "/reset-password", &with("password=abc")).await;
    assert_eq!(half.status, 400);
    assert!(
        half.body
            .contains("Fill in both fields and send the form again."),
        "{}",
        half.body
    );
    let no_form = send_raw(addr, &request("POST", "/reset-password", &[], "")).await;
    assert_eq!(no_form.status, 415, "{no_form:?}");

    let done = post_form_with(
        addr,
        "/reset-password",
        &[("Sec-Fetch-Site", "same-origin")],
        &with(&format!("password={PASSPHRASE}&confirm={PASSPHRASE}")),
    )
    .await;
    assert_eq!(done.status, 200);
    assert_page_headers(&done);
    assert!(done.body.contains("Your password was changed"));
    assert!(
        system
            .db
            .password_verifies("ada", "a new and long passphrase")
            .await
    );
    let mails = system.sink.wait_for(2, WAIT).await;
    assert_eq!(mails.len(), 2, "the password-changed mail");

    // Used: the same link now shows the dead-link page.
    let again = get(addr, &format!("/reset-password?token={token}"), &[]).await;
    assert_eq!(again.status, 200);
    assert!(again.body.contains("This link no longer works"));
    system.stop().await;
}

#[tokio::test]
async fn the_code_from_the_mail_works_as_people_type_it_and_dies_with_its_link() {
    let system = System::start().await;
    system.db.account("ada").add().await;
    assert_eq!(system.api.forgot_id("ada").await.status, 200);
    let mail = &system.sink.wait_for(1, WAIT).await[0];
    let (token, code) = (mail.token(), mail.code());
    assert!(mail.html.contains(&code), "the HTML part has the code too");
    let addr = system.api.addr;

    // Without a link, the page asks for the account and the code.
    let bare = get(addr, "/reset-password", &[]).await;
    assert_eq!(bare.status, 200);
    assert_page_headers(&bare);
    assert!(bare.body.contains(r#"action="/reset-password/code""#));
    assert!(bare.body.contains(r#"name="code""#) && bare.body.contains(r#"name="id""#));

    // Typed in lower case, with spaces instead of the hyphen.
    let typed = code.to_lowercase().replace('-', " ");
    let typed_form = format!("id=ada%40example.com&code={}", typed.replace(' ', "+"));
    let form = post_form(addr, "/reset-password/code", &typed_form).await;
    assert_eq!(form.status, 200, "{}", form.body);
    assert!(form.body.contains(r#"name="code""#) && form.body.contains("new-password"));
    let done = post_form(
        addr,
        "/reset-password",
        &format!("{typed_form}&password={PASSPHRASE}&confirm={PASSPHRASE}"),
    )
    .await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("Your password was changed"));
    assert!(
        system
            .db
            .password_verifies("ada", "a new and long passphrase")
            .await
    );
    // One secret: the code used, the link is dead, and the code too.
    let link = get(addr, &format!("/reset-password?token={token}"), &[]).await;
    assert!(link.body.contains("This link no longer works"));
    let again = post_form(addr, "/reset-password/code", &typed_form).await;
    assert_eq!(again.status, 400);
    assert!(again.body.contains("This code is wrong or no longer works"));
    assert!(
        again.body.contains(r#"value="ada@example.com""#),
        "the account stays typed in"
    );
    system.stop().await;
}

#[tokio::test]
async fn a_dead_link_offers_a_new_one_with_the_same_answer_for_anyone() {
    let system = System::start().await;
    system.db.account("ada").locale("de").add().await;
    let addr = system.api.addr;
    let dead_link = format!("/reset-password?token={}", "A".repeat(43));
    let dead = get(addr, &dead_link, &[]).await;
    assert_eq!(dead.status, 200);
    assert_page_headers(&dead);
    assert!(dead.body.contains(r#"action="/reset-password/new-link""#));
    let german = [("Accept-Language", "de-DE,de;q=0.9,en;q=0.5".to_owned())];
    let dead_de = get(addr, &dead_link, &german).await;
    assert!(dead_de.body.contains("Dieser Link funktioniert nicht mehr"));
    let bare_de = get(addr, "/reset-password", &german).await;
    assert!(bare_de.body.contains("Code aus der E-Mail eingeben"));

    let known = post_form(addr, "/reset-password/new-link", "id=ada%40example.com").await;
    let unknown = post_form(addr, "/reset-password/new-link", "id=nobody%40example.com").await;
    assert_eq!((known.status, unknown.status), (200, 200));
    assert_eq!(known.body, unknown.body, "nothing tells the two apart");
    assert!(known.body.contains("Check your email"));
    let mails = system.sink.wait_for(1, WAIT).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].to, "ada@example.com");
    assert!(
        mails[0].text.contains(&mails[0].code()),
        "the German mail has its code"
    );

    // The account's locale wins over the browser's.
    let path = format!("/reset-password?token={}", mails[0].token());
    let form = get(addr, &path, &[("Accept-Language", "en".into())]).await;
    assert!(form.body.contains(r#"lang="de""#), "{}", form.body);
    assert!(form.body.contains("Neues Passwort"));

    let empty = post_form(addr, "/reset-password/new-link", "id=").await;
    assert_eq!(empty.status, 400);
    assert!(empty.body.contains(r#"id="id-error""#));
    // A password form without its secret is no form of the page's.
    let no_token = post_form(addr, "/reset-password", "password=x&confirm=x").await;
    assert_eq!(no_token.status, 400);
    assert!(no_token.body.contains("Open the link from the email again"));
    system.stop().await;
}

/// What a form on another site, submitted by its visitors' browsers, can make the page do:
/// nothing. Browsers say where a post comes from; the page takes posts from itself only.
#[tokio::test]
async fn posts_from_another_site_are_refused_and_change_nothing() {
    let system = System::start().await;
    system.db.account("ada").add().await;
    let addr = system.api.addr;
    // The test client names its Host `localhost`.
    let own_origin = "http://localhost".to_owned();
    for (what, headers) in [
        ("another site", vec![("Sec-Fetch-Site", "cross-site")]),
        ("a sibling subdomain", vec![("Sec-Fetch-Site", "same-site")]),
        ("an older browser", vec![("Origin", "http://evil.test")]),
        ("a sandboxed frame", vec![("Origin", "null")]),
    ] {
        let mail = post_form_with(addr, "/reset-password/new-link", &headers, "id=ada").await;
        assert_eq!(mail.status, 403, "{what}: {}", mail.body);
        assert!(mail.body.contains("sent from another site"), "{what}");
        let code = post_form_with(addr, "/reset-password/code", &headers, "id=ada&code=x").await;
        assert_eq!(code.status, 403, "{what}");
    }
    assert!(
        system.api.events().await.is_empty(),
        "nothing was published"
    );

    // Its own pages may, whichever way the browser says so.
    let own = [
        vec![("Sec-Fetch-Site", "same-origin")],
        vec![("Origin", own_origin.as_str())],
    ];
    for headers in &own {
        let sent = post_form_with(addr, "/reset-password/new-link", headers, "id=ada").await;
        assert_eq!(sent.status, 200, "{headers:?}: {}", sent.body);
    }
    let mail = &system.sink.wait_for(1, WAIT).await[0];

    // The password form posted from another site, even one that knew the token: refused.
    let body = format!(
        "token={}&password={PASSPHRASE}&confirm={PASSPHRASE}",
        mail.token()
    );
    let forged = post_form_with(
        addr,
        "/reset-password",
        &[
            ("Sec-Fetch-Site", "cross-site"),
            ("Origin", "http://evil.test"),
        ],
        &body,
    )
    .await;
    assert_eq!(forged.status, 403);
    assert!(
        !system
            .db
            .password_verifies("ada", "a new and long passphrase")
            .await
    );
    assert_eq!(system.db.live_tokens().await, 1, "the link still works");
    system.stop().await;
}

#[tokio::test]
async fn made_up_links_from_one_client_meet_a_429() {
    let api = TestApi::spawn_with(|s| {
        s.http.rate_limit = "20/minute,burst=10".parse().expect("limit");
    })
    .await;
    let mut statuses = Vec::new();
    for n in 0..40 {
        let path = format!("/reset-password?token=made-up-{n:.>35}");
        statuses.push(get(api.addr, &path, &[]).await.status);
    }
    assert!(
        statuses.contains(&429),
        "40 made-up links, never limited: {statuses:?}"
    );
    // A page without a link costs nothing and is not counted.
    assert_eq!(get(api.addr, "/reset-password", &[]).await.status, 200);
    api.stop().await;
}

#[tokio::test]
async fn the_page_is_rate_limited_like_the_endpoints() {
    let api = TestApi::spawn_with(|s| {
        s.http.rate_limit = "2/minute,burst=2".parse().expect("limit");
    })
    .await;
    let addr = api.addr;
    for _ in 0..2 {
        let sent = post_form(addr, "/reset-password/new-link", "id=someone").await;
        assert_eq!(sent.status, 200);
    }
    let limited = post_form(addr, "/reset-password/new-link", "id=someone").await;
    assert_eq!(limited.status, 429);
    assert!(limited.header("retry-after").is_some());
    assert!(limited.body.contains("Too many attempts"));
    assert_eq!(api.events().await.len(), 2);
    api.stop().await;
}

#[tokio::test]
async fn a_team_with_its_own_front_end_turns_the_page_off() {
    let api = TestApi::spawn_with(|s| s.page.enabled = false).await;
    for (method, path) in [
        ("GET", "/reset-password"),
        ("GET", "/reset-password?token=abc"),
        ("POST", "/reset-password"),
        ("POST", "/reset-password/code"),
        ("POST", "/reset-password/new-link"),
    ] {
        let headers = [("Content-Type", FORM.to_owned())];
        let answer = send_raw(api.addr, &request(method, path, &headers, "id=ada")).await;
        assert_eq!(answer.status, 404, "{method} {path}");
    }
    assert!(api.events().await.is_empty());
    // The mails' report links still lead somewhere: the report page stays.
    let report = send_raw(
        api.addr,
        &request("GET", "/reset-password/report?r=x", &[], ""),
    )
    .await;
    assert_eq!(report.status, 200, "{report:?}");
    assert!(
        report.body.contains("This link has expired"),
        "{}",
        report.body
    );
    api.stop().await;
}

#[tokio::test]
async fn an_https_page_sends_hsts_and_a_plain_one_does_not() {
    let https = TestApi::spawn_with(|s| {
        s.page.public_url = Some("https://accounts.example.com".parse().expect("url"));
    })
    .await;
    let page = get(https.addr, "/reset-password", &[]).await;
    assert_eq!(
        page.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    // Behind a proxy that rewrites Host, the public origin's posts are its own.
    let behind_proxy = post_form_with(
        https.addr,
        "/reset-password/new-link",
        &[("Origin", "https://accounts.example.com")],
        "id=ada",
    )
    .await;
    assert_eq!(behind_proxy.status, 200, "{}", behind_proxy.body);
    https.stop().await;
    let plain = TestApi::spawn().await;
    let page = get(plain.addr, "/reset-password", &[]).await;
    assert_eq!(page.header("strict-transport-security"), None);
    plain.stop().await;
}
