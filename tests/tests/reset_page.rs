//! The hosted reset page over plain HTTP, as a browser without JavaScript uses it: the link
//! from the mail, the form, its errors, the confirmation, a dead link and a new one.
//! (`browser.rs` does the same in a real browser.)

use std::net::SocketAddr;
use std::time::Duration;

use e2e::system::System;
use e2e::{RawResponse, TestApi, request, send_raw};

const WAIT: Duration = Duration::from_secs(20);
const FORM: &str = "application/x-www-form-urlencoded";

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, String)]) -> RawResponse {
    send_raw(addr, &request("GET", path, headers, "")).await
}

async fn post_form(addr: SocketAddr, path: &str, cookie: Option<&str>, body: &str) -> RawResponse {
    let mut headers = vec![("Content-Type", FORM.to_owned())];
    if let Some(cookie) = cookie {
        headers.push(("Cookie", cookie.to_owned()));
    }
    send_raw(addr, &request("POST", path, &headers, body)).await
}

/// Opens the mailed link: 303 to the bare page, with the token in a cookie. Returns the
/// cookie as the browser would send it back.
async fn open_link(addr: SocketAddr, token: &str) -> String {
    let opened = get(addr, &format!("/reset-password?token={token}"), &[]).await;
    assert_eq!(opened.status, 303, "{opened:?}");
    assert_eq!(opened.header("location"), Some("/reset-password"));
    assert_eq!(opened.header("referrer-policy"), Some("no-referrer"));
    let set = opened.header("set-cookie").expect("a cookie").to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/reset-password"] {
        assert!(set.contains(attribute), "{set}");
    }
    set.split(';').next().expect("name=value").to_owned()
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
    let cookie = open_link(addr, &token).await;
    let form = get(addr, "/reset-password", &[("Cookie", cookie.clone())]).await;
    assert_eq!(form.status, 200);
    assert_page_headers(&form);
    assert!(form.body.contains(r#"autocomplete="new-password""#));
    assert!(form.body.contains(r#"<label for="password">"#));
    assert!(!form.body.contains(&token), "the token is not in the page");

    let differ = post_form(
        addr,
        "/reset-password",
        Some(&cookie),
        "password=a+new+and+long+passphrase&confirm=another+one",
    )
    .await;
    assert_eq!(differ.status, 400);
    assert!(differ.body.contains("The two passwords are not the same."));
    assert!(differ.body.contains(r#"role="alert""#));
    let weak = post_form(
        addr,
        "/reset-password",
        Some(&cookie),
        "password=password1&confirm=password1",
    )
    .await;
    assert_eq!(weak.status, 400);
    assert!(weak.body.contains("too easy to guess"), "{}", weak.body);
    // A form without its second field, or no form at all, is refused as such and uses nothing.
    let half = post_form(addr, "/reset-password", Some(&cookie), "password=abc").await;
    assert_eq!(half.status, 400);
    assert!(
        half.body
            .contains("Fill in both fields and send the form again."),
        "{}",
        half.body
    );
    let headers = [("Cookie", cookie.clone())];
    let no_form = send_raw(addr, &request("POST", "/reset-password", &headers, "")).await;
    assert_eq!(no_form.status, 415, "{no_form:?}");

    let done = post_form(
        addr,
        "/reset-password",
        Some(&cookie),
        "password=a+new+and+long+passphrase&confirm=a+new+and+long+passphrase",
    )
    .await;
    assert_eq!(done.status, 200);
    assert_page_headers(&done);
    assert!(done.body.contains("Your password was changed"));
    assert!(
        done.header("set-cookie")
            .is_some_and(|c| c.contains("Max-Age=0")),
        "the cookie is cleared"
    );
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
async fn a_dead_link_offers_a_new_one_with_the_same_answer_for_anyone() {
    let system = System::start().await;
    system.db.account("ada").locale("de").add().await;
    let addr = system.api.addr;
    let dead = get(
        addr,
        &format!("/reset-password?token={}", "A".repeat(43)),
        &[],
    )
    .await;
    assert_eq!(dead.status, 200);
    assert_page_headers(&dead);
    assert!(dead.body.contains(r#"action="/reset-password/new-link""#));
    let german = get(
        addr,
        "/reset-password",
        &[("Accept-Language", "de-DE,de;q=0.9,en;q=0.5".into())],
    )
    .await;
    assert!(german.body.contains("Dieser Link funktioniert nicht mehr"));

    let known = post_form(
        addr,
        "/reset-password/new-link",
        None,
        "id=ada%40example.com",
    )
    .await;
    let unknown = post_form(
        addr,
        "/reset-password/new-link",
        None,
        "id=nobody%40example.com",
    )
    .await;
    assert_eq!((known.status, unknown.status), (200, 200));
    assert_eq!(known.body, unknown.body, "nothing tells the two apart");
    assert!(known.body.contains("Check your email"));
    let mails = system.sink.wait_for(1, WAIT).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].to, "ada@example.com");

    // The account's locale wins over the browser's.
    let cookie = open_link(addr, &mails[0].token()).await;
    let form = get(
        addr,
        "/reset-password",
        &[("Cookie", cookie), ("Accept-Language", "en".into())],
    )
    .await;
    assert!(form.body.contains(r#"lang="de""#), "{}", form.body);
    assert!(form.body.contains("Neues Passwort"));

    let empty = post_form(addr, "/reset-password/new-link", None, "id=").await;
    assert_eq!(empty.status, 400);
    assert!(empty.body.contains(r#"id="id-error""#));
    let no_cookie = post_form(addr, "/reset-password", None, "password=x&confirm=x").await;
    assert!(no_cookie.body.contains("This link no longer works"));
    system.stop().await;
}

#[tokio::test]
async fn the_page_is_rate_limited_like_the_endpoints() {
    let api = TestApi::spawn_with(|s| {
        s.http.rate_limit = "2/minute,burst=2".parse().expect("limit");
    })
    .await;
    let addr = api.addr;
    for _ in 0..2 {
        let sent = post_form(addr, "/reset-password/new-link", None, "id=someone").await;
        assert_eq!(sent.status, 200);
    }
    let limited = post_form(addr, "/reset-password/new-link", None, "id=someone").await;
    assert_eq!(limited.status, 429);
    assert!(limited.header("retry-after").is_some());
    assert!(limited.body.contains("Too many attempts"));
    assert_eq!(api.events().await.len(), 2);
    api.stop().await;
}
