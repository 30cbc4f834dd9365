//! A throwaway PostgreSQL server for the black-box tests: `initdb` in a temporary directory, a
//! free port on loopback, started with `pg_ctl -w` (which returns once the server accepts
//! connections). As root (CI), the server runs as uid/gid 65534 (`nobody`), since initdb refuses
//! root. A watchdog shell stops the server and removes its directory when the test process
//! exits, even on a panic or a kill: a test binary has no teardown hook.
//!
//! Binaries: `$PG_BIN`, else the newest `/usr/lib/postgresql/*/bin` (Debian's `postgresql`,
//! which `make postgres` installs), else `PATH`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

const UNPRIVILEGED: &str = "65534";

pub struct PgServer {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// Server settings beyond the defaults (`-c name=value ...`).
    extra: String,
}

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let which = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&which.stdout).trim().to_string();
    assert!(
        !path.is_empty(),
        "no PostgreSQL server binaries (initdb): run `make postgres` or set PG_BIN"
    );
    Path::new(&path)
        .parent()
        .expect("initdb has a directory")
        .to_path_buf()
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// `program args...`, as the unprivileged user when we are root.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={UNPRIVILEGED}"),
            &format!("--regid={UNPRIVILEGED}"),
            "--clear-groups",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

impl PgServer {
    /// initdb + start on a free port; panics with the server's log if it cannot.
    pub fn start() -> PgServer {
        Self::start_with(|_| String::new())
    }

    /// With TLS: a test CA (made here with `openssl`) signs a server certificate for
    /// `localhost` only and a client certificate for the user `postgres`. The database
    /// `certonly` admits only TLS connections that present that client certificate (pg_hba
    /// `cert`). The files are in [`Self::tls_file`]: `ca.pem`, `other-ca.pem` (a CA that
    /// signed nothing here), `client.pem`/`.key`, and for [`Self::swap_certificate`]
    /// `localhost.pem`/`.key` (the server's) and `elsewhere.pem`/`.key` (another name's).
    pub fn start_tls() -> PgServer {
        let server = Self::start_with(|dir| {
            make_test_certs(dir);
            let hba = dir.join("data/pg_hba.conf");
            let old = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
            std::fs::write(
                &hba,
                format!(
                    "hostssl certonly all 127.0.0.1/32 cert\n\
                     hostnossl certonly all 127.0.0.1/32 reject\n{old}"
                ),
            )
            .expect("write pg_hba.conf");
            format!(
                " -c ssl=on -c ssl_cert_file={d}/server.pem -c ssl_key_file={d}/server.key \
                 -c ssl_ca_file={d}/ca.pem",
                d = dir.display()
            )
        });
        Self::execute(&server.dsn("postgres"), "CREATE DATABASE certonly");
        server
    }

    pub fn tls_file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Replaces the server's certificate with `cert.pem`/`key.pem` of [`Self::tls_file`] and
    /// closes every other session, so that clients reconnect and meet the new one.
    pub fn swap_certificate(&self, cert: &str, key: &str) {
        for (from, to) in [(cert, "server.pem"), (key, "server.key")] {
            std::fs::copy(self.dir.join(from), self.dir.join(to)).expect("copy certificate");
        }
        let ok = as_server_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("reload")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run pg_ctl reload")
            .success();
        assert!(ok, "pg_ctl reload");
        Self::execute(
            &self.dsn("postgres"),
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
        );
    }

    fn start_with(prepare: impl FnOnce(&Path) -> String) -> PgServer {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("portcullis-pg-")
            .tempdir()
            .expect("tempdir")
            .keep();
        if is_root() {
            let ok = Command::new("chown")
                .arg(format!("{UNPRIVILEGED}:{UNPRIVILEGED}"))
                .arg(&dir)
                .status()
                .expect("chown")
                .success();
            assert!(ok, "chown {}", dir.display());
        }
        let out = as_server_user(&bin.join("initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Stops the server and removes the directory once this test process is gone. It
        // outlives us on purpose, so it is never waited for (init reaps it).
        let stop = format!(
            "{} {} -D {} stop -m immediate",
            if is_root() {
                format!("setpriv --reuid={UNPRIVILEGED} --regid={UNPRIVILEGED} --clear-groups")
            } else {
                String::new()
            },
            bin.join("pg_ctl").display(),
            dir.join("data").display()
        );
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
                pid = std::process::id(),
                dir = dir.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the PostgreSQL watchdog");
        let extra = prepare(&dir);
        let mut server = PgServer {
            port: 0,
            dir,
            bin,
            extra,
        };
        for _ in 0..5 {
            server.port = free_port();
            if server.try_start() {
                return server;
            }
        }
        panic!("PostgreSQL did not start; log:\n{}", server.log());
    }

    fn try_start(&self) -> bool {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off \
             -c max_connections=300{}",
            self.port,
            self.dir.display(),
            self.extra
        );
        as_server_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "-t", "60", "-l"])
            .arg(self.dir.join("log"))
            .args(["-o", &opts, "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run pg_ctl start")
            .success()
    }

    /// Starts a stopped server again on the same port and data.
    pub fn restart(&self) {
        assert!(
            self.try_start(),
            "PostgreSQL did not restart; log:\n{}",
            self.log()
        );
    }

    /// Stops at once (`-m immediate`: like a crash; clients see their connections drop).
    pub fn stop(&self) {
        let ok = as_server_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "stop", "-m", "immediate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run pg_ctl stop")
            .success();
        assert!(ok, "pg_ctl stop failed; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    pub fn dsn(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// A new empty database; returns its DSN.
    pub fn create_database(&self) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let admin = self.dsn("postgres");
        let create = format!("CREATE DATABASE {name}");
        off_runtime(move || {
            let mut c = postgres::Client::connect(&admin, postgres::NoTls)
                .expect("connect to the test PostgreSQL");
            c.batch_execute(&create).expect("CREATE DATABASE");
        });
        self.dsn(&name)
    }

    /// One statement against the database of `dsn` (test set-up and inspection).
    pub fn query_one_i64(dsn: &str, sql: &str) -> i64 {
        let (dsn, sql) = (dsn.to_string(), sql.to_string());
        off_runtime(move || {
            let mut c = postgres::Client::connect(&dsn, postgres::NoTls).expect("connect");
            c.query_one(&sql, &[]).expect("query").get(0)
        })
    }

    /// Statements against the database of `dsn`.
    pub fn execute(dsn: &str, sql: &str) {
        let (dsn, sql) = (dsn.to_string(), sql.to_string());
        off_runtime(move || {
            let mut c = postgres::Client::connect(&dsn, postgres::NoTls).expect("connect");
            c.batch_execute(&sql).expect("execute");
        })
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = as_server_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["stop", "-m", "immediate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("openssl {args}"))
        .current_dir(dir)
        .output()
        .expect("run openssl (the test CA is made with it)");
    assert!(
        out.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test CA, another CA, a server certificate for `localhost` (and a spare one for
/// `elsewhere.test`), a client certificate for `postgres`; readable by the server user only.
fn make_test_certs(dir: &Path) {
    const KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    for ca in ["ca", "other-ca"] {
        openssl(
            dir,
            &format!(
                "req -x509 {KEY} -keyout {ca}.key -out {ca}.pem -days 2 -subj /CN=portcullis-{ca} \
                 -addext basicConstraints=critical,CA:TRUE \
                 -addext keyUsage=critical,keyCertSign,cRLSign"
            ),
        );
    }
    for (name, cn, ext) in [
        (
            "server",
            "localhost",
            "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth",
        ),
        (
            "elsewhere",
            "elsewhere.test",
            "subjectAltName=DNS:elsewhere.test\nextendedKeyUsage=serverAuth",
        ),
        ("client", "postgres", "extendedKeyUsage=clientAuth"),
    ] {
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n{ext}\n"),
        )
        .expect("write extensions");
        openssl(
            dir,
            &format!("req {KEY} -keyout {name}.key -out {name}.csr -subj /CN={cn}"),
        );
        openssl(
            dir,
            &format!(
                "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                 -out {name}.pem -days 2 -extfile {name}.ext"
            ),
        );
    }
    for ext in ["pem", "key"] {
        std::fs::copy(
            dir.join(format!("server.{ext}")),
            dir.join(format!("localhost.{ext}")),
        )
        .expect("keep the localhost certificate");
    }
    // PostgreSQL refuses a key file others can read, or one owned by somebody else.
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "chmod 600 *.key && {}",
            if is_root() {
                format!("chown {UNPRIVILEGED}:{UNPRIVILEGED} *.key *.pem")
            } else {
                "true".into()
            }
        ))
        .current_dir(dir)
        .status()
        .expect("chmod keys")
        .success();
    assert!(ok, "chmod/chown of the test keys");
}

/// The synchronous driver runs its own runtime, which cannot start inside an async test's.
fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f)
        .join()
        .expect("database helper thread")
}

/// The server shared by every test of this binary (started on first use).
pub fn shared() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(PgServer::start)
}

/// `PORTCULLIS_TEST_STORE=postgres` runs the black-box suites against PostgreSQL.
pub fn enabled() -> bool {
    std::env::var("PORTCULLIS_TEST_STORE").is_ok_and(|s| s == "postgres")
}

/// The system secret test replicas share (each needs the same one to open the keys).
pub const SYSTEM_SECRET: &str = "test-system-secret-shared-by-replicas";
