//! Health as Kubernetes probes it (grpc.health.v1): liveness on "", readiness on the service.

use std::time::Duration;

use bulk_import::app::READINESS_SERVICE;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::*;
use crate::lifecycle::open_upload;

/// What the health service answers for `service`.
pub async fn check(app: &TestApp, service: &str) -> ServingStatus {
    let mut health = HealthClient::new(app.channel());
    let status = health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap()
}

backend_tests! {
    async fn liveness_and_readiness_answer_serving_once_migrations_ran(backend) {
        let app = spawn_app(backend).await;
        assert_eq!(check(&app, "").await, ServingStatus::Serving);
        assert_eq!(check(&app, READINESS_SERVICE).await, ServingStatus::Serving);
        let mut health = HealthClient::new(app.channel());
        let unknown = health
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);
    }
}

backend_tests! {
    async fn readiness_turns_not_serving_as_soon_as_shutdown_starts(backend) {
        let mut app = spawn_app_with(backend, |args| args.shutdown_grace_seconds = 3).await;
        // An upload keeps the server in its grace period.
        let upload = open_upload(&app, ACCOUNT, "holding").await;
        upload.tx.send(chunk(HEADER.as_bytes())).await.unwrap();
        crate::lifecycle::wait_for_import(&app, ACCOUNT, "holding").await;
        let mut health = HealthClient::new(app.channel());
        let mut readiness = health
            .watch(HealthCheckRequest {
                service: READINESS_SERVICE.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            readiness.message().await.unwrap().unwrap().status,
            ServingStatus::Serving as i32
        );

        let stopping = tokio::spawn(async move {
            app.stop().await;
            app
        });
        let next = tokio::time::timeout(Duration::from_secs(2), readiness.message())
            .await
            .expect("readiness changes at once")
            .unwrap()
            .unwrap();
        assert_eq!(next.status, ServingStatus::NotServing as i32);

        // The running upload may still finish within the grace period.
        upload.tx.send(finish_message(finish())).await.unwrap();
        // The stream ends after finish: that commits the import.
        drop(upload.tx);
        let import = upload.call.await.unwrap().unwrap();
        assert_eq!(
            status(&import),
            bulk_import::proto::ImportStatus::CompletedNothingToImport
        );
        stopping.await.unwrap();
    }
}
