//! The upload (browser form and `POST /api/v1/apps/{app}/certs`), certificate listings and the
//! info page. Uploaded bytes live in zeroizing buffers; checking and sealing run off the async
//! runtime; a refusal stores nothing but its audit entry.

use askama::Template;
use axum::{
    Json, Router,
    extract::{Multipart, Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::{
    codes::{self, MAX_UPLOAD_BYTES},
    intake::{self, ChainEntry, Upload},
    removal,
    store::{self, Certificate},
    x509::CertInfo,
};
use crate::{
    accounts::{ApiUser, SignedIn, User, csrf, extract::ClientIp},
    apps::{self, store::App},
    audit::{self, Entry},
    db::{self, PageQuery},
    edge::custody::{self, SealedTo},
    error::{AppError, AppResult, ErrorItem},
    state::AppState,
    web::{self, Chrome, FormErrors, PageResult, filters, render, render_status, see_other},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/apps/{app}/certs/new", get(upload_page))
        .route("/apps/{app}/certs", post(upload_form))
        .route("/certs/{id}", get(cert_page))
        .route("/api/v1/apps/{app}/certs", get(list_api).post(upload_api))
        .route("/api/v1/certs/{id}", get(show_api).delete(remove_api))
        .route("/certs/{id}/remove", post(remove_page))
}

/// The fields of an upload, read into memory that is wiped when dropped.
#[derive(Default)]
pub struct UploadForm {
    certificate: Zeroizing<Vec<u8>>,
    private_key: Zeroizing<Vec<u8>>,
    chain: Zeroizing<Vec<u8>>,
    bypass: bool,
    pub csrf_token: Option<String>,
}

impl UploadForm {
    /// A certificate a CA issued for a key born here (ACME): the chain as the CA sent it (leaf
    /// first), no key; every check of an upload applies.
    pub fn issued(chain_pem: &[u8]) -> Self {
        Self {
            certificate: Zeroizing::new(chain_pem.to_vec()),
            private_key: Zeroizing::new(Vec::new()),
            chain: Zeroizing::new(Vec::new()),
            bypass: false,
            csrf_token: None,
        }
    }
}

fn too_large() -> AppError {
    AppError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorItem::new(
            codes::TOO_LARGE,
            "The upload is larger than 1 MiB. A certificate, key and chain take a few kilobytes: upload only those PEM files.",
        ),
    )
}

pub async fn read_upload(mut multipart: Multipart) -> AppResult<UploadForm> {
    let unreadable = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            AppError::bad_request(
                "bad_upload",
                "The upload could not be read; send it as multipart/form-data.",
            )
        }
    };
    let mut form = UploadForm::default();
    // A page offers a file or pasted text for each field; a file chosen wins over text (say,
    // the certificate shown again after a refusal).
    let mut files = UploadForm::default();
    let mut total = 0usize;
    while let Some(mut field) = multipart.next_field().await.map_err(unreadable)? {
        let name = field.name().unwrap_or("").to_string();
        let mut value = Zeroizing::new(Vec::new());
        while let Some(chunk) = field.chunk().await.map_err(unreadable)? {
            total += chunk.len();
            if total > MAX_UPLOAD_BYTES {
                return Err(too_large());
            }
            value.extend_from_slice(&chunk);
        }
        let target = match name.as_str() {
            "certificate" => &mut form.certificate,
            "certificate_file" => &mut files.certificate,
            "private_key" => &mut form.private_key,
            "private_key_file" => &mut files.private_key,
            "chain" => &mut form.chain,
            "chain_file" => &mut files.chain,
            "bypass" => {
                form.bypass = matches!(value.as_slice(), b"true" | b"on" | b"1" | b"yes");
                continue;
            }
            "csrf_token" => {
                form.csrf_token = Some(String::from_utf8_lossy(&value).into_owned());
                continue;
            }
            _ => continue,
        };
        if !target.is_empty() && !value.is_empty() {
            target.push(b'\n');
        }
        target.extend_from_slice(&value);
    }
    for (file, text) in [
        (files.certificate, &mut form.certificate),
        (files.private_key, &mut form.private_key),
        (files.chain, &mut form.chain),
    ] {
        if !file.is_empty() {
            *text = file;
        }
    }
    Ok(form)
}

/// Checks, seals and stores an upload for `app`. Only the app's owner uploads key material.
async fn upload(
    state: &AppState,
    user: &User,
    ip: ClientIp,
    app: &App,
    form: UploadForm,
) -> AppResult<(Certificate, bool)> {
    // Keys and tickets wait until the owner proved the address certdrop mails is theirs.
    user.require_verified()?;
    if app.owner_id != user.id {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            ErrorItem::new(
                "forbidden",
                "Only the app's owner uploads its certificate and key; staff never handle key material.",
            ),
        ));
    }
    let domains: Vec<String> = crate::domains::store::claimed_hostnames(&state.db, app).await?;
    let born = store::born_keys(&state.db, app.id).await?;
    let checked = check_and_seal(state, form, domains, born).await?;
    match checked {
        Ok((inspection, chain_pem, sealed)) => {
            store::insert(&state.db, app, user, ip.0, &inspection, &chain_pem, &sealed).await
        }
        Err(refused) => {
            audit::record(
                &state.db,
                Entry::new(Some(user), "cert.refused", "app", &app.name)
                    .app(&app.name)
                    .outcome("refused")
                    .detail(json!({
                        "codes": refused.errors.iter().map(|e| e.code.as_ref()).collect::<Vec<_>>(),
                        "fingerprint_sha256": refused.fingerprint,
                    }))
                    .ip(ip.0),
            )
            .await?;
            Err(AppError::many(
                StatusCode::UNPROCESSABLE_ENTITY,
                refused.errors,
            ))
        }
    }
}

/// Runs the intake against `domains` (and the app's `born` keys) off the async runtime and
/// seals an accepted key to the vault at once: the plaintext key never outlives this call. A
/// certificate for a key born here takes that key's sealed copy.
pub async fn check_and_seal(
    state: &AppState,
    form: UploadForm,
    domains: Vec<String>,
    born: Vec<(i64, String)>,
) -> AppResult<Result<(intake::Inspection, String, crate::vault::SealedKey), intake::Refused>> {
    let (vault, trust) = (state.vault.clone(), state.trust.clone());
    let checked = tokio::task::spawn_blocking(move || {
        let upload = Upload {
            certificate: &form.certificate,
            private_key: &form.private_key,
            chain: &form.chain,
            bypass: form.bypass,
            born: &born,
        };
        intake::check(&upload, &domains, &trust, db::now()).map(|accepted| {
            let sealed = accepted.key.as_ref().map(|key| vault.seal(key));
            (accepted.inspection, accepted.chain_pem, sealed)
        })
    })
    .await
    .map_err(|e| AppError::internal(anyhow::anyhow!("certificate check task: {e}")))?;
    match checked {
        Ok((inspection, chain_pem, Some(sealed))) => Ok(Ok((inspection, chain_pem, sealed?))),
        Ok((inspection, chain_pem, None)) => {
            let intake::KeyOrigin::Born(id) = inspection.key_origin else {
                return Err(AppError::internal(anyhow::anyhow!(
                    "an accepted upload without a key was not born here"
                )));
            };
            let sealed = store::born_sealed_key(&state.db, id).await?;
            Ok(Ok((inspection, chain_pem, sealed)))
        }
        Err(refused) => Ok(Err(refused)),
    }
}

/// Where a certificate's key is sealed now, as the API shows it.
fn sealed_to_json(sealed: &[SealedTo]) -> Value {
    json!(
        sealed
            .iter()
            .map(|s| json!({
                "node": s.node,
                "pair": s.pair,
                "recipient_fingerprint": s.recipient_fingerprint,
                "confirmed_by": s.confirmed_by,
                "confirmed_at": s.confirmed_at.map(web::rfc3339),
            }))
            .collect::<Vec<_>>()
    )
}

/// The report of PRODUCT.md, plus where it belongs, its status and where its key is sealed.
pub fn report_json(cert: &Certificate, status: &str, sealed: &[SealedTo]) -> Value {
    json!({
        "id": cert.id,
        "app": cert.app,
        "common_name": cert.common_name,
        "sans": cert.sans,
        "domains_covered": cert.domains_covered,
        "issuer": cert.issuer,
        "not_before": web::rfc3339(cert.not_before),
        "not_after": web::rfc3339(cert.not_after),
        "fingerprint_sha256": cert.fingerprint_sha256,
        "key_type": cert.key_type,
        "trusted": cert.trusted,
        "chain_len": cert.chain_len,
        "warnings": cert.warnings,
        "source": cert.source,
        "renews_at": cert.renews_at.map(web::rfc3339),
        "removed_at": cert.removed_at.map(web::rfc3339),
        "last_renewal": null,
        "status": status,
        "sealed_to": sealed_to_json(sealed),
        "created_at": web::rfc3339(cert.created_at),
    })
}

pub fn status(
    statuses: &std::collections::HashMap<i64, &'static str>,
    cert: &Certificate,
) -> &'static str {
    statuses.get(&cert.id).copied().unwrap_or("uploaded")
}

/// The served chain, parsed back from its PEM for display.
pub fn chain_entries(cert: &Certificate) -> Vec<ChainEntry> {
    super::pem::blocks(cert.chain_pem.as_bytes())
        .into_iter()
        .filter_map(|b| b.der)
        .filter_map(|der| CertInfo::parse(&der).ok())
        .map(|c| ChainEntry {
            subject: c.subject,
            issuer: c.issuer,
            not_after: c.not_after,
            fingerprint_sha256: c.fingerprint,
        })
        .collect()
}

// ---- JSON API ----

async fn upload_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ip: ClientIp,
    Path(name): Path<String>,
    multipart: Multipart,
) -> AppResult<Response> {
    let app = apps::store::find_visible(&state.db, &user, &name).await?;
    let form = read_upload(multipart).await?;
    let (cert, created) = upload(&state, &user, ip, &app, form).await?;
    let statuses = store::statuses(&state.db, app.id).await?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        code,
        Json(report_json(&cert, status(&statuses, &cert), &[])),
    )
        .into_response())
}

async fn list_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(name): Path<String>,
    Query(q): Query<PageQuery>,
) -> AppResult<Response> {
    let app = apps::store::find_visible(&state.db, &user, &name).await?;
    let (certs, next) = store::list_for_app(&state.db, &app, q.page()?).await?;
    let statuses = store::statuses(&state.db, app.id).await?;
    let sealed = custody::sealed_to(&state.db, app.id).await?;
    let ids: Vec<i64> = certs.iter().map(|c| c.id).collect();
    let renewals = crate::acme::store::last_renewals(&state.db, &ids).await?;
    let items: Vec<Value> = certs
        .iter()
        .map(|c| {
            let mut item = report_json(
                c,
                status(&statuses, c),
                sealed.get(&c.id).map(Vec::as_slice).unwrap_or_default(),
            );
            item["last_renewal"] = json!(renewals.get(&c.id));
            item
        })
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": next})).into_response())
}

async fn show_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<i64>,
) -> AppResult<Response> {
    let cert = store::find_visible(&state.db, &user, id).await?;
    let statuses = store::statuses(&state.db, cert.app_id).await?;
    let sealed = custody::sealed_to(&state.db, cert.app_id).await?;
    let mut body = report_json(
        &cert,
        status(&statuses, &cert),
        sealed.get(&cert.id).map(Vec::as_slice).unwrap_or_default(),
    );
    body["chain"] = json!(
        chain_entries(&cert)
            .into_iter()
            .map(|c| json!({
                "subject": c.subject,
                "issuer": c.issuer,
                "not_after": web::rfc3339(c.not_after),
                "fingerprint_sha256": c.fingerprint_sha256,
            }))
            .collect::<Vec<_>>()
    );
    body["chain_pem"] = json!(cert.chain_pem);
    body["last_renewal"] = json!(
        crate::acme::store::last_renewals(&state.db, &[cert.id])
            .await?
            .get(&cert.id)
    );
    Ok(Json(body).into_response())
}

/// `DELETE /api/v1/certs/{id}`: 200 `{"removed": true}`, or 202 with the fallback ticket that
/// replaces a served certificate.
async fn remove_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ip: ClientIp,
    Path(id): Path<i64>,
) -> AppResult<Response> {
    let cert = store::find_visible(&state.db, &user, id).await?;
    Ok(match removal::remove(&state, &user, ip, &cert).await? {
        removal::Removal::Removed => Json(json!({"removed": true})).into_response(),
        removal::Removal::Replacing(ticket) => (
            StatusCode::ACCEPTED,
            Json(json!({"removed": true, "replaced_by_ticket": ticket})),
        )
            .into_response(),
    })
}

async fn remove_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    Path(id): Path<i64>,
    csrf::CsrfForm(_): csrf::CsrfForm<csrf::NoFields>,
) -> PageResult {
    let cert = store::find_visible(&state.db, &me.user, id).await?;
    let message = match removal::remove(&state, &me.user, ip, &cert).await? {
        removal::Removal::Removed => {
            "Certificate removed; its key is gone from the vault.".to_string()
        }
        removal::Removal::Replacing(ticket) => format!(
            "Certificate removed. certdrop is replacing it with an automatic certificate (ticket #{ticket}); the site stays up meanwhile."
        ),
    };
    web::flash(&me.session, "ok", message).await?;
    Ok(see_other(&format!("/apps/{}", cert.app)))
}

// ---- pages ----

#[derive(Template)]
#[template(path = "certs/new.html")]
struct UploadPage {
    chrome: Chrome,
    app: App,
    domains: Vec<String>,
    errors: FormErrors,
    /// After a refusal: the certificate and chain as text, to fix rather than choose again
    /// (never the key, and nothing that holds one).
    certificate: String,
    chain: String,
}

/// Text a refused upload may show back: public PEM only, so nothing holding a key.
fn public_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text)
            if bytes.len() <= 64 * 1024
                && !text.contains("PRIVATE KEY")
                && !text.contains("Proc-Type") =>
        {
            text.to_string()
        }
        _ => String::new(),
    }
}

async fn upload_page(
    State(state): State<AppState>,
    me: SignedIn,
    Path(name): Path<String>,
) -> PageResult {
    let app = apps::store::find_visible(&state.db, &me.user, &name).await?;
    let domains = crate::domains::store::claimed_hostnames(&state.db, &app).await?;
    Ok(render(&UploadPage {
        chrome: me.chrome().await?,
        app,
        domains,
        errors: FormErrors::default(),
        certificate: String::new(),
        chain: String::new(),
    })?)
}

async fn upload_form(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    Path(name): Path<String>,
    multipart: Multipart,
) -> PageResult {
    let app = apps::store::find_visible(&state.db, &me.user, &name).await?;
    let mut refill = (String::new(), String::new());
    let result = match read_upload(multipart).await {
        Ok(form) => {
            csrf::verify(&me.session, None, form.csrf_token.as_deref()).await?;
            refill = (public_text(&form.certificate), public_text(&form.chain));
            upload(&state, &me.user, ip, &app, form).await
        }
        Err(err) => Err(err),
    };
    match result {
        Ok((cert, created)) => {
            let message = if created {
                "Certificate checked and stored; its key is sealed in the vault. Review the report below."
            } else {
                "This certificate was already uploaded for this app; here is its report."
            };
            web::flash(&me.session, "ok", message).await?;
            Ok(see_other(&format!("/certs/{}", cert.id)))
        }
        Err(err) if err.status.is_client_error() && err.status != StatusCode::FORBIDDEN => {
            let domains = crate::domains::store::claimed_hostnames(&state.db, &app).await?;
            Ok(render_status(
                err.status,
                &UploadPage {
                    chrome: me.chrome().await?,
                    app,
                    domains,
                    errors: err.into(),
                    certificate: refill.0,
                    chain: refill.1,
                },
            )?)
        }
        Err(err) => Err(err.into()),
    }
}

#[derive(Template)]
#[template(path = "certs/show.html")]
struct CertPage {
    chrome: Chrome,
    cert: Certificate,
    status: &'static str,
    /// The ticket its owner may open with it next (`provision` or `update`), if any.
    next_ticket: Option<&'static str>,
    chain: Vec<ChainEntry>,
    sealed_to: Vec<SealedTo>,
    /// The viewer owns the app and the certificate is not removed yet.
    can_remove: bool,
}

async fn cert_page(State(state): State<AppState>, me: SignedIn, Path(id): Path<i64>) -> PageResult {
    let cert = store::find_visible(&state.db, &me.user, id).await?;
    let statuses = store::statuses(&state.db, cert.app_id).await?;
    let sealed_to = custody::sealed_to(&state.db, cert.app_id)
        .await?
        .remove(&cert.id)
        .unwrap_or_default();
    let status = status(&statuses, &cert);
    let owner = apps::store::find_by_id(&state.db, cert.app_id)
        .await?
        .owner_id;
    let next_ticket = if owner == me.user.id && matches!(status, "uploaded" | "previous") {
        let mut conn = state.db.acquire().await?;
        let provisioned = crate::edge::store::pair_of_app(&mut conn, cert.app_id)
            .await?
            .is_some();
        Some(if provisioned { "update" } else { "provision" })
    } else {
        None
    };
    Ok(render(&CertPage {
        chrome: me.chrome().await?,
        can_remove: owner == me.user.id && cert.removed_at.is_none(),
        status,
        next_ticket,
        chain: chain_entries(&cert),
        sealed_to,
        cert,
    })?)
}
