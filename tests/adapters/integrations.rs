//! The integrations table adapter (DynamoDB).

use super::*;

#[tokio::test]
async fn integrations_create_replace_and_read() {
    let client = aws_sdk_dynamodb::Client::new(&sdk().await);
    let table = integrations_table().await;
    let repo = DynamoIntegrationRepository::new(client, table);
    repo.health().await.expect("health");
    let stored = |version: IntegrationVersion, revision: u64, enabled: bool| StoredIntegration {
        code: code("PROVIDER_IMPORT"),
        version,
        enabled,
        document: serde_json::json!({"code": "PROVIDER_IMPORT", "enabled": enabled, "steps": []}),
        revision,
        created_at: at(0),
        updated_at: at(revision as i64),
        created_by: Some("admin-1".into()),
        updated_by: (revision > 1).then(|| "admin-2".to_string()),
    };
    let v1 = IntegrationVersion::number(1).expect("v");
    repo.create(&stored(IntegrationVersion::NULL, 1, true)).await.expect("create null");
    repo.create(&stored(v1, 1, true)).await.expect("create 1");
    assert!(matches!(repo.create(&stored(v1, 1, false)).await, Err(IntegrationWriteError::AlreadyExists { .. })));
    assert!(matches!(repo.replace(&stored(v1, 3, false), 2).await, Err(IntegrationWriteError::RevisionConflict)));
    repo.replace(&stored(v1, 2, false), 1).await.expect("replace");
    assert!(matches!(repo.replace(&stored(v1, 2, false), 1).await, Err(IntegrationWriteError::RevisionConflict)));
    assert_eq!(repo.get(&code("PROVIDER_IMPORT"), v1).await.expect("get"), Some(stored(v1, 2, false)));
    assert_eq!(repo.get(&code("OTHER"), v1).await.expect("get"), None);
    let mut versions = repo.versions(&code("PROVIDER_IMPORT")).await.expect("versions");
    versions.sort_by_key(|s| s.version);
    assert_eq!(versions, vec![stored(IntegrationVersion::NULL, 1, true), stored(v1, 2, false)]);
    assert_eq!(repo.all().await.expect("all").len(), 2);
    assert!(matches!(
        repo.replace(&stored(IntegrationVersion::number(9).expect("v"), 1, true), 0).await,
        Err(IntegrationWriteError::RevisionConflict)
    ));
}
