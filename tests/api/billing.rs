//! Billing: a provision then a removal bill one prorated interval, once, however the deployment
//! went; a month boundary splits a holding; customers read only their own; the CSV parses with
//! a standard reader and adds up to the statement; a 100,000-event export streams.

use certdrop::accounts::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::{Api, Backend, ServerProcess, TestApp, TestDatabase},
    db_test,
    edge::{start_pair, wait_ticket},
    edge_support::echo_backend,
    pki::{self, Alg},
};

fn parse_csv(body: &str) -> Vec<csv::StringRecord> {
    let mut reader = csv::Reader::from_reader(body.as_bytes());
    let header = reader.headers().unwrap().clone();
    assert_eq!(
        header.iter().collect::<Vec<_>>(),
        [
            "month",
            "customer_email",
            "app",
            "pair",
            "from",
            "to",
            "seconds",
            "unit_price_cents",
            "currency",
            "amount_cents"
        ],
        "the documented column order"
    );
    reader.records().map(|r| r.unwrap()).collect()
}

async fn export(api: &Api, month: &str, format: &str) -> crate::common::Resp {
    api.get(&format!(
        "/api/v1/billing/export?month={month}&format={format}"
    ))
    .await
}

db_test! {
    async fn provision_then_remove_bills_one_prorated_interval_once(app) {
        let staff = app.api_user("sam@example.com", Role::Staff).await;
        let sue = app.api_user("sue@example.com", Role::Staff).await;
        let admin = app.api_user("ada@example.com", Role::Admin).await;
        let (ops, keys) = app.crew().await;
        let _nodes = start_pair(&app.address, ops, keys, "edge-b").await;
        let backend = echo_backend().await;
        let ann = app.api_user("ann@example.com", Role::Customer).await;
        ann.post("/api/v1/apps", json!({"name": "shop", "backend_url": format!("http://{backend}")})).await;
        ann.add_domain("shop", "www.example.com").await;
        let leaf = pki::leaf(&["www.example.com"], &pki::root("Billing Root"), Alg::P256);
        let cert = ann.upload_id("shop", &leaf, b"").await;

        let id = ann.open_ticket("shop", "provision", Some(cert)).await;
        // Two staff approve at once: one approval, one deployment, one bill.
        let path = format!("/api/v1/tickets/{id}/approve");
        let (a, b) = tokio::join!(staff.post(&path, json!({})), sue.post(&path, json!({})));
        assert!(a.status == StatusCode::OK || b.status == StatusCode::OK);
        wait_ticket(&ann, id, "deployed").await;
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let id = ann.open_ticket("shop", "remove", None).await;
        staff.post(&format!("/api/v1/tickets/{id}/approve"), json!({})).await;
        wait_ticket(&ann, id, "deployed").await;

        let events = ann.get("/api/v1/billing/events").await.json;
        let events = events["items"].as_array().unwrap();
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0]["kind"], "edge_pair.provisioned");
        assert_eq!(events[1]["kind"], "edge_pair.released");
        assert_eq!(events[0]["unit_price_cents"], 2000);
        assert_eq!(events[0]["currency"], "USD");
        assert_eq!(events[0]["pair"], "edge-b");
        assert_eq!(events[0]["customer_email"], "ann@example.com");
        let at = |e: &Value| time::OffsetDateTime::parse(e["occurred_at"].as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap().unix_timestamp();
        let held = at(&events[1]) - at(&events[0]);
        assert!(held >= 1);

        let month = certdrop::billing::statement::Month::containing(at(&events[0]));
        let statement = export(&ann, &month.label(), "json").await;
        assert_eq!(statement.status, StatusCode::OK, "{}", statement.body);
        let lines = statement.json["lines"].as_array().unwrap();
        assert_eq!(lines.len(), 1, "one interval");
        assert_eq!(lines[0]["seconds"], held);
        assert_eq!(lines[0]["open"], false);
        assert_eq!(lines[0]["customer_email"], "ann@example.com");
        let expected = certdrop::billing::statement::prorate(2000, held, month.seconds());
        assert_eq!(lines[0]["amount_cents"], expected);
        assert_eq!(statement.json["total_cents"], expected);

        let csv = export(&admin, &month.label(), "csv").await;
        assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
        let rows = parse_csv(&csv.body);
        assert_eq!(rows.len(), 1);
        assert_eq!(&rows[0][1], "ann@example.com");
        assert_eq!(rows[0][6].parse::<i64>().unwrap(), held);
        let header = csv.body.lines().next().unwrap();
        for column in header.split(',').filter(|c| *c != "month") {
            assert!(lines[0].get(column).is_some(), "the JSON export names {column} as the CSV does");
        }
        assert_eq!(app.count("SELECT COUNT(*) FROM billing_events").await, 2, "billed once for each end of the interval");
    }
}

/// Inserts an event directly, as deployments do (for dates the test cannot wait for).
async fn event(
    app: &TestApp,
    key: &str,
    kind: &str,
    customer: (i64, &str),
    app_name: (i64, &str),
    at: i64,
) {
    sqlx::query(
        "INSERT INTO billing_events (idempotency_key, kind, customer_id, customer_email, app_id, app, pair_id, pair, occurred_at, unit_price_cents, currency) \
         VALUES ($1, $2, $3, $4, $5, $6, 1, 'edge-x', $7, 3100, 'USD')",
    )
    .bind(key).bind(kind).bind(customer.0).bind(customer.1).bind(app_name.0).bind(app_name.1).bind(at)
    .execute(&app.db)
    .await
    .unwrap();
}

fn ts(rfc3339: &str) -> i64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp()
}

db_test! {
    async fn a_pair_held_across_a_month_boundary_is_billed_in_each_month(app) {
        let admin = app.api_user("ada@example.com", Role::Admin).await;
        // Held 10 days of 31 in December 2025, then 5 days of 31 in January 2026.
        event(&app, "a", "edge_pair.provisioned", (7, "ann@example.com"), (1, "shop"), ts("2025-12-22T00:00:00Z")).await;
        event(&app, "b", "edge_pair.released", (7, "ann@example.com"), (1, "shop"), ts("2026-01-06T00:00:00Z")).await;
        let dec = export(&admin, "2025-12", "json").await.json;
        let jan = export(&admin, "2026-01", "json").await.json;
        assert_eq!(dec["lines"][0]["seconds"], 10 * 86_400);
        assert_eq!(dec["lines"][0]["amount_cents"], 1000, "3100 × 10/31");
        assert_eq!(dec["lines"][0]["open"], true, "still held when December ended");
        assert_eq!(jan["lines"][0]["seconds"], 5 * 86_400);
        assert_eq!(jan["lines"][0]["amount_cents"], 500);
        assert_eq!(export(&admin, "2025-11", "json").await.json["lines"].as_array().unwrap().len(), 0);
        assert_eq!(export(&admin, "2026-13", "json").await.code(), "invalid_month");
        assert_eq!(export(&admin, "2026-01", "xml").await.code(), "invalid_format");
    }
}

db_test! {
    async fn customers_read_only_their_own_billing_and_staff_none(app) {
        let ann = app.api_user("ann@example.com", Role::Customer).await;
        let bob = app.api_user("bob@example.com", Role::Customer).await;
        let staff = app.api_user("sam@example.com", Role::Staff).await;
        let admin = app.api_user("ada@example.com", Role::Admin).await;
        let ann_id: i64 = sqlx::query_scalar("SELECT id FROM users WHERE email = 'ann@example.com'").fetch_one(&app.db).await.unwrap();
        let bob_id: i64 = sqlx::query_scalar("SELECT id FROM users WHERE email = 'bob@example.com'").fetch_one(&app.db).await.unwrap();
        event(&app, "a", "edge_pair.provisioned", (ann_id, "ann@example.com"), (1, "ann-shop"), ts("2026-01-02T00:00:00Z")).await;
        event(&app, "b", "edge_pair.provisioned", (bob_id, "bob@example.com"), (2, "bob-shop"), ts("2026-01-03T00:00:00Z")).await;

        let bobs = bob.get("/api/v1/billing/events").await.json;
        assert_eq!(bobs["items"].as_array().unwrap().len(), 1);
        assert_eq!(bobs["items"][0]["app"], "bob-shop");
        let csv = export(&bob, "2026-01", "csv").await;
        assert!(csv.body.contains("bob-shop") && !csv.body.contains("ann"), "{}", csv.body);
        assert!(!export(&ann, "2026-01", "json").await.body.contains("bob"));
        assert_eq!(staff.get("/api/v1/billing/events").await.status, StatusCode::FORBIDDEN);
        assert_eq!(export(&staff, "2026-01", "csv").await.status, StatusCode::FORBIDDEN);
        assert_eq!(app.api_anonymous().get("/api/v1/billing/export?month=2026-01").await.status, StatusCode::UNAUTHORIZED);
        let all = export(&admin, "2026-01", "csv").await;
        assert_eq!(parse_csv(&all.body).len(), 2);
        // The pages, likewise.
        let browser = app.signed_in_browser("cid@example.com", Role::Customer).await;
        let page = browser.get("/billing?month=2026-01").await;
        assert!(page.body.contains("Nothing billed") && !page.body.contains("bob-shop"));
        let admin_page = app.signed_in_browser("root@example.com", Role::Admin).await.get("/billing?month=2026-01").await;
        assert!(admin_page.body.contains("bob-shop") && admin_page.body.contains("ann-shop"));
    }
}

db_test! {
    async fn the_csv_parses_with_a_standard_reader_and_adds_up_to_the_statement(app) {
        let admin = app.api_user("ada@example.com", Role::Admin).await;
        // Awkward names: a comma and a quote must survive RFC 4180 quoting.
        let start = ts("2026-02-01T00:00:00Z");
        for i in 0..7i64 {
            let name = format!("app-{i}");
            event(&app, &format!("p{i}"), "edge_pair.provisioned", (i, "o'neil,\"q\"@example.com"), (i, &name), start + i * 3 * 86_400 + 17).await;
            if i % 2 == 0 {
                event(&app, &format!("r{i}"), "edge_pair.released", (i, "o'neil,\"q\"@example.com"), (i, &name), start + i * 3 * 86_400 + 5 * 86_400 + 3).await;
            }
        }
        let csv = export(&admin, "2026-02", "csv").await;
        let rows = parse_csv(&csv.body);
        assert_eq!(rows.len(), 7);
        assert_eq!(&rows[0][1], "o'neil,\"q\"@example.com");
        let csv_total: i64 = rows.iter().map(|r| r[9].parse::<i64>().unwrap()).sum();
        let statement = export(&admin, "2026-02", "json").await.json;
        assert_eq!(csv_total, statement["total_cents"].as_i64().unwrap());
        assert_eq!(statement["line_count"], 7);
    }
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// 100,000 billing events, exported for one month: the export streams (the server's peak
/// memory grows by far less than the export's size) and the time is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_of_100000_events_exports_as_a_stream() {
    let data = tempfile::tempdir().unwrap();
    let database = TestDatabase::new(Backend::Sqlite, data.path())
        .await
        .unwrap();
    let server = ServerProcess::start(data.path(), &database.url, &[]);
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&database.url).await.unwrap();
    let start = ts("2026-03-01T00:00:00Z");
    let mut tx = db.begin().await.unwrap();
    for chunk in 0..1000i64 {
        let mut sql = String::from(
            "INSERT INTO billing_events (idempotency_key, kind, customer_id, customer_email, app_id, app, pair_id, pair, occurred_at, unit_price_cents, currency) VALUES ",
        );
        let rows: Vec<String> = (0..100i64)
            .map(|j| {
                let i = chunk * 100 + j;
                // Each app holds its pair from some day in March, and half of them release it.
                let (kind, at) = if i % 2 == 0 {
                    ("edge_pair.provisioned", start + (i % 28) * 86_400)
                } else {
                    ("edge_pair.released", start + (i % 28) * 86_400 + 86_400)
                };
                format!("('k{i}', '{kind}', {c}, 'customer{c}@example.com', {a}, 'app-{a}', {a}, 'pair-{a}', {at}, 2000, 'USD')", c = i % 500, a = i / 2)
            })
            .collect();
        sql.push_str(&rows.join(", "));
        sqlx::query(&sql).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM billing_events")
            .fetch_one(&db)
            .await
            .unwrap(),
        100_000
    );

    let admin = crate::common::cli_user(
        &server.address,
        &[
            ("CERTDROP_DATA_DIR", data.path().display().to_string()),
            ("CERTDROP_DATABASE_URL", database.url.clone()),
        ],
        "ada@example.com",
        "admin",
    )
    .await;
    let token = admin.token.clone().unwrap();
    // Warm up (a small month), then measure the big one.
    let client = reqwest::Client::new();
    let small = client
        .get(format!(
            "{}/api/v1/billing/export?month=2026-02",
            server.address
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), StatusCode::OK);
    small.bytes().await.unwrap();
    let before = peak_rss_kib(server.child.id());
    let started = std::time::Instant::now();
    let mut resp = client
        .get(format!(
            "{}/api/v1/billing/export?month=2026-03&format=csv",
            server.address
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (mut bytes, mut lines) = (0usize, 0usize);
    while let Some(chunk) = resp.chunk().await.unwrap() {
        bytes += chunk.len();
        lines += chunk.iter().filter(|b| **b == b'\n').count();
    }
    let elapsed = started.elapsed();
    let after = peak_rss_kib(server.child.id());
    println!(
        "export of 100000 events: {} lines, {} KiB of CSV in {:.2} s; server peak RSS {} KiB -> {} KiB (+{} KiB)",
        lines - 1,
        bytes / 1024,
        elapsed.as_secs_f64(),
        before,
        after,
        after.saturating_sub(before)
    );
    assert_eq!(lines - 1, 50_000, "one line per holding");
    assert!(
        ((after.saturating_sub(before)) as usize) * 1024 < bytes / 2,
        "memory grew with the rows: +{} KiB for {} KiB of CSV",
        after - before,
        bytes / 1024
    );
    db.close().await;
}
