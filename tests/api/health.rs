use reqwest::StatusCode;

use crate::db_test;

db_test! {
    async fn health_and_readiness_answer(app) {
        let api = app.api_anonymous();
        assert_eq!(api.get("/healthz").await.status, StatusCode::OK);
        assert_eq!(api.get("/readyz").await.status, StatusCode::OK);
    }
}

db_test! {
    async fn every_response_carries_the_security_headers_and_a_request_id(app) {
        let resp = app.browser().get("/login").await;
        let h = |name: &str| resp.headers.get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        assert!(h("content-security-policy").contains("default-src 'none'"));
        assert!(!h("content-security-policy").contains("unsafe-inline"));
        assert_eq!(h("x-frame-options"), "DENY");
        assert_eq!(h("referrer-policy"), "same-origin");
        assert!(!h("x-request-id").is_empty());
    }
}

db_test! {
    async fn unknown_routes_answer_404_as_json_under_the_api_and_as_a_page_elsewhere(app) {
        let api = app.api_anonymous();
        let resp = api.get("/api/v1/nothing-here").await;
        assert_eq!(resp.status, StatusCode::NOT_FOUND);
        assert_eq!(resp.code(), "not_found");
        let page = app.browser().get("/nothing-here").await;
        assert_eq!(page.status, StatusCode::NOT_FOUND);
        assert!(page.body.contains("<html"));
    }
}

db_test! {
    async fn the_openapi_document_is_served_and_parses(app) {
        let resp = app.api_anonymous().get("/api/v1/openapi.json").await;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.json["openapi"], "3.0.3");
        assert!(resp.json["paths"]["/api/v1/apps"].is_object());
    }
}

/// schemathesis (PyPI) against the served OpenAPI document with a customer's token: a bounded
/// run, zero server errors and zero answers the document does not describe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_as_its_openapi_document_says_under_schemathesis() {
    let available = std::process::Command::new("st")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !crate::common::require_or_skip("schemathesis (pip install schemathesis)", available) {
        return;
    }
    let app = crate::common::TestApp::spawn(crate::common::Backend::Sqlite)
        .await
        .unwrap();
    let ann = app
        .api_user("ann@example.com", certdrop::accounts::Role::Customer)
        .await;
    ann.create_app("shop", &["www.example.com"]).await;
    let token = ann.token.clone().unwrap();
    // schemathesis keeps a cache in its working directory: a temporary one, not the repository.
    let workdir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new("st")
        .current_dir(workdir.path())
        .args(["run", &app.url("/api/v1/openapi.json")])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "50"])
        // Revoking the test's own token would end the run early; it is tested elsewhere.
        .args(["--exclude-path", "/api/v1/tokens/{id}"])
        .args(["--seed", "20261125"])
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("passed"), "{report}");
}

crate::db_test! {
    async fn every_api_refusal_has_the_errors_shape_and_limits_are_enforced(app) {
        let ann = app.api_user("ann@example.com", certdrop::accounts::Role::Customer).await;
        let resp = ann.get("/api/v1/apps?limit=201").await;
        assert_eq!(resp.status, reqwest::StatusCode::BAD_REQUEST);
        assert_eq!(resp.code(), "invalid_limit");
        let raw = reqwest::Client::new()
            .post(app.url("/api/v1/apps"))
            .bearer_auth(ann.token.as_deref().unwrap())
            .header("content-type", "text/plain")
            .body("name=shop")
            .send()
            .await
            .unwrap();
        assert_eq!(raw.status(), reqwest::StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let body: serde_json::Value = raw.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "unsupported_media_type");
        let broken = reqwest::Client::new()
            .post(app.url("/api/v1/apps"))
            .bearer_auth(ann.token.as_deref().unwrap())
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(broken.status(), reqwest::StatusCode::BAD_REQUEST);
        let body: serde_json::Value = broken.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "bad_request");
        assert!(body["errors"][0]["message"].as_str().unwrap().contains("JSON"));
    }
}
