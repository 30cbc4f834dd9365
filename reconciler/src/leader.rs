//! Leader election over a `coordination.k8s.io/v1` Lease, so several replicas can run and only
//! one reconciles. The holder renews the lease every `duration / 3`; another replica takes over
//! once `renewTime + leaseDurationSeconds` has passed. Writes carry the lease's
//! `resourceVersion`, so two replicas racing for an expired lease cannot both win (the loser gets
//! a 409 and stays a follower).

use futures::future::{Either, select};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use std::future::Future;
use std::time::Duration;

/// Identifies the lease and this replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseLock {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (pod name).
    pub holder: String,
    pub duration: Duration,
}

/// The outcome of one election round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    Leader,
    Follower { holder: Option<String> },
}

fn micro(t: Timestamp) -> MicroTime {
    MicroTime(t)
}

/// One round: acquire the lease if it is free or expired, renew it if held.
pub async fn try_acquire_or_renew(
    client: &Client,
    lock: &LeaseLock,
    now: Timestamp,
) -> Result<Leadership, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &lock.namespace);
    let seconds = i32::try_from(lock.duration.as_secs()).unwrap_or(i32::MAX);
    let pp = PostParams {
        field_manager: Some(crate::kube_apply::FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    let conflict = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409);
    let Some(mut lease) = api.get_opt(&lock.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(lock.name.clone()),
                namespace: Some(lock.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(lock.holder.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(micro(now)),
                renew_time: Some(micro(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&pp, &lease).await {
            Ok(_) => Ok(Leadership::Leader),
            Err(e) if conflict(&e) => Ok(Leadership::Follower { holder: None }),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let mine = holder.as_deref() == Some(lock.holder.as_str());
    let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(MicroTime(renewed)), Some(d)) => renewed
            .checked_add(SignedDuration::from_secs(i64::from(d)))
            .is_ok_and(|until| until < now),
        _ => true,
    };
    if !mine && holder.is_some() && !expired {
        return Ok(Leadership::Follower { holder });
    }
    let mut new_spec = spec.clone();
    new_spec.holder_identity = Some(lock.holder.clone());
    new_spec.lease_duration_seconds = Some(seconds);
    new_spec.renew_time = Some(micro(now));
    if !mine {
        new_spec.acquire_time = Some(micro(now));
        new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    lease.spec = Some(new_spec);
    match api.replace(&lock.name, &pp, &lease).await {
        Ok(_) => Ok(Leadership::Leader),
        Err(e) if conflict(&e) => Ok(Leadership::Follower { holder }),
        Err(e) => Err(e),
    }
}

/// Runs `work` only while this replica holds the lease: waits to acquire it, starts `work`,
/// renews every `duration / 3`, and stops `work` when a renewal does not succeed (then competes
/// again). Returns only if `work` itself finishes.
pub async fn run_as_leader<F, W>(client: Client, lock: LeaseLock, mut work: W)
where
    W: FnMut() -> F,
    F: Future<Output = ()>,
{
    let period = (lock.duration / 3).max(Duration::from_secs(1));
    loop {
        // Follow until leader.
        loop {
            match try_acquire_or_renew(&client, &lock, Timestamp::now()).await {
                Ok(Leadership::Leader) => break,
                Ok(Leadership::Follower { .. }) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: lease not readable"),
            }
            tokio::time::sleep(period).await;
        }
        tracing::info!(holder = %lock.holder, "leader election: acquired lease {}/{}", lock.namespace, lock.name);
        let renew = async {
            loop {
                tokio::time::sleep(period).await;
                match try_acquire_or_renew(&client, &lock, Timestamp::now()).await {
                    Ok(Leadership::Leader) => {}
                    Ok(Leadership::Follower { holder }) => {
                        tracing::warn!(?holder, "leader election: lost the lease");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "leader election: renewal failed; stepping down");
                        return;
                    }
                }
            }
        };
        let job = work();
        match select(std::pin::pin!(job), std::pin::pin!(renew)).await {
            Either::Left(((), _)) => return,
            Either::Right(((), _)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::{Value, json};
    use tower_test::mock;

    use crate::mock_api::expect;
    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/kyma-system/leases/portcullis";

    fn lock() -> LeaseLock {
        LeaseLock {
            namespace: "kyma-system".into(),
            name: "portcullis".into(),
            holder: "pod-a".into(),
            duration: Duration::from_secs(15),
        }
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn lease(holder: &str, renewed: &str, transitions: i32) -> Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "portcullis", "namespace": "kyma-system", "resourceVersion": "42"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renewed,
                     "acquireTime": renewed, "leaseTransitions": transitions}})
    }

    async fn round(
        script: Vec<(Method, &'static str, StatusCode, Value)>,
        now: &str,
    ) -> (Leadership, Vec<Value>) {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let server = tokio::spawn(async move {
            let mut bodies = Vec::new();
            for (m, uri, status, reply) in script {
                bodies.push(expect(&mut handle, m, uri, status, reply).await);
            }
            bodies
        });
        let result = try_acquire_or_renew(&client, &lock(), t(now))
            .await
            .unwrap();
        (result, server.await.unwrap())
    }

    fn not_found() -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})
    }

    fn conflict() -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409})
    }

    #[tokio::test]
    async fn a_missing_lease_is_created() {
        let (r, bodies) = round(
            vec![
                (Method::GET, PATH, StatusCode::NOT_FOUND, not_found()),
                (Method::POST, "/apis/coordination.k8s.io/v1/namespaces/kyma-system/leases?&fieldManager=portcullis",
                    StatusCode::CREATED, lease("pod-a", "2026-11-29T00:00:00Z", 0)),
            ],
            "2026-11-29T00:00:00Z",
        )
        .await;
        assert_eq!(r, Leadership::Leader);
        assert_eq!(bodies[1]["spec"]["holderIdentity"], "pod-a");
        assert_eq!(bodies[1]["spec"]["leaseDurationSeconds"], 15);
    }

    #[tokio::test]
    async fn a_live_lease_of_another_replica_is_respected() {
        let (r, _) = round(
            vec![(
                Method::GET,
                PATH,
                StatusCode::OK,
                lease("pod-b", "2026-11-29T00:00:00Z", 3),
            )],
            "2026-11-29T00:00:10Z",
        )
        .await;
        assert_eq!(
            r,
            Leadership::Follower {
                holder: Some("pod-b".into())
            }
        );
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_with_its_resource_version() {
        let (r, bodies) = round(
            vec![
                (Method::GET, PATH, StatusCode::OK, lease("pod-b", "2026-11-29T00:00:00Z", 3)),
                (Method::PUT, "/apis/coordination.k8s.io/v1/namespaces/kyma-system/leases/portcullis?&fieldManager=portcullis",
                    StatusCode::OK, lease("pod-a", "2026-11-29T00:00:20Z", 4)),
            ],
            "2026-11-29T00:00:20Z",
        )
        .await;
        assert_eq!(r, Leadership::Leader);
        let put = &bodies[1];
        assert_eq!(put["metadata"]["resourceVersion"], "42");
        assert_eq!(put["spec"]["holderIdentity"], "pod-a");
        assert_eq!(put["spec"]["leaseTransitions"], 4);
        assert!(
            put["spec"]["renewTime"]
                .as_str()
                .unwrap()
                .starts_with("2026-11-29T00:00:20")
        );
    }

    #[tokio::test]
    async fn renewing_keeps_acquire_time_and_a_lost_race_is_a_follower() {
        let (r, bodies) = round(
            vec![
                (Method::GET, PATH, StatusCode::OK, lease("pod-a", "2026-11-29T00:00:00Z", 1)),
                (Method::PUT, "/apis/coordination.k8s.io/v1/namespaces/kyma-system/leases/portcullis?&fieldManager=portcullis",
                    StatusCode::OK, lease("pod-a", "2026-11-29T00:00:05Z", 1)),
            ],
            "2026-11-29T00:00:05Z",
        )
        .await;
        assert_eq!(r, Leadership::Leader);
        assert_eq!(bodies[1]["spec"]["leaseTransitions"], 1);
        assert!(
            bodies[1]["spec"]["acquireTime"]
                .as_str()
                .unwrap()
                .starts_with("2026-11-29T00:00:00")
        );

        let (r, _) = round(
            vec![
                (Method::GET, PATH, StatusCode::OK, lease("pod-b", "2026-11-29T00:00:00Z", 3)),
                (Method::PUT, "/apis/coordination.k8s.io/v1/namespaces/kyma-system/leases/portcullis?&fieldManager=portcullis",
                    StatusCode::CONFLICT, conflict()),
            ],
            "2026-11-29T00:01:00Z",
        )
        .await;
        assert_eq!(
            r,
            Leadership::Follower {
                holder: Some("pod-b".into())
            }
        );
    }
}
