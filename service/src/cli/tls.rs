//! `standin tls init DIR --node NAME=HOST[,HOST…]…`: TLS for a pair in one command —
//! a CA of the pair's own and one certificate per node signed by it (rcgen), keys
//! written with mode 0600, nothing overwritten unless `--force`.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use super::Failure;

/// One node's name and the host names or addresses its certificate is valid for.
fn parse_node(text: &str) -> Result<(String, Vec<String>), Failure> {
    let (name, hosts) = text.split_once('=').ok_or_else(|| {
        Failure::usage(format!(
            "--node {text:?}: expected NAME=HOST[,HOST…], for example alpha=10.0.0.1,alpha.example"
        ))
    })?;
    let name = name.trim();
    if name.is_empty()
        || !name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    {
        return Err(Failure::usage(format!(
            "--node {text:?}: the node name must be letters, digits, - or _"
        )));
    }
    let hosts: Vec<String> = hosts
        .split(',')
        .map(|host| host.trim().to_string())
        .filter(|host| !host.is_empty())
        .collect();
    if hosts.is_empty() {
        return Err(Failure::usage(format!("--node {text:?}: no host given")));
    }
    Ok((name.to_string(), hosts))
}

fn write_file(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<(), Failure> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(mode);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|error| {
        if error.kind() == std::io::ErrorKind::AlreadyExists {
            Failure::usage(format!(
                "{} exists; use --force to replace it",
                path.display()
            ))
        } else {
            Failure::failed(format!("{}: {error}", path.display()))
        }
    })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|error| Failure::failed(format!("{}: {error}", path.display())))
}

/// Write `ca.pem`, `ca.key` and `NAME.pem`, `NAME.key` for each node into `dir`.
pub fn init(dir: &Path, nodes: &[String], force: bool) -> Result<u8, Failure> {
    if nodes.is_empty() {
        return Err(Failure::usage(
            "name the nodes: --node alpha=HOST --node beta=HOST".to_string(),
        ));
    }
    let nodes: Vec<(String, Vec<String>)> = nodes
        .iter()
        .map(|text| parse_node(text))
        .collect::<Result<_, _>>()?;
    let fail = |what: &str, error: rcgen::Error| Failure::failed(format!("{what}: {error}"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|error| Failure::failed(format!("{}: {error}", dir.display())))?;
    let ca_key = rcgen::KeyPair::generate().map_err(|error| fail("CA key", error))?;
    let mut ca_params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|error| fail("CA", error))?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "standin pair CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|error| fail("CA certificate", error))?;
    write_file(&dir.join("ca.pem"), ca_cert.pem().as_bytes(), 0o644, force)?;
    write_file(
        &dir.join("ca.key"),
        ca_key.serialize_pem().as_bytes(),
        0o600,
        force,
    )?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    for (name, hosts) in &nodes {
        let key = rcgen::KeyPair::generate().map_err(|error| fail(name, error))?;
        let mut params =
            rcgen::CertificateParams::new(hosts.clone()).map_err(|error| fail(name, error))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name.as_str());
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|error| fail(name, error))?;
        write_file(
            &dir.join(format!("{name}.pem")),
            cert.pem().as_bytes(),
            0o644,
            force,
        )?;
        write_file(
            &dir.join(format!("{name}.key")),
            key.serialize_pem().as_bytes(),
            0o600,
            force,
        )?;
        println!(
            "{name}: tls_cert_file = \"{}\", tls_key_file = \"{}\", tls_ca_file = \"{}\" (valid for {})",
            dir.join(format!("{name}.pem")).display(),
            dir.join(format!("{name}.key")).display(),
            dir.join("ca.pem").display(),
            hosts.join(", ")
        );
    }
    println!(
        "copy each node's .pem and .key and ca.pem to that node; keep ca.key off both (it signs new certificates)"
    );
    Ok(0)
}
