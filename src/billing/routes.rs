//! The billing pages (the customer's own, the admin's for everyone) and the API: events, and
//! a month's export as CSV or JSON, streamed row by row so memory does not grow with its size.

use askama::Template;
use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Query, State},
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::{
    statement::{self, Line, Month, Statement},
    store,
};
use crate::{
    accounts::{ApiUser, SignedIn, User},
    db::{self, Db, Page},
    error::{AppError, AppResult},
    state::AppState,
    web::{self, Chrome, PageResult, filters, render},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/billing", get(billing_page))
        .route("/billing/export", get(export_page))
        .route("/api/v1/billing/events", get(events_api))
        .route("/api/v1/billing/export", get(export_api))
}

/// Whose events a user may read: their own (customers), everyone's (admins). Staff run the
/// edge, not the books.
fn scope(user: &User) -> AppResult<Option<i64>> {
    match user.role {
        crate::accounts::Role::Admin => Ok(None),
        crate::accounts::Role::Customer => Ok(Some(user.id)),
        crate::accounts::Role::Staff => Err(AppError::forbidden()),
    }
}

fn parse_month(raw: Option<&str>) -> AppResult<Month> {
    match raw {
        None | Some("") => Ok(Month::containing(db::now())),
        Some(m) => Month::parse(m).ok_or_else(|| {
            AppError::bad_request(
                "invalid_month",
                format!("`{m}` is not a month; write it as YYYY-MM, e.g. 2026-11."),
            )
        }),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
}

fn parse_format(raw: Option<&str>) -> AppResult<Format> {
    match raw {
        None | Some("") | Some("csv") => Ok(Format::Csv),
        Some("json") => Ok(Format::Json),
        Some(other) => Err(AppError::bad_request(
            "invalid_format",
            format!("Export format `{other}` is unknown; use csv or json."),
        )),
    }
}

/// The CSV's columns, in their documented, stable order.
pub const CSV_HEADER: &str =
    "month,customer_email,app,pair,from,to,seconds,unit_price_cents,currency,amount_cents\r\n";

/// One field, quoted per RFC 4180 when it holds a comma, a quote or a line break.
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

pub fn csv_row(month: Month, line: &Line) -> String {
    let fields = [
        month.label(),
        csv_field(&line.customer),
        csv_field(&line.app),
        csv_field(&line.pair),
        web::rfc3339(line.from),
        web::rfc3339(line.to),
        line.seconds.to_string(),
        line.unit_price_cents.to_string(),
        csv_field(&line.currency),
        line.amount_cents.to_string(),
    ];
    format!("{}\r\n", fields.join(","))
}

fn json_line(line: &Line) -> serde_json::Value {
    // The same names as the CSV's columns.
    json!({
        "customer_email": line.customer,
        "app": line.app,
        "pair": line.pair,
        "from": web::rfc3339(line.from),
        "to": web::rfc3339(line.to),
        "open": line.open,
        "seconds": line.seconds,
        "unit_price_cents": line.unit_price_cents,
        "currency": line.currency,
        "amount_cents": line.amount_cents,
    })
}

/// Produces a month's statement as text chunks (CSV or JSON), reading events from the database
/// as a stream and sending each line as soon as it is complete. The channel is small, so a slow
/// reader slows the export down instead of making it buffer: memory does not grow with rows.
pub fn export_chunks(
    db: Db,
    customer: Option<i64>,
    month: Month,
    format: Format,
) -> mpsc::Receiver<Result<String, std::io::Error>> {
    let (tx, rx) = mpsc::channel(32);
    let now = db::now();
    tokio::spawn(async move {
        let head = match format {
            Format::Csv => CSV_HEADER.to_string(),
            Format::Json => format!("{{\"month\":\"{}\",\"lines\":[", month.label()),
        };
        if tx.send(Ok(head)).await.is_err() {
            return;
        }
        let mut statement = Statement::new(month, now);
        let mut total = 0i64;
        let mut count = 0u64;
        let mut events = std::pin::pin!(store::stream_for_month(&db, customer, month));
        loop {
            let line = match events.next().await {
                Some(Ok(event)) => match statement.push(event) {
                    Some(line) => line,
                    None => continue,
                },
                Some(Err(err)) => {
                    tracing::error!(error = %err, "billing export: reading events failed");
                    let _ = tx
                        .send(Err(std::io::Error::other(
                            "the export stopped: reading events failed",
                        )))
                        .await;
                    return;
                }
                None => match statement.finish() {
                    Some(line) => line,
                    None => break,
                },
            };
            total += line.amount_cents;
            let chunk = match format {
                Format::Csv => csv_row(month, &line),
                Format::Json => format!("{}{}", if count > 0 { "," } else { "" }, json_line(&line)),
            };
            count += 1;
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
        if format == Format::Json {
            let _ = tx
                .send(Ok(format!(
                    "],\"line_count\":{count},\"total_cents\":{total}}}\n"
                )))
                .await;
        }
    });
    rx
}

/// The server-side `certdrop billing:export`: the same export, written to `out`.
pub async fn write_export(
    db: &Db,
    customer: Option<i64>,
    month: Month,
    json: bool,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    let format = if json { Format::Json } else { Format::Csv };
    let mut chunks = export_chunks(db.clone(), customer, month, format);
    while let Some(chunk) = chunks.recv().await {
        out.write_all(chunk?.as_bytes())?;
    }
    Ok(())
}

fn export_response(
    state: AppState,
    customer: Option<i64>,
    month: Month,
    format: Format,
) -> Response {
    let (content_type, ext) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
        Format::Json => ("application/json", "json"),
    };
    (
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"certdrop-billing-{}.{ext}\"",
                    month.label()
                ),
            ),
        ],
        Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(export_chunks(
                state.db.clone(),
                customer,
                month,
                format,
            ))
            .map(|chunk| chunk.map(Bytes::from)),
        ),
    )
        .into_response()
}

#[derive(Deserialize)]
struct ExportQuery {
    month: Option<String>,
    format: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

async fn export_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Query(q): Query<ExportQuery>,
) -> AppResult<Response> {
    let customer = scope(&user)?;
    let month = parse_month(q.month.as_deref())?;
    let format = parse_format(q.format.as_deref())?;
    Ok(export_response(state, customer, month, format))
}

async fn export_page(
    State(state): State<AppState>,
    me: SignedIn,
    Query(q): Query<ExportQuery>,
) -> PageResult {
    let customer = scope(&me.user)?;
    let month = parse_month(q.month.as_deref())?;
    let format = parse_format(q.format.as_deref())?;
    Ok(export_response(state, customer, month, format))
}

async fn events_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Query(q): Query<ExportQuery>,
) -> AppResult<Response> {
    let customer = scope(&user)?;
    let month = q
        .month
        .as_deref()
        .map(|m| parse_month(Some(m)))
        .transpose()?;
    let (events, next) = store::list(
        &state.db,
        customer,
        month,
        Page::new(q.cursor.as_deref(), q.limit)?,
    )
    .await?;
    let items: Vec<serde_json::Value> = events
        .iter()
        .map(|e| {
            json!({
                "id": e.id,
                "kind": e.kind,
                "customer_email": e.customer,
                "app": e.app,
                "pair": e.pair,
                "occurred_at": web::rfc3339(e.occurred_at),
                "unit_price_cents": e.unit_price_cents,
                "currency": e.currency,
            })
        })
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": next})).into_response())
}

/// A month's lines, collected for a page (a page shows one customer's, or the admin's view).
pub async fn statement_lines(
    state: &AppState,
    customer: Option<i64>,
    month: Month,
) -> AppResult<Vec<Line>> {
    let events: Vec<statement::Event> = store::stream_for_month(&state.db, customer, month)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    Ok(statement::lines(events, month, db::now()))
}

#[derive(Template)]
#[template(path = "billing/index.html")]
struct BillingPage {
    chrome: Chrome,
    admin: bool,
    month: String,
    current: bool,
    months: Vec<String>,
    lines: Vec<Line>,
    total: String,
    price: String,
}

impl BillingPage {
    fn amount(&self, line: &Line) -> String {
        web::money(line.amount_cents, &line.currency)
    }

    fn held(&self, line: &Line) -> String {
        let days = line.seconds as f64 / 86_400.0;
        format!("{days:.2} days ({} s)", line.seconds)
    }
}

#[derive(Deserialize)]
struct MonthQuery {
    month: Option<String>,
}

async fn billing_page(
    State(state): State<AppState>,
    me: SignedIn,
    Query(q): Query<MonthQuery>,
) -> PageResult {
    let customer = scope(&me.user)?;
    let month = parse_month(q.month.as_deref())?;
    let this_month = Month::containing(db::now());
    let lines = statement_lines(&state, customer, month).await?;
    let total: i64 = lines.iter().map(|l| l.amount_cents).sum();
    let mut months = Vec::new();
    let mut m = this_month;
    for _ in 0..12 {
        months.push(m.label());
        m = m.previous();
    }
    Ok(render(&BillingPage {
        chrome: me.chrome().await?,
        admin: customer.is_none(),
        current: month == this_month,
        month: month.label(),
        months,
        lines,
        total: web::money(total, &state.config.currency),
        price: web::money(state.config.pair_price_cents, &state.config.currency),
    })?)
}
