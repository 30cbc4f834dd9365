//! The `portcullis` binary: parses the command line, sets up logging, runs the chosen command.
//! Any error ends the process with one readable line on stderr and exit code 1.

use anyhow::Context;
use clap::Parser;
use portcullis::server::{Apps, Service, StartError, serve_on, shutdown_signal};
use portcullis_cli::cli::{Cli, Command, LogFormat, MigrateArgs, RenderArgs, ServeArgs, TestArgs};
use portcullis_cli::manifests_mode::{self, Settings, WasmModule};
use portcullis_reconciler::global::GlobalConfig;
use portcullis_reconciler::rule_set::RenderOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

// glibc's malloc took a tenth of the token service's CPU under load (many small, short-lived
// allocations on several threads: requests, JSON, SQLite rows); with mimalloc an OIDC flow
// costs about 9 % less CPU (figures in control-plane/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portcullis: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Command::Test(args) = &cli.command {
        return runtime.block_on(test(args));
    }
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` puts the whole cause chain on one line.
            eprintln!("portcullis: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crds => {
            print!("{}", portcullis_reconciler::crd::crds_yaml()?);
            Ok(())
        }
        Command::Render(args) => render(&args),
        // Handled in main (its own exit statuses).
        Command::Test(args) => {
            test(&args).await;
            Ok(())
        }
        Command::Migrate(args) => {
            init_logging(&cli.log_format, &cli.log_level)?;
            tokio::task::spawn_blocking(move || migrate(&args))
                .await
                .context("migrating panicked")?
        }
        Command::Serve(args) => {
            init_logging(&cli.log_format, &cli.log_level)?;
            serve(args).await
        }
    }
}

/// `portcullis test`: 0 allow, 1 deny, 2 when the rules, config or request are unusable.
async fn test(args: &TestArgs) -> std::process::ExitCode {
    use portcullis_cli::rule_test;
    use portcullis_core::rule_tester::TestRequest;
    let outcome = async {
        let mut request = TestRequest::parse_line(&args.request)?;
        for h in &args.headers {
            request.add_header(h)?;
        }
        request.token = args.token.clone();
        let config = rule_test::filter_config(&args.rules, args.config.as_deref())?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        rule_test::run(&config, &request, now).await
    }
    .await;
    match outcome {
        Ok(trace) => {
            if args.json {
                match serde_json::to_string_pretty(&trace) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("portcullis: {e}");
                        return std::process::ExitCode::from(2);
                    }
                }
            } else {
                print!("{}", rule_test::render_text(&trace));
            }
            if trace.decision.allowed {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("portcullis: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn init_logging(format: &LogFormat, level: &str) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_new(level).with_context(|| format!("invalid --log-level {level:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

fn load_global(path: Option<&Path>) -> anyhow::Result<Option<GlobalConfig>> {
    let Some(path) = path else { return Ok(None) };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --global-config {}", path.display()))?;
    let g = GlobalConfig::from_yaml(&text).with_context(|| format!("{}", path.display()))?;
    Ok(Some(g))
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the filter module {}", path.display()))?;
    Ok(portcullis::crypto::hex(&portcullis::crypto::sha256(&bytes)))
}

fn render(args: &RenderArgs) -> anyhow::Result<()> {
    let global = load_global(args.global_config.as_deref())?.unwrap_or_default();
    let module_sha256 = match (&args.wasm_sha256, &args.wasm) {
        (Some(hex), _) => {
            anyhow::ensure!(
                hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                "--wasm-sha256 {hex:?} is not 64 hex digits"
            );
            hex.to_ascii_lowercase()
        }
        (None, Some(path)) => sha256_file(path)?,
        (None, None) => {
            let default = Path::new("dist/filter.wasm");
            if default.is_file() {
                sha256_file(default)?
            } else {
                String::new()
            }
        }
    };
    let opts = RenderOptions {
        output: args.output.into(),
        module_url: args.wasm_url.clone(),
        module_sha256,
        ..RenderOptions::default()
    };
    // The error already names its cause; a chain would repeat it.
    let rendered = portcullis_reconciler::manifests::render(&args.manifests, &global, &opts)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for p in &rendered.problems {
        eprintln!("portcullis: {p}");
    }
    print!("{}", rendered.yaml);
    Ok(())
}

/// `portcullis migrate`: the schema, then (with `--from-sqlite`) the embedded store's rows.
fn migrate(args: &MigrateArgs) -> anyhow::Result<()> {
    use portcullis::store::postgres::{PostgresStore, redact};
    let dsn = args
        .database
        .dsn()
        .context("migrate needs --dsn (or PORTCULLIS_DSN / DSN)")?;
    let pg = PostgresStore::connect(&dsn, &args.database.options())?;
    let applied = pg
        .migrate()
        .with_context(|| format!("migrating {}", redact(&dsn)))?;
    println!(
        "schema at version {} ({})",
        PostgresStore::schema_version(),
        if applied.is_empty() {
            "already current".to_string()
        } else {
            format!("applied {applied:?}")
        }
    );
    if let Some(dir) = &args.from_sqlite {
        let file = dir.join("portcullis.sqlite");
        anyhow::ensure!(
            file.is_file(),
            "--from-sqlite {}: no portcullis.sqlite in it",
            dir.display()
        );
        let snapshot = portcullis::store::sqlite::SqliteStore::open(dir)
            .with_context(|| format!("opening {}", file.display()))?
            .export()
            .with_context(|| format!("reading {}", file.display()))?;
        let inserted = pg.import(&snapshot).context("copying into PostgreSQL")?;
        println!(
            "copied {inserted} of {} rows from {} ({} clients, {} keys; rows already present kept)",
            snapshot.rows(),
            file.display(),
            snapshot.clients.len(),
            snapshot.keys.len()
        );
    }
    Ok(())
}

async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
        .context("starting the HTTP servers")
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let kubernetes = args.kubernetes_mode();
    let config = args.config();
    if let Some(dir) = &args.manifests {
        anyhow::ensure!(
            dir.is_dir(),
            "--manifests {}: not a directory",
            dir.display()
        );
    }
    // Kubernetes: fail early and readably without a cluster, before keys are generated.
    let kube_client = if kubernetes {
        Some(
            kube::Client::try_default()
                .await
                .context("--kubernetes: no Kubernetes API server configured (no in-cluster service account or kubeconfig)")?,
        )
    } else {
        None
    };
    let wasm_path = absolute(&args.wasm);
    let module = WasmModule::load(&wasm_path);
    let public = bind(config.public_addr).await?;
    let admin = bind(config.admin_addr).await?;
    let svc = tokio::task::spawn_blocking(move || Service::open(config))
        .await
        .context("starting the service panicked")?
        .context("starting the service")?;
    let mut apps = Apps::new(&svc);
    apps.public = apps.public.merge(module.router());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut background = Vec::new();
    let mut console_source = None;
    let mut console_kubernetes = None;
    if let Some(dir) = &args.manifests {
        let mut global = match load_global(args.global_config.as_deref())? {
            Some(mut g) => {
                let own_keys = manifests_mode::wire_id_token_keys(
                    &mut g,
                    svc.config.public_addr,
                    svc.config.admin_addr,
                );
                if own_keys
                    || g.cluster_naming == portcullis_reconciler::global::ClusterNaming::Explicit
                {
                    manifests_mode::add_own_clusters(
                        &mut g,
                        svc.config.public_addr,
                        svc.config.admin_addr,
                        &args.public_cluster,
                        &args.admin_cluster,
                    );
                }
                g
            }
            None => manifests_mode::default_global_config(
                svc.config.public_addr,
                svc.config.admin_addr,
                &args.public_cluster,
                &args.admin_cluster,
            ),
        };
        global.clusters.retain(|_, v| !v.is_empty());
        let settings = Settings {
            dir: dir.clone(),
            ecds_dir: args
                .ecds_dir
                .clone()
                .unwrap_or_else(|| svc.config.data_dir.join("ecds")),
            wasm_path: wasm_path.display().to_string(),
            global,
        };
        tracing::info!(dir = %settings.dir.display(), ecds_dir = %settings.ecds_dir.display(),
            wasm = %settings.wasm_path, "manifests mode");
        console_source = Some(portcullis_cli::console::ManifestsSource {
            dir: settings.dir.clone(),
            global: settings.global.clone(),
        });
        background.push(tokio::spawn(manifests_mode::run(
            Arc::clone(&svc),
            settings,
            args.poll_interval,
            stopped(stop_rx.clone()),
        )));
    }
    if let Some(client) = kube_client {
        let global = load_global(args.global_config.as_deref())?.unwrap_or_default();
        if module.sha256.is_empty() {
            tracing::warn!(path = %wasm_path.display(), "no filter module to hash: WasmPlugins get no sha256");
        }
        let url = args
            .wasm_url
            .clone()
            .unwrap_or_else(|| format!("http://{}/filter.wasm", svc.config.public_addr));
        let k = portcullis_cli::kubernetes_mode::Settings {
            global,
            render: RenderOptions {
                output: args.output.into(),
                module_url: url,
                module_sha256: module.sha256.clone(),
                ..RenderOptions::default()
            },
            namespaces: args.namespaces(),
            lease_namespace: args.lease_namespace.clone(),
        };
        console_kubernetes = Some(portcullis_cli::console::KubernetesSource {
            client: client.clone(),
            global: k.global.clone(),
            render: k.render.clone(),
            namespaces: k.namespaces.clone(),
        });
        background.push(tokio::spawn(portcullis_cli::kubernetes_mode::run(
            client,
            Arc::clone(&svc),
            k,
            stopped(stop_rx.clone()),
        )));
    }
    let mut console = portcullis_cli::console::Console::new(Arc::clone(&svc), console_source);
    if let Some(source) = console_kubernetes {
        console = console.with_kubernetes(source);
    }
    apps.admin = apps.admin.merge(portcullis_cli::console::router(console));
    let result = serve_on(svc, public, admin, apps, shutdown_signal()).await;
    let _ = stop_tx.send(true);
    for b in background {
        let _ = b.await;
    }
    result.context("serving")
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
