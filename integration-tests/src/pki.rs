//! Certificates made at test time with `openssl`: a private CA, a server certificate for
//! 127.0.0.1, and client certificates (valid, expired, without a DNS name).

use std::path::{Path, PathBuf};
use std::process::Command;

use icae_client::{ClientTls, ConnectOptions};

/// Run openssl with whitespace-separated arguments (temp paths have no spaces).
pub fn openssl(args: &str) {
    let output = Command::new("openssl")
        .args(args.split_whitespace())
        .output()
        .expect("openssl must be installed (scripts/setup.sh installs it)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    pub fn cert_str(&self) -> &str {
        self.cert.to_str().unwrap()
    }

    pub fn key_str(&self) -> &str {
        self.key.to_str().unwrap()
    }
}

/// A private CA in its own directory; everything it signs lands there too.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub ca: CertFiles,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertFiles {
            cert: dir.path().join(format!("{name}.pem")),
            key: dir.path().join(format!("{name}.key")),
        };
        openssl(&format!(
            "req -newkey rsa:2048 -nodes -days 2 -x509 -subj /CN={name} -keyout {} -out {}",
            ca.key_str(),
            ca.cert_str()
        ));
        TestCa {
            dir,
            name: name.into(),
            ca,
        }
    }

    pub fn ca_path(&self) -> &Path {
        &self.ca.cert
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).to_str().unwrap().to_owned()
    }

    /// A key and a CSR for `subject`, with `ext` (an openssl extension line, or empty).
    fn request(&self, file: &str, subject: &str, ext: &str) -> (CertFiles, String, String) {
        let files = CertFiles {
            cert: self.dir.path().join(format!("{file}.pem")),
            key: self.dir.path().join(format!("{file}.key")),
        };
        let (csr, ext_file) = (
            self.path(&format!("{file}.csr")),
            self.path(&format!("{file}.ext")),
        );
        std::fs::write(&ext_file, format!("{ext}\n")).unwrap();
        openssl(&format!(
            "req -newkey rsa:2048 -nodes -subj {subject} -keyout {} -out {csr}",
            files.key_str()
        ));
        (files, csr, ext_file)
    }

    fn sign(&self, file: &str, subject: &str, ext: &str) -> CertFiles {
        let (files, csr, ext_file) = self.request(file, subject, ext);
        openssl(&format!(
            "x509 -req -days 1 -in {csr} -CA {} -CAkey {} -CAcreateserial -extfile {ext_file} -out {}",
            self.ca.cert_str(),
            self.ca.key_str(),
            files.cert_str()
        ));
        files
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub fn server(&self, file: &str) -> CertFiles {
        self.sign(
            file,
            "/CN=127.0.0.1",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        )
    }

    /// A client certificate whose first DNS name is `tenant`.
    pub fn client(&self, tenant: &str) -> CertFiles {
        self.sign(
            &format!("client-{tenant}"),
            &format!("/CN={tenant}"),
            &format!("subjectAltName=DNS:{tenant}\nextendedKeyUsage=clientAuth"),
        )
    }

    /// A client certificate whose subjectAltName holds `names`, in order (`DNS:` added).
    pub fn client_with_dns_names(&self, file: &str, names: &[&str]) -> CertFiles {
        let names: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        self.sign(
            file,
            &format!("/CN={file}"),
            &format!(
                "subjectAltName={}\nextendedKeyUsage=clientAuth",
                names.join(",")
            ),
        )
    }

    /// A client certificate with a CN but no DNS name.
    pub fn client_without_dns_name(&self, file: &str) -> CertFiles {
        self.sign(file, &format!("/CN={file}"), "extendedKeyUsage=clientAuth")
    }

    /// A client certificate for `tenant` that expired in 2020 (`openssl x509` cannot
    /// back-date, `openssl ca` can).
    pub fn expired_client(&self, tenant: &str) -> CertFiles {
        let file = format!("expired-{tenant}");
        let (files, csr, ext_file) = self.request(
            &file,
            &format!("/CN={tenant}"),
            &format!("subjectAltName=DNS:{tenant}\nextendedKeyUsage=clientAuth"),
        );
        let (db, serial, config) = (
            self.path("index.txt"),
            self.path("serial"),
            self.path("ca.cnf"),
        );
        std::fs::write(&db, "").unwrap();
        std::fs::write(&serial, "1000\n").unwrap();
        std::fs::write(
            &config,
            format!(
                "[ca]\ndefault_ca = test\n[test]\ndatabase = {db}\nserial = {serial}\n\
                 new_certs_dir = {}\ndefault_md = sha256\npolicy = any\n[any]\ncommonName = supplied\n",
                self.dir.path().display()
            ),
        )
        .unwrap();
        openssl(&format!(
            "ca -batch -notext -config {config} -cert {} -keyfile {} -in {csr} -out {} \
             -startdate 20200101000000Z -enddate 20200102000000Z -extfile {ext_file}",
            self.ca.cert_str(),
            self.ca.key_str(),
            files.cert_str()
        ));
        files
    }
}

/// Client options trusting `ca`, with `client` as the mTLS identity when given.
pub fn tls_options(ca: &Path, client: Option<&CertFiles>) -> ConnectOptions {
    let tls = ClientTls::from_files(
        Some(ca),
        client.map(|c| c.cert.as_path()),
        client.map(|c| c.key.as_path()),
    )
    .unwrap();
    ConnectOptions {
        tls: Some(tls),
        ..Default::default()
    }
}
