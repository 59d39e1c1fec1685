//! The TLS files a node serves and checks its peer with: the certificate and key
//! parse and belong together, the CA parses, and this node's certificate is current
//! (with `tls init`, one CA signs both nodes').

use std::path::Path;
use std::sync::Arc;

use super::{Finding, Level};
use crate::config::TlsFiles;

/// The certificate and key parse and belong together; the CA parses; the
/// certificate is current (and, when the CA signed it, chains to it).
pub(super) fn check_tls(findings: &mut Vec<Finding>, tls: &TlsFiles) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = match CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
    {
        Ok(certs) if !certs.is_empty() => Some(certs),
        Ok(_) => {
            findings.push(Finding::new(
                Level::Fail,
                "tls_cert_file",
                format!("{}: no PEM certificate in it", tls.cert.display()),
            ));
            None
        }
        Err(error) => {
            findings.push(Finding::new(
                Level::Fail,
                "tls_cert_file",
                format!("{}: {}", tls.cert.display(), pem_error(&error)),
            ));
            None
        }
    };
    let key = match PrivateKeyDer::from_pem_file(&tls.key) {
        Ok(key) => match provider.key_provider.load_private_key(key) {
            Ok(key) => Some(key),
            Err(error) => {
                findings.push(Finding::new(
                    Level::Fail,
                    "tls_key_file",
                    format!("{}: not a usable private key: {error}", tls.key.display()),
                ));
                None
            }
        },
        Err(error) => {
            findings.push(Finding::new(
                Level::Fail,
                "tls_key_file",
                format!("{}: {}", tls.key.display(), pem_error(&error)),
            ));
            None
        }
    };
    if let (Some(certs), Some(key)) = (&certs, key) {
        match rustls::sign::CertifiedKey::new(certs.clone(), key).keys_match() {
            Err(rustls::Error::InconsistentKeys(_)) => findings.push(Finding::new(
                Level::Fail,
                "tls_key_file",
                format!(
                    "{} is not the key of the certificate in {}",
                    tls.key.display(),
                    tls.cert.display()
                ),
            )),
            _ => findings.push(Finding::new(
                Level::Ok,
                "tls_key_file",
                format!("{}: the certificate's key", tls.key.display()),
            )),
        }
    }
    let Some(ca) = &tls.ca else {
        if certs.is_some() {
            findings.push(Finding::new(
                Level::Ok,
                "tls_cert_file",
                format!("{}: readable", tls.cert.display()),
            ));
        }
        return;
    };
    let mut roots = rustls::RootCertStore::empty();
    match CertificateDer::pem_file_iter(ca).and_then(|certs| certs.collect::<Result<Vec<_>, _>>()) {
        Ok(cas) => {
            let (added, _) = roots.add_parsable_certificates(cas);
            if added == 0 {
                findings.push(Finding::new(
                    Level::Fail,
                    "tls_ca_file",
                    format!("{}: no usable CA certificate in it", ca.display()),
                ));
                return;
            }
            findings.push(Finding::new(
                Level::Ok,
                "tls_ca_file",
                format!("{}: {added} CA certificate(s)", ca.display()),
            ));
        }
        Err(error) => {
            findings.push(Finding::new(
                Level::Fail,
                "tls_ca_file",
                format!("{}: {}", ca.display(), pem_error(&error)),
            ));
            return;
        }
    }
    let Some(certs) = certs else { return };
    findings.push(own_certificate_finding(&tls.cert, &certs, roots, provider));
}

/// This node's certificate against the CA (with `tls init`, one CA signs both
/// nodes'): expired or not yet valid is worth a warning; a certificate from another
/// CA may be right (the peer's CA is what `tls_ca_file` names).
fn own_certificate_finding(
    file: &Path,
    certs: &[rustls::pki_types::CertificateDer<'static>],
    roots: rustls::RootCertStore,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Finding {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::{CertificateError, Error};

    let verifier = match rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider,
    )
    .build()
    {
        Ok(verifier) => verifier,
        Err(error) => {
            return Finding::new(
                Level::Warn,
                "tls_cert_file",
                format!("not checked against tls_ca_file: {error}"),
            )
        }
    };
    // No name to check it for here (the peer reaches this node by a name of its
    // own): a wrong-name answer means the chain and dates were fine.
    let name =
        rustls::pki_types::ServerName::try_from("standin.invalid").expect("a valid DNS name");
    let result = verifier.verify_server_cert(
        &certs[0],
        &certs[1..],
        &name,
        &[],
        rustls::pki_types::UnixTime::now(),
    );
    match result {
        Ok(_)
        | Err(Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => Finding::new(
            Level::Ok,
            "tls_cert_file",
            format!("{}: current, signed by tls_ca_file", file.display()),
        ),
        Err(Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => Finding::new(
            Level::Warn,
            "tls_cert_file",
            format!("{} has expired: the peer will refuse it", file.display()),
        ),
        Err(Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        )) => Finding::new(
            Level::Warn,
            "tls_cert_file",
            format!("{} is not valid yet (check the clock)", file.display()),
        ),
        Err(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => Finding::new(
            Level::Warn,
            "tls_cert_file",
            format!(
                "{} is not signed by tls_ca_file: right only if the peer trusts another CA for it",
                file.display()
            ),
        ),
        Err(error) => Finding::new(
            Level::Warn,
            "tls_cert_file",
            format!("{}: {error}", file.display()),
        ),
    }
}

fn pem_error(error: &rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(error) => error.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of that kind in it".to_string(),
        other => format!("not PEM: {other:?}"),
    }
}
