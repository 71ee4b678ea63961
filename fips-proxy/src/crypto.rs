//! The FIPS crypto setup: AWS-LC's FIPS module (through aws-lc-rs built with `fips`) as the rustls
//! provider, restricted to approved algorithms.
//!
//! What is allowed: TLS 1.2 and 1.3; AES-GCM suites only (TLS 1.3 AES-128/256-GCM, TLS 1.2
//! ECDHE-ECDSA/ECDHE-RSA with AES-128/256-GCM); key exchange on NIST P-256 and P-384 only (no
//! X25519, no hybrid post-quantum groups); TLS 1.2 only with the extended master secret
//! (`require_ems`). Certificates are verified by rustls-webpki with the module's signature
//! algorithms.
//!
//! Limits: the proxy refuses to start unless the module reports FIPS mode (`FIPS_mode() == 1`
//! after its power-on self tests) and rustls reports the whole client configuration as FIPS
//! (`ClientConfig::fips()`). Whether the *deployment* is validated also depends on the module's
//! certificate status for the pinned line (see the README, "FIPS mode").

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{cipher_suite, kx_group};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Serialize;

/// Why the crypto setup is refused.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "the crypto module is not in FIPS mode ({0}); refusing to start. This binary must be built with \
         aws-lc-rs `fips` (AWS-LC FIPS module) on a supported platform"
    )]
    NotFips(String),
    #[error("the TLS configuration is not FIPS-compliant ({0}); refusing to start")]
    ConfigNotFips(String),
    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot read CA bundle {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("CA bundle {path} holds no usable certificate ({reason})")]
    CaEmpty { path: String, reason: String },
    #[error("no system root certificates found ({0}); set ca_file on the route or SSL_CERT_FILE")]
    NoSystemRoots(String),
}

/// What the status page and the startup line say about the module.
#[derive(Clone, Debug, Serialize)]
pub struct ModuleInfo {
    /// Module name and version as the library reports it (`AWS-LC FIPS 4.2.0`).
    pub module: String,
    /// The aws-lc-fips-sys crate version that built it.
    pub crate_version: &'static str,
    /// Whether the module runs in FIPS mode (self tests passed, approved mode).
    pub fips_mode: bool,
    /// The rustls provider and client configuration report FIPS.
    pub tls_config_fips: bool,
}

/// Asks the module for its version string and FIPS status.
pub fn module_info() -> ModuleInfo {
    let fips_mode = aws_lc_rs::try_fips_mode().is_ok();
    // SAFETY: `awslc_version_string` takes no argument and returns a pointer to a static,
    // NUL-terminated string inside the library (never freed, never null).
    let module = unsafe {
        let p = aws_lc_fips_sys::awslc_version_string();
        if p.is_null() {
            String::from("AWS-LC FIPS (unknown version)")
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    ModuleInfo { module, crate_version: AWS_LC_FIPS_SYS_VERSION, fips_mode, tls_config_fips: false }
}

/// The aws-lc-fips-sys line pinned in `fips-proxy/Cargo.toml` (0.14 = AWS-LC-FIPS 4.x). Keep in sync.
pub const AWS_LC_FIPS_SYS_VERSION: &str = "0.14";

/// The rustls provider: the FIPS module, approved suites and groups only.
pub fn provider() -> CryptoProvider {
    let base = rustls::crypto::default_fips_provider();
    CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ],
        kx_groups: vec![kx_group::SECP256R1, kx_group::SECP384R1],
        ..base
    }
}

/// Checks the module's FIPS status; the error is the refusal to start.
pub fn require_fips_module() -> Result<ModuleInfo, CryptoError> {
    let mut info = module_info();
    if let Err(e) = aws_lc_rs::try_fips_mode() {
        return Err(CryptoError::NotFips(format!("{}: {e}", info.module)));
    }
    let p = provider();
    if !p.fips() {
        return Err(CryptoError::NotFips("the rustls provider reports fips() = false".into()));
    }
    // The probe configuration uses an empty root store: fips() does not depend on roots.
    let probe = client_config(RootCertStore::empty())?;
    info.tls_config_fips = probe.fips();
    Ok(info)
}

/// A client configuration for one route: the FIPS provider, TLS 1.2/1.3, EMS required.
pub fn client_config(roots: RootCertStore) -> Result<Arc<ClientConfig>, CryptoError> {
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.require_ems = true;
    if !cfg.fips() {
        return Err(CryptoError::ConfigNotFips("ClientConfig::fips() = false".into()));
    }
    Ok(Arc::new(cfg))
}

/// Trusted roots: the PEM bundle `ca_file`, or the system's roots.
pub fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, CryptoError> {
    let mut store = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let shown = path.display().to_string();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| CryptoError::CaFile { path: shown.clone(), reason: e.to_string() })?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| CryptoError::CaFile { path: shown.clone(), reason: e.to_string() })?;
            let (added, ignored) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(CryptoError::CaEmpty { path: shown, reason: format!("{ignored} unparsable") });
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map_or("none installed".to_string(), |e| e.to_string());
                return Err(CryptoError::NoSystemRoots(why));
            }
        }
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_is_in_fips_mode_and_config_is_fips() {
        let info = require_fips_module().expect("FIPS module");
        assert!(info.fips_mode && info.tls_config_fips, "{info:?}");
        assert!(info.module.starts_with("AWS-LC FIPS"), "{}", info.module);
    }

    #[test]
    fn only_approved_suites_and_groups() {
        let p = provider();
        assert!(p.cipher_suites.iter().all(|s| format!("{:?}", s.suite()).contains("GCM")));
        let groups: Vec<String> = p.kx_groups.iter().map(|g| format!("{:?}", g.name())).collect();
        assert_eq!(groups, ["secp256r1", "secp384r1"]);
        let cfg = client_config(RootCertStore::empty()).expect("config");
        assert!(cfg.require_ems);
    }
}
