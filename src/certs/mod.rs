//! Certificate intake: PEM scanning, X.509 inspection, chain building, trust, the report and its
//! stable codes. Refused uploads store nothing; accepted keys go straight to the vault.

pub mod chain;
pub mod codes;
pub mod csr;
pub mod csr_routes;
pub mod intake;
pub mod pem;
pub mod removal;
pub mod routes;
pub mod store;
pub mod trust;
pub mod x509;
