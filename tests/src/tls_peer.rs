//! Real TLS peers for the FIPS proxy tests: throwaway certificates made with the `openssl` command,
//! `openssl s_server` with chosen protocol/cipher/group restrictions, and nginx (when installed) as
//! an HTTPS server that echoes what it received.
//!
//! Everything listens on 127.0.0.1 only; certificates live in a per-test temporary directory and
//! expire after two days.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A CA, a server certificate for `upstream.test` and 127.0.0.1, a server certificate for
/// `wrong.test`, and a second CA that signed nothing the servers use.
pub struct TestPki {
    pub dir: PathBuf,
}

/// The name the good server certificate carries.
pub const GOOD_NAME: &str = "upstream.test";

impl TestPki {
    /// Generates everything with `openssl` (ECDSA P-256 keys).
    pub fn generate(tag: &str) -> TestPki {
        let dir = std::env::temp_dir().join(format!("eddy-fips-pki-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create PKI dir");
        let pki = TestPki { dir };
        pki.ca("ca");
        pki.ca("other-ca");
        pki.leaf("server", "ca", &format!("DNS:{GOOD_NAME},IP:127.0.0.1"));
        pki.leaf("wrong", "ca", "DNS:wrong.test");
        pki
    }

    /// Path of `name` (`ca.pem`, `server.key`, …) in the PKI directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn ca(&self, name: &str) {
        openssl(
            &self.dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-subj",
                &format!("/CN=eddy test {name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
    }

    fn leaf(&self, name: &str, ca: &str, san: &str) {
        let ext = self.dir.join(format!("{name}.ext"));
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth\n"
            ),
        )
        .expect("write ext file");
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &format!("{name}.pem"),
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Whether the `openssl` command runs here.
pub fn openssl_available() -> bool {
    Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success())
}

/// A free loopback port (bound then released: a small race with other processes is accepted).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A child process that is killed on drop.
pub struct Peer {
    pub addr: SocketAddr,
    child: Child,
    pub log: PathBuf,
}

impl Peer {
    /// What the peer printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `openssl s_server -www` with the good (or `cert`) certificate and extra restriction `args`.
pub fn s_server(pki: &TestPki, cert: &str, args: &[&str]) -> Peer {
    spawn_s_server(pki, cert, args, None)
}

/// `openssl s_server -www -tls1_2` that does not offer the extended master secret (RFC 7627), through an
/// `OPENSSL_CONF` whose system default clears the `ExtendedMasterSecret` option.
pub fn s_server_without_ems(pki: &TestPki) -> Peer {
    let conf = pki.path("no-ems.cnf");
    std::fs::write(
        &conf,
        "openssl_conf = default_conf\n[default_conf]\nssl_conf = ssl_sect\n[ssl_sect]\n\
         system_default = system_default_sect\n[system_default_sect]\nOptions = -ExtendedMasterSecret\n",
    )
    .expect("write no-ems.cnf");
    spawn_s_server(pki, "server", &["-tls1_2"], Some(&conf))
}

fn spawn_s_server(pki: &TestPki, cert: &str, args: &[&str], openssl_conf: Option<&Path>) -> Peer {
    let port = free_port();
    let log = pki.path(&format!("s_server-{port}.log"));
    let file = std::fs::File::create(&log).expect("log file");
    let err = file.try_clone().expect("clone log");
    let mut cmd = Command::new("openssl");
    if let Some(conf) = openssl_conf {
        cmd.env("OPENSSL_CONF", conf);
    }
    let child = cmd
        .args(["s_server", "-accept", &format!("127.0.0.1:{port}"), "-www"])
        .arg("-cert")
        .arg(pki.path(&format!("{cert}.pem")))
        .arg("-key")
        .arg(pki.path(&format!("{cert}.key")))
        .args(args)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .expect("spawn openssl s_server");
    let peer = Peer { addr: SocketAddr::from(([127, 0, 0, 1], port)), child, log };
    wait_listening(peer.addr, &peer);
    peer
}

/// nginx (if installed) on TLS 1.2/1.3 answering `host=<Host> method=<m> uri=<uri> len=<Content-Length>`.
pub fn nginx(pki: &TestPki) -> Option<Peer> {
    nginx_with(
        pki,
        "default_type text/plain;\n\
         return 200 \"host=$http_host method=$request_method uri=$request_uri len=$http_content_length\\n\";",
    )
}

/// nginx (if installed) terminating TLS 1.2/1.3 and passing every request to the plain-HTTP `upstream`
/// (an intake behind a TLS load balancer).
pub fn nginx_reverse_proxy(pki: &TestPki, upstream: SocketAddr) -> Option<Peer> {
    nginx_with(pki, &format!("proxy_pass http://{upstream}; proxy_http_version 1.1;"))
}

/// nginx (if installed) on TLS 1.2/1.3 with the good certificate and `location` as the body of
/// its `location / { … }` block.
pub fn nginx_with(pki: &TestPki, location: &str) -> Option<Peer> {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| Path::new(p).exists())?;
    let port = free_port();
    let dir = pki.path(&format!("nginx-{port}"));
    std::fs::create_dir_all(dir.join("tmp")).expect("nginx dir");
    let d = dir.display();
    let conf = format!(
        "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log info;\n\
         events {{ worker_connections 64; }}\n\
         http {{ access_log off; client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp;\n\
         fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
         server {{ listen 127.0.0.1:{port} ssl; server_name {GOOD_NAME};\n\
         ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3;\n\
         location / {{ {location} }} }} }}\n",
        cert = pki.path("server.pem").display(),
        key = pki.path("server.key").display(),
    );
    std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
    let log = dir.join("stderr.log");
    let file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(bin)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone"))
        .stderr(file)
        .spawn()
        .ok()?;
    let peer = Peer { addr: SocketAddr::from(([127, 0, 0, 1], port)), child, log };
    wait_listening(peer.addr, &peer);
    Some(peer)
}

fn wait_listening(addr: SocketAddr, peer: &Peer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "TLS peer on {addr} did not start:\n{}", peer.output());
        std::thread::sleep(Duration::from_millis(50));
    }
}
