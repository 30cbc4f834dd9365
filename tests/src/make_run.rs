//! `scripts/run.sh`, what `make run` starts, as a test starts it: a data directory and ports
//! of the test's own, so that tests (and a developer's `make run`) never share one.

use crate::{paths, ports};
use std::path::Path;
use std::process::Command;

/// The script with `data` as its data directory and six distinct free ports (the script
/// would refuse one taken twice only after starting); arguments and I/O are the caller's.
pub fn command(data: &Path) -> Command {
    let [public, admin, proxy, upstream, envoy_admin, login_app] = ports::free_ports::<6>();
    let mut cmd = Command::new("bash");
    cmd.arg(paths::repo_root().join("scripts/run.sh"))
        .env("PORTCULLIS_DATA", data)
        .env("PUBLIC_PORT", public.to_string())
        .env("ADMIN_PORT", admin.to_string())
        .env("PROXY_PORT", proxy.to_string())
        .env("UPSTREAM_PORT", upstream.to_string())
        .env("ENVOY_ADMIN_PORT", envoy_admin.to_string())
        .env("LOGIN_APP_PORT", login_app.to_string());
    cmd
}
