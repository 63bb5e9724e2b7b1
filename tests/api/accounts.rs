use certdrop::accounts::Role;
use reqwest::StatusCode;
use serde_json::json;

use crate::{common::csrf_in, db_test};

db_test! {
    async fn a_customer_signs_up_signs_out_and_signs_in_again_in_the_browser(app) {
        let browser = app.browser();
        let token = browser.csrf("/signup").await;
        let resp = browser
            .post_form("/signup", &[
                ("csrf_token", &token),
                ("email", "Ann@Example.com"),
                ("password", "correct horse battery"),
                ("password_confirm", "correct horse battery"),
            ])
            .await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER, "{}", resp.body);
        assert_eq!(resp.location(), "/apps");
        let page = browser.get("/apps").await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.body.contains("Welcome to certdrop"));
        assert!(page.body.contains("ann@example.com"));
        assert_eq!(app.count("SELECT COUNT(*) FROM users WHERE email = 'ann@example.com' AND role = 'customer'").await, 1);

        let token = csrf_in(&page.body).unwrap();
        let resp = browser.post_form("/logout", &[("csrf_token", &token)]).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER);
        let resp = browser.get("/apps").await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER);
        assert_eq!(resp.location(), "/login");

        let before = browser.csrf("/login").await;
        let cookie_before = browser.session_cookie();
        let resp = browser
            .post_form("/login", &[("csrf_token", &before), ("email", "ann@example.com"), ("password", "correct horse battery")])
            .await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER);
        assert_ne!(browser.session_cookie(), cookie_before, "the session id is renewed at login");
        assert_ne!(browser.csrf("/apps").await, before, "the CSRF token is renewed at login");
        assert_eq!(
            app.count("SELECT COUNT(*) FROM audit_events WHERE action = 'user.login' AND outcome = 'ok' AND source_ip = '127.0.0.1'").await,
            1
        );
    }
}

db_test! {
    async fn cookies_are_http_only_and_same_site_strict_and_visitors_store_no_session(app) {
        // A visitor's pages store nothing: their CSRF token lives in a cookie of its own.
        for _ in 0..20 {
            app.browser().get("/login").await;
            app.browser().get("/signup").await;
        }
        assert_eq!(app.count("SELECT COUNT(*) FROM sessions").await, 0, "no session row per anonymous GET");
        let resp = app.browser().get("/login").await;
        let cookie = resp.headers.get("set-cookie").unwrap().to_str().unwrap().to_string();
        assert!(cookie.starts_with("certdrop_csrf="), "{cookie}");
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(!cookie.contains("Secure"), "plain http base URL: no Secure flag");
        // Signing in stores the session, under a hash of its id.
        let pw = app.user("ann@example.com", Role::Customer).await;
        let browser = app.browser();
        let token = browser.csrf("/login").await;
        let resp = browser
            .post_form("/login", &[("csrf_token", &token), ("email", "ann@example.com"), ("password", &pw)])
            .await;
        let cookies: Vec<String> = resp.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
        let session = cookies.iter().find(|c| c.starts_with("certdrop_session=")).expect("a session cookie");
        assert!(session.contains("HttpOnly") && session.contains("SameSite=Strict"));
        let id = browser.session_cookie().unwrap();
        assert_eq!(app.count("SELECT COUNT(*) FROM sessions").await, 1);
        assert_eq!(app.count(&format!("SELECT COUNT(*) FROM sessions WHERE id = '{id}'")).await, 0, "ids are stored hashed");
        // A form posted without the visitor's cookie token (another site's form) is refused.
        let stranger = app.browser();
        let resp = stranger.post_form("/login", &[("csrf_token", &token), ("email", "ann@example.com"), ("password", &pw)]).await;
        assert_eq!(resp.status, StatusCode::FORBIDDEN);
    }
}

db_test! {
    async fn sign_out_ends_the_session_on_the_server(app) {
        let browser = app.signed_in_browser("ann@example.com", Role::Customer).await;
        let stolen = browser.session_cookie().unwrap();
        let token = browser.csrf("/apps").await;
        browser.post_form("/logout", &[("csrf_token", &token)]).await;
        // Replaying the old cookie from another client finds no session.
        let resp = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .get(app.url("/apps"))
            .header("cookie", format!("certdrop_session={stolen}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    }
}

db_test! {
    async fn a_form_post_without_a_csrf_token_is_refused_and_changes_nothing(app) {
        let browser = app.signed_in_browser("ann@example.com", Role::Customer).await;
        let resp = browser
            .post_form("/apps", &[("name", "shop"), ("backend_url", "http://127.0.0.1:9")])
            .await;
        assert_eq!(resp.status, StatusCode::FORBIDDEN);
        assert!(resp.body.contains("reload the page"));
        let resp = browser
            .post_form("/apps", &[("csrf_token", "forged"), ("name", "shop"), ("backend_url", "http://127.0.0.1:9")])
            .await;
        assert_eq!(resp.status, StatusCode::FORBIDDEN);
        assert_eq!(app.count("SELECT COUNT(*) FROM apps").await, 0);
    }
}

db_test! {
    async fn a_form_post_from_another_origin_is_refused_even_with_a_token(app) {
        let browser = app.signed_in_browser("ann@example.com", Role::Customer).await;
        let token = browser.csrf("/apps").await;
        let resp = browser
            .http
            .post(app.url("/apps"))
            .header("origin", "https://evil.example")
            .form(&[("csrf_token", token.as_str()), ("name", "shop"), ("backend_url", "http://127.0.0.1:9")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(app.count("SELECT COUNT(*) FROM apps").await, 0);
    }
}

db_test! {
    async fn signing_up_with_a_short_password_shows_the_error_next_to_the_field(app) {
        let browser = app.browser();
        let resp = browser
            .submit("/signup", "/signup", &[("email", "ann@example.com"), ("password", "short"), ("password_confirm", "short")])
            .await;
        assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(resp.body.contains("id=\"password-error\""));
        assert!(resp.body.contains("at least 12 characters"));
        assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);
    }
}

db_test! {
    async fn an_api_token_is_created_shown_once_and_stored_as_a_hash(app) {
        let pw = app.user("ann@example.com", Role::Customer).await;
        let resp = app
            .api_anonymous()
            .post("/api/v1/tokens", json!({"email": "ann@example.com", "password": pw, "name": "laptop"}))
            .await;
        assert_eq!(resp.status, StatusCode::CREATED);
        let token = resp.json["token"].as_str().unwrap().to_string();
        assert!(token.starts_with("cdp_") && token.len() > 40);
        let stored: String = sqlx::query_scalar("SELECT token_hash FROM api_tokens")
            .fetch_one(&app.db)
            .await
            .unwrap();
        assert_eq!(stored, certdrop::accounts::tokens::hash(&token));
        let rows = app.count(&format!("SELECT COUNT(*) FROM api_tokens WHERE token_hash = '{token}' OR hint = '{token}'")).await;
        assert_eq!(rows, 0, "the token itself is not stored");
        let mut api = app.api_anonymous();
        api.token = Some(token);
        let listed = api.get("/api/v1/tokens").await;
        assert_eq!(listed.status, StatusCode::OK);
        assert_eq!(listed.json["items"][0]["name"], "laptop");
        assert!(!listed.body.contains(api.token.as_deref().unwrap()));
        assert_eq!(app.count("SELECT COUNT(*) FROM audit_events WHERE action = 'token.created'").await, 1);
    }
}

db_test! {
    async fn a_bad_password_and_an_unknown_email_answer_identically(app) {
        app.user("ann@example.com", Role::Customer).await;
        let api = app.api_anonymous();
        let wrong = api.post("/api/v1/tokens", json!({"email": "ann@example.com", "password": "not the password"})).await;
        let unknown = api.post("/api/v1/tokens", json!({"email": "nobody@example.com", "password": "not the password"})).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
        assert_eq!(wrong.body, unknown.body);
        assert_eq!(wrong.code(), "bad_credentials");

        let browser = app.browser();
        let a = browser.submit("/login", "/login", &[("email", "ann@example.com"), ("password", "not the password")]).await;
        let b = browser.submit("/login", "/login", &[("email", "nobody@example.com"), ("password", "not the password")]).await;
        assert_eq!(a.status, b.status);
        assert_eq!(
            a.body.replace("ann@example.com", "EMAIL"),
            b.body.replace("nobody@example.com", "EMAIL")
        );
    }
}

db_test! {
    async fn repeated_failed_logins_are_rate_limited_with_a_wait_time(app) {
        app.user("ann@example.com", Role::Customer).await;
        let api = app.api_anonymous();
        for _ in 0..5 {
            let resp = api.post("/api/v1/tokens", json!({"email": "ann@example.com", "password": "guess guess guess"})).await;
            assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
        }
        let resp = api.post("/api/v1/tokens", json!({"email": "ann@example.com", "password": "guess guess guess"})).await;
        assert_eq!(resp.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.code(), "rate_limited");
        assert!(resp.json["errors"][0]["message"].as_str().unwrap().contains("Try again in"));
        assert!(resp.headers.get("retry-after").is_some());
        let browser = app.browser();
        let page = browser.submit("/login", "/login", &[("email", "ann@example.com"), ("password", "guess guess guess")]).await;
        assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(page.body.contains("Try again in"));
    }
}

db_test! {
    async fn a_revoked_token_no_longer_authenticates(app) {
        let api = app.api_user("ann@example.com", Role::Customer).await;
        let id = api.get("/api/v1/tokens").await.json["items"][0]["id"].as_i64().unwrap();
        assert_eq!(api.delete(&format!("/api/v1/tokens/{id}")).await.status, StatusCode::NO_CONTENT);
        let resp = api.get("/api/v1/apps").await;
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
        assert_eq!(resp.code(), "unauthorized");
    }
}

db_test! {
    async fn a_customer_manages_tokens_in_the_browser(app) {
        let browser = app.signed_in_browser("ann@example.com", Role::Customer).await;
        let resp = browser.submit("/account/tokens", "/account/tokens", &[("name", "ci deploys")]).await;
        assert_eq!(resp.status, StatusCode::CREATED);
        assert!(resp.body.contains("cdp_"), "the new token is shown once");
        let page = browser.get("/account/tokens").await;
        assert!(page.body.contains("ci deploys"));
        assert!(!page.body.contains("value=\"cdp_"), "and never again");
        let id: i64 = sqlx::query_scalar("SELECT id FROM api_tokens").fetch_one(&app.db).await.unwrap();
        let resp = browser.submit("/account/tokens", &format!("/account/tokens/{id}/revoke"), &[]).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER);
        assert_eq!(app.count("SELECT COUNT(*) FROM api_tokens WHERE revoked_at IS NOT NULL").await, 1);
    }
}

db_test! {
    async fn a_customer_cannot_reach_staff_or_admin_pages(app) {
        let browser = app.signed_in_browser("ann@example.com", Role::Customer).await;
        assert_eq!(browser.get("/admin/users").await.status, StatusCode::FORBIDDEN);
        assert_eq!(browser.get("/admin/audit").await.status, StatusCode::FORBIDDEN);
        let staff = app.signed_in_browser("sam@example.com", Role::Staff).await;
        assert_eq!(staff.get("/admin/users").await.status, StatusCode::FORBIDDEN);
        let admin = app.signed_in_browser("ada@example.com", Role::Admin).await;
        let page = admin.get("/admin/users").await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.body.contains("ann@example.com"));
        assert_eq!(admin.get("/admin/audit?action=user.login").await.status, StatusCode::OK);
    }
}

db_test! {
    async fn an_admin_changes_a_role_and_the_change_is_audited(app) {
        let admin = app.signed_in_browser("ada@example.com", Role::Admin).await;
        app.user("ann@example.com", Role::Customer).await;
        let id: i64 = sqlx::query_scalar("SELECT id FROM users WHERE email = 'ann@example.com'")
            .fetch_one(&app.db)
            .await
            .unwrap();
        let customer = app.signed_in_browser("cid@example.com", Role::Customer).await;
        let refused = customer.submit("/apps", &format!("/admin/users/{id}/role"), &[("role", "admin")]).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        // A raise takes two admins: the first one's change is only a request.
        let resp = admin.submit("/admin/users", &format!("/admin/users/{id}/role"), &[("role", "staff")]).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER);
        assert_eq!(app.count("SELECT COUNT(*) FROM users WHERE email = 'ann@example.com' AND role = 'staff'").await, 0);
        assert!(admin.get("/admin/users").await.body.contains("staff asked by ada@example.com"));
        let again = admin.submit("/admin/users", &format!("/admin/users/{id}/role"), &[("role", "staff")]).await;
        assert_eq!(again.status, StatusCode::CONFLICT);
        assert!(again.body.contains("another admin must approve it"), "{}", again.body);
        let ben = app.signed_in_browser("ben@example.com", Role::Admin).await;
        let resp = ben.submit("/admin/users", &format!("/admin/users/{id}/role"), &[("role", "staff")]).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER);
        assert_eq!(app.count("SELECT COUNT(*) FROM users WHERE email = 'ann@example.com' AND role = 'staff'").await, 1);
        let detail: String = sqlx::query_scalar("SELECT detail FROM audit_events WHERE action = 'user.role_changed'")
            .fetch_one(&app.db)
            .await
            .unwrap();
        assert_eq!(detail, r#"{"from":"customer","requested_by":"ada@example.com","to":"staff"}"#);
        // Lowering a role takes one admin.
        let resp = admin.submit("/admin/users", &format!("/admin/users/{id}/role"), &[("role", "customer")]).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER);
        assert_eq!(app.count("SELECT COUNT(*) FROM users WHERE email = 'ann@example.com' AND role = 'customer'").await, 1);
        let page = admin.get("/admin/audit?action=user.role_changed").await;
        assert!(page.body.contains("user.role_changed"));
    }
}

db_test! {
    async fn a_login_form_never_redirects_off_site(app) {
        let pw = app.user("ann@example.com", Role::Customer).await;
        let browser = app.browser();
        let token = browser.csrf("/login").await;
        let resp = browser
            .post_form("/login", &[("csrf_token", &token), ("email", "ann@example.com"), ("password", &pw), ("next", "//evil.example/")])
            .await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER);
        assert_eq!(resp.location(), "/apps");
    }
}
