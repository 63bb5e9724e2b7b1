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
