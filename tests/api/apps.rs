use certdrop::accounts::Role;
use reqwest::StatusCode;
use serde_json::json;

use crate::{common::Resp, db_test};

db_test! {
    async fn a_customer_creates_an_app_and_adds_domains(app) {
        let api = app.api_user("ann@example.com", Role::Customer).await;
        let resp = api.post("/api/v1/apps", json!({"name": "Shop", "backend_url": "http://10.0.0.5:8000/"})).await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        assert_eq!(resp.json["name"], "shop");
        assert_eq!(resp.json["backend_url"], "http://10.0.0.5:8000");
        for host in ["WWW.Example.com", "*.shop.example.com", "bücher.example"] {
            let resp = api.post("/api/v1/apps/shop/domains", json!({"hostname": host})).await;
            assert_eq!(resp.status, StatusCode::CREATED, "{host}: {}", resp.body);
        }
        let list = api.get("/api/v1/apps/shop/domains").await;
        let hosts: Vec<&str> = list.json["items"].as_array().unwrap().iter().map(|d| d["hostname"].as_str().unwrap()).collect();
        assert_eq!(hosts, ["www.example.com", "*.shop.example.com", "xn--bcher-kva.example"]);
        let apps = api.get("/api/v1/apps").await;
        assert_eq!(apps.json["items"][0]["domains"].as_array().unwrap().len(), 3);
        assert_eq!(app.count("SELECT COUNT(*) FROM audit_events WHERE action = 'domain.added' AND app = 'shop'").await, 3);
    }
}

db_test! {
    async fn invalid_names_urls_and_hostnames_are_refused_with_every_problem(app) {
        let api = app.api_user("ann@example.com", Role::Customer).await;
        let resp = api.post("/api/v1/apps", json!({"name": "x", "backend_url": "ftp://nowhere"})).await;
        assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY);
        let codes: Vec<&str> = resp.json["errors"].as_array().unwrap().iter().map(|e| e["code"].as_str().unwrap()).collect();
        assert_eq!(codes, ["invalid_app_name", "invalid_backend_url"]);
        api.create_app("shop", &[]).await;
        for bad in ["www.*.example.com", "localhost", "https://example.com/", "10.1.2.3", "a_b.example.com"] {
            let resp = api.post("/api/v1/apps/shop/domains", json!({"hostname": bad})).await;
            assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
            assert_eq!(resp.code(), "invalid_hostname");
        }
        assert_eq!(app.count("SELECT COUNT(*) FROM domains").await, 0);
    }
}

db_test! {
    async fn a_domain_belongs_to_one_app_across_all_customers(app) {
        let ann = app.api_user("ann@example.com", Role::Customer).await;
        let bob = app.api_user("bob@example.com", Role::Customer).await;
        ann.create_app("ann-shop", &["www.example.com"]).await;
        bob.create_app("bob-shop", &[]).await;
        let resp = bob.post("/api/v1/apps/bob-shop/domains", json!({"hostname": "WWW.example.com"})).await;
        assert_eq!(resp.status, StatusCode::CONFLICT);
        assert_eq!(resp.code(), "domain_taken");
        assert!(!resp.body.contains("ann-shop"), "the other app's name does not leak");
        let resp = ann.post("/api/v1/apps/ann-shop/domains", json!({"hostname": "www.example.com"})).await;
        assert_eq!(resp.status, StatusCode::CONFLICT);
        assert_eq!(resp.code(), "domain_exists");
        let resp = bob.post("/api/v1/apps", json!({"name": "ann-shop", "backend_url": "http://127.0.0.1:9"})).await;
        assert_eq!(resp.status, StatusCode::CONFLICT);
        assert_eq!(resp.code(), "app_name_taken");
    }
}

db_test! {
    async fn a_customer_can_neither_read_nor_change_another_customers_app(app) {
        let ann = app.api_user("ann@example.com", Role::Customer).await;
        let bob = app.api_user("bob@example.com", Role::Customer).await;
        ann.create_app("ann-shop", &["www.example.com"]).await;

        assert_eq!(bob.get("/api/v1/apps/ann-shop").await.status, StatusCode::NOT_FOUND);
        assert_eq!(bob.get("/api/v1/apps/ann-shop/domains").await.status, StatusCode::NOT_FOUND);
        assert_eq!(bob.post("/api/v1/apps/ann-shop/domains", json!({"hostname": "x.example.com"})).await.status, StatusCode::NOT_FOUND);
        assert_eq!(bob.delete("/api/v1/apps/ann-shop/domains/www.example.com").await.status, StatusCode::NOT_FOUND);
        assert_eq!(bob.delete("/api/v1/apps/ann-shop").await.status, StatusCode::NOT_FOUND);
        let listed = bob.get("/api/v1/apps").await;
        assert_eq!(listed.json["items"].as_array().unwrap().len(), 0);
        // The answer for someone else's app is the answer for no app at all.
        assert_eq!(bob.get("/api/v1/apps/ann-shop").await.body, bob.get("/api/v1/apps/no-such-app").await.body);

        let browser = app.signed_in_browser("cid@example.com", Role::Customer).await;
        assert_eq!(browser.get("/apps/ann-shop").await.status, StatusCode::NOT_FOUND);
        let resp = browser.submit("/apps", "/apps/ann-shop/delete", &[]).await;
        assert_eq!(resp.status, StatusCode::NOT_FOUND);
        let resp = browser.submit("/apps", "/apps/ann-shop/domains/remove", &[("hostname", "www.example.com")]).await;
        assert_eq!(resp.status, StatusCode::NOT_FOUND);
        assert_eq!(app.count("SELECT COUNT(*) FROM apps").await, 1);
        assert_eq!(app.count("SELECT COUNT(*) FROM domains").await, 1);
    }
}

db_test! {
    async fn staff_see_every_customers_apps(app) {
        let ann = app.api_user("ann@example.com", Role::Customer).await;
        ann.create_app("ann-shop", &["www.example.com"]).await;
        let staff = app.api_user("sam@example.com", Role::Staff).await;
        let listed = staff.get("/api/v1/apps").await;
        assert_eq!(listed.json["items"][0]["owner"], "ann@example.com");
        assert_eq!(staff.get("/api/v1/apps/ann-shop").await.status, StatusCode::OK);
        let browser = app.signed_in_browser("sid@example.com", Role::Staff).await;
        let page = browser.get("/apps").await;
        assert!(page.body.contains("ann-shop") && page.body.contains("All apps"));
    }
}

db_test! {
    async fn listings_are_paginated_with_a_cursor(app) {
        let api = app.api_user("ann@example.com", Role::Customer).await;
        for name in ["app-one", "app-two", "app-three"] {
            api.create_app(name, &[]).await;
        }
        let first = api.get("/api/v1/apps?limit=2").await;
        assert_eq!(first.json["items"].as_array().unwrap().len(), 2);
        let cursor = first.json["next_cursor"].as_str().unwrap();
        let second = api.get(&format!("/api/v1/apps?limit=2&cursor={cursor}")).await;
        assert_eq!(second.json["items"][0]["name"], "app-three");
        assert!(second.json["next_cursor"].is_null());
        assert_eq!(api.get("/api/v1/apps?cursor=nonsense").await.code(), "invalid_cursor");
    }
}

db_test! {
    async fn a_customer_manages_apps_and_domains_in_the_browser(app) {
        let browser = app.signed_in_browser("ann@example.com", Role::Customer).await;
        let page = browser.get("/apps").await;
        assert!(page.body.contains("No apps yet"));
        let resp = browser.submit("/apps", "/apps", &[("name", "shop"), ("backend_url", "http://10.0.0.5:8000")]).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER);
        assert_eq!(resp.location(), "/apps/shop");
        let resp = browser.submit("/apps/shop", "/apps/shop/domains", &[("hostname", "not a host")]).await;
        assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(resp.body.contains("id=\"hostname-error\""), "the error sits next to its field");
        let resp = browser.submit("/apps/shop", "/apps/shop/domains", &[("hostname", "www.example.com")]).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER);
        let page = browser.get("/apps/shop").await;
        assert!(page.body.contains("www.example.com added."));
        let resp = browser.submit("/apps/shop", "/apps/shop/domains/remove", &[("hostname", "www.example.com")]).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER);
        let resp = browser.submit("/apps/shop", "/apps/shop/delete", &[]).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER);
        assert_eq!(app.count("SELECT COUNT(*) FROM apps").await, 0);
    }
}

db_test! {
    async fn a_refused_form_comes_back_on_its_page_and_a_reload_posts_nothing(app) {
        let browser = app.signed_in_browser("ann@example.com", Role::Customer).await;
        let fields = [("name", "Bad Name!"), ("backend_url", "http://10.0.0.5:8000")];
        let resp = browser.submit_from("/apps", "/apps", &fields).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER, "{}", resp.body);
        assert_eq!(resp.location(), "/apps", "back to the page that held the form");
        let page = browser.get("/apps").await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(page.body.contains("id=\"name-error\""), "the error sits next to its field: {}", page.body);
        assert!(page.body.contains("value=\"Bad Name!\""), "what was typed comes back");
        let reload = browser.get("/apps").await;
        assert_eq!(reload.status, StatusCode::OK, "a reload shows the page afresh");
        assert!(!reload.body.contains("name-error"));
        assert_eq!(app.count("SELECT COUNT(*) FROM apps").await, 0);

        // A refused domain comes back on the app page, not on /apps/shop/domains.
        browser.submit("/apps", "/apps", &[("name", "shop"), ("backend_url", "http://10.0.0.5:8000")]).await;
        let resp = browser.submit_from("/apps/shop", "/apps/shop/domains", &[("hostname", "not a host")]).await;
        assert_eq!((resp.status, resp.location()), (StatusCode::SEE_OTHER, "/apps/shop"));
        // Another page visited first: the kept answer is dropped, never shown on the wrong page.
        assert_eq!(browser.get("/apps").await.status, StatusCode::OK);
        let page = browser.get("/apps/shop").await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(!page.body.contains("hostname-error"));

        // A form posted from another site's page is answered in place (no redirect to it).
        let token = browser.csrf("/apps").await;
        let resp = Resp::read(
            browser.http.post(app.url("/apps"))
                .header("origin", &browser.base)
                .header("referer", "https://evil.example/apps")
                .form(&[("csrf_token", token.as_str()), ("name", "Bad Name!"), ("backend_url", "http://10.0.0.5:8000")])
                .send().await.unwrap(),
        ).await;
        assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY);
    }
}
