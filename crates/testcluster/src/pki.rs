//! The control plane's certificates: one CA, the API server's serving
//! certificate, client certificates per component, and the service-account
//! signing key. Kubeconfigs carry them inline.

use std::net::IpAddr;
use std::path::Path;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Pair {
    pub cert: String,
    pub key: String,
}

impl Pair {
    pub fn write(&self, dir: &Path, name: &str) -> std::io::Result<()> {
        std::fs::write(dir.join(format!("{name}.crt")), &self.cert)?;
        write_private(&dir.join(format!("{name}.key")), &self.key)
    }
}

fn write_private(path: &Path, data: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data.as_bytes())
}

/// The cluster CA: signs serving and client certificates.
pub struct Ca {
    pub cert: String,
    issuer: Issuer<'static, KeyPair>,
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(30);
}

impl Ca {
    pub fn new(name: &str) -> Result<Ca, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A serving certificate for these DNS names and IP addresses.
    pub fn serving(&self, name: &str, dns: &[&str], ips: &[IpAddr]) -> Result<Pair, rcgen::Error> {
        let mut params = CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>())?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        validity(&mut params);
        self.sign(params)
    }

    /// A client certificate: Kubernetes reads the user from CN and groups from O.
    pub fn client(&self, user: &str, groups: &[&str]) -> Result<Pair, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        validity(&mut params);
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<Pair, rcgen::Error> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// The service-account token signing key (ECDSA P-256, PKCS#8) and its public half.
pub fn service_account_key(dir: &Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let key = KeyPair::generate()?;
    write_private(&dir.join("sa.key"), &key.serialize_pem())?;
    std::fs::write(dir.join("sa.pub"), key.public_key_pem())?;
    Ok(())
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A kubeconfig with one cluster, one user and one context named `name`.
pub enum Credentials<'a> {
    Cert(&'a Pair),
    Token(&'a str),
}

pub fn kubeconfig(name: &str, server: &str, ca: &str, creds: Credentials<'_>) -> String {
    let user = match creds {
        Credentials::Cert(pair) => serde_json::json!({
            "client-certificate-data": b64(&pair.cert),
            "client-key-data": b64(&pair.key),
        }),
        Credentials::Token(token) => serde_json::json!({ "token": token }),
    };
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    });
    serde_saphyr::to_string(&config).unwrap_or_default()
}

/// Writes a kubeconfig whole or not at all (a temporary file renamed over
/// it): two operator pods of one release get tokens of the same
/// ServiceAccount at the same path, and a process starting while the other
/// write was half done read a kubeconfig without its context.
pub fn write_kubeconfig(path: &Path, text: &str) -> std::io::Result<()> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}-{n}.tmp", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    write_private(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_certificate_carries_user_and_groups_and_a_kubeconfig_embeds_it() {
        let ca = Ca::new("test CA").unwrap();
        let pair = ca.client("system:admin", &["system:masters"]).unwrap();
        assert!(pair.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        let text = kubeconfig("x", "https://127.0.0.1:1", &ca.cert, Credentials::Cert(&pair));
        let v: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(v["current-context"], "x");
        let data = v["users"][0]["user"]["client-certificate-data"].as_str().unwrap();
        let decoded = base64::engine::general_purpose::STANDARD.decode(data).unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), pair.cert);
    }
}
