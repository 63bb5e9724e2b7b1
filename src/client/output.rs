//! Plain-text tables and JSON for the CLI's listings.

use serde_json::Value;

/// A string field of a JSON value, or empty.
pub fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A certificate's renewal as the `certs` table shows it: when it renews (ACME), and how its
/// last renewal or fallback went (`-` when neither applies).
pub fn renewal(cert: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(at) = cert["renews_at"].as_str() {
        parts.push(format!("renews {}", &at[..at.len().min(10)]));
    }
    if let Some(outcome) = cert["last_renewal"]["outcome"].as_str() {
        parts.push(format!("last: {outcome}"));
    }
    match parts.is_empty() {
        true => "-".into(),
        false => parts.join(", "),
    }
}

/// A JSON array of strings, comma-separated.
pub fn list(v: &Value) -> String {
    v.as_array()
        .map(|items| items.iter().map(s).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

pub fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Columns padded to their widest cell, like `heroku certs`.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        let mut out = vec![line(&self.header)];
        out.push(
            widths
                .iter()
                .map(|w| "─".repeat(*w))
                .collect::<Vec<_>>()
                .join("  "),
        );
        out.extend(self.rows.iter().map(|r| line(r)));
        out.join("\n")
    }

    /// Prints the table, or `empty` when it has no rows.
    pub fn print_or(&self, empty: &str) {
        if self.rows.is_empty() {
            println!("{empty}");
        } else {
            println!("{}", self.render());
        }
    }
}

/// A certificate report, like `heroku certs:info`.
pub fn print_report(cert: &Value) {
    let field = |label: &str, value: String| println!("{label:<24}{value}");
    field("Certificate ID:", s(&cert["id"]));
    field("Common Name:", s(&cert["common_name"]));
    field("Domains (SANs):", list(&cert["sans"]));
    field("Covers app domains:", list(&cert["domains_covered"]));
    field("Issuer:", s(&cert["issuer"]));
    field("Starts At:", s(&cert["not_before"]));
    field("Expires At:", s(&cert["not_after"]));
    field("Key Type:", s(&cert["key_type"]));
    field("Fingerprint (SHA-256):", s(&cert["fingerprint_sha256"]));
    field("Trusted:", yes_no(&cert["trusted"]));
    field("Chain Length:", s(&cert["chain_len"]));
    field("Source:", s(&cert["source"]));
    field("Renewal:", renewal(cert));
    if let Some(error) = cert["last_renewal"]["error"].as_str() {
        field("Last renewal error:", error.to_string());
    }
    field("Status:", s(&cert["status"]));
    if let Some(chain) = cert["chain"].as_array() {
        println!("Served chain:");
        for (i, c) in chain.iter().enumerate() {
            println!(
                "  {i}. {} (expires {})",
                s(&c["subject"]),
                s(&c["not_after"])
            );
        }
    }
    if let Some(warnings) = cert["warnings"].as_array().filter(|w| !w.is_empty()) {
        println!("Warnings:");
        for w in warnings {
            println!("  {}: {}", s(&w["code"]), s(&w["message"]));
        }
    }
}

pub fn yes_no(v: &Value) -> String {
    if v == true { "yes" } else { "no" }.to_string()
}

/// DNS records as zone-file lines joined by `; ` (empty before there is a target).
pub fn dns_records(records: &Value) -> String {
    records
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|r| format!("{} {} {}", s(&r["name"]), s(&r["type"]), s(&r["value"])))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

/// A domain's DNS status as people say it: `points here`, `points elsewhere (CNAME x)`.
pub fn dns_status(dns: &Value) -> String {
    let state = s(&dns["state"]).replace('_', " ");
    match s(&dns["seen"]) {
        seen if state == "points elsewhere" && !seen.is_empty() => format!("{state} ({seen})"),
        _ => state,
    }
}

/// What to do to prove a pending domain: the TXT record to create and the command after.
pub fn proof_steps(domain: &Value, app: &str) -> String {
    let v = &domain["verification"];
    format!(
        "To prove {host} is yours, create this TXT record at your DNS provider:\n  {name} TXT \"{value}\"\nthen run `certdrop domains:verify {host} --app {app}` (certdrop also checks every few minutes; the claim expires {expires}).",
        host = s(&domain["hostname"]),
        name = s(&v["txt_name"]),
        value = s(&v["txt_value"]),
        expires = s(&v["expires_at"]),
    )
}
