//! Pregenerates benchmark material: `mint OUT_DIR COUNT` writes `jwks.json` (the test public
//! keys), `token.txt` (one RS256 token) and `tokens.txt` (COUNT distinct RS256 tokens, one per
//! line), all valid for a day, issuer/audience from `keys::ISSUER`/`keys::AUDIENCE`, and
//! `id-keys.json`: the test P-256 key as a private JWKS (ES256) for the `id_token` variant.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use jsonwebtoken::Algorithm;
use portcullis_e2e::keys;
use serde_json::json;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().context("usage: mint OUT_DIR COUNT")?);
    let count: usize = args
        .next()
        .context("usage: mint OUT_DIR COUNT")?
        .parse()
        .context("COUNT")?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let jwks = keys::keys().jwks();
    std::fs::write(out.join("jwks.json"), jwks.to_string()).context("writing jwks.json")?;
    let ec = &keys::keys().ec256;
    let mut private = josekit::jws::ES256
        .key_pair_from_pem(&ec.private_pem)
        .context("loading the P-256 test key")?
        .to_jwk_key_pair();
    private.set_key_id("id-token-bench");
    private.set_algorithm("ES256");
    let id_keys = json!({"keys": [serde_json::Value::Object(private.as_ref().clone())]});
    std::fs::write(out.join("id-keys.json"), id_keys.to_string())
        .context("writing id-keys.json")?;
    let rsa = keys::keys().rsa.clone();
    std::fs::write(out.join("rsa.pem"), &rsa.private_pem).context("writing rsa.pem")?;
    let token = |i: usize| {
        let mut claims = keys::claims(&format!("user-{i}"), &["read"]);
        claims["exp"] = json!(keys::now() + 86_400);
        claims["jti"] = json!(format!("bench-{i}"));
        keys::mint(Algorithm::RS256, &rsa.kid, &claims)
    };
    std::fs::write(out.join("token.txt"), token(0)).context("writing token.txt")?;
    // RSA signing dominates; two threads halve the wait on the 2-core bench machines.
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let chunk = count.div_ceil(threads).max(1);
    let tokens: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (1..=count)
            .collect::<Vec<_>>()
            .chunks(chunk)
            .map(|ids| {
                let ids = ids.to_vec();
                scope.spawn(move || ids.into_iter().map(token).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    anyhow::ensure!(tokens.len() == count, "minting threads failed");
    std::fs::write(out.join("tokens.txt"), tokens.join("\n") + "\n")
        .context("writing tokens.txt")?;
    println!(
        "wrote {} tokens, jwks.json and token.txt to {}",
        count + 1,
        out.display()
    );
    Ok(())
}
