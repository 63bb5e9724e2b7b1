//! An account over its life: changing and resetting a password, confirming an address, the list
//! of sessions, and what admins do to other accounts (disable, enable, reset a second factor).

use certdrop::accounts::Role;
use reqwest::StatusCode;
use serde_json::json;

use crate::{
    common::{Api, Browser, TestApp},
    db_test,
    pki::{self, Alg},
};

/// A new API token of `email`, made with its password (and `otp`, for staff and admins).
async fn token(app: &TestApp, email: &str, password: &str) -> Api {
    let resp = app
        .api_anonymous()
        .post(
            "/api/v1/tokens",
            json!({"email": email, "password": password}),
        )
        .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
    let mut api = app.api_anonymous();
    api.token = Some(resp.json["token"].as_str().unwrap().to_string());
    api
}

/// Whether `browser`'s session still opens the customer's pages.
async fn signed_in(browser: &Browser) -> bool {
    let resp = browser.get("/apps").await;
    match resp.status {
        StatusCode::OK => true,
        StatusCode::SEE_OTHER if resp.location() == "/login" => false,
        other => panic!("unexpected {other}: {}", resp.body),
    }
}

/// The secret of the newest link mailed to `to` whose path starts with `path` (e.g.
/// `/password/reset/`), read from the mail as its reader would.
async fn mailed_link(app: &TestApp, to: &str, path: &str) -> String {
    let bodies: Vec<String> = sqlx::query_scalar(
        "SELECT text_body FROM mail_outbox WHERE to_address = $1 ORDER BY id DESC",
    )
    .bind(to)
    .fetch_all(&app.db)
    .await
    .unwrap();
    for body in bodies {
        if let Some(at) = body.find(path) {
            let rest = &body[at + path.len()..];
            let end = rest
                .find(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_')
                .unwrap_or(rest.len());
            return rest[..end].to_string();
        }
    }
    panic!("no mail to {to} with a link to {path}");
}

async fn mails_to(app: &TestApp, to: &str, subject_like: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM mail_outbox WHERE to_address = $1 AND subject LIKE $2",
    )
    .bind(to)
    .bind(subject_like)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

db_test! {
    async fn changing_the_password_ends_every_other_session_and_token_but_the_callers(app) {
        let pw = app.user("cara@example.com", Role::Customer).await;
        let (first, second) = (app.browser(), app.browser());
        app.log_in(&first, "cara@example.com", &pw).await;
        app.log_in(&second, "cara@example.com", &pw).await;
        let caller = token(&app, "cara@example.com", &pw).await;
        let other = token(&app, "cara@example.com", &pw).await;

        let wrong = caller
            .post("/api/v1/account/password", json!({"current_password": "not it at all", "new_password": "a brand new passphrase"}))
            .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{}", wrong.body);
        assert_eq!(wrong.code(), "bad_credentials");
        let short = caller
            .post("/api/v1/account/password", json!({"current_password": pw, "new_password": "short"}))
            .await;
        assert_eq!(short.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", short.body);
        assert!(signed_in(&first).await && signed_in(&second).await, "a refused change ends nothing");
        assert_eq!(other.get("/api/v1/apps").await.status, StatusCode::OK);

        let done = caller
            .post("/api/v1/account/password", json!({"current_password": pw, "new_password": "a brand new passphrase"}))
            .await;
        assert_eq!(done.status, StatusCode::NO_CONTENT, "{}", done.body);
        assert_eq!(caller.get("/api/v1/apps").await.status, StatusCode::OK, "the calling token goes on");
        assert_eq!(other.get("/api/v1/apps").await.status, StatusCode::UNAUTHORIZED);
        assert!(!signed_in(&first).await && !signed_in(&second).await, "every session ended");
        let old = app.api_anonymous().post("/api/v1/tokens", json!({"email": "cara@example.com", "password": pw})).await;
        assert_eq!(old.status, StatusCode::UNAUTHORIZED);
        assert_eq!(mails_to(&app, "cara@example.com", "%password%").await, 1, "the owner is told");

        // In the browser the page's own session goes on, and the token made before ends.
        let browser = app.browser();
        app.log_in(&browser, "cara@example.com", "a brand new passphrase").await;
        let resp = browser
            .submit("/account/security", "/account/password", &[
                ("current_password", "a brand new passphrase"),
                ("new_password", "and another one again"),
                ("new_password_confirm", "and another one again"),
            ])
            .await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER, "{}", resp.body);
        assert!(browser.get("/account/security").await.body.contains("Password changed"));
        assert!(signed_in(&browser).await, "the browser that changed it stays signed in");
        assert_eq!(caller.get("/api/v1/apps").await.status, StatusCode::UNAUTHORIZED);
        token(&app, "cara@example.com", "and another one again").await;
    }
}

db_test! {
    async fn a_reset_link_works_once_within_the_hour_and_unknown_addresses_get_the_same_answer(app) {
        let pw = app.user("rita@example.com", Role::Customer).await;
        let before = app.browser();
        app.log_in(&before, "rita@example.com", &pw).await;
        let old_token = token(&app, "rita@example.com", &pw).await;

        let anonymous = app.api_anonymous();
        let unknown = anonymous.post("/api/v1/password/forgot", json!({"email": "nobody@example.com"})).await;
        let known = anonymous.post("/api/v1/password/forgot", json!({"email": "Rita@Example.com"})).await;
        assert_eq!(unknown.status, StatusCode::ACCEPTED, "{}", unknown.body);
        assert_eq!((known.status, &known.body), (unknown.status, &unknown.body), "no answer tells whether an account exists");
        assert_eq!(app.count("SELECT COUNT(*) FROM mail_outbox WHERE to_address = 'nobody@example.com'").await, 0);
        let secret = mailed_link(&app, "rita@example.com", "/password/reset/").await;
        assert!(secret.len() >= 32, "{secret}");
        assert_eq!(
            app.count(&format!("SELECT COUNT(*) FROM users WHERE reset_token_hash LIKE '%{secret}%'")).await,
            0,
            "only a hash of the link rests in the database"
        );
        assert!(signed_in(&before).await, "asking for a link ends nothing");

        let browser = app.browser();
        let path = format!("/password/reset/{secret}");
        let page = browser.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.body.contains("rita@example.com"));
        let mismatch = browser
            .submit(&path, &path, &[("new_password", "the chosen new one"), ("new_password_confirm", "a different one")])
            .await;
        assert_eq!(mismatch.status, StatusCode::UNPROCESSABLE_ENTITY, "a refusal keeps the link");
        let done = browser
            .submit(&path, &path, &[("new_password", "the chosen new one"), ("new_password_confirm", "the chosen new one")])
            .await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
        assert_eq!(done.location(), "/login?reset=done");
        assert!(!signed_in(&before).await, "the sessions from before end");
        assert_eq!(old_token.get("/api/v1/apps").await.status, StatusCode::UNAUTHORIZED, "and the tokens");
        token(&app, "rita@example.com", "the chosen new one").await;

        let again = browser.get(&path).await;
        assert_eq!(again.status, StatusCode::NOT_FOUND, "a link works once");
        assert!(again.body.contains("ask for a new one"), "{}", again.body);

        // A link older than an hour opens nothing.
        anonymous.post("/api/v1/password/forgot", json!({"email": "rita@example.com"})).await;
        let late = mailed_link(&app, "rita@example.com", "/password/reset/").await;
        assert_ne!(late, secret);
        sqlx::query("UPDATE users SET reset_expires_at = reset_expires_at - 3601 WHERE email = 'rita@example.com'")
            .execute(&app.db)
            .await
            .unwrap();
        assert_eq!(browser.get(&format!("/password/reset/{late}")).await.status, StatusCode::NOT_FOUND);
        token(&app, "rita@example.com", "the chosen new one").await;
    }
}

db_test! {
    async fn a_new_address_uploads_and_opens_tickets_only_once_confirmed(app) {
        let browser = app.browser();
        let resp = browser
            .submit("/signup", "/signup", &[
                ("email", "newt@example.com"),
                ("password", "correct horse battery"),
                ("password_confirm", "correct horse battery"),
            ])
            .await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER, "{}", resp.body);
        let api = token(&app, "newt@example.com", "correct horse battery").await;
        api.create_app("shop", &["www.example.com"]).await;
        let leaf = pki::leaf(&["www.example.com"], &pki::root("Test Root"), Alg::P256);
        let upload = api.upload("shop", leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), b"").await;
        assert_eq!(upload.status, StatusCode::FORBIDDEN, "{}", upload.body);
        assert_eq!(upload.code(), "email_unverified");
        assert!(upload.json["errors"][0]["message"].as_str().unwrap().contains("Confirm your email address"), "{}", upload.body);
        let ticket = api.post("/api/v1/tickets", json!({"app": "shop", "kind": "provision"})).await;
        assert_eq!(ticket.status, StatusCode::FORBIDDEN, "{}", ticket.body);
        assert_eq!(ticket.code(), "email_unverified");
        assert_eq!(app.count("SELECT COUNT(*) FROM certificates").await, 0);
        assert!(browser.get("/account/security").await.body.contains("/account/verify/resend"));

        let secret = mailed_link(&app, "newt@example.com", "/account/verify/").await;
        let path = format!("/account/verify/{secret}");
        // Opening the link (a mail scanner does) changes nothing; the button does.
        assert_eq!(browser.get(&path).await.status, StatusCode::OK);
        assert_eq!(api.upload("shop", leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), b"").await.code(), "email_unverified");
        let confirmed = browser.submit(&path, &path, &[]).await;
        assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.body);
        assert!(confirmed.body.contains("newt@example.com"));
        let id = api.upload_id("shop", &leaf, b"").await;
        api.open_ticket("shop", "provision", Some(id)).await;
        let used = browser.submit(&path, &path, &[]).await;
        assert_eq!(used.status, StatusCode::NOT_FOUND, "a confirmation link works once");
    }
}

db_test! {
    async fn a_disabled_account_stops_at_once_everywhere_and_signs_in_again_when_enabled(app) {
        let admin = app.api_user("ada@example.com", Role::Admin).await;
        let pw = app.user("dan@example.com", Role::Customer).await;
        let browser = app.browser();
        app.log_in(&browser, "dan@example.com", &pw).await;
        let dan = token(&app, "dan@example.com", &pw).await;
        let id = app.user_id("dan@example.com").await;

        assert_eq!(dan.post(&format!("/api/v1/users/{}/disable", app.user_id("ada@example.com").await), json!({})).await.status, StatusCode::FORBIDDEN, "a customer disables nobody");
        let own = admin.post(&format!("/api/v1/users/{}/disable", app.user_id("ada@example.com").await), json!({})).await;
        assert_eq!((own.status, own.code()), (StatusCode::CONFLICT, "own_account"));

        let disabled = admin.post(&format!("/api/v1/users/{id}/disable"), json!({})).await;
        assert_eq!(disabled.status, StatusCode::OK, "{}", disabled.body);
        assert!(disabled.json["disabled_at"].is_string());
        assert!(!signed_in(&browser).await, "the live session stops at its next request");
        assert_eq!(dan.get("/api/v1/apps").await.status, StatusCode::UNAUTHORIZED, "and the token");
        let again = app.api_anonymous().post("/api/v1/tokens", json!({"email": "dan@example.com", "password": pw})).await;
        assert_eq!((again.status, again.code()), (StatusCode::FORBIDDEN, "account_disabled"), "{}", again.body);
        let login = app.browser().log_in("dan@example.com", &pw).await;
        assert_eq!(login.status, StatusCode::FORBIDDEN);
        assert!(login.body.contains("disabled"), "{}", login.body);
        let reset = app.api_anonymous().post("/api/v1/password/forgot", json!({"email": "dan@example.com"})).await;
        assert_eq!(reset.status, StatusCode::ACCEPTED);
        assert_eq!(mails_to(&app, "dan@example.com", "%reset%").await, 0, "a disabled account gets no reset link");
        assert_eq!(app.count(&format!("SELECT COUNT(*) FROM audit_events WHERE action = 'user.disabled' AND object_id = '{id}'")).await, 1);

        let enabled = admin.post(&format!("/api/v1/users/{id}/enable"), json!({})).await;
        assert_eq!(enabled.status, StatusCode::OK, "{}", enabled.body);
        assert!(enabled.json["disabled_at"].is_null());
        assert_eq!(dan.get("/api/v1/apps").await.status, StatusCode::UNAUTHORIZED, "what ended stays ended");
        token(&app, "dan@example.com", &pw).await;
        let browser = app.browser();
        app.log_in(&browser, "dan@example.com", &pw).await;
        assert!(signed_in(&browser).await);
    }
}

db_test! {
    async fn a_second_factor_reset_takes_two_admins_and_mails_the_staff_member_an_enrolment_link(app) {
        let first = app.api_user("ada@example.com", Role::Admin).await;
        let second = app.api_user("abe@example.com", Role::Admin).await;
        let staff = app.api_user("sam@example.com", Role::Staff).await;
        let id = app.user_id("sam@example.com").await;
        let path = format!("/api/v1/users/{id}/second-factor/reset");

        assert_eq!(staff.post(&path, json!({})).await.status, StatusCode::FORBIDDEN, "staff reset nobody's");
        let asked = first.post(&path, json!({})).await;
        assert_eq!(asked.status, StatusCode::ACCEPTED, "{}", asked.body);
        assert_eq!(asked.json["state"], "requested");
        let twice = first.post(&path, json!({})).await;
        assert_eq!((twice.status, twice.code()), (StatusCode::CONFLICT, "second_admin_required"));
        assert_eq!(staff.get("/api/v1/tickets").await.status, StatusCode::OK, "one admin alone changes nothing");
        assert_eq!(app.count("SELECT COUNT(*) FROM users WHERE email = 'sam@example.com' AND totp_enabled_at IS NOT NULL").await, 1);

        let done = second.post(&path, json!({})).await;
        assert_eq!(done.status, StatusCode::OK, "{}", done.body);
        assert_eq!(done.json["state"], "reset");
        assert_eq!(app.count("SELECT COUNT(*) FROM users WHERE email = 'sam@example.com' AND totp_enabled_at IS NULL AND totp_sealed IS NULL").await, 1);
        assert_eq!(app.count(&format!("SELECT COUNT(*) FROM recovery_codes WHERE user_id = {id}")).await, 0);
        assert_eq!(staff.get("/api/v1/tickets").await.status, StatusCode::UNAUTHORIZED, "the old token ends");
        let link = mailed_link(&app, "sam@example.com", "/account/enrol/").await;
        assert!(link.len() >= 32);
        assert_eq!(app.count("SELECT COUNT(*) FROM audit_events WHERE action = 'user.second_factor_reset'").await, 1);
    }
}

db_test! {
    async fn the_sessions_list_names_each_session_and_ends_one_or_all(app) {
        let pw = app.user("sol@example.com", Role::Customer).await;
        let (mine, other) = (app.browser(), app.browser());
        app.log_in(&mine, "sol@example.com", &pw).await;
        app.log_in(&other, "sol@example.com", &pw).await;
        let stranger = app.signed_in_browser("tom@example.com", Role::Customer).await;

        let page = mine.get("/account/security").await.body;
        assert!(page.contains("this browser"));
        let marker = "action=\"/account/sessions/";
        let ends: Vec<&str> = page
            .match_indices(marker)
            .map(|(at, _)| &page[at + marker.len()..])
            .map(|rest| &rest[..rest.find('"').unwrap()])
            .filter(|action| action.ends_with("/end"))
            .collect();
        assert_eq!(ends.len(), 1, "one other session to end: {ends:?}");
        let action = format!("/account/sessions/{}", ends[0]);
        assert!(!action.contains(&other.session_cookie().unwrap()), "the list never shows a cookie");

        let foreign = stranger.submit("/account/security", &action, &[]).await;
        assert_eq!(foreign.status, StatusCode::NOT_FOUND, "nobody ends another account's session");
        assert!(signed_in(&other).await);
        let ended = mine.submit("/account/security", &action, &[]).await;
        assert_eq!(ended.status, StatusCode::SEE_OTHER, "{}", ended.body);
        assert!(!signed_in(&other).await);
        assert!(signed_in(&mine).await);

        let third = app.browser();
        app.log_in(&third, "sol@example.com", &pw).await;
        let all = mine.submit("/account/security", "/account/sessions/end-all", &[]).await;
        assert_eq!(all.status, StatusCode::SEE_OTHER, "{}", all.body);
        assert_eq!(all.location(), "/login");
        assert!(!signed_in(&third).await && !signed_in(&mine).await, "everywhere, this browser too");
        assert!(signed_in(&stranger).await, "another account's sessions go on");
    }
}
